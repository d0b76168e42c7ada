import KernelCore
import Logging
import NIOCore

/// Serves the one request of a uwsgi connection: decodes the packet from the raw bytes, drives it through the
/// request path (`ExchangeDriver`: route the head, read the body, run the handler), writes the response as uWSGI
/// does (`SERVER_PROTOCOL status reason`, headers, body) and closes.
///
/// The uwsgi rules (one request per connection, ping, the drain after an early 413) live here; the read and send
/// timeouts and the lingering close are the shared `ConnectionTimers`, one scheduled task per connection:
/// connections are short (one request), so per-connection work is what costs. Output is in
/// UWSGIServerResponses.swift.
public final class UWSGIServerHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    enum State {
        /// Nothing decoded yet.
        case waiting
        /// The head is routed; body bytes are collected.
        case readingBody
        /// The handler runs or the response is being written.
        case responding
        /// The response went out before the whole body was read (413): the rest is read and dropped, so that the
        /// peer, still writing, gets the answer instead of a reset.
        case discarding
        case closed
    }

    let runtime: KernelRuntime
    let settings: UWSGIListenerSettings
    var state = State.waiting
    private var decoder: UWSGIRequestDecoder
    /// Received bytes the decoder has not consumed yet (a packet split across reads).
    private var input: ByteBuffer?
    /// The request, from its routed head until it is finished.
    var current: InFlightExchange?
    /// `client_body_timeout` (`.read`: the next bytes must arrive by then), `send_timeout`, and the lingering drain.
    let timers = ConnectionTimers()
    var requestComplete = false
    /// Bytes of a request arrived: a graceful stop lets it finish.
    private var requestStarted = false

    /// How long a connection whose response is sent keeps draining an unread body (nginx `lingering_time`).
    static let lingeringTime = LingeringClose.timeout

    public init(runtime: KernelRuntime, settings: UWSGIListenerSettings) {
        self.runtime = runtime
        self.settings = settings
        decoder = UWSGIRequestDecoder(maxBlockSize: settings.bufferSize)
    }

    var logger: Logger { runtime.logger }

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startReadTimer(context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timers.cancelAll()
    }

    public func channelActive(context: ChannelHandlerContext) {
        startReadTimer(context)
        context.fireChannelActive()
    }

    private func startReadTimer(_ context: ChannelHandlerContext) {
        guard timers.deadline(.read) == nil, case .waiting = state, !requestStarted else { return }
        timers.set(.read, after: settings.clientBodyTimeout, for: self, context: context)
    }

    // MARK: - Input

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .closed = state { return }
        var bytes = unwrapInboundIn(data)
        requestStarted = true
        switch state {
        case .waiting, .readingBody, .discarding:
            // The silence before these bytes ended: the next one is measured from now.
            timers.set(.read, after: settings.clientBodyTimeout, for: self, context: context)
        case .responding, .closed:
            break
        }
        if var buffered = input, buffered.readableBytes > 0 {
            input = nil  // keep the storage uniquely referenced so that appending does not copy it
            buffered.writeBuffer(&bytes)
            bytes = buffered
        }
        do {
            while let part = try decoder.next(from: &bytes) {
                received(part, context: context)
                if case .closed = state { return }
            }
        } catch let error as UWSGIDecodingError {
            input = nil
            decodingFailed(error, context: context)
            return
        } catch {
            preconditionFailure("the uwsgi decoder throws only UWSGIDecodingError")
        }
        input = bytes.readableBytes > 0 ? bytes : nil
    }

    private func received(_ part: UWSGIRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            guard case .waiting = state else { return }
            receivedHead(head, context: context)
        case .ping:
            guard case .waiting = state else { return }
            answerPing(context: context)
        case .body(let part):
            guard case .readingBody = state, let inFlight = current else { return }
            do {
                try inFlight.body.append(part, for: inFlight, allocator: context.channel.allocator)
            } catch {
                // The temporary file could not be made or written (nginx: a [crit] line and 500).
                logger.critical("\(error)")
                inFlight.body = RequestBodyCollector()
                state = .discarding
                writeResponse(.error(500, "internal error"), context: context)
            }
        case .end:
            requestComplete = true
            switch state {
            case .readingBody:
                receivedEnd(context: context)
            case .discarding:
                if timers.pendingWrites == 0, current == nil { closeNow(context) }
            default:
                break
            }
        }
    }

    private func receivedHead(_ head: UWSGIRequestHead, context: ChannelHandlerContext) {
        let channel = context.channel
        var request: KernelRequest
        do {
            request = try UWSGIRequestMapping.request(from: head, listener: settings.listener,
                                                      remoteAddress: channel.remoteAddress, localAddress: channel.localAddress)
        } catch {
            // The client the front proxy names (REMOTE_ADDR, when it is an address), as the other lines of the request
            // name it once it is mapped; else the peer.
            let named = head.variables["REMOTE_ADDR"].flatMap { try? SocketAddress(ipAddress: $0, port: 0) }
            logger.info("client sent invalid uwsgi request: \(error), client: \(describeClient(named ?? channel.remoteAddress))")
            answerWithoutExchange(.error(400, "\(error)"), version: .http1_0, context: context)
            return
        }
        // One request per connection, as nginx's uwsgi_pass opens them.
        request.connection.id = ConnectionInfo.nextID()
        request.connection.requestNumber = 1
        let inFlight = ExchangeDriver.begin(request, serial: 1, runtime: runtime, on: context.eventLoop)
        current = inFlight
        guard inFlight.exchange.admitsBody(ofLength: head.contentLength) else {
            logger.error("client intended to send too large body: \(head.contentLength) bytes, client: \(request.connection.remoteIP), request: \"\(request.requestLine)\"")
            state = .discarding
            // With the location's header filters (add_header always, cors), as nginx's own error pages get them.
            writeResponse(inFlight.exchange.decorateRefusal(.error(413, "request body too large"), for: inFlight.request),
                          context: context)
            return
        }
        inFlight.declaredBodyLength = Int64(head.contentLength)
        state = .readingBody
    }

    private func receivedEnd(context: ChannelHandlerContext) {
        guard let inFlight = current else { return }
        ExchangeDriver.bodyComplete(inFlight)
        state = .responding
        // The request is whole: only `send_timeout` applies from here.
        timers.clear(.read)
        ExchangeDriver.start(inFlight, for: self, context: context)
    }

    /// The request ends without its response written (the peer left, a timeout): it is finished with `status`
    /// unless a response status was already set.
    func finishAbandoned(status: Int) {
        guard let inFlight = current else { return }
        current = nil
        // No response yet: the peer left before it, and work queued for it (a model's queue) is dropped.
        if inFlight.status == 0 { inFlight.exchange.context.cancellation?.cancel("client prematurely closed connection") }
        inFlight.finish(status: inFlight.status == 0 ? status : inFlight.status)
    }

    func closeNow(_ context: ChannelHandlerContext) {
        if case .closed = state { return }
        state = .closed
        input = nil
        timers.cancelAll()
        context.close(promise: nil)
    }

    // MARK: - Timeouts

    public func connectionTimerFired(context: ChannelHandlerContext) {
        if case .closed = state { return }
        switch timers.dueSlot(now: context.eventLoop.now) {
        case .send:
            logger.info("client timed out (110: Connection timed out) while sending response to client, client: \(describeClient(context.channel.remoteAddress)), server: \(settings.listener)")
            current?.responseStream?.cancel()
            current?.responseStream = nil
            finishAbandoned(status: 408)
            closeNow(context)
            return
        case .linger:
            closeNow(context)
            return
        case .read:
            readTimedOut(context)
            if case .closed = state { return }
        case nil:
            break
        }
        timers.arm(for: self, context: context)
    }

    /// No bytes arrived for `client_body_timeout`.
    private func readTimedOut(_ context: ChannelHandlerContext) {
        switch state {
        case .waiting:
            logger.info("client timed out (110: Connection timed out) while reading the uwsgi packet, client: \(describeClient(context.channel.remoteAddress))")
            closeNow(context)
        case .readingBody:
            logger.info("client timed out (110: Connection timed out) while reading client request body, client: \(describeClient(context.channel.remoteAddress))")
            finishAbandoned(status: 408)
            closeNow(context)
        case .discarding:
            if current == nil { closeNow(context) }
        case .responding, .closed:
            break
        }
    }

    public func lingeringStarted(context: ChannelHandlerContext) {
        if case .closed = state { return }
        timers.set(.linger, after: UWSGIServerHandler.lingeringTime, for: self, context: context)
    }

    // MARK: - Events and errors

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            // One request per connection: a connection that has started one closes after it anyway.
            if case .waiting = state, !requestStarted { closeNow(context) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// The packet is no valid request. Each case gets uWSGI's reaction: a 400 for a bad `CONTENT_LENGTH`, a
    /// closed connection for the structural ones; the peer cutting the request short is only logged.
    private func decodingFailed(_ error: UWSGIDecodingError, context: ChannelHandlerContext) {
        let client = describeClient(context.channel.remoteAddress)
        switch error {
        case .invalidContentLength(let value):
            logger.info("client sent invalid CONTENT_LENGTH \"\(value)\" in uwsgi request, client: \(client)")
            if case .waiting = state {
                answerWithoutExchange(.error(400, "invalid CONTENT_LENGTH"), version: .http1_0, context: context)
            } else {
                closeNow(context)
            }
        case .truncatedBody:
            // After an early answer (a 413) the body is only being discarded: a client that stops sending it and
            // closes ends the lingering close, as nginx expects it to, and is not logged as cutting a request short.
            if case .discarding = state {} else { logger.info("\(error), client: \(client)") }
            finishAbandoned(status: 499)
            if case .discarding = state, timers.pendingWrites > 0 { return }
            closeNow(context)
        case .truncatedHead:
            logger.info("\(error), client: \(client)")
            closeNow(context)
        default:
            logger.error("\(error), client: \(client)")
            closeNow(context)
        }
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if case .closed = state { return }
        logger.info("\(describeSocketError(error)) on a uwsgi connection, client: \(describeClient(context.channel.remoteAddress))")
        finishAbandoned(status: 499)
        closeNow(context)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        if case .closed = state {} else {
            // The peer closed: a request it cut short is logged as such.
            var rest = input ?? ByteBuffer()
            input = nil
            do {
                while let part = try decoder.next(from: &rest) { received(part, context: context) }
                try decoder.endOfInput(&rest)
            } catch let error as UWSGIDecodingError {
                decodingFailed(error, context: context)
            } catch {
                preconditionFailure("the uwsgi decoder throws only UWSGIDecodingError")
            }
        }
        current?.responseStream?.cancel()
        current?.responseStream = nil
        finishAbandoned(status: 499)
        timers.cancelAll()
        state = .closed
        context.fireChannelInactive()
    }
}
