import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest
@testable import KernelUpstream

func buffer(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

/// A made-up wire protocol, so that the engine is tested apart from uwsgi and HTTP.
///
/// Request: `FAKE METHOD URI LENGTH\n`, then the body as it is. Answer: `STATUS FRAMING\n`, header lines
/// `Name: value\n`, an empty line, then the body framed as FRAMING says: `len:N`, `close`, `none`, or `chunked`
/// (`HEX\r\nDATA\r\n`... `0\r\n\r\n`, decoded by the protocol's own body decoder). A `Reuse: yes` header
/// keeps the connection for another request; a `101` head turns it into a tunnel.
struct FakeProtocol: UpstreamProtocol {
    var scheme: String { "fake" }

    func makeRequestHead(for request: KernelRequest, context: RequestContext, allocator: ByteBufferAllocator) throws -> ByteBuffer {
        if request.headers["X-Refuse"] != nil {
            throw UpstreamRequestRefused(logMessage: "fake request refused", response: .error(502, "refused"))
        }
        return buffer("FAKE \(request.method) \(request.uri) \(request.bodyLength ?? 0)\n")
    }

    func makeResponseParser(for request: KernelRequest) -> FakeParser { FakeParser() }

    func hidesResponseHeader(_ name: String) -> Bool { name.lowercased() == "x-secret" }
}

struct FakeError: Error, CustomStringConvertible {
    var description: String
}

struct FakeParser: UpstreamResponseParser {
    private var lines: [String] = []

    mutating func parseHead(_ buffer: inout ByteBuffer) throws -> UpstreamResponseHead? {
        while let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let line = buffer.readString(length: newline - buffer.readerIndex)!
            buffer.moveReaderIndex(forwardBy: 1)
            guard line.isEmpty else { lines.append(line); continue }
            guard let first = lines.first else { throw FakeError(description: "fake upstream sent an empty head") }
            let words = first.split(separator: " ")
            guard words.count == 2, let status = Int(words[0]) else {
                throw FakeError(description: "fake upstream sent invalid status line \"\(first)\"")
            }
            var headers = HeaderFields()
            for line in lines.dropFirst() {
                let parts = line.split(separator: ":", maxSplits: 1)
                guard parts.count == 2 else { throw FakeError(description: "fake upstream sent invalid header") }
                headers.add(String(parts[0]), String(parts[1].drop { $0 == " " }))
            }
            let framing: UpstreamBodyFraming
            switch words[1] {
            case "close": framing = .untilClose
            case "none": framing = .none
            case "chunked": framing = .decoded(FakeChunkedDecoder())
            default:
                guard words[1].hasPrefix("len:"), let length = Int64(words[1].dropFirst(4)) else {
                    throw FakeError(description: "fake upstream sent invalid framing")
                }
                framing = .length(length)
            }
            // `Reuse: yes` is the fake protocol's keep-alive: the peer keeps the connection for another request.
            return UpstreamResponseHead(status: status, reason: nil, headers: headers, framing: framing,
                                        reusable: headers["Reuse"] == "yes")
        }
        return nil
    }
}

/// A small chunked decoder, as a protocol module supplies one.
struct FakeChunkedDecoder: UpstreamBodyDecoder {
    private var remaining = 0
    private var inData = false

    mutating func decode(_ buffer: inout ByteBuffer) throws -> UpstreamBodyDecoding {
        if inData {
            if remaining > 0 {
                guard buffer.readableBytes > 0 else { return .needMoreData }
                let length = min(remaining, buffer.readableBytes)
                remaining -= length
                return .part(buffer.readSlice(length: length)!)
            }
            guard buffer.readableBytes >= 2 else { return .needMoreData }
            guard buffer.readString(length: 2) == "\r\n" else { throw FakeError(description: "bad chunk end") }
            inData = false
            return .part(ByteBuffer())
        }
        guard let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else { return .needMoreData }
        let lineStart = buffer.readerIndex
        let line = buffer.readString(length: newline - buffer.readerIndex)!.trimmingCharacters(in: .whitespacesAndNewlines)
        buffer.moveReaderIndex(forwardBy: 1)
        guard let size = Int(line, radix: 16) else { throw FakeError(description: "fake upstream sent invalid chunk size") }
        if size == 0 {
            // The whole encoding is consumed, the final CRLF included, before the end is reported.
            guard buffer.readableBytes >= 2 else {
                buffer.moveReaderIndex(to: lineStart)
                return .needMoreData
            }
            buffer.moveReaderIndex(forwardBy: 2)
            return .end
        }
        remaining = size
        inData = true
        return .part(ByteBuffer())
    }
}

/// A peer on a loopback port: reads a fake request whole, then hands the connection to `onRequest`.
final class FakePeer: Sendable {
    let server: any Channel
    private let connectionCount = NIOLockedValueBox(0)
    private let received = NIOLockedValueBox<[String]>([])

