import KernelCore
import Logging
import NIOCore

/// The responses of an HTTP connection: the head and body framing, streamed bodies, refusals, the end of a
/// response (keep-alive or close), and the driver's callbacks (timers, watched writes, lingering).
extension HTTPConnectionHandler: DrivenConnection {
    public func exchangeResponded(_ response: KernelResponse, serial: UInt64, context: ChannelHandlerContext) -> Bool {
        guard let inFlight = current, inFlight.serial == serial else { return false }
        return writeResponse(response, inFlight, context)
    }

    /// Writes the head and a buffered body, or the head of a streamed one and starts pulling its parts.
    private func writeResponse(_ response: KernelResponse, _ inFlight: InFlightExchange,
                               _ context: ChannelHandlerContext) -> Bool {
        if let upgrade = response.upgrade, response.status == 101 {
            return upgradeConnection(response, upgrade, inFlight, context)
        }
        var streamed = false
        var length = 0
        switch response.body {
        case .empty: break
        case .buffer(let buffer): length = buffer.readableBytes
        case .stream: streamed = true
        }
        guard let action = machine.responseReady(status: response.status, streamed: streamed, bodyLength: length,
                                                 declaredLength: { response.headers["Content-Length"].flatMap(ContentLength.parse) })
        else { return false }
        inFlight.status = response.status
        inFlight.upstream = response.upstream
        inFlight.handlerReport = response.handlerReport
        switch action {
        case .writeBuffered(let framing, let sendBody, let close):
            let inline = sendBody && length <= 16 * 1024
            var out = context.channel.allocator.buffer(capacity: 192 + response.headers.count * 48 + (inline ? length : 0))
            writeHead(response, framing: framing, close: close, into: &out)
            inFlight.bytesSent = out.readableBytes
            if sendBody, case .buffer(let body) = response.body {
                inFlight.bodyBytesSent = length
                inFlight.bytesSent += length
                if inline {
                    out.writeImmutableBuffer(body)
                    emit(out, context)
                } else {
                    context.write(wrapOutboundOut(out), promise: nil)
                    writeWatched(body, context)
                    flushNowOrAtReadEnd(context)
                }
            } else {
                emit(out, context)
            }
            completeResponse(close: close, context)
        case .writeHeadOnly(let framing, let close):
            if case .stream(let stream) = response.body { stream.cancel() }
            var out = context.channel.allocator.buffer(capacity: 192 + response.headers.count * 48)
            writeHead(response, framing: framing, close: close, into: &out)
            inFlight.bytesSent = out.readableBytes
            emit(out, context)
            completeResponse(close: close, context)
        case .writeStreamHead(let framing, let close):
            guard case .stream(let stream) = response.body else { preconditionFailure("a stream head for a stream body") }
            var out = context.channel.allocator.buffer(capacity: 192 + response.headers.count * 48)
            writeHead(response, framing: framing, close: close, into: &out)
            inFlight.bytesSent = out.readableBytes
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
            inFlight.responseStream = stream
            ResponsePump.pull(stream, serial: inFlight.serial, for: self, context: context)
        }
        return true
    }

    private func writeHead(_ response: KernelResponse, framing: HTTPBodyFraming, close: Bool, into out: inout ByteBuffer) {
        HTTPResponseHeadWriter.write(status: response.status, reason: response.reasonPhrase, headers: response.headers,
                                     framing: framing, close: close, serverLine: settings.serverLine,
                                     date: dateCache.current(), into: &out)
    }

    public func responsePartArrived(_ part: Result<ByteBuffer?, any Error>, serial: UInt64, context: ChannelHandlerContext) {
        guard let inFlight = current, inFlight.serial == serial else { return }
        switch part {
        case .success(.some(let part)):
            writePart(part, inFlight, context)
        case .success(.none):
            guard let end = machine.streamEnded(sent: inFlight.bodyBytesSent) else { return }
            if end.writeLastChunk {
                var last = context.channel.allocator.buffer(capacity: 5)
                last.writeStaticString("0\r\n\r\n")
                inFlight.bytesSent += last.readableBytes
                emit(last, context)
            }
            if let declared = end.shortOfDeclared {
                runtime.logger.error("response body shorter (\(inFlight.bodyBytesSent) bytes) than its Content-Length \(declared) while sending response to client, client: \(connection.remoteIP), server: \(settings.listener), request: \"\(inFlight.request.requestLine)\"")
            }
            inFlight.responseStream = nil
            completeResponse(close: end.close, context)
        case .failure(let error):
            guard machine.phase == .writingStream else { return }
            // The producer broke off: the body cannot be completed, so the connection closes (as nginx does). A
            // producer that logged its failure (an upstream's) has said it once.
            if !(error is LoggedBodyFailure) {
                runtime.logger.error("response body failed: \(error) while sending response to client, client: \(connection.remoteIP), server: \(settings.listener), request: \"\(inFlight.request.requestLine)\"")
            }
            abortResponse(context)
        }
    }

