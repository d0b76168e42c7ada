import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// One end of a control channel, on a connected socket this process already holds (its end of a socketpair).
public final class ControlConnection: Sendable {
    private let channel: any Channel

    private init(channel: any Channel) {
        self.channel = channel
    }

    /// Takes over `descriptor` (closed with the connection). `received` gets every message, on the channel's event
    /// loop; `closed` is called once when the other end goes away (or the connection is closed here).
    public static func adopt(descriptor: CInt, group: any EventLoopGroup, logger: Logger,
                             received: @escaping @Sendable (ControlMessage) -> Void,
                             closed: @escaping @Sendable () -> Void) async throws -> ControlConnection {
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(ControlMessageDecoder()))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(ControlMessageEncoder()))
                    try channel.pipeline.syncOperations.addHandler(ControlEndpointHandler(received: received, logger: logger))
                }
            }
            .withConnectedSocket(descriptor).get()
        channel.closeFuture.whenComplete { _ in closed() }
        return ControlConnection(channel: channel)
    }

    /// Sends `message`; a connection that is gone drops it (its closing is reported by `closed`).
    public func send(_ message: ControlMessage) {
        channel.writeAndFlush(message, promise: nil)
    }

    public func close() {
        channel.close(promise: nil)
    }
}

/// Hands decoded control messages to the owner of the connection; a frame that cannot be read closes it.
private final class ControlEndpointHandler: ChannelInboundHandler {
    typealias InboundIn = ControlMessage

    private let received: @Sendable (ControlMessage) -> Void
    private let logger: Logger

    init(received: @escaping @Sendable (ControlMessage) -> Void, logger: Logger) {
        self.received = received
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received(unwrapInboundIn(data))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let io = error as? IOError, io.errnoCode == ECONNRESET || io.errnoCode == EPIPE {
            // The other process died: the close that follows reports it.
        } else {
            logger.error("control channel: \(error)")
        }
        context.close(promise: nil)
    }
}

/// Requests on a control channel waiting for their reply, by id.
final class PendingReplies: Sendable {
    private struct State {
        var next: UInt32 = 0
        var waiting: [UInt32: CheckedContinuation<ControlMessage?, Never>] = [:]
    }

    private let state = NIOLockedValueBox(State())

    /// Sends a request with a fresh id (`send` is given it) and returns its reply, or nil when none came within
    /// `timeout` or the channel closed.
    func ask(timeout: TimeAmount, _ send: (UInt32) -> Void) async -> ControlMessage? {
        let id = state.withLockedValue { state -> UInt32 in
            state.next &+= 1
            return state.next
        }
        let timer = NIOLockedValueBox<Task<Void, Never>?>(nil)
        defer { timer.withLockedValue { $0?.cancel() } }
        return await withCheckedContinuation { continuation in
            state.withLockedValue { $0.waiting[id] = continuation }
            // Started once the wait is registered, so that even a zero timeout finds it.
            timer.withLockedValue { task in
                task = Task {
                    try? await Task.sleep(nanoseconds: UInt64(max(timeout.nanoseconds, 0)))
                    self.resolve(id, with: nil)
                }
            }
            send(id)
        }
    }

    /// Delivers the reply to request `id`; one that nobody waits for any more (timed out) is dropped.
    func resolve(_ id: UInt32, with message: ControlMessage?) {
        let continuation = state.withLockedValue { $0.waiting.removeValue(forKey: id) }
        continuation?.resume(returning: message)
    }

    /// Ends every wait with no reply (the channel closed).
    func cancelAll() {
        let all = state.withLockedValue { state -> [CheckedContinuation<ControlMessage?, Never>] in
            defer { state.waiting = [:] }
            return Array(state.waiting.values)
        }
        for continuation in all { continuation.resume(returning: nil) }
    }
}
