import KernelConfig
import KernelCore
import Logging
import NIOCore

/// What one connection needs from the `http:` section, captured when the listener is registered: connections
/// accepted after a reload get the new generation's values, those already open keep theirs.
public final class HTTPConnectionSettings: Sendable {
    /// The listener's address as configured (`ConnectionInfo.listener`).
    public let listener: String
    let clientHeaderTimeout: TimeAmount
    let clientBodyTimeout: TimeAmount
    let sendTimeout: TimeAmount
    let keepaliveTimeout: TimeAmount
    let keepaliveRequests: Int
    /// Longest request line or header line.
    let maxLineLength: Int
    /// Longest whole request head.
    let maxHeadLength: Int
    /// Bytes of pipelined input buffered while a response is produced before reading pauses.
    let maxBufferedInput: Int
    /// `Server: kernel/0.1.0\r\n` or `Server: kernel\r\n`.
    let serverLine: String
    /// How long unread input is drained after an error response before the socket closes (nginx `lingering_timeout`).
    let lingeringTimeout: TimeAmount = .seconds(5)

    public init(configuration: HTTPConfiguration, listener: String) {
        self.listener = listener
        clientHeaderTimeout = .milliseconds(configuration.clientHeaderTimeout.milliseconds)
        clientBodyTimeout = .milliseconds(configuration.clientBodyTimeout.milliseconds)
        sendTimeout = .milliseconds(configuration.sendTimeout.milliseconds)
        keepaliveTimeout = .milliseconds(configuration.keepaliveTimeout.milliseconds)
        // keepalive_timeout 0 disables keep-alive, as in nginx.
        keepaliveRequests = configuration.keepaliveTimeout.milliseconds > 0 ? configuration.keepaliveRequests : 0
        maxLineLength = configuration.largeHeaderBufferSize.bytes
        maxHeadLength = max(configuration.largeHeaderBufferCount * configuration.largeHeaderBufferSize.bytes,
                            configuration.clientHeaderBufferSize.bytes)
        maxBufferedInput = max(maxHeadLength, 64 * 1024)
        serverLine = configuration.serverTokens ? "Server: kernel/\(kernelVersion)\r\n" : "Server: kernel\r\n"
    }
}

