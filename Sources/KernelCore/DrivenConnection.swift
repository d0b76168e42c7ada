import NIOCore

/// A listener's connection handler as the exchange driver (`ExchangeDriver`, `ResponsePump`, `ConnectionTimers`,
/// `LingeringClose`) calls it back: always on the connection's event loop, with the handler's context.
///
/// The driver owns the order of an exchange (route, body, filters and handler, response, finish) and the
/// mechanics every listener shares; the handler supplies the wire format and the connection's rules.
public protocol DrivenConnection: AnyObject {
    /// The response of exchange `serial` is there (at once for a ready response). Returns false when the
    /// connection no longer waits for it; a streamed body is then cancelled.
    func exchangeResponded(_ response: KernelResponse, serial: UInt64, context: ChannelHandlerContext) -> Bool

    /// The next part of exchange `serial`'s streamed body: nil at its end, or the producer's failure.
    func responsePartArrived(_ part: Result<ByteBuffer?, any Error>, serial: UInt64, context: ChannelHandlerContext)

    /// The last write of a streamed part of exchange `serial` completed (or failed).
    func responsePartWritten(_ result: Result<Void, any Error>, serial: UInt64, context: ChannelHandlerContext)

    /// A write watched for `send_timeout` completed; the handler calls `ConnectionTimers.writeCompleted`.
    func watchedWriteCompleted(context: ChannelHandlerContext)

    /// The connection's timer task ran; the handler asks `ConnectionTimers.dueSlot` which deadline is due.
    func connectionTimerFired(context: ChannelHandlerContext)

    /// The output side is closed for a lingering close: the handler arms its `.linger` deadline.
    func lingeringStarted(context: ChannelHandlerContext)
}
