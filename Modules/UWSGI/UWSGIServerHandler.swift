import KernelCore
import Logging
import NIOCore

/// Limits of one uwsgi listener (the worker side).
public struct UWSGIListenerSettings: Sendable {
    /// The configured address, as written (`127.0.0.1:6666`, `unix:/run/kernel.sock`).
    public var listener: String
    /// The largest vars block accepted (uWSGI `buffer-size`).
    public var bufferSize: Int
    /// Longest pause between two reads while the request (vars and body) is read.
    public var clientBodyTimeout: TimeAmount
    /// Longest pause between two successful writes of the response.
    public var sendTimeout: TimeAmount

    public init(listener: String, bufferSize: Int = 4096, clientBodyTimeout: TimeAmount = .seconds(60),
                sendTimeout: TimeAmount = .seconds(60)) {
        self.listener = listener
        self.bufferSize = bufferSize
        self.clientBodyTimeout = clientBodyTimeout
        self.sendTimeout = sendTimeout
    }

    /// Adds the uwsgi request pipeline to an accepted connection.
    public func configure(_ channel: any Channel, runtime: KernelRuntime) -> EventLoopFuture<Void> {
        let settings = self
        if channel.eventLoop.inEventLoop {
            return channel.eventLoop.makeCompletedFuture { try settings.syncConfigure(channel, runtime: runtime) }
        }
        return channel.eventLoop.submit { try settings.syncConfigure(channel, runtime: runtime) }
    }

    func syncConfigure(_ channel: any Channel, runtime: KernelRuntime) throws {
        // One handler per connection: nginx opens a connection per request, so each handler added is paid per
        // request.
        try channel.pipeline.syncOperations.addHandler(UWSGIServerHandler(runtime: runtime, settings: self))
    }
}

/// Serves the one request of a uwsgi connection: decodes the packet from the raw bytes, routes its head, reads its
/// body, writes the response as uWSGI does (`SERVER_PROTOCOL status reason`, headers, body) and closes.
///
/// Decoding, the read and send timeouts and the lingering drain after an early 413 all live here, with one
/// scheduled task per connection: connections are short (one request), so per-connection work is what costs.
public final class UWSGIServerHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private enum State {
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

    private let runtime: KernelRuntime
    private let settings: UWSGIListenerSettings
    private var state = State.waiting
    private var decoder: UWSGIRequestDecoder
    /// Received bytes the decoder has not consumed yet (a packet split across reads).
    private var input: ByteBuffer?
    private var exchange: RequestExchange?
    private var request: KernelRequest?
    /// The body when it came in one part that fits `client_body_buffer_size` (kept as received, no copy).
    private var body: ByteBuffer?
    /// Where the body goes once it does not: memory up to `client_body_buffer_size`, then a temporary file.
    private var bodySink: RequestBodySink?
    /// The packet's `CONTENT_LENGTH`: sizes the body sink's memory.
    private var declaredBodyLength: Int64 = 0
    private var bodyBytesSent = 0
    private var status = 0
    private var stream: ResponseBodyStream?
    private var pendingWrites = 0
    private var requestComplete = false
    /// Bytes of a request arrived: a graceful stop lets it finish.
    private var requestStarted = false

    // The three deadlines share one scheduled task. Moving a deadline later (every read moves the read deadline)
    // only stores it; the task, when it fires early, re-arms itself for the nearest deadline.
    /// `client_body_timeout`: the next bytes must arrive by then. Fires once per silence.
    private var readDeadline: NIODeadline?
    /// `send_timeout`: the pending write must complete by then.
    private var sendDeadline: NIODeadline?
    /// `lingeringTime`: the end of draining an unread body after an early response.
    private var lingerDeadline: NIODeadline?
    private var timer: Scheduled<Void>?
    private var timerAt = NIODeadline.distantFuture

    /// How long a connection whose response is sent keeps draining an unread body (nginx `lingering_time`).
    static let lingeringTime = TimeAmount.seconds(5)

    public init(runtime: KernelRuntime, settings: UWSGIListenerSettings) {
        self.runtime = runtime
        self.settings = settings
        decoder = UWSGIRequestDecoder(maxBlockSize: settings.bufferSize)
    }

    private var logger: Logger { runtime.logger }

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startReadTimer(context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        cancelTimer()
    }

    public func channelActive(context: ChannelHandlerContext) {
        startReadTimer(context)
        context.fireChannelActive()
    }

    private func startReadTimer(_ context: ChannelHandlerContext) {
        guard readDeadline == nil, case .waiting = state, !requestStarted else { return }
        readDeadline = context.eventLoop.now + settings.clientBodyTimeout
        updateTimer(context)
    }

