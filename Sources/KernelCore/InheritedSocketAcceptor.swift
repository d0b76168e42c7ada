import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// Accepts connections on a listening socket that several worker processes share (inherited from their master)
/// and hands each to the event loops as a channel set up by the listener's `initializeConnection`.
///
/// Every process polling a shared socket is woken by each new connection and only one of them gets it: the others'
/// `accept` finds nothing (EAGAIN). A NIO server channel treats that as impossible (an assertion in debug builds),
/// so a worker does not give the socket to one: a thread of its own polls it (with a wake-up pipe to stop it) and
/// accepts non-blocking, and an empty accept is simply the normal end of a wake-up.
final class InheritedSocketAcceptor: Sendable {
    let descriptor: CInt
    private let label: String
    private let logger: Logger
    private let initialize: @Sendable (any Channel) -> EventLoopFuture<Void>
    private let pool: NIOThreadPool
    /// The wake-up pipe: writing to [1] ends the accept loop.
    private let wake: (read: CInt, write: CInt)
    private let finished: NIOLockedValueBox<EventLoopPromise<Void>?>
    private let group: any EventLoopGroup
    /// Connections accepted and not yet set up as channels.
    private let handing = NIOLockedValueBox(0)

    /// `label` names the socket in log lines (its bound address). `initialize` sets up each accepted connection's
    /// pipeline.
    init(descriptor: CInt, label: String, group: any EventLoopGroup, logger: Logger,
         initialize: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>) throws {
        var pipe: [CInt] = [-1, -1]
        guard Glibc.pipe(&pipe) == 0 else {
            throw ListenerError("pipe() failed (\(errno): \(String(cString: strerror(errno))))")
        }
        for end in pipe { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        // Shared with every process holding the socket: accept must never block, whoever polls it.
        let flags = fcntl(descriptor, F_GETFL)
        _ = fcntl(descriptor, F_SETFL, flags | O_NONBLOCK)
        self.descriptor = descriptor
        self.label = label
        self.logger = logger
        self.group = group
        wake = (pipe[0], pipe[1])
        self.initialize = initialize
        pool = NIOThreadPool(numberOfThreads: 1)
        finished = NIOLockedValueBox(nil)
    }

    /// Starts accepting.
    func start() {
        let promise = group.next().makePromise(of: Void.self)
        finished.withLockedValue { $0 = promise }
        pool.start()
        pool.submit { [self] _ in
            acceptLoop()
            promise.succeed(())
        }
    }

    /// Stops accepting and closes this process's descriptor of the socket (the others keep theirs: the socket
    /// stays open and its queued connections go to the other workers).
    func stop() async {
        var byte: UInt8 = 1
        _ = write(wake.write, &byte, 1)
        if let promise = finished.withLockedValue({ $0 }) { try? await promise.futureResult.get() }
        // Connections accepted just before are set up (and so registered with their listener, which asks them to
        // finish) before the caller goes on.
        while handing.withLockedValue({ $0 }) > 0 { try? await Task.sleep(nanoseconds: 5_000_000) }
        try? await pool.shutdownGracefully()
        close(descriptor)
        close(wake.read)
        close(wake.write)
    }

    private func acceptLoop() {
        var lastLogged: NIODeadline?
        var suppressed = 0
        while true {
            var fds = [pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&fds, 2, -1)
            if ready < 0 {
                if errno == EINTR { continue }
                logger.critical("poll() failed (\(errno): \(String(cString: strerror(errno)))) on \(label): no longer accepting")
                return
            }
            if fds[1].revents != 0 { return }
            guard fds[0].revents != 0 else { continue }
            // Up to 16 connections a wake-up, as a bound listener reads 16 accepts at a time.
            for _ in 0..<16 {
                let connection = accept(descriptor, nil, nil)
                if connection >= 0 {
                    // accept4's flags are not imported; nothing is spawned from a worker, so close-on-exec set after
                    // accept leaves no window open. An adopted socket is used as it is: it must not block.
                    _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
                    _ = fcntl(connection, F_SETFL, fcntl(connection, F_GETFL) | O_NONBLOCK)
                    hand(connection)
                    continue
                }
                let code = errno
                if code == EAGAIN || code == EWOULDBLOCK { break }  // another worker took it
                if code == EINTR { continue }
                // nginx's line for a failed accept, at most one a second.
                let now = NIODeadline.now()
                if let last = lastLogged, now < last + .seconds(1) {
                    suppressed += 1
                } else {
                    var message = "accept() failed (\(code): \(String(cString: strerror(code)))) while accepting new connection on \(label)"
                    if suppressed > 0 { message += " (\(suppressed) more since the last report)" }
                    logger.log(level: code == ECONNABORTED ? .error : .critical, "\(message)")
                    lastLogged = now
                    suppressed = 0
                }
                if code == EMFILE || code == ENFILE {
                    // Out of descriptors: wait before trying again (nginx's accept_mutex_delay), unless stopped.
                    var wait = [pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
                    if poll(&wait, 1, 500) > 0 { return }
                }
                break
            }
        }
    }

    private func hand(_ connection: CInt) {
        handing.withLockedValue { $0 += 1 }
        // The same child options as a bound listener's.
        ClientBootstrap(group: group)
            .channelOption(.maxMessagesPerRead, value: 16)
            .channelInitializer(initialize)
            .withConnectedSocket(connection).whenComplete { [logger, label, handing] result in
                handing.withLockedValue { $0 -= 1 }
                if case .failure(let error) = result {
                    logger.error("cannot set up a connection accepted on \(label): \(error)")
                }
            }
    }
}

/// Holds back the request to finish (`ChannelShouldQuiesceEvent`) from a connection of a draining worker until
/// the connection's next request begins, so that the request is answered and the connection then closed
/// (`Connection: close`), instead of passing it to a connection that looks idle.
///
/// A worker drains while its clients keep sending: a connection accepted a moment ago whose request is still in
/// the socket, or a keep-alive connection between a response and the client's next request, looks idle, and
/// closing it then loses the request the client has already sent (a reset, or an empty reply). So the event waits
/// for the next bytes and is passed on after the first of them, before the rest: the protocol handler sees a
/// request begun (it answers that one and closes) whatever the request is. A connection that sends nothing within
/// `grace` is passed the event then, and closes as an idle one.
final class QuiesceOnNextRequest: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let grace: TimeAmount
    private var held: Scheduled<Void>?

    init(grace: TimeAmount = .seconds(1)) {
        self.grace = grace
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let held else {
            context.fireChannelRead(data)
            return
        }
        held.cancel()
        self.held = nil
        var bytes = unwrapInboundIn(data)
        guard bytes.readableBytes > 1, let first = bytes.readSlice(length: 1) else {
            context.fireChannelRead(data)
            context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
            return
        }
        context.fireChannelRead(wrapInboundOut(first))
        context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        context.fireChannelRead(wrapInboundOut(bytes))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        guard held == nil else { return }
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        held = context.eventLoop.assumeIsolated().scheduleTask(in: grace) { [weak self] in
            guard let self, self.held != nil else { return }
            self.held = nil
            bound.value.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        held?.cancel()
        held = nil
    }
}

/// The address the socket is bound to (the port a `:0` listener got), as the log shows it.
package func describeBoundSocket(_ fd: CInt) -> String? {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let result = withUnsafeMutablePointer(to: &storage) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    guard result == 0 else { return nil }
    switch CInt(storage.ss_family) {
    case AF_INET:
        let address = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in.self) }
        return describe(SocketAddress(address, host: ""))
    case AF_INET6:
        let address = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in6.self) }
        return describe(SocketAddress(address, host: ""))
    case AF_UNIX:
        let address = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_un.self) }
        return describe(SocketAddress(address))
    default:
        return nil
    }
}
