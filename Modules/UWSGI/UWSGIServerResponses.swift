import KernelCore
import NIOCore

/// The output of a uwsgi connection: the response (head, buffered or streamed body), ping answers, and the
/// driver's callbacks.
extension UWSGIServerHandler: DrivenConnection {
    /// Bodies up to this size go out in the same buffer as the head: one write, one flush.
    static let inlineBodyLimit = 64 * 1024

    public func exchangeResponded(_ response: KernelResponse, serial: UInt64, context: ChannelHandlerContext) -> Bool {
        guard case .responding = state, let inFlight = current, inFlight.serial == serial else { return false }
        writeResponse(response, context: context)
        return true
    }

    /// A 400 for a head that is no request: nothing is routed, so there is no exchange to log it.
    func answerWithoutExchange(_ response: KernelResponse, version: ProtocolVersion, context: ChannelHandlerContext) {
        state = .responding
        timers.clear(.read)
        var buffer = context.channel.allocator.buffer(capacity: 256)
        UWSGIResponseWriter.writeHead(response, version: version, method: "GET", to: &buffer)
        if case .buffer(let part) = response.body { buffer.writeImmutableBuffer(part) }
        send(buffer, context: context, promise: closingPromise(context))
    }

    /// uWSGI's answer to a ping, then the close; a ping is no request, so it is neither routed nor access-logged.
    func answerPing(context: ChannelHandlerContext) {
        state = .responding
        timers.clear(.read)
        var buffer = context.channel.allocator.buffer(capacity: UWSGIPacketHeader.size)
        UWSGIPacketHeader.pingAnswer.write(to: &buffer)
        logger.debug("uwsgi ping, client: \(describeClient(context.channel.remoteAddress))")
        send(buffer, context: context, promise: closingPromise(context))
    }

    private func closingPromise(_ context: ChannelHandlerContext) -> EventLoopPromise<Void> {
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.assumeIsolated().whenComplete { _ in self.closeNow(context) }
        return promise
    }

    /// A promise for the response's last write: the exchange finishes when it completes.
    private func finishingPromise(_ context: ChannelHandlerContext) -> EventLoopPromise<Void> {
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.assumeIsolated().whenComplete { result in self.responseWritten(result, context: context) }
        return promise
    }

    func writeResponse(_ response: KernelResponse, context: ChannelHandlerContext) {
        guard let inFlight = current else { return }
        let request = inFlight.request
        inFlight.status = response.status
        inFlight.upstream = response.upstream
        inFlight.handlerReport = response.handlerReport
        let sendsBody = ResponseBodyRule.sendsBody(status: response.status, isHead: request.method == "HEAD")
        var inlineBody: ByteBuffer?
        if sendsBody, case .buffer(let part) = response.body, part.readableBytes <= UWSGIServerHandler.inlineBodyLimit {
            inlineBody = part
        }
        var head = context.channel.allocator.buffer(capacity: 256 + (inlineBody?.readableBytes ?? 0))
        UWSGIResponseWriter.writeHead(response, version: request.version, method: request.method, to: &head)
        inFlight.bytesSent = head.readableBytes
        switch response.body {
        case .buffer(let part) where sendsBody:
            inFlight.bodyBytesSent = part.readableBytes
            inFlight.bytesSent += part.readableBytes
            if let inlineBody {
                head.writeImmutableBuffer(inlineBody)
            } else {
                context.write(wrapOutboundOut(head), promise: nil)
                head = part
            }
            send(head, context: context, promise: finishingPromise(context))
        case .stream(let stream) where sendsBody:
            inFlight.responseStream = stream
            // The parts are pulled once the head has left (`responsePartWritten`).
            send(head, context: context, promise: ResponsePump.partPromise(serial: inFlight.serial, for: self, context: context))
        case .stream(let stream):
            stream.cancel()
            send(head, context: context, promise: finishingPromise(context))
        case .empty, .buffer:
            send(head, context: context, promise: finishingPromise(context))
        }
    }

    public func responsePartArrived(_ part: Result<ByteBuffer?, any Error>, serial: UInt64, context: ChannelHandlerContext) {
        guard let inFlight = current, inFlight.serial == serial, inFlight.responseStream != nil else { return }
        switch part {
        case .success(.some(let part)):
            inFlight.bodyBytesSent += part.readableBytes
            inFlight.bytesSent += part.readableBytes
            send(part, context: context, promise: ResponsePump.partPromise(serial: serial, for: self, context: context))
        case .success(.none):
            inFlight.responseStream = nil
            responseWritten(.success(()), context: context)
        case .failure(let error):
            // The upstream broke off mid-body: the client sees a short response, as with nginx.
            inFlight.responseStream = nil
            logger.info("response body ended early: \(error), client: \(inFlight.request.connection.remoteIP)")
            responseWritten(.failure(error), context: context)
        }
    }

    public func responsePartWritten(_ result: Result<Void, any Error>, serial: UInt64, context: ChannelHandlerContext) {
        guard let inFlight = current, inFlight.serial == serial, let stream = inFlight.responseStream else { return }
        switch result {
        case .success: ResponsePump.pull(stream, serial: serial, for: self, context: context)
        case .failure: responseWritten(result, context: context)
        }
    }

    private func responseWritten(_ result: Result<Void, any Error>, context: ChannelHandlerContext) {
        current?.finish()
        current = nil
        if case .discarding = state, !requestComplete, case .success = result {
            // Stop writing but keep reading what the peer still sends, for a bounded time.
            LingeringClose.begin(for: self, context: context)
            return
        }
        closeNow(context)
    }

    /// Writes and flushes `buffer`, watched for `send_timeout` (`ConnectionTimers.writeWatched`); `promise`
    /// completes with its last slice.
    private func send(_ buffer: ByteBuffer, context: ChannelHandlerContext, promise: EventLoopPromise<Void>) {
        timers.writeWatched(buffer, promise: promise, sendTimeout: settings.sendTimeout, for: self, context: context)
        context.flush()
    }

    public func watchedWriteCompleted(context: ChannelHandlerContext) {
        let open: Bool
        if case .closed = state { open = false } else { open = true }
        _ = timers.writeCompleted(channelActive: open, now: context.eventLoop.now, sendTimeout: settings.sendTimeout,
                                  keepRunning: false)
    }
}