    // MARK: - Input

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .closed = state { return }
        var bytes = unwrapInboundIn(data)
        requestStarted = true
        switch state {
        case .waiting, .readingBody, .discarding:
            // The silence before these bytes ended: the next one is measured from now.
            readDeadline = context.eventLoop.now + settings.clientBodyTimeout
            updateTimer(context)
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
            if case .readingBody = state {
                if bodySink == nil, body == nil, let exchange, part.readableBytes <= exchange.decision.bodyBuffering.bufferSize {
                    // The common case, a small body in one read, keeps the received bytes without a copy.
                    body = part
                    return
                }
                do {
                    if bodySink == nil, let exchange {
                        bodySink = exchange.makeBodySink(allocator: context.channel.allocator,
                                                         expectedLength: declaredBodyLength)
                        if let body { try bodySink!.append(body) }
                        body = nil
                    }
                    try bodySink?.append(part)
                } catch {
                    // The temporary file could not be made or written (nginx: a [crit] line and 500).
                    logger.critical("\(error)")
                    bodySink = nil
                    state = .discarding
                    writeResponse(.error(500, "internal error"), context: context)
                }
            }
        case .end:
            requestComplete = true
            switch state {
            case .readingBody:
                receivedEnd(context: context)
            case .discarding:
                if pendingWrites == 0, stream == nil, exchangeDone { closeNow(context) }
            default:
                break
            }
        }
    }

    private var exchangeDone: Bool { exchange == nil }

    private func receivedHead(_ head: UWSGIRequestHead, context: ChannelHandlerContext) {
        let channel = context.channel
        let request: KernelRequest
        do {
            request = try UWSGIRequestMapping.request(from: head, listener: settings.listener,
                                                      remoteAddress: channel.remoteAddress, localAddress: channel.localAddress)
        } catch {
            logger.info("client sent invalid uwsgi request: \(error), client: \(describeClient(channel.remoteAddress))")
            answerWithoutExchange(.error(400, "\(error)"), version: .http1_0, context: context)
            return
        }
        self.request = request
        let exchange = runtime.begin(request, on: context.eventLoop)
        self.exchange = exchange
        if let limit = exchange.maxBodySize, head.contentLength > limit {
            logger.error("client intended to send too large body: \(head.contentLength) bytes, client: \(request.connection.remoteIP), request: \"\(request.requestLine)\"")
            state = .discarding
            writeResponse(.error(413, "request body too large"), context: context)
            return
        }
        body = nil
        declaredBodyLength = Int64(head.contentLength)
        state = .readingBody
    }

    private func receivedEnd(context: ChannelHandlerContext) {
        guard var request, let exchange else { return }
        if let bodySink {
            let (memory, file) = bodySink.finish()
            request.body = memory
            if let file { request.bodySource = .file(file) }
            self.bodySink = nil
        } else {
            request.body = body
        }
        body = nil
        self.request = request
        state = .responding
        // The request is whole: only `send_timeout` applies from here.
        readDeadline = nil
        let eventLoop = context.eventLoop
        let responded: EventLoopFuture<KernelResponse>
        switch exchange.start(request) {
        case .ready(let response):
            writeResponse(response, context: context)
            return
        case .future(let future):
            responded = future
        }
        responded.hop(to: eventLoop).assumeIsolated().whenComplete { [self] result in
            guard case .responding = state else {
                if case .success(let response) = result, case .stream(let stream) = response.body { stream.cancel() }
                return
            }
            switch result {
            case .success(let response):
                writeResponse(response, context: context)
            case .failure(let error):
                logger.error("handler failed: \(error)")
                writeResponse(.error(500, "internal error"), context: context)
            }
        }
    }

    // MARK: - Output

    /// A 400 for a head that is no request: nothing is routed, so there is no exchange to log it.
    private func answerWithoutExchange(_ response: KernelResponse, version: ProtocolVersion, context: ChannelHandlerContext) {
        state = .responding
        readDeadline = nil
        var buffer = context.channel.allocator.buffer(capacity: 256)
        UWSGIResponseWriter.writeHead(response, version: version, method: "GET", to: &buffer)
        if case .buffer(let part) = response.body { buffer.writeImmutableBuffer(part) }
        send(buffer, context: context).assumeIsolated().whenComplete { [self] _ in closeNow(context) }
    }

    /// uWSGI's answer to a ping, then the close; a ping is no request, so it is neither routed nor access-logged.
    private func answerPing(context: ChannelHandlerContext) {
        state = .responding
        readDeadline = nil
        var buffer = context.channel.allocator.buffer(capacity: UWSGIPacketHeader.size)
        UWSGIPacketHeader.pingAnswer.write(to: &buffer)
        logger.debug("uwsgi ping, client: \(describeClient(context.channel.remoteAddress))")
        send(buffer, context: context).assumeIsolated().whenComplete { [self] _ in closeNow(context) }
    }

    /// Bodies up to this size go out in the same buffer as the head: one write, one flush.
    static let inlineBodyLimit = 64 * 1024

    private func writeResponse(_ response: KernelResponse, context: ChannelHandlerContext) {
        guard let request else { return }
        status = response.status
        let omitBody = request.method == "HEAD" || response.status == 204 || response.status == 304
            || (100..<200).contains(response.status)
        var inlineBody: ByteBuffer?
        if !omitBody, case .buffer(let part) = response.body, part.readableBytes <= UWSGIServerHandler.inlineBodyLimit {
            inlineBody = part
        }
        var head = context.channel.allocator.buffer(capacity: 256 + (inlineBody?.readableBytes ?? 0))
        UWSGIResponseWriter.writeHead(response, version: request.version, method: request.method, to: &head)
        switch response.body {
        case .empty:
            send(head, context: context).assumeIsolated().whenComplete { [self] result in responseWritten(result, context: context) }
        case .buffer(let part):
            if omitBody {
                send(head, context: context).assumeIsolated().whenComplete { [self] result in responseWritten(result, context: context) }
            } else {
                bodyBytesSent = part.readableBytes
                if let inlineBody {
                    head.writeImmutableBuffer(inlineBody)
                } else {
                    context.write(wrapOutboundOut(head), promise: nil)
                    head = part
                }
                send(head, context: context).assumeIsolated().whenComplete { [self] result in responseWritten(result, context: context) }
            }
        case .stream(let stream):
            if omitBody {
                stream.cancel()
                send(head, context: context).assumeIsolated().whenComplete { [self] result in responseWritten(result, context: context) }
            } else {
                self.stream = stream
                send(head, context: context).assumeIsolated().whenComplete { [self] result in
                    switch result {
                    case .success: pump(stream, context: context)
                    case .failure: responseWritten(result, context: context)
                    }
                }
            }
        }
    }

    /// Pulls the next part only after the previous one was written: the producer never runs ahead of the socket.
    private func pump(_ stream: ResponseBodyStream, context: ChannelHandlerContext) {
        stream.next().hop(to: context.eventLoop).assumeIsolated().whenComplete { [self] result in
            guard self.stream != nil else { return }
            switch result {
            case .success(.some(let part)):
                bodyBytesSent += part.readableBytes
                send(part, context: context).assumeIsolated().whenComplete { [self] written in
                    switch written {
                    case .success: pump(stream, context: context)
                    case .failure: responseWritten(written, context: context)
                    }
                }
            case .success(.none):
                self.stream = nil
                responseWritten(.success(()), context: context)
            case .failure(let error):
                // The upstream broke off mid-body: the client sees a short response, as with nginx.
                self.stream = nil
                logger.info("response body ended early: \(error), client: \(request?.connection.remoteIP ?? "-")")
                responseWritten(.failure(error), context: context)
            }
        }
    }

    private func responseWritten(_ result: Result<Void, any Error>, context: ChannelHandlerContext) {
        if let request, let exchange {
            exchange.finish(request, status: status, bodyBytesSent: bodyBytesSent)
        }
        exchange = nil
        if case .discarding = state, !requestComplete, case .success = result {
            // Stop writing but keep reading what the peer still sends, for a bounded time.
            context.close(mode: .output, promise: nil)
            lingerDeadline = context.eventLoop.now + UWSGIServerHandler.lingeringTime
            updateTimer(context)
            return
        }
        closeNow(context)
    }

    private func closeNow(_ context: ChannelHandlerContext) {
        if case .closed = state { return }
        state = .closed
        input = nil
        cancelTimer()
        context.close(promise: nil)
    }

    /// Writes and flushes `buffer`. `send_timeout` is the longest wait without progress: the buffer goes out in
    /// slices (`SendProgress`), the deadline moves on each time one completes, and it is cleared when nothing
    /// is pending. The future completes with the last slice.
    private func send(_ buffer: ByteBuffer, context: ChannelHandlerContext) -> EventLoopFuture<Void> {
        let promise = context.eventLoop.makePromise(of: Void.self)
        if pendingWrites == 0 {
            sendDeadline = context.eventLoop.now + settings.sendTimeout
            updateTimer(context)
        }
        SendProgress.forEachSlice(of: buffer) { slice, isLast in
            let written = isLast ? promise : context.eventLoop.makePromise(of: Void.self)
            pendingWrites += 1
            written.futureResult.assumeIsolated().whenComplete { [self] _ in
                pendingWrites -= 1
                if pendingWrites == 0 {
                    sendDeadline = nil
                } else if case .closed = state {
                    // Nothing is measured on a closed connection.
                } else {
                    // Progress: the deadline moves on; the scheduled task re-arms itself when it fires early.
                    sendDeadline = context.eventLoop.now + settings.sendTimeout
                }
            }
            context.write(wrapOutboundOut(slice), promise: written)
        }
        context.flush()
        return promise.futureResult
    }

    private func finishAbandoned(status: Int) {
        if let request, let exchange {
            exchange.finish(request, status: self.status == 0 ? status : self.status, bodyBytesSent: bodyBytesSent)
        }
        exchange = nil
    }

    // MARK: - Timeouts

    /// Makes sure the task fires no later than the nearest deadline.
    private func updateTimer(_ context: ChannelHandlerContext) {
        if case .closed = state { return }
        guard let next = nearestDeadline else { return }
        if timer == nil || timerAt > next {
            timer?.cancel()
            timerAt = next
            timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: next) { [self] in
                timerFired(context)
            }
        }
    }

    private var nearestDeadline: NIODeadline? {
        var next = readDeadline
        if let send = sendDeadline, next.map({ send < $0 }) ?? true { next = send }
        if let linger = lingerDeadline, next.map({ linger < $0 }) ?? true { next = linger }
        return next
    }

    private func cancelTimer() {
        timer?.cancel()
        timer = nil
        timerAt = .distantFuture
        readDeadline = nil
        sendDeadline = nil
        lingerDeadline = nil
    }

    private func timerFired(_ context: ChannelHandlerContext) {
        timer = nil
        timerAt = .distantFuture
        if case .closed = state { return }
        let now = context.eventLoop.now
        if let deadline = sendDeadline, deadline <= now {
            sendDeadline = nil
            logger.info("client timed out (110: Connection timed out) while sending response to client, client: \(describeClient(context.channel.remoteAddress)), server: \(settings.listener)")
            stream?.cancel()
            stream = nil
            finishAbandoned(status: 408)
            closeNow(context)
            return
        }
        if let deadline = lingerDeadline, deadline <= now {
            lingerDeadline = nil
            closeNow(context)
            return
        }
        if let deadline = readDeadline, deadline <= now {
            readDeadline = nil
            readTimedOut(context)
            if case .closed = state { return }
        }
        updateTimer(context)
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
            if exchange == nil { closeNow(context) }
        case .responding, .closed:
            break
        }
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
            logger.info("\(error), client: \(client)")
            finishAbandoned(status: 499)
            if case .discarding = state, pendingWrites > 0 { return }
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
        logger.info("uwsgi connection error: \(error), client: \(describeClient(context.channel.remoteAddress))")
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
        stream?.cancel()
        stream = nil
        finishAbandoned(status: 499)
        cancelTimer()
        state = .closed
        context.fireChannelInactive()
    }
}

