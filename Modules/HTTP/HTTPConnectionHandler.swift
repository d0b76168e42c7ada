import KernelCore
import Logging
import NIOCore

/// One HTTP/1.1 connection: parses requests, drives each through the kernel's request path (`ExchangeDriver`) in
/// order, and writes the responses, with nginx's limits, timeouts and keep-alive rules.
///
/// The rules live in `HTTPConnectionStateMachine`, a value this handler feeds with events; the handler does the
/// I/O its answers call for. Timers, watched writes and the lingering close are `ConnectionTimers`, shared with
/// the other listeners; responses are written by the extension in HTTPConnectionResponses.swift.
public final class HTTPConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    let settings: HTTPConnectionSettings
    let runtime: KernelRuntime
    var connection: ConnectionInfo
    var machine: HTTPConnectionStateMachine
    let timers = ConnectionTimers()
    /// Received bytes not consumed yet.
    var input: ByteBuffer?
    var scanner: HTTPHeadScanner
    /// The request under way.
    var current: InFlightExchange?
    /// How its body is read while it is.
    var bodyReader: HTTPRequestBodyReader?
    var serial: UInt64 = 0
    /// Inside `channelRead`: writes are flushed once at `channelReadComplete` (one syscall for pipelined responses).
    var inReadCycle = false
    var flushPending = false
    /// Guards `process` against re-entry when a response completes synchronously inside it.
    private var inProcessLoop = false
    private var readHeld = false
    var dateCache = HTTPDateCache()

    /// A handler for a connection accepted on `settings.listener`.
    public init(settings: HTTPConnectionSettings, runtime: KernelRuntime) {
        self.settings = settings
        self.runtime = runtime
        connection = ConnectionInfo(protocolName: "http", listener: settings.listener, remoteAddress: nil, localAddress: nil)
        connection.id = ConnectionInfo.nextID()
        machine = HTTPConnectionStateMachine(keepaliveRequests: settings.keepaliveRequests)
        scanner = HTTPHeadScanner(maxLineLength: settings.maxLineLength, maxHeadLength: settings.maxHeadLength)
    }

    var inputPending: Bool { (input?.readableBytes ?? 0) > 0 }
    /// Part of a request head was received.
    var requestBytesSeen: Bool { scanner.hasSeenRequestBytes || inputPending }

    // MARK: - Channel events

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { becameActive(context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timers.cancelAll()
    }

    public func channelActive(context: ChannelHandlerContext) {
        becameActive(context)
        context.fireChannelActive()
    }

    private func becameActive(_ context: ChannelHandlerContext) {
        guard let timer = machine.channelActive() else { return }
        connection.remoteAddress = context.channel.remoteAddress
        connection.localAddress = context.channel.localAddress
        arm(timer, context)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // While closing (after an error response), input is drained and dropped: nothing behind it is processed.
        guard machine.acceptsInput else { return }
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
        if machine.shouldRead(bufferedInput: input?.readableBytes ?? 0, maxBufferedInput: settings.maxBufferedInput,
                              bodyStreamFull: current?.bodyStream?.isFull ?? false) {
            context.read()
        } else {
            readHeld = true
        }
    }

    func resumeReads(_ context: ChannelHandlerContext) {
        if readHeld {
            readHeld = false
            context.read()
        }
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if let resumed = machine.writabilityChanged(writable: context.channel.isWritable,
                                                    writesPending: timers.pendingWrites > 0, inputPending: inputPending) {
            if resumed.stopSendTimeout { timers.clear(.send) }
            if resumed.armKeepalive { arm(.keepalive, context) }
            process(context)
            resumeReads(context)
        }
        context.fireChannelWritabilityChanged()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        timers.cancelAll()
        let abandoned = machine.channelInactive()
        if let inFlight = current {
            current = nil
            inFlight.responseStream?.cancel()
            inFlight.abandonBodyStream("client prematurely closed connection")
            if abandoned == .clientLeft {
                // 499: the client went away before its response was written (nginx's code for it).
                runtime.logger.info("client prematurely closed connection, client: \(connection.remoteIP), server: \(settings.listener), request: \"\(inFlight.request.requestLine)\"")
                inFlight.finish(status: 499)
            } else {
                inFlight.finish()
            }
        }
        input = nil
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Resets and other socket errors are the client's doing: logged at info, as nginx does.
        runtime.logger.info("\(error) while \(machine.phaseDescription(requestBytesSeen: requestBytesSeen)), client: \(connection.remoteIP), server: \(settings.listener)")
        context.close(promise: nil)
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            // Idle: close now. Otherwise the request under way is answered with `Connection: close`.
            if let close = machine.quiesce(requestBytesSeen: requestBytesSeen) { execute(close, context) }
            return
        }
        if let event = event as? ChannelEvent, event == .inputClosed {
            execute(machine.inputClosed(), context)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: - Requests

    /// Parses and handles whatever complete requests the buffered input holds, one at a time.
    func process(_ context: ChannelHandlerContext) {
        guard !inProcessLoop else { return }
        inProcessLoop = true
        defer { inProcessLoop = false }
        while true {
            switch machine.nextStep(inputAvailable: inputPending, writable: context.channel.isWritable) {
            case .stop(let dropInput):
                if dropInput { input = nil }
                return
            case .waitForWritability:
                // A client that does not read its responses gets no more of them processed (send_timeout runs).
                timers.startSendTimeout(settings.sendTimeout, for: self, context: context)
                return
            case .parseHead:
                guard parseHead(context) else { return }
            case .readBody:
                readBody(context)
                if machine.phase == .readingBody { return }
            case .feedBodyStream:
                feedBodyStream(context)
                return
            }
        }
    }

    /// Scans and parses the head at the start of the input; false when it is not whole yet or was refused.
    private func parseHead(_ context: ChannelHandlerContext) -> Bool {
        switch input!.withUnsafeReadableBytes({ scanner.scan($0) }) {
        case .needMore:
            if let timer = machine.headIncomplete() { arm(timer, context) }
            return false
        case .failure(let error):
            reject(error, context, refused: RefusedRequestLine(input))
            return false
        case .complete(let start, let end):
            let parsed = input!.withUnsafeReadableBytes { bytes in
                HTTPRequestHeadParser.parse(UnsafeRawBufferPointer(rebasing: bytes[start..<end]), names: settings.headerNames)
            }
            switch parsed {
            case .failure(let error):
                reject(error, context, refused: RefusedRequestLine(input))
                return false
            case .success(let head):
                if !head.ignoredHeaderLines.isEmpty { logIgnoredHeaderLines(head) }
                input!.moveReaderIndex(forwardBy: end)
                scanner.reset()
                startRequest(head, context)
                return true
            }
        }
    }

    /// Routes the head (`begin`), checks the body against the location's limit and prepares to read it.
    private func startRequest(_ head: HTTPRequestHead, _ context: ChannelHandlerContext) {
        connection.requestNumber = machine.headReceived()
        guard let (path, query) = KernelRequest.splitTarget(head.target) else {
            reject(.invalidTarget, context, requestLine: "\(head.method) \(head.target) \(head.version)",
                   refused: RefusedRequestLine(method: head.method, target: head.target, version: head.version),
                   phase: "reading client request headers")
            return
        }
        let request = KernelRequest(method: head.method, uri: head.target, path: path, query: query, version: head.version,
                                    headers: head.headers, connection: connection)
        serial &+= 1
        let inFlight = ExchangeDriver.begin(request, serial: serial, runtime: runtime, on: context.eventLoop)
        current = inFlight
        let length = head.contentLength ?? 0
        let routed = machine.requestRouted(.init(
            keepAliveWanted: head.clientWantsKeepAlive, isHead: head.method == "HEAD", version: head.version,
            contentLength: length, chunked: head.chunked, expectContinue: head.expectContinue,
            bodyAdmitted: inFlight.exchange.admitsBody(ofLength: length),
            handlerStreamsBody: inFlight.exchange.requestBodyUse == .streamed, inputPending: inputPending))
        switch routed {
        case .start:
            ExchangeDriver.start(inFlight, for: self, context: context)
        case .refuseTooLarge:
            // Refused before a byte of the body is read (and without `100 Continue`).
            reject(.bodyTooLarge(length), context, showPhase: false)
        case .readBody(let sendContinue), .streamBody(let sendContinue):
            if head.chunked {
                bodyReader = .chunked(ChunkedBodyDecoder(maxTrailerLength: settings.maxHeadLength))
            } else {
                bodyReader = .length(remaining: length)
                inFlight.declaredBodyLength = Int64(length)
            }
            if sendContinue {
                var out = context.channel.allocator.buffer(capacity: 25)
                out.writeStaticString("HTTP/1.1 100 Continue\r\n\r\n")
                context.writeAndFlush(wrapOutboundOut(out), promise: nil)
            }
            arm(.body, context)
            if case .streamBody = routed { startStreamingBody(inFlight, context) }
        }
    }

    /// Unbuffered: the handler runs now and pulls the body while it arrives.
    private func startStreamingBody(_ inFlight: InFlightExchange, _ context: ChannelHandlerContext) {
        let stream = RequestBodyStream(length: inFlight.declaredBodyLength, eventLoop: context.eventLoop)
        let serial = inFlight.serial
        stream.onDemand {
            // The consumer took what was held: reading from the client resumes.
            guard self.current?.serial == serial else { return }
            self.resumeReads(context)
        }
        inFlight.bodyStream = stream
        inFlight.request.bodySource = .stream(stream)
        ExchangeDriver.start(inFlight, for: self, context: context)
        if current === inFlight, inFlight.bodyStream != nil { feedBodyStream(context) }
    }

    /// Hands body bytes of an unbuffered request to its stream; finishes the stream at the body's end.
    private func feedBodyStream(_ context: ChannelHandlerContext) {
        guard let inFlight = current, let stream = inFlight.bodyStream, inputPending,
              let (slice, isLast) = bodyReader?.nextStreamSlice(&input!) else { return }
        stream.push(slice)
        if isLast {
            bodyReader = nil
            inFlight.bodyStream = nil
            stream.finish()
            machine.bodyStreamCompleted()
        } else {
            // Bytes were read: client_body_timeout counts from here.
            arm(machine.bodyProgressed(), context)
        }
    }

    /// Moves body bytes from the input into the body collector; starts the exchange once the body is complete.
    private func readBody(_ context: ChannelHandlerContext) {
        guard let inFlight = current, inputPending, bodyReader != nil else { return }
        let outcome: HTTPRequestBodyReader.Outcome
        do {
            outcome = try bodyReader!.read(&input!, into: inFlight, allocator: context.channel.allocator)
        } catch {
            // The temporary file could not be made or written (nginx: a [crit] line and 500).
            runtime.logger.critical("\(error)")
            reject(HTTPRequestError(status: 500, logMessage: "\(error)", clientMessage: "internal error"), context)
            return
        }
        switch outcome {
        case .needMore:
            // Bytes were read: client_body_timeout counts from here (it bounds the gap between reads).
            arm(machine.bodyProgressed(), context)
        case .refused(let error, let showPhase):
            reject(error, context, showPhase: showPhase)
        case .complete:
            bodyReader = nil
            ExchangeDriver.bodyComplete(inFlight)
            machine.bodyCompleted()
            ExchangeDriver.start(inFlight, for: self, context: context)
        }
    }

    // MARK: - Timers

    func arm(_ timer: HTTPConnectionStateMachine.Timer, _ context: ChannelHandlerContext) {
        timers.set(.read, after: settings.duration(of: timer), for: self, context: context)
    }

    /// nginx's info line for each header line dropped by `ignore_invalid_headers`.
    private func logIgnoredHeaderLines(_ head: HTTPRequestHead) {
        for line in head.ignoredHeaderLines {
            runtime.logger.info("client sent invalid header line: \"\(line)\" while reading client request headers, client: \(connection.remoteIP), server: \(settings.listener), request: \"\(head.method) \(head.target) \(head.version)\"")
        }
    }
}