    private func writePart(_ part: ByteBuffer, _ inFlight: InFlightExchange, _ context: ChannelHandlerContext) {
        let length = part.readableBytes
        switch machine.streamPartArrived(length: length, sentSoFar: inFlight.bodyBytesSent) {
        case .ignore:
            return
        case .pullNext:
            if let stream = inFlight.responseStream { ResponsePump.pull(stream, serial: inFlight.serial, for: self, context: context) }
        case .abortLongerThanDeclared(let declared):
            runtime.logger.error("response body longer than its Content-Length \(declared) while sending response to client, client: \(connection.remoteIP), server: \(settings.listener), request: \"\(inFlight.request.requestLine)\"")
            inFlight.responseStream?.cancel()
            abortResponse(context)
        case .write(let chunked):
            inFlight.bodyBytesSent += length
            inFlight.bytesSent += length
            let promise = ResponsePump.partPromise(serial: inFlight.serial, for: self, context: context)
            if chunked {
                var framed = context.channel.allocator.buffer(capacity: length + 20)
                HTTPResponseHeadWriter.writeChunkHeader(length, into: &framed)
                inFlight.bytesSent += framed.readableBytes + 2
                if length <= 16 * 1024 {
                    framed.writeImmutableBuffer(part)
                    framed.writeStaticString("\r\n")
                    writeWatched(framed, context, promise: promise)
                } else {
                    context.write(wrapOutboundOut(framed), promise: nil)
                    writeWatched(part, context)
                    var end = context.channel.allocator.buffer(capacity: 2)
                    end.writeStaticString("\r\n")
                    writeWatched(end, context, promise: promise)
                }
            } else {
                writeWatched(part, context, promise: promise)
            }
            context.flush()
        }
    }

    public func responsePartWritten(_ result: Result<Void, any Error>, serial: UInt64, context: ChannelHandlerContext) {
        // A failed write means the channel is closing; channelInactive finishes the exchange.
        guard let inFlight = current, inFlight.serial == serial,
              machine.streamPartWritten(succeeded: (try? result.get()) != nil),
              let stream = inFlight.responseStream else { return }
        ResponsePump.pull(stream, serial: serial, for: self, context: context)
    }

    /// Finishes the exchange and moves on to the next request, or closes.
    private func completeResponse(close: Bool, _ context: ChannelHandlerContext) {
        let next = machine.responseSent(close: close, inputPending: inputPending, writable: context.channel.isWritable,
                                        writesPending: timers.pendingWrites > 0)
        if let inFlight = current {
            current = nil
            bodyReader = nil
            if case .close(abandonBody: true, _) = next {
                // Answered before its unbuffered body was all read: the rest cannot be told from a next request,
                // so the connection closes (draining what still comes).
                inFlight.abandonBodyStream("the response ended before the request body was read")
            }
            inFlight.finish()
        }
        switch next {
        case .close(_, let linger):
            closeAfterWrites(linger: linger, context)
        case .keepOpen(let waitForWritability, let dropInput, let armKeepalive, let armDiscard):
            if waitForWritability { timers.startSendTimeout(settings.sendTimeout, for: self, context: context) }
            if dropInput { input = nil }
            if armKeepalive { arm(.keepalive, context) }
            if armDiscard {
                arm(.discard, context)
                discardDeadline = context.eventLoop.now + settings.discardTime
            }
            resumeReads(context)
            process(context)
        }
    }

    /// Ends a response that cannot be completed: the exchange is finished and the connection closed at once.
    func abortResponse(_ context: ChannelHandlerContext, status: Int? = nil) {
        machine.abort()
        if let inFlight = current {
            current = nil
            inFlight.abandonBodyStream("the response ended before the request body was read")
            inFlight.finish(status: status)
        }
        bodyReader = nil
        input = nil
        context.close(promise: nil)
    }

    // MARK: - Writing

