import KernelCore
import Logging
import NIOCore

/// An upstream connection that answered `101 Switching Protocols`, waiting for the client's side: the
/// `ConnectionUpgrade` a proxied response carries. `start` joins the two connections into an `UpstreamTunnel`;
/// a response that is never written as a `101` (dropped, cancelled) closes the upstream connection and finishes
/// the lease when it goes.
final class UpstreamUpgrade: ConnectionUpgrade, @unchecked Sendable {
    private let upstream: any Channel
    private let handler: UpstreamConnectionHandler
    private let lease: PeerLease
    private let readTimeout: TimeAmount
    private let logger: Logger
    private let suffix: String
    private let started: UInt64
    private var used = false

    init(upstream: any Channel, handler: UpstreamConnectionHandler, lease: PeerLease, readTimeout: TimeAmount,
         logger: Logger, suffix: String, started: UInt64) {
        self.upstream = upstream
        self.handler = handler
        self.lease = lease
        self.readTimeout = readTimeout
        self.logger = logger
        self.suffix = suffix
        self.started = started
    }

    deinit { release() }

    func start(client: any Channel, buffered: ByteBuffer?) -> EventLoopFuture<ConnectionUpgradeEnd> {
        let eventLoop = client.eventLoop
        eventLoop.preconditionInEventLoop()
        guard !used else { return eventLoop.makeSucceededFuture(ConnectionUpgradeEnd(bytesToClient: 0, bytesFromClient: 0)) }
        used = true
        let lease = self.lease
        let started = self.started
        guard upstream.eventLoop === eventLoop else {
            // The engine connects on the request's event loop, which is its client connection's: never here.
            logger.error("upgraded upstream connection on another event loop than its client\(suffix)")
            upstream.close(promise: nil)
            client.close(promise: nil)
            lease.finish(PeerLeaseOutcome(status: 101, bytesReceived: 0, durationNanoseconds: KernelClock.monotonicNanoseconds() &- started))
            return eventLoop.makeSucceededFuture(ConnectionUpgradeEnd(bytesToClient: 0, bytesFromClient: 0))
        }
        let tunnel = UpstreamTunnel(idleTimeout: readTimeout, eventLoop: eventLoop, logger: logger, suffix: suffix)
        let held = handler.takeHeldParts()
        // Half-closure on: one side ending its input is forwarded as the end of the other's output, and the tunnel
        // ends when both have. A channel that is already closing refuses the option: the tunnel sees it inactive.
        try? client.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
        try? upstream.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
        // The answer's reader leaves (a handler of our own leaves at once); the tunnel's handler takes its place.
        upstream.pipeline.syncOperations.removeHandler(handler, promise: nil)
        tunnel.join(client: client, upstream: upstream, clientBytes: buffered, upstreamBytes: held)
        return tunnel.done.futureResult.map { end in
            lease.finish(PeerLeaseOutcome(status: 101, bytesReceived: Int64(end.bytesToClient),
                                          durationNanoseconds: KernelClock.monotonicNanoseconds() &- started))
            return end
        }
    }

    func cancel() {
        if upstream.eventLoop.inEventLoop { release() } else { upstream.eventLoop.execute { self.release() } }
    }

    private func release() {
        guard !used else { return }
        used = true
        upstream.close(promise: nil)
        lease.finish(PeerLeaseOutcome(status: 101, bytesReceived: 0, durationNanoseconds: KernelClock.monotonicNanoseconds() &- started,
                                      clientClosed: true))
    }
}

/// Two connections joined into a byte tunnel (an upgraded client connection and its upstream): what one side
/// reads is written to the other. A side is read only while the other takes writes (backpressure through NIO's
/// writability). A side ending its input ends the other's output once what it sent was written (half-close);
/// when both inputs have ended, or either connection closes or fails, both close. The idle timeout (the
/// location's read timeout, as nginx's `proxy_read_timeout` limits a WebSocket) closes both when no byte moved
/// either way for that long. Lives on the event loop both connections share.
final class UpstreamTunnel: @unchecked Sendable {
    enum Side {
        case client
        case upstream
        var other: Side { self == .client ? .upstream : .client }
    }

