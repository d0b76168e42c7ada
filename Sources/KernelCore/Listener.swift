import KernelConfig
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// An address a listener binds: `8080` (all IPv4 addresses), `127.0.0.1:8080`, `[::1]:8080`, `*:8080`,
/// `localhost:8080`, `unix:/run/kernel.sock`.
public enum ListenAddress: Sendable, Hashable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    public init?(parsing text: String) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { return nil }
            self = .unix(path: path)
            return
        }
        if let port = Int(text), (0...65535).contains(port) {
            self = .tcp(host: "0.0.0.0", port: port)
            return
        }
        guard let (host, port) = ListenAddress.splitHostPort(text), let port, (0...65535).contains(port), !host.isEmpty else {
            return nil
        }
        self = .tcp(host: host == "*" ? "0.0.0.0" : host, port: port)
    }

    /// Splits `host:port` or `[v6]:port`; the port is nil when absent, the whole split nil when malformed.
    public static func splitHostPort(_ text: String) -> (String, Int?)? {
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            let host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if rest.isEmpty { return (host, nil) }
            guard rest.first == ":", let port = Int(rest.dropFirst()) else { return nil }
            return (host, port)
        }
        guard let colon = text.lastIndex(of: ":") else { return (text, nil) }
        let host = String(text[..<colon])
        guard !host.contains(":"), let port = Int(text[text.index(after: colon)...]) else { return nil }
        return (host, port)
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): return "unix:\(path)"
        }
    }

    /// Whether two listening sockets on these addresses cannot both be bound: the same unix path, or the same port
    /// on the same host or with one of them on IPv4's wildcard (`0.0.0.0:8080` holds `127.0.0.1:8080`). Port 0 (any
    /// free port) never clashes.
    public func clashes(with other: ListenAddress) -> Bool {
        switch (self, other) {
        case (.unix(let path), .unix(let otherPath)):
            return path == otherPath
        case (.tcp(let host, let port), .tcp(let otherHost, let otherPort)):
            guard port == otherPort, port != 0 else { return false }
            if host == otherHost { return true }
            let isIPv4 = { (name: String) in !name.contains(":") }
            return (host == "0.0.0.0" && isIPv4(otherHost)) || (otherHost == "0.0.0.0" && isIPv4(host))
        default:
            return false
        }
    }

    /// The socket path of a unix address.
    public var unixPath: String? {
        if case .unix(let path) = self { return path }
        return nil
    }
}

/// A listener a protocol module asks for. The core binds it, keeps it across reloads while its protocol and
/// address stay the same, and hands each accepted connection to `initializeConnection` of the newest
/// configuration that declares it.
public struct ListenerSpec: Sendable {
    /// `http`, `uwsgi`: part of the listener's identity.
    public var protocolName: String
    public var address: ListenAddress
    /// Permissions of a unix socket file (uWSGI `chmod-socket`), e.g. `0o660`.
    public var unixSocketMode: UInt32?
    /// Owner of a unix socket file as `user` or `user:group` (uWSGI `chown-socket`).
    public var unixSocketOwner: String?
    /// The accept queue length; nil is the generation's `kernel.listen_backlog` (filled in when the generation is
    /// built).
    public var backlog: Int32?
    /// Where the address is written in the configuration: errors about binding it name the position.
    public var mark: SourceMark?
    /// Sets up the pipeline of one accepted connection.
    public var initializeConnection: @Sendable (any Channel, KernelRuntime) -> EventLoopFuture<Void>

    public init(protocolName: String, address: ListenAddress, unixSocketMode: UInt32? = nil, unixSocketOwner: String? = nil,
                backlog: Int32? = nil, mark: SourceMark? = nil,
                initializeConnection: @escaping @Sendable (any Channel, KernelRuntime) -> EventLoopFuture<Void>) {
        self.protocolName = protocolName
        self.address = address
        self.unixSocketMode = unixSocketMode
        self.unixSocketOwner = unixSocketOwner
        self.backlog = backlog
        self.mark = mark
        self.initializeConnection = initializeConnection
    }