    /// Writes `buffer`, flushing now or, inside a read cycle, once at its end.
    private func emit(_ buffer: ByteBuffer, _ context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(buffer), promise: nil)
        flushNowOrAtReadEnd(context)
    }

    private func flushNowOrAtReadEnd(_ context: ChannelHandlerContext) {
        if inReadCycle {
            flushPending = true
        } else {
            context.flush()
        }
    }

    /// A write watched for `send_timeout` (see `ConnectionTimers.writeWatched`). Small responses are not written
    /// this way: they cost no promise.
    private func writeWatched(_ buffer: ByteBuffer, _ context: ChannelHandlerContext, promise: EventLoopPromise<Void>? = nil) {
        timers.writeWatched(buffer, promise: promise, sendTimeout: settings.sendTimeout, for: self, context: context)
    }

    public func watchedWriteCompleted(context: ChannelHandlerContext) {
        let completion = timers.writeCompleted(channelActive: context.channel.isActive, now: context.eventLoop.now,
                                               sendTimeout: settings.sendTimeout,
                                               keepRunning: machine.waitingForWritability)
        if completion == .drained, let timer = machine.writesDrained(inputPending: inputPending) { arm(timer, context) }
    }

    // MARK: - Refusals and closing

    /// Answers a request that cannot be served with `error.status` and `Connection: close`, logs one line, and
    /// closes; input behind it is drained, never processed.
    func reject(_ error: HTTPRequestError, _ context: ChannelHandlerContext, requestLine: String? = nil,
                refused refusedLine: RefusedRequestLine? = nil, phase: String? = nil, showPhase: Bool = true) {
        var line = error.logMessage
        if showPhase { line += " while \(phase ?? machine.phaseDescription(requestBytesSeen: requestBytesSeen))" }
        line += ", client: \(connection.remoteIP), server: \(settings.listener)"
        if let shown = requestLine ?? current?.request.requestLine { line += ", request: \"\(shown)\"" }
        // nginx's levels: a body over `client_max_body_size` is an [error] (seen at the default log level, as a
        // limit the operator set was hit); a malformed or slow request is the client's and goes at [info].
        if error.status == 413 { runtime.logger.error("\(line)") } else { runtime.logger.info("\(line)") }
        var response = KernelResponse.error(error.status, error.clientMessage)
        // A routed request's refusal (413) gets the location's header filters, as nginx's own error pages do.
        if let current { response = current.exchange.decorateRefusal(response, for: current.request) }
        guard case .buffer(let body) = response.body else { preconditionFailure("error responses have a buffer body") }
        var out = context.channel.allocator.buffer(capacity: 256)
        writeHead(response, framing: .length(body.readableBytes), close: true, into: &out)
        // A head refused before it became a request still names its method and target in its first line: that
        // decides whether a body goes out (HEAD) and what the access log of the server it was for records.
        let isHead = current.map { $0.request.method == "HEAD" } ?? refusedLine?.isHead ?? RefusedRequestLine.startsWithHead(input)
        if !isHead { out.writeImmutableBuffer(body) }
        let bodyBytesSent = isHead ? 0 : body.readableBytes
        let bytesSent = out.readableBytes
        context.write(wrapOutboundOut(out), promise: nil)
        if let inFlight = current {
            current = nil
            inFlight.status = error.status
            inFlight.bodyBytesSent = bodyBytesSent
            inFlight.bytesSent = bytesSent
            inFlight.finish()
        } else if let refusedLine {
            // A request all the same: it is counted, routed for its access log, and finished.
            var connection = self.connection
            connection.requestNumber = machine.requestsStarted + (requestLine == nil ? 1 : 0)
            if let request = refusedLine.request(connection: connection) {
                runtime.begin(request, on: context.eventLoop).finish(request, status: error.status, bodyBytesSent: bodyBytesSent,
                                                                     bytesSent: bytesSent)
            }
        }
        bodyReader = nil
        execute(machine.refuse(), context)
    }

    func execute(_ close: HTTPConnectionStateMachine.Close, _ context: ChannelHandlerContext) {
        switch close {
        case .now:
            context.close(promise: nil)
        case .afterWrites(let linger):
            closeAfterWrites(linger: linger, context)
        }
    }

    /// Closes once everything written so far is sent; with `linger`, nginx's lingering close
    /// (`ConnectionTimers.closeAfterWrites`).
    private func closeAfterWrites(linger: Bool, _ context: ChannelHandlerContext) {
        input = nil
        flushPending = false
        timers.closeAfterWrites(linger: linger, sendTimeout: settings.sendTimeout, for: self, context: context)
        resumeReads(context)
    }

    public func lingeringStarted(context: ChannelHandlerContext) {
        arm(machine.lingeringStarted(), context)
    }

    // MARK: - Timers

    public func connectionTimerFired(context: ChannelHandlerContext) {
        switch timers.dueSlot(now: context.eventLoop.now) {
        case .send:
            // nginx logs the errno of its timer (ETIMEDOUT) at info: the client's doing.
            runtime.logger.info("client timed out (110: Connection timed out) while sending response to client, client: \(connection.remoteIP), server: \(settings.listener)")
            current?.responseStream?.cancel()
            abortResponse(context)
            return
        case .read:
            readTimerFired(context)
        case .linger, nil:
            break
        }
        timers.arm(for: self, context: context)
    }

    private func readTimerFired(_ context: ChannelHandlerContext) {
        switch machine.timerFired(requestBytesSeen: requestBytesSeen, inputPending: inputPending) {
        case .none:
            break
        case .refuseTimedOut:
            reject(.timedOut, context)
        case .closeWaiting:
            // Nothing of a request arrived: close quietly, as nginx does.
            runtime.logger.info("client timed out while waiting for request, client: \(connection.remoteIP), server: \(settings.listener)")
            context.close(promise: nil)
        case .abortStalledBody:
            // An unbuffered body stalled while its handler runs: the handler is told, the connection closes.
            if let inFlight = current {
                runtime.logger.info("client timed out (110: Connection timed out) while reading client request body, client: \(connection.remoteIP), server: \(settings.listener), request: \"\(inFlight.request.requestLine)\"")
                inFlight.abandonBodyStream("client timed out (110: Connection timed out)")
            }
            abortResponse(context, status: 408)
        case .close:
            context.close(promise: nil)
        }
    }
}