/// One HTTP/1.1 connection: parses requests, runs them through the kernel's request path in order, and writes
/// the responses, with nginx's limits, timeouts and keep-alive rules.
///
/// Requests are handled one at a time: bytes pipelined behind a request stay buffered (reading pauses once
/// `maxBufferedInput` is reached) until its response is written, which keeps responses in request order.
/// After any refused request the connection only drains input and closes; nothing behind it is processed.
public final class HTTPConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private enum State: Equatable {
        /// Waiting for (or receiving) a request head; also idle keep-alive.
        case awaitingHead
        /// A head was accepted; its body is being read.
        case readingBody
        /// The request went to the handler; its response is awaited.
        case processing
        /// A streamed response body is being written.
        case writingStream
        /// The connection is finishing: input is discarded.
        case closing
    }

    private enum RequestBodyFraming {
        case length(remaining: Int)
        case chunked(ChunkedBodyDecoder)
    }

    private enum TimerKind { case none, header, body, keepalive, send, linger }

    /// The request being handled. A class: the handler updates it in place many times per request, and a struct
    /// held in an optional would be copied whole (with a reference count per field) on each of those accesses.
    private final class InFlight {
        let serial: UInt64
        let exchange: RequestExchange
        var request: KernelRequest
        let keepAlive: Bool
        let isHead: Bool
        var bodyFraming: RequestBodyFraming?
        var body: ByteBuffer?
        var status = 0
        var bytesSent = 0
        var closeAfter = false
        var stream: ResponseBodyStream?
        var streamFraming = HTTPBodyFraming.none

        init(serial: UInt64, exchange: RequestExchange, request: KernelRequest, keepAlive: Bool, isHead: Bool) {
            self.serial = serial
            self.exchange = exchange
            self.request = request
            self.keepAlive = keepAlive
            self.isHead = isHead
        }
    }

    private let settings: HTTPConnectionSettings
    private let runtime: KernelRuntime
    private var connection: ConnectionInfo
    private var state = State.awaitingHead
    /// Received bytes not consumed yet.
    private var input: ByteBuffer?
    private var scanner: HTTPHeadScanner
    private var current: InFlight?
    private var serial: UInt64 = 0
    private var requestsStarted = 0
    private var quiescing = false
    private var isActive = false
    /// Inside `channelRead`: writes are flushed once at `channelReadComplete` (one syscall for pipelined responses).
    private var inReadCycle = false
    private var flushPending = false
    /// Guards `process` against re-entry when a response completes synchronously inside it.
    private var inProcessLoop = false
    private var readHeld = false
    private var waitingForWritability = false
    private var dateCache = HTTPDateCache()

    // One scheduled task serves every timeout: moving a deadline later (the common case, once per request) only
    // updates `timerDeadline`; the task re-arms itself when it fires early.
    private var timerKind = TimerKind.none
    private var timerDeadline = NIODeadline.distantFuture
    private var scheduledTimer: Scheduled<Void>?
    private var scheduledAt = NIODeadline.distantFuture

    /// A handler for a connection accepted on `settings.listener`.
    public init(settings: HTTPConnectionSettings, runtime: KernelRuntime) {
        self.settings = settings
        self.runtime = runtime
        connection = ConnectionInfo(protocolName: "http", listener: settings.listener, remoteAddress: nil, localAddress: nil)
        scanner = HTTPHeadScanner(maxLineLength: settings.maxLineLength, maxHeadLength: settings.maxHeadLength)
    }

    // MARK: - Channel events

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { becameActive(context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        scheduledTimer?.cancel()
        scheduledTimer = nil
    }

    public func channelActive(context: ChannelHandlerContext) {
        becameActive(context)
        context.fireChannelActive()
    }

    private func becameActive(_ context: ChannelHandlerContext) {
        guard !isActive else { return }
        isActive = true
        connection.remoteAddress = context.channel.remoteAddress
        connection.localAddress = context.channel.localAddress
        setTimer(.header, settings.clientHeaderTimeout, context)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // While closing (after an error response), input is drained and dropped: nothing behind it is processed.
        guard state != .closing else { return }
        var bytes = unwrapInboundIn(data)
        if var buffered = input, buffered.readableBytes > 0 {
            input = nil  // keep the storage uniquely referenced so that appending does not copy it
            buffered.writeBuffer(&bytes)
            input = buffered
        } else {
            input = bytes
        }
        inReadCycle = true
        process(context)
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        inReadCycle = false
        if flushPending {
            flushPending = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    public func read(context: ChannelHandlerContext) {
        let buffered = input?.readableBytes ?? 0
        let busy = state == .processing || state == .writingStream || waitingForWritability
        if busy, buffered >= settings.maxBufferedInput {
            readHeld = true
        } else {
            context.read()
        }
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, waitingForWritability {
            waitingForWritability = false
            if timerKind == .send {
                if state == .awaitingHead, (input?.readableBytes ?? 0) == 0 {
                    setTimer(.keepalive, settings.keepaliveTimeout, context)
                } else {
                    timerKind = .none
                }
            }
            process(context)
            resumeReads(context)
        }
        context.fireChannelWritabilityChanged()
    }

    /// Responses are queued beyond the high watermark: the client is not reading. Nothing more is processed until
    /// they drain, and `send_timeout` bounds the wait.
    private func waitForWritability(_ context: ChannelHandlerContext) {
        guard !waitingForWritability else { return }
        waitingForWritability = true
        setTimer(.send, settings.sendTimeout, context)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        scheduledTimer?.cancel()
        scheduledTimer = nil
        timerKind = .none
        if let inFlight = current {
            current = nil
            inFlight.stream?.cancel()
            // 499: the client went away before its response was written (nginx's code for it).
            let status = state == .writingStream ? inFlight.status : 499
            if status == 499 {
                runtime.logger.info("client prematurely closed connection, client: \(connection.remoteIP), server: \(settings.listener), request: \"\(inFlight.request.requestLine)\"")
            }
            inFlight.exchange.finish(inFlight.request, status: status, bodyBytesSent: inFlight.bytesSent)
        }
        state = .closing
        input = nil
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Resets and other socket errors are the client's doing: logged at info, as nginx does.
        runtime.logger.info("\(error) while \(phaseDescription), client: \(connection.remoteIP), server: \(settings.listener)")
        context.close(promise: nil)
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            quiescing = true
            // Idle: close now. Otherwise the request under way is answered with `Connection: close`.
            if state == .awaitingHead, (input?.readableBytes ?? 0) == 0, !scanner.hasSeenRequestBytes {
                closeAfterWrites(linger: false, context)
            }
            return
        }
        if let event = event as? ChannelEvent, event == .inputClosed {
            // Only seen when half-closure is enabled on the channel: the client will send nothing more. Like nginx,
            // an end of input is taken as the client leaving (and it ends a lingering close).
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: - Requests

    /// Parses and handles whatever complete requests the buffered input holds, one at a time.
    private func process(_ context: ChannelHandlerContext) {
        guard !inProcessLoop else { return }
        inProcessLoop = true
        defer { inProcessLoop = false }
        while true {
            switch state {
            case .awaitingHead:
                guard let available = input?.readableBytes, available > 0 else {
                    input = nil
                    return
                }
                // A client that does not read its responses gets no more of them processed (send_timeout runs).
                guard !waitingForWritability else { return }
                guard context.channel.isWritable else {
                    waitForWritability(context)
                    return
                }
                let outcome = input!.withUnsafeReadableBytes { scanner.scan($0) }
                switch outcome {
                case .needMore:
                    // client_header_timeout runs from the first bytes of a head that did not arrive whole.
                    if timerKind != .header { setTimer(.header, settings.clientHeaderTimeout, context) }
                    return
                case .failure(let error):
                    reject(error, context, refused: RefusedRequestLine(input))
                    return
                case .complete(let start, let end):
                    let parsed = input!.withUnsafeReadableBytes { bytes in
                        HTTPRequestHeadParser.parse(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
                    }
                    switch parsed {
                    case .failure(let error):
                        reject(error, context, refused: RefusedRequestLine(input))
                        return
                    case .success(let head):
                        input!.moveReaderIndex(forwardBy: end)
                        scanner.reset()
                        startRequest(head, context)
                    }
                }
            case .readingBody:
                readBody(context)
                if state == .readingBody { return }
            case .processing, .writingStream, .closing:
                return
            }
        }
    }

    /// Routes the head (`begin`), checks the body against the location's limit and prepares to read it.
    private func startRequest(_ head: HTTPRequestHead, _ context: ChannelHandlerContext) {
        timerKind = .none
        requestsStarted += 1
        guard let (path, query) = KernelRequest.splitTarget(head.target) else {
            reject(.invalidTarget, context, requestLine: "\(head.method) \(head.target) \(head.version)",
                   refused: RefusedRequestLine(method: head.method, target: head.target, version: head.version),
                   phase: "reading client request headers")
            return
        }
        let request = KernelRequest(method: head.method, uri: head.target, path: path, query: query, version: head.version,
                                    headers: head.headers, connection: connection)
        let exchange = runtime.begin(request, on: context.eventLoop)
        serial &+= 1
        let keepAlive = head.clientWantsKeepAlive && requestsStarted < settings.keepaliveRequests && !quiescing
        current = InFlight(serial: serial, exchange: exchange, request: request, keepAlive: keepAlive,
                           isHead: head.method == "HEAD")
        if head.chunked {
            current!.bodyFraming = .chunked(ChunkedBodyDecoder(maxTrailerLength: settings.maxHeadLength))
        } else if let length = head.contentLength, length > 0 {
            if let limit = exchange.maxBodySize, length > limit {
                // Refused before a byte of the body is read (and without `100 Continue`).
                reject(HTTPRequestError(status: 413, logMessage: "client intended to send too large body: \(length) bytes",
                                        clientMessage: "request body too large"), context, showPhase: false)
                return
            }
            current!.bodyFraming = .length(remaining: length)
        } else {
            dispatch(context)
            return
        }
        state = .readingBody
        if head.expectContinue, head.version == .http1_1, (input?.readableBytes ?? 0) == 0 {
            var out = context.channel.allocator.buffer(capacity: 25)
            out.writeStaticString("HTTP/1.1 100 Continue\r\n\r\n")
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        }
        setTimer(.body, settings.clientBodyTimeout, context)
    }

    /// Moves body bytes from the input into the request; dispatches once the body is complete.
    private func readBody(_ context: ChannelHandlerContext) {
        guard let framing = current?.bodyFraming else { return }
        let available = input?.readableBytes ?? 0
        switch framing {
        case .length(let remaining):
            guard available > 0 else { return }
            if current!.body == nil, available >= remaining {
                // The whole body arrived with the head: a slice of the input, no copy.
                current!.body = input!.readSlice(length: remaining)
            } else {
                if current!.body == nil {
                    current!.body = context.channel.allocator.buffer(capacity: min(remaining, 1 << 20))
                }
                let take = min(remaining, available)
                var part = input!.readSlice(length: take)!
                current!.body!.writeBuffer(&part)
                if take < remaining {
                    current!.bodyFraming = .length(remaining: remaining - take)
                    setTimer(.body, settings.clientBodyTimeout, context)
                    return
                }
            }
        case .chunked(var decoder):
            guard available > 0 else { return }
            if current!.body == nil { current!.body = context.channel.allocator.buffer(capacity: min(available, 1 << 16)) }
            let limit = current!.exchange.maxBodySize
            let outcome = decoder.decode(&input!, into: &current!.body!, limit: limit)
            current!.bodyFraming = .chunked(decoder)
            switch outcome {
            case .needMore:
                // Bytes were read: client_body_timeout counts from here (it bounds the gap between reads).
                setTimer(.body, settings.clientBodyTimeout, context)
                return
            case .done:
                break
            case .failure(let error):
                reject(error, context)
                return
            case .tooLarge(let size):
                reject(HTTPRequestError(status: 413, logMessage: "client intended to send too large chunked body: \(size) bytes",
                                        clientMessage: "request body too large"), context, showPhase: false)
                return
            }
        }
        current!.bodyFraming = nil
        current!.request.body = current!.body
        current!.body = nil
        timerKind = .none
        dispatch(context)
    }

    /// Hands the complete request to the filters and the route's handler.
    private func dispatch(_ context: ChannelHandlerContext) {
        state = .processing
        timerKind = .none
        let inFlight = current!
        let responded: EventLoopFuture<KernelResponse>
        switch inFlight.exchange.start(inFlight.request) {
        case .ready(let response):
            writeResponse(response, context)
            return
        case .future(let future):
            responded = future
        }
        let serial = inFlight.serial
        responded.hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
            guard self.current?.serial == serial, self.state == .processing else { return }
            switch result {
            case .success(let response):
                self.writeResponse(response, context)
            case .failure(let error):
                // The filter chain turns handler errors into responses; this is a broken filter.
                self.current!.exchange.context.logger.error("handler failed: \(error)")
                self.writeResponse(.error(500, "internal error"), context)
            }
        }
    }

    // MARK: - Responses

    private func writeResponse(_ response: KernelResponse, _ context: ChannelHandlerContext) {
        let status = response.status
        let bodiless = status < 200 || status == 204 || status == 304
        let suppressBody = bodiless || current!.isHead
        var close = !current!.keepAlive || quiescing
        current!.status = status
        let date = dateCache.current()
        switch response.body {
        case .empty, .buffer:
            var body: ByteBuffer? = nil
            if case .buffer(let buffer) = response.body, buffer.readableBytes > 0 { body = buffer }
            let length = body?.readableBytes ?? 0
            let inline = !suppressBody && length <= 16 * 1024
            var out = context.channel.allocator.buffer(capacity: 192 + response.headers.count * 48 + (inline ? length : 0))
            HTTPResponseHeadWriter.write(status: status, reason: response.reasonPhrase, headers: response.headers,
                                         framing: bodiless ? .none : .length(length), close: close,
                                         serverLine: settings.serverLine, date: date, into: &out)
            if let body, !suppressBody {
                if inline {
                    out.writeImmutableBuffer(body)
                    emit(out, context)
                } else {
                    context.write(wrapOutboundOut(out), promise: nil)
                    emit(body, context)
                }
            } else {
                emit(out, context)
            }
            completeResponse(status: status, bytesSent: suppressBody ? 0 : length, close: close, context)
        case .stream(let stream):
            let declared = response.headers["Content-Length"].flatMap { Int($0) }.flatMap { $0 >= 0 ? $0 : nil }
            let framing: HTTPBodyFraming
            if bodiless {
                framing = .none
            } else if let declared {
                framing = .length(declared)
            } else if suppressBody {
                framing = .none
            } else if current!.request.version == .http1_1 {
                framing = .chunked
            } else {
                // HTTP/1.0 has no chunked coding: the end of the connection ends the body.
                framing = .closeDelimited
                close = true
            }
            var out = context.channel.allocator.buffer(capacity: 192 + response.headers.count * 48)
            HTTPResponseHeadWriter.write(status: status, reason: response.reasonPhrase, headers: response.headers,
                                         framing: framing, close: close, serverLine: settings.serverLine, date: date, into: &out)
            if suppressBody {
                stream.cancel()
                emit(out, context)
                completeResponse(status: status, bytesSent: 0, close: close, context)
                return
            }
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
            state = .writingStream
            current!.stream = stream
            current!.streamFraming = framing
            current!.closeAfter = close
            pullNextPart(context)
        }
    }

    /// Asks the stream for its next part; called again only after the previous part was written (backpressure).
    private func pullNextPart(_ context: ChannelHandlerContext) {
        guard let stream = current?.stream else { return }
        let serial = current!.serial
        stream.next().hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
            guard self.current?.serial == serial, self.state == .writingStream else { return }
            switch result {
            case .success(.some(let part)):
                self.writePart(part, context)
            case .success(.none):
                self.endStream(context)
            case .failure(let error):
                // The producer broke off: the body cannot be completed, so the connection closes (as nginx does).
                self.runtime.logger.error("response body failed: \(error) while sending response to client, client: \(self.connection.remoteIP), server: \(self.settings.listener), request: \"\(self.current!.request.requestLine)\"")
                self.abortResponse(context)
            }
        }
    }

    private func writePart(_ part: ByteBuffer, _ context: ChannelHandlerContext) {
        let length = part.readableBytes
        guard length > 0 else {
            pullNextPart(context)
            return
        }
        let framing = current!.streamFraming
        if case .length(let declared) = framing, current!.bytesSent + length > declared {
            runtime.logger.error("response body longer than its Content-Length \(declared) while sending response to client, client: \(connection.remoteIP), server: \(settings.listener), request: \"\(current!.request.requestLine)\"")
            current!.stream?.cancel()
            abortResponse(context)
            return
        }
        current!.bytesSent += length
        let promise = context.eventLoop.makePromise(of: Void.self)
        if framing == .chunked {
            var framed = context.channel.allocator.buffer(capacity: length + 20)
            HTTPResponseHeadWriter.writeChunkHeader(length, into: &framed)
            if length <= 16 * 1024 {
                framed.writeImmutableBuffer(part)
                framed.writeStaticString("\r\n")
                context.writeAndFlush(wrapOutboundOut(framed), promise: promise)
            } else {
                context.write(wrapOutboundOut(framed), promise: nil)
                context.write(wrapOutboundOut(part), promise: nil)
                var end = context.channel.allocator.buffer(capacity: 2)
                end.writeStaticString("\r\n")
                context.writeAndFlush(wrapOutboundOut(end), promise: promise)
            }
        } else {
            context.writeAndFlush(wrapOutboundOut(part), promise: promise)
        }
        setTimer(.send, settings.sendTimeout, context)
        let serial = current!.serial
        promise.futureResult.assumeIsolated().whenComplete { result in
            guard self.current?.serial == serial, self.state == .writingStream else { return }
            if self.timerKind == .send { self.timerKind = .none }
            if case .success = result { self.pullNextPart(context) }
            // A failed write means the channel is closing; channelInactive finishes the exchange.
        }
    }

    private func endStream(_ context: ChannelHandlerContext) {
        var close = current!.closeAfter
        switch current!.streamFraming {
        case .chunked:
            var last = context.channel.allocator.buffer(capacity: 5)
            last.writeStaticString("0\r\n\r\n")
            emit(last, context)
        case .length(let declared) where current!.bytesSent != declared:
            // The client counts on the declared length: ending early leaves it waiting, so the connection closes.
            runtime.logger.error("response body shorter (\(current!.bytesSent) bytes) than its Content-Length \(declared) while sending response to client, client: \(connection.remoteIP), server: \(settings.listener), request: \"\(current!.request.requestLine)\"")
            close = true
        default:
            break
        }
        completeResponse(status: current!.status, bytesSent: current!.bytesSent, close: close, context)
    }

    /// Ends a response that cannot be completed: the exchange is finished and the connection closed at once.
    private func abortResponse(_ context: ChannelHandlerContext) {
        if let inFlight = current {
            current = nil
            inFlight.exchange.finish(inFlight.request, status: inFlight.status, bodyBytesSent: inFlight.bytesSent)
        }
        state = .closing
        input = nil
        context.close(promise: nil)
    }

    /// Logs the request and moves on to the next one, or closes.
    private func completeResponse(status: Int, bytesSent: Int, close: Bool, _ context: ChannelHandlerContext) {
        if let inFlight = current {
            current = nil
            inFlight.exchange.finish(inFlight.request, status: status, bodyBytesSent: bytesSent)
        }
        if close || quiescing {
            closeAfterWrites(linger: (input?.readableBytes ?? 0) > 0, context)
            return
        }
        state = .awaitingHead
        if !context.channel.isWritable {
            waitForWritability(context)
        } else if (input?.readableBytes ?? 0) == 0 {
            input = nil
            setTimer(.keepalive, settings.keepaliveTimeout, context)
        }
        resumeReads(context)
        process(context)
    }

    /// Writes `buffer`, flushing now or, inside a read cycle, once at its end.
    private func emit(_ buffer: ByteBuffer, _ context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(buffer), promise: nil)
        if inReadCycle {
            flushPending = true
        } else {
            context.flush()
        }
    }

    private func resumeReads(_ context: ChannelHandlerContext) {
        if readHeld {
            readHeld = false
            context.read()
        }
    }

    // MARK: - Refusals and closing

    /// Answers a request that cannot be served with `error.status` and `Connection: close`, logs one line, and
    /// closes; input behind it is drained, never processed.
    private func reject(_ error: HTTPRequestError, _ context: ChannelHandlerContext, requestLine: String? = nil,
                        refused refusedLine: RefusedRequestLine? = nil, phase: String? = nil, showPhase: Bool = true) {
        var line = error.logMessage
        if showPhase { line += " while \(phase ?? phaseDescription)" }
        line += ", client: \(connection.remoteIP), server: \(settings.listener)"
        if let shown = requestLine ?? current?.request.requestLine { line += ", request: \"\(shown)\"" }
        runtime.logger.info("\(line)")
        let response = KernelResponse.error(error.status, error.clientMessage)
        var out = context.channel.allocator.buffer(capacity: 256)
        guard case .buffer(let body) = response.body else { preconditionFailure("error responses have a buffer body") }
        HTTPResponseHeadWriter.write(status: error.status, reason: response.reasonPhrase, headers: response.headers,
                                     framing: .length(body.readableBytes), close: true, serverLine: settings.serverLine,
                                     date: dateCache.current(), into: &out)
        // A head refused before it became a request still names its method and target in its first line: that
        // decides whether a body goes out (HEAD) and what the access log of the server it was for records.
        let isHead = current?.isHead ?? refusedLine?.isHead ?? RefusedRequestLine.startsWithHead(input)
        if !isHead { out.writeImmutableBuffer(body) }
        context.write(wrapOutboundOut(out), promise: nil)
        let bodyBytesSent = isHead ? 0 : body.readableBytes
        if let inFlight = current {
            current = nil
            inFlight.exchange.finish(inFlight.request, status: error.status, bodyBytesSent: bodyBytesSent)
        } else if let refusedLine, let request = refusedLine.request(connection: connection) {
            runtime.begin(request, on: context.eventLoop).finish(request, status: error.status, bodyBytesSent: bodyBytesSent)
        }
        closeAfterWrites(linger: true, context)
    }

    /// Closes once everything written so far is sent. With `linger`, the write side closes first and input is
    /// drained for a while (nginx's lingering close), so that unread request bytes do not make the kernel reset
    /// the connection before the client has read the response.
    private func closeAfterWrites(linger: Bool, _ context: ChannelHandlerContext) {
        state = .closing
        input = nil
        flushPending = false
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: written)
        resumeReads(context)
        written.futureResult.assumeIsolated().whenComplete { result in
            guard linger, case .success = result, context.channel.isActive else {
                context.close(promise: nil)
                return
            }
            let halfClosed = context.eventLoop.makePromise(of: Void.self)
            context.close(mode: .output, promise: halfClosed)
            halfClosed.futureResult.assumeIsolated().whenComplete { result in
                if case .success = result, context.channel.isActive {
                    self.setTimer(.linger, self.settings.lingeringTimeout, context)
                } else {
                    context.close(promise: nil)
                }
            }
        }
    }

    /// nginx's phrase for what the connection was doing, for log lines.
    private var phaseDescription: String {
        switch state {
        case .awaitingHead: return scanner.hasSeenRequestBytes || (input?.readableBytes ?? 0) > 0
            ? "reading client request headers" : "waiting for request"
        case .readingBody: return "reading client request body"
        case .processing: return "processing request"
        case .writingStream: return "sending response to client"
        case .closing: return "closing request"
        }
    }

    // MARK: - Timers

    private func setTimer(_ kind: TimerKind, _ amount: TimeAmount, _ context: ChannelHandlerContext) {
        timerKind = kind
        timerDeadline = context.eventLoop.now + amount
        if scheduledTimer == nil || scheduledAt > timerDeadline {
            scheduledTimer?.cancel()
            scheduleTimer(at: timerDeadline, context)
        }
    }

    private func scheduleTimer(at deadline: NIODeadline, _ context: ChannelHandlerContext) {
        scheduledAt = deadline
        scheduledTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.timerFired(context)
        }
    }

    private func timerFired(_ context: ChannelHandlerContext) {
        scheduledTimer = nil
        scheduledAt = .distantFuture
        guard timerKind != .none else { return }
        if context.eventLoop.now < timerDeadline {
            scheduleTimer(at: timerDeadline, context)
            return
        }
        let kind = timerKind
        timerKind = .none
        switch kind {
        case .none:
            break
        case .header:
            guard state == .awaitingHead else { return }
            if scanner.hasSeenRequestBytes || (input?.readableBytes ?? 0) > 0 {
                reject(.timedOut, context)
            } else {
                // Nothing of a request arrived: close quietly, as nginx does.
                runtime.logger.info("client timed out while waiting for request, client: \(connection.remoteIP), server: \(settings.listener)")
                state = .closing
                context.close(promise: nil)
            }
        case .body:
            guard state == .readingBody else { return }
            reject(.timedOut, context)
        case .keepalive:
            guard state == .awaitingHead, (input?.readableBytes ?? 0) == 0 else { return }
            state = .closing
            context.close(promise: nil)
        case .send:
            runtime.logger.info("client timed out while sending response to client, client: \(connection.remoteIP), server: \(settings.listener)")
            current?.stream?.cancel()
            abortResponse(context)
        case .linger:
            context.close(promise: nil)
        }
    }
}