    /// What makes two listeners "the same" across a reload.
    public var identity: String { "\(protocolName) \(address)" }
}

/// One bound server socket and the connections it accepted.
final class BoundListener: Sendable {
    let identity: String
    let spec: NIOLockedValueBox<ListenerSpec>
    let connections = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
    let serverChannel = NIOLockedValueBox<(any Channel)?>(nil)
    /// In a worker: what accepts on the socket inherited from the master (instead of a server channel).
    let acceptor = NIOLockedValueBox<InheritedSocketAcceptor?>(nil)

    init(spec: ListenerSpec) {
        identity = spec.identity
        self.spec = NIOLockedValueBox(spec)
    }
}

/// A listener as metrics (`kernel_connections_open`) and readiness see it.
public struct ListenerStatus: Sendable, Equatable {
    /// `http`, `uwsgi`.
    public var protocolName: String
    /// The address as configured (`127.0.0.1:8080`, `unix:/run/kernel.sock`, `127.0.0.1:0`).
    public var address: String
    /// The address as bound (a configured port 0 is the port the system chose): the `listener` label of metrics,
    /// as the listen-queue figures name it. The configured address while nothing is bound.
    public var boundAddress: String
    /// Connections accepted and not yet closed.
    public var openConnections: Int
    /// Whether its listening socket is open (bound, not closed).
    public var isOpen: Bool

    public init(protocolName: String, address: String, boundAddress: String? = nil, openConnections: Int, isOpen: Bool) {
        self.protocolName = protocolName
        self.address = address
        self.boundAddress = boundAddress ?? address
        self.openConnections = openConnections
        self.isOpen = isOpen
    }
}

/// The runtime's reference to the listener manager of its server: weak, as the manager holds the runtime.
final class WeakListenerManager: Sendable {
    private let box = NIOLockedValueBox<Reference>(Reference())

    private struct Reference: @unchecked Sendable { weak var manager: ListenerManager? }

    func set(_ manager: ListenerManager) { box.withLockedValue { $0.manager = manager } }
    var manager: ListenerManager? { box.withLockedValue { $0.manager } }
}

extension KernelRuntime {
    /// The listeners the running configuration has, by configured address; empty when no server runs this
    /// runtime (tests that embed the request path).
    public var listenerStatus: [ListenerStatus] { listenerManager.manager?.status() ?? [] }
}

/// Binds, keeps and closes the listeners of the running configuration.
public final class ListenerManager: Sendable {
    let runtime: KernelRuntime
    private let bound = NIOLockedValueBox<[String: BoundListener]>([:])
    /// In a worker process: the listening sockets it inherited from its master, by listener identity. A worker
    /// adopts these and binds nothing itself; nil in a process that binds its own.
    let inherited: [String: CInt]?

    init(runtime: KernelRuntime, inherited: [String: CInt]? = nil) {
        self.runtime = runtime
        self.inherited = inherited
    }

