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
    /// `underscores_in_headers` and `ignore_invalid_headers`.
    let headerNames: HTTPHeaderNamePolicy
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
        headerNames = HTTPHeaderNamePolicy(underscoresAllowed: configuration.underscoresInHeaders,
                                           ignoreInvalid: configuration.ignoreInvalidHeaders)
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

    private enum TimerKind { case none, header, body, keepalive, linger }

    /// The request being handled. A class: the handler updates it in place many times per request, and a struct
    /// held in an optional would be copied whole (with a reference count per field) on each of those accesses.
    private final class InFlight {
        let serial: UInt64
        let exchange: RequestExchange
        var request: KernelRequest
        let keepAlive: Bool
        let isHead: Bool
        var bodyFraming: RequestBodyFraming?
        /// Where the body goes while it is read; nil for a small body that came whole with the head.
        var bodySink: RequestBodySink?
        /// The body still arriving while the handler already runs (`uwsgi_request_buffering off`).
        var bodyStream: RequestBodyStream?
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
    /// `send_timeout`, which runs beside the timer above (a response can still be leaving while the next request
    /// is read): set while watched writes are pending or the client is not reading, moved on by every completed
    /// write.
    private var sendDeadline: NIODeadline?
    /// Watched writes (see `writeWatched`) not completed yet.
    private var watchedWrites = 0

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
        if let stream = current?.bodyStream, stream.isFull {
            // An unbuffered body: the consumer (the upstream) is behind, so the client waits.
            readHeld = true
        } else if busy, current?.bodyStream == nil, buffered >= settings.maxBufferedInput {
            readHeld = true
        } else {
            context.read()
        }
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, waitingForWritability {
            waitingForWritability = false
            if watchedWrites == 0 {
                sendDeadline = nil
                if state == .awaitingHead, (input?.readableBytes ?? 0) == 0, timerKind == .none {
                    setTimer(.keepalive, settings.keepaliveTimeout, context)
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
        if sendDeadline == nil {
            sendDeadline = context.eventLoop.now + settings.sendTimeout
            armTimerTask(context)
        }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        scheduledTimer?.cancel()
        scheduledTimer = nil
        timerKind = .none
        sendDeadline = nil
        if let inFlight = current {
            current = nil
            inFlight.stream?.cancel()
            abandonBodyStream(inFlight, "client prematurely closed connection")
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
                        HTTPRequestHeadParser.parse(UnsafeRawBufferPointer(rebasing: bytes[start..<end]),
                                                    names: settings.headerNames)
                    }
                    switch parsed {
                    case .failure(let error):
                        reject(error, context, refused: RefusedRequestLine(input))
                        return
                    case .success(let head):
                        if !head.ignoredHeaderLines.isEmpty { logIgnoredHeaderLines(head) }
                        input!.moveReaderIndex(forwardBy: end)
                        scanner.reset()
                        startRequest(head, context)
                    }
                }
            case .readingBody:
                readBody(context)
                if state == .readingBody { return }
            case .processing, .writingStream:
                if current?.bodyStream != nil { feedBodyStream(context) }
                return
            case .closing:
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
        if case .length(let length) = current!.bodyFraming, exchange.requestBodyUse == .streamed {
            // Unbuffered: the handler runs now and pulls the body while it arrives. (A chunked body is read whole
            // first: its length, which uwsgi needs before the body, is known only at its end.)
            let stream = RequestBodyStream(length: Int64(length), eventLoop: context.eventLoop)
            let serial = current!.serial
            stream.onDemand {
                // The consumer took what was held: reading from the client resumes.
                guard self.current?.serial == serial else { return }
                self.resumeReads(context)
            }
            current!.bodyStream = stream
            current!.request.bodySource = .stream(stream)
            dispatch(context, keepBodyTimer: true)
            if current?.serial == serial, current?.bodyStream != nil { feedBodyStream(context) }
        }
    }

    /// Hands body bytes of an unbuffered request to its stream; finishes the stream at the body's end.
    private func feedBodyStream(_ context: ChannelHandlerContext) {
        guard let inFlight = current, let stream = inFlight.bodyStream,
              case .length(let remaining) = inFlight.bodyFraming else { return }
        let available = input?.readableBytes ?? 0
        guard available > 0 else { return }
        let take = min(remaining, available)
        stream.push(input!.readSlice(length: take)!)
        if take < remaining {
            inFlight.bodyFraming = .length(remaining: remaining - take)
            // Bytes were read: client_body_timeout counts from here.
            setTimer(.body, settings.clientBodyTimeout, context)
        } else {
            inFlight.bodyFraming = nil
            inFlight.bodyStream = nil
            stream.finish()
            if timerKind == .body { timerKind = .none }
        }
    }

    /// The client will not send the rest of an unbuffered body: the handler reading it is told.
    private func abandonBodyStream(_ inFlight: InFlight, _ reason: String) {
        guard let stream = inFlight.bodyStream else { return }
        inFlight.bodyStream = nil
        stream.fail(RequestBodyError.clientAborted(reason))
    }

    /// Moves body bytes from the input into the body sink (memory up to `client_body_buffer_size`, then a
    /// temporary file); dispatches once the body is complete.
    private func readBody(_ context: ChannelHandlerContext) {
        guard let framing = current?.bodyFraming else { return }
        let available = input?.readableBytes ?? 0
        do {
            switch framing {
            case .length(let remaining):
                guard available > 0 else { return }
                if current!.bodySink == nil, available >= remaining,
                   remaining <= current!.exchange.decision.bodyBuffering.bufferSize {
                    // The whole body arrived with the head and fits the buffer: a slice of the input, no copy.
                    current!.request.body = input!.readSlice(length: remaining)
                } else {
                    let sink = bodySink(context, expectedLength: Int64(remaining))
                    let take = min(remaining, available)
                    try sink.append(input!.readSlice(length: take)!)
                    if take < remaining {
                        current!.bodyFraming = .length(remaining: remaining - take)
                        setTimer(.body, settings.clientBodyTimeout, context)
                        return
                    }
                }
            case .chunked(var decoder):
                guard available > 0 else { return }
                let sink = bodySink(context)
                var decoded = context.channel.allocator.buffer(capacity: min(available, 1 << 16))
                let outcome = decoder.decode(&input!, into: &decoded, limit: current!.exchange.maxBodySize)
                current!.bodyFraming = .chunked(decoder)
                try sink.append(decoded)
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
        } catch {
            // The temporary file could not be made or written (nginx: a [crit] line and 500).
            runtime.logger.critical("\(error)")
            reject(HTTPRequestError(status: 500, logMessage: "\(error)", clientMessage: "internal error"), context)
            return
        }
        current!.bodyFraming = nil
        if let sink = current!.bodySink {
            let (memory, file) = sink.finish()
            current!.request.body = memory
            if let file { current!.request.bodySource = .file(file) }
            current!.bodySink = nil
        }
        timerKind = .none
        dispatch(context)
    }

    private func bodySink(_ context: ChannelHandlerContext, expectedLength: Int64? = nil) -> RequestBodySink {
        if let sink = current!.bodySink { return sink }
        let sink = current!.exchange.makeBodySink(allocator: context.channel.allocator, expectedLength: expectedLength)
        current!.bodySink = sink
        return sink
    }

    /// Hands the complete request to the filters and the route's handler.
    private func dispatch(_ context: ChannelHandlerContext, keepBodyTimer: Bool = false) {
        state = .processing
        if !keepBodyTimer { timerKind = .none }
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
        // An unbuffered body not read to its end cannot be told from a next request: the connection closes.
        var close = !current!.keepAlive || quiescing || current!.bodyStream != nil
        current!.status = status
        let date = dateCache.current()
        switch response.body {
        case .empty, .buffer:
            var body: ByteBuffer? = nil
            if case .buffer(let buffer) = response.body, buffer.readableBytes > 0 { body = buffer }
            let length = body?.readableBytes ?? 0
            // A bodiless answer to HEAD keeps the length its handler declares (a proxied upstream's), as nginx does.
            let framedLength = current!.isHead && body == nil
                ? response.headers["Content-Length"].flatMap(ContentLength.parse) ?? 0 : length
            let inline = !suppressBody && length <= 16 * 1024
            var out = context.channel.allocator.buffer(capacity: 192 + response.headers.count * 48 + (inline ? length : 0))
            HTTPResponseHeadWriter.write(status: status, reason: response.reasonPhrase, headers: response.headers,
                                         framing: bodiless ? .none : .length(framedLength), close: close,
                                         serverLine: settings.serverLine, date: date, into: &out)
            if let body, !suppressBody {
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
            completeResponse(status: status, bytesSent: suppressBody ? 0 : length, close: close, context)
        case .stream(let stream):
            let declared = response.headers["Content-Length"].flatMap(ContentLength.parse)
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
        let serial = current!.serial
        promise.futureResult.assumeIsolated().whenComplete { result in
            guard self.current?.serial == serial, self.state == .writingStream else { return }
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
            abandonBodyStream(inFlight, "the response ended before the request body was read")
            inFlight.exchange.finish(inFlight.request, status: inFlight.status, bodyBytesSent: inFlight.bytesSent)
        }
        state = .closing
        input = nil
        context.close(promise: nil)
    }

    /// Logs the request and moves on to the next one, or closes.
    private func completeResponse(status: Int, bytesSent: Int, close: Bool, _ context: ChannelHandlerContext) {
        var close = close
        var bodyLeftUnread = false
        if let inFlight = current {
            current = nil
            if inFlight.bodyStream != nil {
                // Answered before its unbuffered body was all read: the rest cannot be told from a next request,
                // so the connection closes (draining what still comes).
                abandonBodyStream(inFlight, "the response ended before the request body was read")
                close = true
                bodyLeftUnread = true
            }
            inFlight.exchange.finish(inFlight.request, status: status, bodyBytesSent: bytesSent)
        }
        if close || quiescing {
            closeAfterWrites(linger: bodyLeftUnread || (input?.readableBytes ?? 0) > 0, context)
            return
        }
        state = .awaitingHead
        if !context.channel.isWritable {
            waitForWritability(context)
        } else if (input?.readableBytes ?? 0) == 0 {
            input = nil
            // keepalive_timeout starts once the response has left; until then send_timeout runs.
            if watchedWrites == 0 { setTimer(.keepalive, settings.keepaliveTimeout, context) }
        }
        resumeReads(context)
        process(context)
    }

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

    /// Writes `buffer` (without flushing) in slices whose completions are watched: `send_timeout` runs while any
    /// is pending and restarts each time one completes, so a large body that keeps moving never times out while
    /// a client that stops reading is cut off `send_timeout` after the last progress. `promise` completes with
    /// the last slice. Small responses are not written this way: they cost no promise.
    private func writeWatched(_ buffer: ByteBuffer, _ context: ChannelHandlerContext,
                              promise: EventLoopPromise<Void>? = nil) {
        SendProgress.forEachSlice(of: buffer) { slice, isLast in
            let written = (isLast ? promise : nil) ?? context.eventLoop.makePromise(of: Void.self)
            if watchedWrites == 0, sendDeadline == nil {
                sendDeadline = context.eventLoop.now + settings.sendTimeout
                armTimerTask(context)
            }
            watchedWrites += 1
            written.futureResult.assumeIsolated().whenComplete { _ in self.watchedWriteCompleted(context) }
            context.write(wrapOutboundOut(slice), promise: written)
        }
    }

    private func watchedWriteCompleted(_ context: ChannelHandlerContext) {
        watchedWrites -= 1
        guard context.channel.isActive else { return }
        if watchedWrites > 0 || waitingForWritability {
            // Progress: the deadline moves on. Moving it later needs no new task; the pending one re-arms.
            sendDeadline = context.eventLoop.now + settings.sendTimeout
        } else {
            sendDeadline = nil
            if state == .awaitingHead, (input?.readableBytes ?? 0) == 0, timerKind == .none {
                setTimer(.keepalive, settings.keepaliveTimeout, context)
            }
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
        // Completes once everything before it is sent; until then send_timeout bounds the wait, so a client that
        // does not read its last response cannot keep the connection.
        writeWatched(context.channel.allocator.buffer(capacity: 0), context, promise: written)
        context.flush()
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
        armTimerTask(context)
    }

    /// Makes sure the task fires no later than the nearest deadline (the timer's or `send_timeout`'s).
    private func armTimerTask(_ context: ChannelHandlerContext) {
        var next = timerKind == .none ? NIODeadline.distantFuture : timerDeadline
        if let sendDeadline, sendDeadline < next { next = sendDeadline }
        guard next != .distantFuture else { return }
        if scheduledTimer == nil || scheduledAt > next {
            scheduledTimer?.cancel()
            scheduleTimer(at: next, context)
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
        let now = context.eventLoop.now
        if let sendDeadline, sendDeadline <= now {
            self.sendDeadline = nil
            // nginx logs the errno of its timer (ETIMEDOUT) at info: the client's doing.
            runtime.logger.info("client timed out (110: Connection timed out) while sending response to client, client: \(connection.remoteIP), server: \(settings.listener)")
            current?.stream?.cancel()
            abortResponse(context)
            return
        }
        guard timerKind != .none, timerDeadline <= now else {
            armTimerTask(context)
            return
        }
        let kind = timerKind
        timerKind = .none
        switch kind {
        case .none:
            break
        case .header:
            guard state == .awaitingHead else { break }
            if scanner.hasSeenRequestBytes || (input?.readableBytes ?? 0) > 0 {
                reject(.timedOut, context)
            } else {
                // Nothing of a request arrived: close quietly, as nginx does.
                runtime.logger.info("client timed out while waiting for request, client: \(connection.remoteIP), server: \(settings.listener)")
                state = .closing
                context.close(promise: nil)
            }
        case .body:
            if let inFlight = current, inFlight.bodyStream != nil {
                // An unbuffered body stalled while its handler runs: the handler is told, the connection closes.
                runtime.logger.info("client timed out (110: Connection timed out) while reading client request body, client: \(connection.remoteIP), server: \(settings.listener), request: \"\(inFlight.request.requestLine)\"")
                abandonBodyStream(inFlight, "client timed out (110: Connection timed out)")
                inFlight.status = 408
                abortResponse(context)
                break
            }
            guard state == .readingBody else { break }
            reject(.timedOut, context)
        case .keepalive:
            guard state == .awaitingHead, (input?.readableBytes ?? 0) == 0 else { break }
            state = .closing
            context.close(promise: nil)
        case .linger:
            context.close(promise: nil)
        }
        armTimerTask(context)
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

extension HTTPConnectionHandler {
    /// nginx's info line for each header line dropped by `ignore_invalid_headers`.
    fileprivate func logIgnoredHeaderLines(_ head: HTTPRequestHead) {
        for line in head.ignoredHeaderLines {
            runtime.logger.info("client sent invalid header line: \"\(line)\" while reading client request headers, client: \(connection.remoteIP), server: \(settings.listener), request: \"\(head.method) \(head.target) \(head.version)\"")
        }
    }
}