/// The request line of a head that was refused before it was parsed whole, as far as it can be read.
struct RefusedRequestLine {
    let method: String
    let target: String
    let version: ProtocolVersion

    init(method: String, target: String, version: ProtocolVersion) {
        self.method = method
        self.target = target
        self.version = version
    }

    /// Reads `METHOD SP TARGET SP HTTP/x.y` from the start of `input` (a head not yet consumed); nil when it is not
    /// there.
    init?(_ input: ByteBuffer?) {
        guard let input else { return nil }
        let view = input.readableBytesView.prefix(8192)
        guard let end = view.firstIndex(where: { $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\n") }) else { return nil }
        let parts = view[view.startIndex..<end].split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy({ $0 >= 0x41 && $0 <= 0x5A }),
              parts[2].starts(with: Array("HTTP/".utf8)), parts[2].count == 8 else { return nil }
        let digits = Array(parts[2])
        guard digits[5] >= 0x30, digits[5] <= 0x39, digits[6] == UInt8(ascii: "."), digits[7] >= 0x30, digits[7] <= 0x39 else {
            return nil
        }
        method = String(decoding: parts[0], as: UTF8.self)
        target = String(decoding: parts[1], as: UTF8.self)
        version = ProtocolVersion(major: Int(digits[5] - 0x30), minor: Int(digits[7] - 0x30))
    }

    var isHead: Bool { method == "HEAD" }

    /// Whether unconsumed input begins with `HEAD `: a request line refused before it ended still shows its
    /// method, and a HEAD is answered without a body however much of the line had arrived.
    static func startsWithHead(_ input: ByteBuffer?) -> Bool {
        input?.readableBytesView.starts(with: "HEAD ".utf8) ?? false
    }

    /// A request for the access log only: routed to the default server, with the target's path when it has one.
    func request(connection: ConnectionInfo) -> KernelRequest? {
        let split = KernelRequest.splitTarget(target) ?? ("/", "")
        return KernelRequest(method: method, uri: target, path: split.path, query: split.query, version: version,
                             headers: HeaderFields(), connection: connection)
    }
}