    /// Opens what `specs` adds (bound, not yet accepting: see `activate`), keeps what it shares with the running set
    /// (with the new spec swapped in: connections accepted from then on use it), and returns the listeners it
    /// opened and those it no longer has, still open: the caller closes them once the new configuration is in
    /// place. On a bind failure everything opened by this call is closed again and the error is thrown.
    func apply(_ specs: [ListenerSpec]) async throws -> (opened: [BoundListener], removed: [BoundListener]) {
        var specs = specs
        if let inherited {
            // A worker accepts on what its master gave its pool (`kernel.processes` pools choose listeners).
            for spec in specs where inherited[spec.identity] == nil {
                runtime.logger.info("listener \(spec.identity) is not given to this worker's pool: not accepting on it")
            }
            specs = specs.filter { inherited[$0.identity] != nil }
        }
        let current = bound.withLockedValue { $0 }
        let wanted = Set(specs.map(\.identity))
        // A unix socket path that passes to another protocol is closed before it is bound again: closing a NIO
        // unix listener unlinks its path, which would remove the new listener's socket if it were bound first.
        let reboundPaths = Set(specs.filter { current[$0.identity] == nil }.compactMap(\.address.unixPath))
        for (identity, listener) in current where !wanted.contains(identity) {
            guard let path = listener.spec.withLockedValue({ $0.address.unixPath }), reboundPaths.contains(path) else { continue }
            try? await listener.serverChannel.withLockedValue({ $0 })?.close()
        }
        var opened: [BoundListener] = []
        do {
            for spec in specs where current[spec.identity] == nil {
                let listener = BoundListener(spec: spec)
                try await bind(listener)
                opened.append(listener)
            }
        } catch {
            for listener in opened { try? await listener.serverChannel.withLockedValue { $0 }?.close() }
            throw error
        }
        let removed = bound.withLockedValue { listeners in
            for spec in specs { listeners[spec.identity]?.spec.withLockedValue { $0 = spec } }
            for listener in opened { listeners[listener.identity] = listener }
            var removed: [BoundListener] = []
            for (identity, listener) in listeners where !wanted.contains(identity) {
                removed.append(listener)
                listeners[identity] = nil
            }
            return removed
        }
        return (opened, removed)
    }

    /// The listening sockets now open, for the listen-queue sampler: each listener's server channel, or in a
    /// worker the socket it inherited from the master.
    func listeningSockets() -> [ListenQueueMonitor.Listening] {
        bound.withLockedValue { listeners in
            listeners.values.compactMap { listener -> ListenQueueMonitor.Listening? in
                let protocolName = listener.spec.withLockedValue { $0.protocolName }
                if let channel = listener.serverChannel.withLockedValue({ $0 }) {
                    return .channel(protocolName: protocolName, channel)
                }
                if let acceptor = listener.acceptor.withLockedValue({ $0 }) {
                    return .descriptor(protocolName: protocolName, acceptor.descriptor)
                }
                return nil
            }
        }
    }

    /// Each bound listener, its open connections and whether its socket is open, sorted by configured address.
    func status() -> [ListenerStatus] {
        bound.withLockedValue { Array($0.values) }.map { listener in
            let spec = listener.spec.withLockedValue { $0 }
            // A worker accepts on the socket it inherited from the master, with no server channel of its own.
            let channel = listener.serverChannel.withLockedValue { $0 }
            let acceptor = listener.acceptor.withLockedValue { $0 }
            let open = channel?.isActive ?? (acceptor != nil)
            // The address as bound (a configured port 0 becomes the port the system chose), as the listen-queue
            // figures name it.
            let bound = channel?.localAddress.map(describe) ?? acceptor.flatMap { describeBoundSocket($0.descriptor) }
            return ListenerStatus(protocolName: spec.protocolName, address: spec.address.description, boundAddress: bound,
                                  openConnections: listener.connections.withLockedValue { $0.count }, isOpen: open)
        }.sorted { ($0.address, $0.protocolName) < ($1.address, $1.protocolName) }
    }

    /// Starts accepting on listeners opened by `apply`.
    func activate(_ listeners: [BoundListener]) async {
        for listener in listeners {
            if let acceptor = listener.acceptor.withLockedValue({ $0 }) {
                acceptor.start()
                continue
            }
            guard let channel = listener.serverChannel.withLockedValue({ $0 }) else { continue }
            do {
                try await channel.setOption(.autoRead, value: true).get()
            } catch {
                runtime.logger.error("cannot start accepting on \(listener.identity): \(error)")
            }
        }
    }

