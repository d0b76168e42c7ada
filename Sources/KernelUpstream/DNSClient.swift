import NIOCore
import NIOPosix

/// nginx's `resolver` directive: the name servers asked, `valid=` (a time that overrides the answers' TTLs),
/// `ipv4=`/`ipv6=` (which record types are asked for), and `resolver_timeout`.
public struct ResolverSettings: Sendable, Equatable {
    /// The name servers, asked in turn until one answers.
    public var servers: [SocketAddress]
    /// nginx's `valid=`: how long an answer is used, whatever its TTL; nil keeps the TTL.
    public var valid: TimeAmount?
    public var ipv4 = true
    public var ipv6 = true
    /// nginx's `resolver_timeout` (30 s), for each server asked.
    public var timeout: TimeAmount = .seconds(30)

    public init(servers: [SocketAddress], valid: TimeAmount? = nil, ipv4: Bool = true, ipv6: Bool = true,
                timeout: TimeAmount = .seconds(30)) {
        self.servers = servers
        self.valid = valid
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        self.timeout = timeout
    }
}

/// The addresses of one name and how long they may be used.
public struct ResolvedName: Sendable, Equatable {
    /// The addresses, IPv4 first, each once, in the order of the answers.
    public var addresses: [String]
    /// The smallest TTL of the records used (nil when there was none), before `valid=` is applied.
    public var ttl: UInt32?

    public init(addresses: [String], ttl: UInt32?) {
        self.addresses = addresses
        self.ttl = ttl
    }
}

/// A small stub resolver over UDP (nginx's `ngx_resolver.c` for the upstream `resolve` parameter): it asks the
/// configured name servers for A and AAAA records and reports the addresses with their TTLs, which
/// `getaddrinfo` does not give. It runs on an event loop and never blocks: each query is a datagram on its own
/// ephemeral port with a random id, and an answer from another address, with another id or for another question
/// is ignored, as a late or forged datagram would be.
public struct DNSClient: Sendable {
    public let settings: ResolverSettings

    public init(settings: ResolverSettings) { self.settings = settings }

    /// The addresses of `name`: the A (and AAAA) records, as `ipv4=`/`ipv6=` ask. Fails with `DNSLookupError`
    /// when a query got no usable answer; a name that does not exist fails with `.responseCode(3)` only when no
    /// asked type has records.
    public func resolve(_ name: String, on eventLoop: any EventLoop) -> EventLoopFuture<ResolvedName> {
        var types: [DNSRecordType] = []
        if settings.ipv4 { types.append(.a) }
        if settings.ipv6 { types.append(.aaaa) }
        let lookups = types.map { query(name, type: $0, on: eventLoop) }
        return EventLoopFuture.whenAllComplete(lookups, on: eventLoop).flatMapThrowing { results in
            var addresses: [String] = []
            var ttl: UInt32?
            var notFound = 0
            for result in results {
                switch result {
                case .success(let records):
                    for record in records {
                        if !addresses.contains(record.address) { addresses.append(record.address) }
                        ttl = min(ttl ?? record.ttl, record.ttl)
                    }
                case .failure(let error as DNSLookupError) where error.isNameNotFound:
                    notFound += 1
                case .failure(let error):
                    // One type failing otherwise makes the whole answer unknown: the last peers are kept.
                    throw error
                }
            }
            if notFound == results.count { throw DNSLookupError.responseCode(3) }
            return ResolvedName(addresses: addresses, ttl: ttl)
        }
    }

    /// One question, put to the servers in turn until one answers.
    func query(_ name: String, type: DNSRecordType, on eventLoop: any EventLoop) -> EventLoopFuture<[DNSAddressRecord]> {
        ask(server: 0, name: name, type: type, lastError: .timedOut, on: eventLoop)
    }

    private func ask(server index: Int, name: String, type: DNSRecordType, lastError: DNSLookupError,
                     on eventLoop: any EventLoop) -> EventLoopFuture<[DNSAddressRecord]> {
        guard index < settings.servers.count else { return eventLoop.makeFailedFuture(lastError) }
        return queryServer(settings.servers[index], name: name, type: type, on: eventLoop).flatMapError { error in
            let lookupError = error as? DNSLookupError ?? .network("\(error)")
            // An answer from the server (not found, refused) is the answer; silence or a broken answer goes on
            // to the next server.
            if case .responseCode = lookupError { return eventLoop.makeFailedFuture(lookupError) }
            return ask(server: index + 1, name: name, type: type, lastError: lookupError, on: eventLoop)
        }
    }

    private func queryServer(_ server: SocketAddress, name: String, type: DNSRecordType,
                             on eventLoop: any EventLoop) -> EventLoopFuture<[DNSAddressRecord]> {
        let id = UInt16.random(in: 0...UInt16.max)
        guard let query = DNSMessage.query(id: id, name: name, type: type) else {
            return eventLoop.makeFailedFuture(DNSLookupError.malformed("invalid name \"\(name)\""))
        }
        let promise = eventLoop.makePromise(of: [DNSAddressRecord].self)
        let timeout = settings.timeout
        let local = server.protocol == .inet6 ? "::" : "0.0.0.0"
        DatagramBootstrap(group: eventLoop)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: DNSMessage.maxUDPSize))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        DNSAnswerHandler(server: server, id: id, name: name, type: type, promise: promise))
                }
            }
            .bind(host: local, port: 0)
            .whenComplete { result in
                switch result {
                case .failure(let error):
                    promise.fail(DNSLookupError.network("\(error)"))
                case .success(let channel):
                    let timer = channel.eventLoop.scheduleTask(in: timeout) { promise.fail(DNSLookupError.timedOut) }
                    promise.futureResult.whenComplete { _ in
                        timer.cancel()
                        channel.close(promise: nil)
                    }
                    channel.writeAndFlush(AddressedEnvelope(remoteAddress: server, data: query)).whenFailure { error in
                        promise.fail(DNSLookupError.network("\(error)"))
                    }
                }
            }
        return promise.futureResult
    }
}

/// Waits for the one answer of a query on its channel.
private final class DNSAnswerHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    let server: SocketAddress
    let id: UInt16
    let name: String
    let type: DNSRecordType
    let promise: EventLoopPromise<[DNSAddressRecord]>

    init(server: SocketAddress, id: UInt16, name: String, type: DNSRecordType, promise: EventLoopPromise<[DNSAddressRecord]>) {
        self.server = server
        self.id = id
        self.name = name
        self.type = type
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        // Only the asked server's datagram counts; anything else may be forged.
        guard envelope.remoteAddress == server else { return }
        let message = envelope.data
        guard message.readableBytes >= 2, message.getInteger(at: message.readerIndex, as: UInt16.self) == id else { return }
        do {
            promise.succeed(try DNSMessage.addresses(in: message, id: id, name: name, type: type))
        } catch {
            promise.fail(error)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // An ICMP port unreachable (`ECONNREFUSED`) on the next read: this server is not there.
        promise.fail(DNSLookupError.network("\(error)"))
    }
}