    var address: PeerAddress { .tcp(host: "127.0.0.1", port: server.localAddress!.port!) }
    var connections: Int { connectionCount.withLockedValue { $0 } }
    /// The request heads received (their first line).
    var requests: [String] { received.withLockedValue { $0 } }

    /// `reads: false` makes a peer that accepts and never reads (for the send timeout).
    init(group: any EventLoopGroup, reads: Bool = true, onRequest: @escaping @Sendable (any Channel, ByteBuffer) -> Void) throws {
        let connectionCount = self.connectionCount
        let received = self.received
        server = try ServerBootstrap(group: group)
            .childChannelOption(.autoRead, value: reads)
            .childChannelInitializer { channel in
                connectionCount.withLockedValue { $0 += 1 }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(FakePeerHandler { head, body in
                        received.withLockedValue { $0.append(head) }
                        onRequest(channel, body)
                    })
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
    }

    /// A peer that answers every request with `parts`, one write each, then closes.
    convenience init(group: any EventLoopGroup, answer parts: [String]) throws {
        try self.init(group: group) { channel, _ in
            for part in parts { channel.write(buffer(part), promise: nil) }
            channel.writeAndFlush(ByteBuffer()).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func close() { try? server.close().wait() }
}

final class FakePeerHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private var input = ByteBuffer()
    private var head: String?
    private var length = 0
    private var done = false
    private let onRequest: (String, ByteBuffer) -> Void

    init(onRequest: @escaping (String, ByteBuffer) -> Void) { self.onRequest = onRequest }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var part = unwrapInboundIn(data)
        input.writeBuffer(&part)
        if head == nil, let newline = input.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let line = input.readString(length: newline - input.readerIndex)!
            input.moveReaderIndex(forwardBy: 1)
            head = line
            length = Int(line.split(separator: " ").last!) ?? 0
        }
        if let head, !done, input.readableBytes >= length {
            done = true
            onRequest(head, input.readSlice(length: length)!)
        }
    }
}

/// A port with nobody listening on it.
func closedPort(group: any EventLoopGroup) throws -> PeerAddress {
    let server = try ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).wait()
    let port = server.localAddress!.port!
    try server.close().wait()
    return .tcp(host: "127.0.0.1", port: port)
}

/// An upstream group over fixed peers, in order, recording every lease's outcome.
final class RecordingGroup: UpstreamGroup, Sendable {
    let peers: [PeerAddress]
    let maxTries: Int
    private let outcomes = NIOLockedValueBox<[(PeerAddress, PeerLeaseOutcome)]>([])
    private let begun = NIOLockedValueBox(0)
    /// Called with each outcome, after it was recorded.
    let onFinish: (@Sendable (PeerLeaseOutcome) -> Void)?

    init(_ peers: [PeerAddress], maxTries: Int? = nil, onFinish: (@Sendable (PeerLeaseOutcome) -> Void)? = nil) {
        self.peers = peers
        self.maxTries = maxTries ?? peers.count
        self.onFinish = onFinish
    }

    var name: String { "backend" }
    var finished: [(PeerAddress, PeerLeaseOutcome)] { outcomes.withLockedValue { $0 } }
    var leases: Int { begun.withLockedValue { $0 } }

    func begin(_ request: KernelRequest, excluding excluded: [PeerAddress]) -> PeerLease? {
        guard let peer = peers.first(where: { !excluded.contains($0) }) else { return nil }
        begun.withLockedValue { $0 += 1 }
        return PeerLease(peer: peer) { [outcomes, onFinish] outcome in
            outcomes.withLockedValue { $0.append((peer, outcome)) }
            onFinish?(outcome)
        }
    }
}

/// Keeps every log message, for asserting nginx's lines.
struct RecordingLogHandler: LogHandler {
    let messages: NIOLockedValueBox<[String]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        messages.withLockedValue { $0.append("[\(event.level)] \(event.message)") }
    }
}

func makeRequest(_ method: String = "GET", _ uri: String = "/work?a=1", headers: HeaderFields = ["Host": "edge"],
                 body: ByteBuffer? = nil) -> KernelRequest {
    let split = KernelRequest.splitTarget(uri)!
    return KernelRequest(method: method, uri: uri, path: split.path, query: split.query, version: .http1_1, headers: headers,
                         body: body, connection: ConnectionInfo(protocolName: "http", listener: "x",
                                                                remoteAddress: try! SocketAddress(ipAddress: "127.0.0.5", port: 1234),
                                                                localAddress: nil))
}

/// Reads a streamed (or whole) body to its end.
func collectBody(_ body: ResponseBody) throws -> String {
    switch body {
    case .empty: return ""
    case .buffer(let buffer): return String(buffer: buffer)
    case .stream(let stream):
        var out = ""
        while let part = try stream.next().wait() { out += String(buffer: part) }
        return out
    }
}