    private func bind(_ listener: BoundListener) async throws {
        let runtime = self.runtime
        let spec = listener.spec.withLockedValue { $0 }
        if let inherited {
            // A worker: the master bound the socket (its options, TCP_NODELAY, unix permissions, are set there).
            guard let descriptor = inherited[spec.identity] else {
                throw ListenerError("listener \(spec.identity) was not opened by the master process").at(spec.mark)
            }
            let label = describeBoundSocket(descriptor) ?? spec.address.description
            let acceptor = try InheritedSocketAcceptor(
                descriptor: descriptor, label: label, group: runtime.eventLoopGroup, logger: runtime.logger,
                initialize: { channel in
                    do {
                        try channel.pipeline.syncOperations.addHandler(QuiesceOnNextRequest())
                    } catch {
                        return channel.eventLoop.makeFailedFuture(error)
                    }
                    let id = ObjectIdentifier(channel)
                    listener.connections.withLockedValue { $0[id] = channel }
                    channel.closeFuture.whenComplete { _ in
                        _ = listener.connections.withLockedValue { $0.removeValue(forKey: id) }
                    }
                    return listener.spec.withLockedValue { $0 }.initializeConnection(channel, runtime)
                })
            listener.acceptor.withLockedValue { $0 = acceptor }
            runtime.logger.info("accepting on \(spec.protocolName) \(label) (\(spec.address)), inherited from the master as fd \(descriptor)")
            return
        }
        let backlog = spec.backlog ?? CoreConfiguration.defaultListenBacklog
        ListenBacklog.warnIfCapped(backlog, listener: spec.identity, logger: runtime.logger)
        let bootstrap = ServerBootstrap(group: runtime.eventLoopGroup)
            // Accepting starts in `activate`, once the generation that declares the listener is current: a
            // connection accepted earlier would be routed by a configuration that does not know the listener.
            .serverChannelOption(.autoRead, value: false)
            .serverChannelOption(.backlog, value: backlog)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let shown = spec.address.description
                    try channel.pipeline.syncOperations.addHandler(AcceptFailureHandler(listener: shown, logger: runtime.logger))
                }
            }
            // Child options are few on purpose: each is one step of a future chain (and a setsockopt) per
            // accepted connection, and uwsgi peers open a connection per request. SO_REUSEADDR means nothing on
            // an accepted socket.
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                let id = ObjectIdentifier(channel)
                listener.connections.withLockedValue { $0[id] = channel }
                channel.closeFuture.whenComplete { _ in
                    _ = listener.connections.withLockedValue { $0.removeValue(forKey: id) }
                }
                return listener.spec.withLockedValue { $0 }.initializeConnection(channel, runtime)
            }
        let channel: any Channel
        switch spec.address {
        case .tcp(let host, let port):
            // Responses are written whole; Nagle would only delay the last segment of each. Set on the listening
            // socket, TCP_NODELAY is inherited by every accepted one, which saves a setsockopt per connection.
            // (It is a TCP-level option: `.socketOption(.tcp_nodelay)` would set SOL_SOCKET option 1, SO_DEBUG.)
            do {
                channel = try await bootstrap
                    .serverChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                    .bind(host: host, port: port).get()
            } catch {
                throw ListenerError(binding: spec, error)
            }
        case .unix(let path):
            // A socket file left by an earlier process is replaced; any other kind of file there is an error.
            do { try removeSocketFile(path) } catch let error as ListenerError { throw error.at(spec.mark) }
            do {
                channel = try await bootstrap.bind(unixDomainSocketPath: path).get()
            } catch {
                throw ListenerError(binding: spec, error)
            }
            do {
                try applyUnixSocketPermissions(path: path, mode: spec.unixSocketMode, owner: spec.unixSocketOwner)
            } catch let error as ListenerError {
                try? await channel.close()
                throw error.at(spec.mark)
            }
        }
        listener.serverChannel.withLockedValue { $0 = channel }
        let shown = channel.localAddress.map { describe($0) } ?? spec.address.description
        runtime.logger.notice("listening on \(spec.protocolName) \(shown) (\(spec.address))")
    }

    /// Stops accepting on `listeners` and asks their connections to finish their current request and close.
    func retire(_ listeners: [BoundListener]) async {
        for listener in listeners {
            if let acceptor = listener.acceptor.withLockedValue({ $0 }) {
                await acceptor.stop()
                runtime.logger.notice("closed listener \(listener.identity)")
            }
            if let channel = listener.serverChannel.withLockedValue({ $0 }) {
                // Closing also unlinks a unix socket's path (NIO does it for the sockets it binds).
                try? await channel.close()
                runtime.logger.notice("closed listener \(listener.identity)")
            }
            for connection in listener.connections.withLockedValue({ Array($0.values) }) {
                connection.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
            }
        }
    }

    /// Graceful stop: stop accepting, ask every connection to finish and close, wait up to `timeout`, then close
    /// what is left.
    func shutdown(timeout: TimeAmount) async {
        let all = bound.withLockedValue { listeners in
            let all = Array(listeners.values)
            listeners = [:]
            return all
        }
        await retire(all)
        let deadline = NIODeadline.now() + timeout
        while NIODeadline.now() < deadline {
            if all.allSatisfy({ $0.connections.withLockedValue { $0.isEmpty } }) { return }
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        var forced = 0
        for listener in all {
            for connection in listener.connections.withLockedValue({ Array($0.values) }) {
                forced += 1
                connection.close(promise: nil)
            }
        }
        if forced > 0 { runtime.logger.warning("closed \(forced) connection(s) still open at shutdown") }
    }
}