    private let idleTimeout: TimeAmount
    private let eventLoop: any EventLoop
    private let logger: Logger
    private let suffix: String
    let done: EventLoopPromise<ConnectionUpgradeEnd>
    private var client: ChannelHandlerContext?
    private var upstream: ChannelHandlerContext?
    private var clientChannel: (any Channel)?
    private var upstreamChannel: (any Channel)?
    private var clientInputEnded = false
    private var upstreamInputEnded = false
    private var clientReadHeld = false
    private var upstreamReadHeld = false
    private var closing = false
    private var idleTimer: Scheduled<Void>?
    private var bytesToClient = 0
    private var bytesFromClient = 0

    init(idleTimeout: TimeAmount, eventLoop: any EventLoop, logger: Logger, suffix: String) {
        self.idleTimeout = idleTimeout
        self.eventLoop = eventLoop
        self.logger = logger
        self.suffix = suffix
        done = eventLoop.makePromise(of: ConnectionUpgradeEnd.self)
    }

    /// Adds the tunnel's handlers at the end of both pipelines and writes what each side sent before.
    func join(client clientChannel: any Channel, upstream upstreamChannel: any Channel, clientBytes: ByteBuffer?,
              upstreamBytes: [ByteBuffer]) {
        self.clientChannel = clientChannel
        self.upstreamChannel = upstreamChannel
        clientChannel.closeFuture.and(upstreamChannel.closeFuture).assumeIsolated().whenComplete { [self] _ in
            idleTimer?.cancel()
            done.succeed(ConnectionUpgradeEnd(bytesToClient: bytesToClient, bytesFromClient: bytesFromClient))
        }
        do {
            try clientChannel.pipeline.syncOperations.addHandler(TunnelClientHandler(tunnel: self))
            try upstreamChannel.pipeline.syncOperations.addHandler(TunnelUpstreamHandler(tunnel: self))
        } catch {
            closeBoth()
            return
        }
        guard clientChannel.isActive, upstreamChannel.isActive else {
            // Whatever the upstream sent before it closed still reaches the client.
            for part in upstreamBytes { received(part, from: .upstream) }
            flushThenClose()
            return
        }
        if let clientBytes, clientBytes.readableBytes > 0 { received(clientBytes, from: .client) }
        for part in upstreamBytes { received(part, from: .upstream) }
        client?.flush()
        upstream?.flush()
        armIdleTimer()
        requestRead(.client)
        requestRead(.upstream)
    }

    private func context(_ side: Side) -> ChannelHandlerContext? { side == .client ? client : upstream }

    func attached(_ side: Side, _ context: ChannelHandlerContext) {
        if side == .client { client = context } else { upstream = context }
    }

    func detached(_ side: Side) {
        if side == .client { client = nil } else { upstream = nil }
    }

    // MARK: - Bytes

    func received(_ bytes: ByteBuffer, from side: Side) {
        guard bytes.readableBytes > 0 else { return }
        armIdleTimer()
        if side == .client { bytesFromClient += bytes.readableBytes } else { bytesToClient += bytes.readableBytes }
        context(side.other)?.write(NIOAny(bytes), promise: nil)
    }

    func readComplete(_ side: Side) {
        context(side.other)?.flush()
        requestRead(side)
    }

    /// Reads `side` only while the other side takes writes; otherwise the read waits for its writability.
    func requestRead(_ side: Side) {
        guard let context = context(side), !closing else { return }
        let ended = side == .client ? clientInputEnded : upstreamInputEnded
        guard !ended else { return }
        if self.context(side.other)?.channel.isWritable ?? false {
            setReadHeld(side, false)
            context.read()
        } else {
            setReadHeld(side, true)
        }
    }

    private func setReadHeld(_ side: Side, _ held: Bool) {
        if side == .client { clientReadHeld = held } else { upstreamReadHeld = held }
    }

    /// `side` takes writes again (or stopped): the other side's held read goes on.
    func writabilityChanged(_ side: Side) {
        guard context(side)?.channel.isWritable ?? false else { return }
        let held = side == .client ? upstreamReadHeld : clientReadHeld
        if held { requestRead(side.other) }
    }

    // MARK: - Ends