/// Writes response heads the way uWSGI does for a WSGI app: `SERVER_PROTOCOL status reason`, `Name: value` lines,
/// an empty line. No chunking: a body of unknown length is delimited by closing the connection.
public enum UWSGIResponseWriter {
    public static func writeHead(_ response: KernelResponse, version: ProtocolVersion, method: String, to buffer: inout ByteBuffer) {
        buffer.writeString("\(version) \(response.status) \(sanitized(response.reasonPhrase))\r\n")
        var hasLength = false
        for (name, value) in response.headers {
            // A name or value holding CR or LF would split the head: such a field is dropped.
            guard !name.isEmpty, !containsLineBreak(name), !containsLineBreak(value) else { continue }
            if name.equalsCaseInsensitive("Transfer-Encoding") || name.equalsCaseInsensitive("Connection") { continue }
            if name.equalsCaseInsensitive("Content-Length") { hasLength = true }
            buffer.writeString(name)
            buffer.writeString(": ")
            buffer.writeString(value)
            buffer.writeString("\r\n")
        }
        if !hasLength, let length = response.body.knownLength,
           !(response.status == 204 || response.status == 304 || (100..<200).contains(response.status)) {
            buffer.writeString("Content-Length: \(length)\r\n")
        }
        buffer.writeString("\r\n")
    }

    private static func containsLineBreak(_ text: String) -> Bool {
        text.utf8.contains { $0 == 13 || $0 == 10 }
    }

    private static func sanitized(_ reason: String) -> String {
        containsLineBreak(reason) ? "" : reason
    }
}