/// What a listening socket does when `accept` fails, as nginx's `ngx_event_accept`: log the failure in nginx's words
/// and, when descriptors ran out (`EMFILE`, `ENFILE`), stop accepting for `backoff` (nginx's `accept_mutex_delay`,
/// 500 ms) and then try again. Connections already open are served meanwhile; new ones wait in the listen queue.
///
/// SwiftNIO keeps a socket whose accept failed registered for reading, and the pending connection keeps it readable,
/// so without this the event loop would retry `accept` at once, forever. Turning `autoRead` off takes the socket
/// out of the poll set; turning it on again resumes accepting.
final class AcceptFailureHandler: ChannelInboundHandler {
    typealias InboundIn = any Channel
    typealias InboundOut = any Channel

    private let listener: String
    private let logger: Logger
    private let backoff: TimeAmount
    private let logInterval: TimeAmount
    private var resume: Scheduled<Void>?
    private var lastLogged: NIODeadline?
    private var suppressed = 0

    /// `listener` is the configured address, shown when the socket's own is not known.
    init(listener: String, logger: Logger, backoff: TimeAmount = .milliseconds(500), logInterval: TimeAmount = .seconds(1)) {
        self.listener = listener
        self.logger = logger
        self.backoff = backoff
        self.logInterval = logInterval
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let io = error as? IOError else {
            context.fireErrorCaught(error)
            return
        }
        let code = io.errnoCode
        let outOfDescriptors = code == EMFILE || code == ENFILE
        // The bound address (the port a `:0` listener got), as nginx names the listening socket.
        let address = context.channel.localAddress.map(describe) ?? listener
        log(code: code, level: outOfDescriptors ? .critical : code == ECONNABORTED ? .error : .critical,
            address: address, now: context.eventLoop.now)
        guard outOfDescriptors, resume == nil else { return }
        context.channel.setOption(.autoRead, value: false).whenComplete { _ in }
        let channel = context.channel
        resume = context.eventLoop.assumeIsolated().scheduleTask(in: backoff) { [weak self] in
            self?.resume = nil
            channel.setOption(.autoRead, value: true).whenComplete { _ in }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        resume?.cancel()
        resume = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        resume?.cancel()
        resume = nil
    }

    /// nginx logs every failure; descriptors running out can fail thousands of accepts a second, so lines are kept
    /// to one per `logInterval` and say how many were left out.
    private func log(code: Int32, level: Logger.Level, address: String, now: NIODeadline) {
        if let lastLogged, now < lastLogged + logInterval {
            suppressed += 1
            return
        }
        var message = "accept() failed (\(code): \(String(cString: strerror(code)))) while accepting new connection on \(address)"
        if suppressed > 0 { message += " (\(suppressed) more since the last report)" }
        logger.log(level: level, "\(message)")
        lastLogged = now
        suppressed = 0
    }
}

/// `127.0.0.1:8080`, `[::1]:8080`, `unix:/path`.
package func describe(_ address: SocketAddress) -> String {
    switch address {
    case .v4: return "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
    case .v6: return "[\(address.ipAddress ?? "?")]:\(address.port ?? 0)"
    case .unixDomainSocket: return "unix:\(address.pathname ?? "")"
    }
}

/// Unlinks `path` when it is a socket; any other kind of file there is an error (never removed).
package func removeSocketFile(_ path: String) throws {
    var info = stat()
    guard lstat(path, &info) == 0 else { return }
    guard info.st_mode & S_IFMT == S_IFSOCK else {
        throw ListenerError("cannot listen on unix:\(path): the path exists and is not a socket")
    }
    if unlink(path) != 0 {
        throw ListenerError("cannot remove the old socket unix:\(path): \(String(cString: strerror(errno)))")
    }
}

package func applyUnixSocketPermissions(path: String, mode: UInt32?, owner: String?) throws {
    if let mode, chmod(path, mode_t(mode)) != 0 {
        throw ListenerError("chmod \(String(mode, radix: 8)) \(path): \(String(cString: strerror(errno)))")
    }
    if let owner {
        let parts = owner.split(separator: ":", maxSplits: 1).map(String.init)
        var uid: uid_t = uid_t.max, gid: gid_t = gid_t.max
        if let user = parts.first, !user.isEmpty {
            if let pw = getpwnam(user) { uid = pw.pointee.pw_uid; gid = pw.pointee.pw_gid }
            else if let n = UInt32(user) { uid = n } else { throw ListenerError("unknown user \"\(user)\" for \(path)") }
        }
        if parts.count == 2 {
            if let gr = getgrnam(parts[1]) { gid = gr.pointee.gr_gid }
            else if let n = UInt32(parts[1]) { gid = n } else { throw ListenerError("unknown group \"\(parts[1])\" for \(path)") }
        }
        if chown(path, uid, gid) != 0 {
            throw ListenerError("chown \(owner) \(path): \(String(cString: strerror(errno)))")
        }
    }
}

/// A listener that could not be set up.
public struct ListenerError: Error, CustomStringConvertible {
    public var description: String
    package init(_ description: String) { self.description = description }

    /// nginx's line for a failed bind, `bind() to 127.0.0.1:6666 failed (98: Address already in use)`, followed by
    /// where the address is configured: `, in etc/kernel.yaml:12:13`.
    /// A name that does not resolve is nginx's `host not found in "name:port"`.
    package init(binding spec: ListenerSpec, _ error: any Error) {
        let text: String
        if let io = error as? IOError {
            text = "bind() to \(spec.address) failed (\(io.errnoCode): \(String(cString: strerror(io.errnoCode))))"
        } else if let unknown = error as? SocketAddressError.UnknownHost {
            text = "host not found in \"\(spec.address)\" (\(unknown.errorDescription))"
        } else {
            text = "bind() to \(spec.address) failed (\(error))"
        }
        description = text
        self = at(spec.mark)
    }

    /// The error followed by where the listener is configured, when known: `..., in etc/kernel.yaml:12:13`.
    package func at(_ mark: SourceMark?) -> ListenerError {
        guard let mark else { return self }
        return ListenerError("\(description), in \(mark)")
    }
}