    /// `side` will send no more: the other side's output ends once what `side` sent was written.
    func inputEnded(_ side: Side) {
        if side == .client { clientInputEnded = true } else { upstreamInputEnded = true }
        if clientInputEnded && upstreamInputEnded {
            flushThenClose()
            return
        }
        guard let other = context(side.other) else { return }
        let written = eventLoop.makePromise(of: Void.self)
        other.writeAndFlush(NIOAny(ByteBuffer()), promise: written)
        written.futureResult.assumeIsolated().whenComplete { [weak other] _ in other?.close(mode: .output, promise: nil) }
    }

    /// A side closed or failed: both close, what was already read still written to the other.
    func sideClosed(_ side: Side) {
        flushThenClose()
    }

    private func flushThenClose() {
        guard !closing else { return }
        closing = true
        idleTimer?.cancel()
        for channel in [clientChannel, upstreamChannel].compactMap({ $0 }) {
            guard channel.isActive else { continue }
            channel.writeAndFlush(ByteBuffer()).assumeIsolated().whenComplete { _ in channel.close(promise: nil) }
        }
        // A side that never takes its last write (a client that stopped reading) is closed by the idle timer.
        idleTimer = eventLoop.assumeIsolated().scheduleTask(in: idleTimeout) { [self] in closeBoth() }
    }

    /// A socket error on `side` (a reset): logged in nginx's words (the client's at info, as its own doing), and
    /// both close.
    func failed(_ side: Side, _ error: any Error) {
        if !closing {
            let line = "recv() failed (\(UpstreamFailure.describe(error))) while proxying upgraded connection\(suffix)"
            if side == .upstream { logger.error("\(line)") } else { logger.info("\(line)") }
        }
        closeBoth()
    }

    func closeBoth() {
        closing = true
        idleTimer?.cancel()
        clientChannel?.close(promise: nil)
        upstreamChannel?.close(promise: nil)
    }

    private func armIdleTimer() {
        idleTimer?.cancel()
        idleTimer = eventLoop.assumeIsolated().scheduleTask(in: idleTimeout) { [self] in
            logger.error("upstream timed out (110: Connection timed out) while proxying upgraded connection\(suffix)")
            closeBoth()
        }
    }
}

/// The tunnel's end of the client connection's pipeline.
final class TunnelClientHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    private let tunnel: UpstreamTunnel

    init(tunnel: UpstreamTunnel) { self.tunnel = tunnel }

    func handlerAdded(context: ChannelHandlerContext) { tunnel.attached(.client, context) }
    func handlerRemoved(context: ChannelHandlerContext) { tunnel.detached(.client) }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { tunnel.received(unwrapInboundIn(data), from: .client) }
    func channelReadComplete(context: ChannelHandlerContext) { tunnel.readComplete(.client) }
    func read(context: ChannelHandlerContext) { tunnel.requestRead(.client) }
    func channelWritabilityChanged(context: ChannelHandlerContext) { tunnel.writabilityChanged(.client) }
    func channelInactive(context: ChannelHandlerContext) { tunnel.sideClosed(.client) }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { tunnel.failed(.client, error) }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { tunnel.inputEnded(.client) }
        // A graceful stop (or the listener going away in a reload) closes the tunnel: nothing in it can be
        // finished the way an HTTP request is.
        if event is ChannelShouldQuiesceEvent { tunnel.closeBoth() }
    }
}

/// The tunnel's end of the upstream connection's pipeline, behind the response decoder, which passes the bytes
/// after a `101` head on as body parts.
final class TunnelUpstreamHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = UpstreamResponsePart
    typealias OutboundIn = ByteBuffer
    private let tunnel: UpstreamTunnel

    init(tunnel: UpstreamTunnel) { self.tunnel = tunnel }

    func handlerAdded(context: ChannelHandlerContext) { tunnel.attached(.upstream, context) }
    func handlerRemoved(context: ChannelHandlerContext) { tunnel.detached(.upstream) }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .body(let bytes) = unwrapInboundIn(data) { tunnel.received(bytes, from: .upstream) }
    }

    func channelReadComplete(context: ChannelHandlerContext) { tunnel.readComplete(.upstream) }
    func read(context: ChannelHandlerContext) { tunnel.requestRead(.upstream) }
    func channelWritabilityChanged(context: ChannelHandlerContext) { tunnel.writabilityChanged(.upstream) }
    func channelInactive(context: ChannelHandlerContext) { tunnel.sideClosed(.upstream) }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { tunnel.failed(.upstream, error) }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { tunnel.inputEnded(.upstream) }
    }
}
