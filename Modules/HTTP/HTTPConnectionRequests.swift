import KernelCore
import Logging
import NIOCore

/// The requests of an HTTP connection: the head scanned, parsed, routed (`ExchangeDriver.begin`) and checked against
/// the body limit, and the body read into the exchange's collector or streamed to its handler.
extension HTTPConnectionHandler {
    /// Scans and parses the head at the start of the input; false when it is not whole yet or was refused.
    func parseHead(_ context: ChannelHandlerContext) -> Bool {
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
            // Asked only when there is a body: a request without one (the common case) costs neither lookup.
            bodyAdmitted: length == 0 || inFlight.exchange.admitsBody(ofLength: length),
            handlerStreamsBody: length > 0 && !head.chunked && inFlight.exchange.requestBodyUse == .streamed,
            handlerDiscardsBody: (length > 0 || head.chunked) && inFlight.exchange.requestBodyUse == .discarded,
            inputPending: inputPending))
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
        case .discardBody(let sendContinue):
            // nginx's discarding: the answer goes out at once, the body is read and dropped meanwhile and after.
            bodyDiscarder = head.chunked ? .chunked(ChunkedBodyDecoder(maxTrailerLength: settings.maxHeadLength))
                                         : .length(remaining: length)
            discardDeadline = nil
            if sendContinue {
                var out = context.channel.allocator.buffer(capacity: 25)
                out.writeStaticString("HTTP/1.1 100 Continue\r\n\r\n")
                context.writeAndFlush(wrapOutboundOut(out), promise: nil)
            }
            // What came with the head is dropped first, as nginx does before its answer: a broken chunk there is
            // the request's 400.
            if inputPending {
                switch bodyDiscarder!.discard(&input!) {
                case .failure(let error):
                    bodyDiscarder = nil
                    reject(error, context)
                    return
                case .complete:
                    bodyDiscarder = nil
                    _ = machine.bodyDiscarded(inputPending: inputPending, writesPending: false)
                case .needMore:
                    break
                }
            }
            ExchangeDriver.start(inFlight, for: self, context: context)
        }
    }

    /// Drops what the input holds of a body its handler does not use; at its end the next request may be read.
    func discardBody(_ context: ChannelHandlerContext) {
        guard inputPending, bodyDiscarder != nil else { return }
        switch bodyDiscarder!.discard(&input!) {
        case .needMore:
            if let deadline = discardDeadline, context.eventLoop.now >= deadline {
                // nginx's lingering_time: the answer went out long ago and the body still comes.
                execute(machine.inputClosed(), context)
                return
            }
            if let timer = machine.bodyDiscardProgressed() { arm(timer, context) }
        case .complete:
            bodyDiscarder = nil
            discardDeadline = nil
            if let timer = machine.bodyDiscarded(inputPending: inputPending, writesPending: timers.pendingWrites > 0) {
                arm(timer, context)
            }
        case .failure(let error):
            bodyDiscarder = nil
            discardDeadline = nil
            var line = "\(error.logMessage) while reading client request body, client: \(connection.remoteIP), server: \(settings.listener)"
            if let current { line += ", request: \"\(current.request.requestLine)\"" }
            runtime.logger.info("\(line)")
            // Nothing behind a broken body can be read.
            input = nil
            if let close = machine.bodyDiscardFailed() { execute(close, context) }
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
    func feedBodyStream(_ context: ChannelHandlerContext) {
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
    func readBody(_ context: ChannelHandlerContext) {
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

    /// nginx's info line for each header line dropped by `ignore_invalid_headers`.
    fileprivate func logIgnoredHeaderLines(_ head: HTTPRequestHead) {
        for line in head.ignoredHeaderLines {
            runtime.logger.info("client sent invalid header line: \"\(line)\" while reading client request headers, client: \(connection.remoteIP), server: \(settings.listener), request: \"\(head.method) \(head.target) \(head.version)\"")
        }
    }
}
