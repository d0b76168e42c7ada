import KernelCore

/// The rules of one HTTP/1.1 connection, as a value: it takes the connection's events (a head parsed or refused,
/// body progress, a response ready, a part written, writability, a timer, the end of input, quiesce) and answers
/// with what to do. `HTTPConnectionHandler` does the I/O and executes the answers; nothing here touches a channel.
///
/// Requests are handled one at a time: bytes pipelined behind a request wait until its response is written, which
/// keeps responses in request order. After a refused request the connection only drains input and closes:
/// nothing behind it is processed.
struct HTTPConnectionStateMachine {
    /// The read-side timeout running (at most one; `send_timeout` runs beside it, in `ConnectionTimers`).
    enum Timer: Equatable {
        /// `client_header_timeout`: from the connection's start, or the first bytes of a head that came in parts.
        case header
        /// `client_body_timeout`: between two reads of a body.
        case body
        /// `keepalive_timeout`: an idle connection between requests.
        case keepalive
        /// The lingering close's drain.
        case linger
        /// The rest of a discarded body, after its answer went out: nginx's `lingering_timeout` between reads.
        case discard
    }

    enum Phase: Equatable {
        /// Waiting for (or receiving) a request head; also idle keep-alive.
        case awaitingHead
        /// A head was accepted; its body is being read.
        case readingBody
        /// The request went to the handler; its response is awaited.
        case processing
        /// A streamed response body is being written.
        case writingStream
        /// The connection was upgraded (`101`): it is a tunnel now, no longer HTTP, and its handler has left.
        case tunnelled
        /// The connection is finishing: input is discarded.
        case closing
        /// The channel is gone.
        case closed
    }

    /// What the connection knows of the request under way.
    struct Request: Equatable {
        var keepAlive: Bool
        var isHead: Bool
        var version: ProtocolVersion
        /// Its unbuffered body (`uwsgi_request_buffering off`) is still arriving while its handler runs.
        var bodyStreaming = false
        /// The framing of its streamed response body.
        var framing = HTTPBodyFraming.none
        /// The connection closes after its streamed response.
        var closeAfter = false
    }

    /// What the head of a routed request says (the exchange is open: its limit and body use are known).
    struct RoutedHead: Equatable {
        var keepAliveWanted: Bool
        var isHead: Bool
        var version: ProtocolVersion
        var contentLength: Int
        var chunked: Bool
        var expectContinue: Bool
        /// `contentLength` is within `client_max_body_size`.
        var bodyAdmitted: Bool
        /// The handler takes the body as a stream while it arrives.
        var handlerStreamsBody: Bool
        /// The handler does not use the body: it is read and dropped.
        var handlerDiscardsBody = false
        /// Bytes behind the head were received with it.
        var inputPending: Bool
    }

    /// The next step of the loop that handles buffered input.
    enum Step: Equatable {
        /// Nothing to do until more happens; `dropInput` when the buffer is empty and can be let go.
        case stop(dropInput: Bool)
        /// The client does not read its responses: no more are produced until it does; `send_timeout` runs.
        case waitForWritability
        case parseHead
        case readBody
        case feedBodyStream
        /// Read and drop what the input holds of a discarded body.
        case discardBody
    }

    /// What a routed head leads to.
    enum Routed: Equatable {
        /// No body: the exchange starts now.
        case start
        /// The declared body exceeds `client_max_body_size`: 413, before a byte of it is read.
        case refuseTooLarge
        /// The body is read (and `100 Continue` sent first when asked for); the exchange starts at its end.
        case readBody(sendContinue: Bool)
        /// The exchange starts now and takes the body as a stream while it arrives.
        case streamBody(sendContinue: Bool)
        /// The exchange starts now; the body is read and dropped, before the next request is read.
        case discardBody(sendContinue: Bool)
    }

    /// How a response goes out.
    enum ResponseAction: Equatable {
        /// A buffered (or empty) body: the head with `framing`, then the body when `sendBody`.
        case writeBuffered(framing: HTTPBodyFraming, sendBody: Bool, close: Bool)
        /// A streamed body: the head, then the parts pulled one after another.
        case writeStreamHead(framing: HTTPBodyFraming, close: Bool)
        /// A streamed body that is not sent (HEAD, 204, 304): the head only; the stream is cancelled.
        case writeHeadOnly(framing: HTTPBodyFraming, close: Bool)
    }

    /// What to do with a part of a streamed body.
    enum PartAction: Equatable {
        case ignore
        /// An empty part: ask for the next.
        case pullNext
        /// Write it (as a chunk when `chunked`).
        case write(chunked: Bool)
        /// It runs past the declared `Content-Length`: the response cannot be completed.
        case abortLongerThanDeclared(Int)
    }

    /// How a streamed body ends.
    struct StreamEnd: Equatable {
        var writeLastChunk: Bool
        var close: Bool
        /// The body ended short of this declared length (the connection closes).
        var shortOfDeclared: Int?
    }

    /// How the connection goes on after a response.
    enum AfterResponse: Equatable {
        /// Close once the response is sent; `abandonBody`: an unbuffered body was not read to its end (its handler
        /// is told); `linger`: unread input is drained first.
        case close(abandonBody: Bool, linger: Bool)
        /// Keep the connection for the next request. `waitForWritability`: the client is not reading (`send_timeout`
        /// runs); `dropInput`: nothing is buffered; `armKeepalive`: `keepalive_timeout` starts now.
        /// `armDiscard`: the rest of a discarded body is still to be read; its timer starts now.
        case keepOpen(waitForWritability: Bool, dropInput: Bool, armKeepalive: Bool, armDiscard: Bool = false)
    }

    /// What a due read-side timer leads to.
    enum TimerAction: Equatable {
        case none
        /// 408 and a lingering close (`client timed out`).
        case refuseTimedOut
        /// Nothing of a request arrived: close quietly (`client timed out while waiting for request`).
        case closeWaiting
        /// An unbuffered body stalled while its handler runs: the handler is told, 408 is logged, the
        /// connection closes.
        case abortStalledBody
        /// Close now (keep-alive expired, lingering ended).
        case close
    }

    /// How to close.
    enum Close: Equatable {
        case now
        case afterWrites(linger: Bool)
    }

    /// How the request under way ends when the channel goes away.
    enum Abandoned: Equatable {
        case none
        /// The client left before its response was written: 499.
        case clientLeft
        /// The client left during a streamed response: the response's status.
        case responseCut
    }

    /// `keepalive_requests` (0 when `keepalive_timeout` is 0: no keep-alive).
    let keepaliveRequests: Int
    private(set) var phase = Phase.awaitingHead
    private(set) var request: Request?
    private(set) var timer: Timer?
    private(set) var requestsStarted = 0
    private(set) var quiescing = false
    private(set) var waitingForWritability = false
    /// A body its handler does not use is being read and dropped; it may outlive its request (the answer went
    /// out first), and the next request is read only after it.
    private(set) var discardingBody = false
    private var opened = false

    init(keepaliveRequests: Int) {
        self.keepaliveRequests = keepaliveRequests
    }

    /// Input is read (and not only drained).
    var acceptsInput: Bool { phase != .closing && phase != .closed && phase != .tunnelled }

    // MARK: - Connection

    /// The channel is active: `client_header_timeout` runs. Nil when it was already.
    mutating func channelActive() -> Timer? {
        guard !opened else { return nil }
        opened = true
        timer = .header
        return .header
    }

    /// The next step of the input loop.
    mutating func nextStep(inputAvailable: Bool, writable: Bool) -> Step {
        switch phase {
        case .awaitingHead:
            guard inputAvailable else { return .stop(dropInput: true) }
            if discardingBody { return .discardBody }
            guard !waitingForWritability else { return .stop(dropInput: false) }
            guard writable else {
                waitingForWritability = true
                return .waitForWritability
            }
            return .parseHead
        case .readingBody:
            return .readBody
        case .processing, .writingStream:
            if discardingBody { return inputAvailable ? .discardBody : .stop(dropInput: true) }
            return request?.bodyStreaming == true ? .feedBodyStream : .stop(dropInput: false)
        case .closing, .closed, .tunnelled:
            return .stop(dropInput: false)
        }
    }

    /// Whether to ask the channel for more input: not while an unbuffered body's consumer is behind, nor while a
    /// response is produced and `maxBufferedInput` bytes are already waiting behind it.
    func shouldRead(bufferedInput: Int, maxBufferedInput: Int, bodyStreamFull: Bool) -> Bool {
        if request?.bodyStreaming == true { return !bodyStreamFull }
        // A discarded body's bytes are dropped as they come: they never pile up.
        if discardingBody { return true }
        let busy = phase == .processing || phase == .writingStream || waitingForWritability
        return !(busy && bufferedInput >= maxBufferedInput)
    }

    // MARK: - Heads

    /// Part of a head arrived: `client_header_timeout` runs from the first bytes of a head that did not come whole.
    mutating func headIncomplete() -> Timer? {
        guard timer != .header else { return nil }
        timer = .header
        return .header
    }

    /// A head was parsed: it counts as a request (`keepalive_requests`, `$connection_requests`). Returns its number.
    mutating func headReceived() -> Int {
        requestsStarted += 1
        timer = nil
        return requestsStarted
    }

    /// The head is routed: what comes next. Reading a body arms `client_body_timeout`.
    mutating func requestRouted(_ head: RoutedHead) -> Routed {
        request = Request(keepAlive: head.keepAliveWanted && requestsStarted < keepaliveRequests && !quiescing,
                          isHead: head.isHead, version: head.version)
        guard head.chunked || head.contentLength > 0 else {
            phase = .processing
            return .start
        }
        if !head.chunked, !head.bodyAdmitted { return .refuseTooLarge }
        let sendContinue = head.expectContinue && head.version == .http1_1 && !head.inputPending
        if head.handlerDiscardsBody {
            // As nginx: the answer does not wait for the body (no read timer runs until it has gone out).
            discardingBody = true
            phase = .processing
            return .discardBody(sendContinue: sendContinue)
        }
        timer = .body
        // A chunked body is read whole first even for a streaming handler: its length, which uwsgi needs before
        // the body, is known only at its end.
        if !head.chunked, head.handlerStreamsBody {
            request!.bodyStreaming = true
            phase = .processing
            return .streamBody(sendContinue: sendContinue)
        }
        phase = .readingBody
        return .readBody(sendContinue: sendContinue)
    }

    /// The request is refused (a bad head, a body error, a timeout): its error response goes out with
    /// `Connection: close`, then the connection closes lingering.
    mutating func refuse() -> Close {
        beginClosing()
        return .afterWrites(linger: true)
    }

    // MARK: - Bodies

    /// Body bytes were read and more are due: `client_body_timeout` counts from now.
    mutating func bodyProgressed() -> Timer {
        timer = .body
        return .body
    }

    /// The body is complete: the exchange starts.
    mutating func bodyCompleted() {
        timer = nil
        phase = .processing
    }

    /// Bytes of a discarded body were dropped and more are due: after the answer, `lingering_timeout` counts from
    /// now.
    mutating func bodyDiscardProgressed() -> Timer? {
        guard request == nil else { return nil }
        timer = .discard
        return .discard
    }

    /// The discarded body ended. Returns the timer to arm: `keepalive_timeout` when the answer has gone out and
    /// nothing else waits.
    mutating func bodyDiscarded(inputPending: Bool, writesPending: Bool) -> Timer? {
        discardingBody = false
        if timer == .discard { timer = nil }
        guard !writesPending else { return nil }
        return armKeepaliveIfIdle(inputPending: inputPending) ? .keepalive : nil
    }

    /// The discarded body's framing is broken (a bad chunk): nothing behind it can be read. With its answer still
    /// to come, that answer closes the connection; after it, the connection closes once the answer is sent.
    mutating func bodyDiscardFailed() -> Close? {
        discardingBody = false
        guard request != nil else {
            beginClosing()
            return .afterWrites(linger: false)
        }
        request!.keepAlive = false
        return nil
    }

    /// The whole unbuffered body went to its stream: `client_body_timeout` stops.
    mutating func bodyStreamCompleted() {
        request?.bodyStreaming = false
        if timer == .body { timer = nil }
    }

    // MARK: - Responses

    /// The handler's response is there. Nil when the connection no longer waits for one.
    mutating func responseReady(status: Int, streamed: Bool, bodyLength: Int,
                                declaredLength: () -> Int?) -> ResponseAction? {
        guard phase == .processing, let current = request else { return nil }
        let bodiless = ResponseBodyRule.statusForbidsBody(status)
        let sendsBody = ResponseBodyRule.sendsBody(status: status, isHead: current.isHead)
        // An unbuffered body not read to its end cannot be told from a next request: the connection closes.
        var close = !current.keepAlive || quiescing || current.bodyStreaming
        // A 304 may say the length of the representation it stands for (RFC 9110 8.6): a proxied upstream's is
        // passed on, as nginx does. 1xx and 204 never carry one.
        let bodilessFraming: HTTPBodyFraming = status == 304 ? declaredLength().map { .length($0) } ?? .none : .none
        guard streamed else {
            // A bodiless answer to HEAD keeps the length its handler declares (a proxied upstream's), as nginx does.
            let framed = current.isHead && bodyLength == 0 ? declaredLength() ?? 0 : bodyLength
            return .writeBuffered(framing: bodiless ? bodilessFraming : .length(framed), sendBody: sendsBody && bodyLength > 0,
                                  close: close)
        }
        let framing: HTTPBodyFraming
        if bodiless {
            framing = bodilessFraming
        } else if let declared = declaredLength() {
            framing = .length(declared)
        } else if !sendsBody {
            framing = .none
        } else if current.version == .http1_1 {
            framing = .chunked
        } else {
            // HTTP/1.0 has no chunked coding: the end of the connection ends the body.
            framing = .closeDelimited
            close = true
        }
        guard sendsBody else { return .writeHeadOnly(framing: framing, close: close) }
        phase = .writingStream
        request!.framing = framing
        request!.closeAfter = close
        return .writeStreamHead(framing: framing, close: close)
    }

    /// The handler's response is a `101` that upgrades the connection (a proxied WebSocket). True: the head goes
    /// out and the connection becomes a tunnel, with no request of its own any more. False: it cannot be
    /// upgraded (not HTTP/1.1, a HEAD, an unbuffered body still arriving, a graceful stop under way). Nil when
    /// the connection no longer waits for a response.
    mutating func upgradeReady() -> Bool? {
        guard phase == .processing, let current = request else { return nil }
        guard current.version == .http1_1, !current.isHead, !current.bodyStreaming, !discardingBody, !quiescing else { return false }
        phase = .tunnelled
        request = nil
        timer = nil
        return true
    }

    /// A part of the streamed body arrived; `sentSoFar` body bytes were written before it.
    func streamPartArrived(length: Int, sentSoFar: Int) -> PartAction {
        guard phase == .writingStream, let current = request else { return .ignore }
        guard length > 0 else { return .pullNext }
        if case .length(let declared) = current.framing, sentSoFar + length > declared {
            return .abortLongerThanDeclared(declared)
        }
        return .write(chunked: current.framing == .chunked)
    }

    /// A part was written: whether to ask for the next. (A failed write means the channel is closing.)
    func streamPartWritten(succeeded: Bool) -> Bool {
        succeeded && phase == .writingStream
    }

    /// The streamed body ended after `sent` bytes. Nil when the connection no longer writes it.
    func streamEnded(sent: Int) -> StreamEnd? {
        guard phase == .writingStream, let current = request else { return nil }
        switch current.framing {
        case .chunked:
            return StreamEnd(writeLastChunk: true, close: current.closeAfter, shortOfDeclared: nil)
        case .length(let declared) where sent != declared:
            // The client counts on the declared length: ending early leaves it waiting, so the connection closes.
            return StreamEnd(writeLastChunk: false, close: true, shortOfDeclared: declared)
        default:
            return StreamEnd(writeLastChunk: false, close: current.closeAfter, shortOfDeclared: nil)
        }
    }

    /// The response is written (handed to the channel): the connection closes or waits for the next request.
    mutating func responseSent(close: Bool, inputPending: Bool, writable: Bool, writesPending: Bool) -> AfterResponse {
        let abandonBody = request?.bodyStreaming ?? false
        request = nil
        if close || quiescing || abandonBody {
            // A body still arriving (unbuffered, or discarded) is drained by the lingering close.
            let linger = abandonBody || discardingBody || inputPending
            beginClosing()
            return .close(abandonBody: abandonBody, linger: linger)
        }
        phase = .awaitingHead
        if discardingBody {
            // The rest of the body is read before the next request: `lingering_timeout` between its reads.
            timer = .discard
            waitingForWritability = !writable
            return .keepOpen(waitForWritability: !writable, dropInput: false, armKeepalive: false, armDiscard: true)
        }
        if !writable {
            waitingForWritability = true
            return .keepOpen(waitForWritability: true, dropInput: false, armKeepalive: false)
        }
        guard !inputPending else { return .keepOpen(waitForWritability: false, dropInput: false, armKeepalive: false) }
        // keepalive_timeout starts once the response has left; until then send_timeout runs.
        if !writesPending { timer = .keepalive }
        return .keepOpen(waitForWritability: false, dropInput: true, armKeepalive: !writesPending)
    }

    /// The response cannot be completed (the producer failed, a length was broken, `send_timeout`): the exchange
    /// ends and the connection closes at once.
    mutating func abort() {
        beginClosing()
    }

    // MARK: - Writes and timers

    /// The client reads again after it had stopped. Nil when nothing waited for it; otherwise whether
    /// `send_timeout` stops (no write pending) and whether `keepalive_timeout` starts.
    mutating func writabilityChanged(writable: Bool, writesPending: Bool, inputPending: Bool) -> (stopSendTimeout: Bool, armKeepalive: Bool)? {
        guard writable, waitingForWritability else { return nil }
        waitingForWritability = false
        guard !writesPending else { return (false, false) }
        return (true, armKeepaliveIfIdle(inputPending: inputPending))
    }

    /// Every watched write completed: an idle connection starts `keepalive_timeout`.
    mutating func writesDrained(inputPending: Bool) -> Timer? {
        armKeepaliveIfIdle(inputPending: inputPending) ? .keepalive : nil
    }

    private mutating func armKeepaliveIfIdle(inputPending: Bool) -> Bool {
        guard phase == .awaitingHead, !inputPending, !discardingBody, timer == nil else { return false }
        timer = .keepalive
        return true
    }

    /// The read-side timer is due. `requestBytesSeen`: part of a head was received.
    mutating func timerFired(requestBytesSeen: Bool, inputPending: Bool) -> TimerAction {
        guard let fired = timer else { return .none }
        timer = nil
        switch fired {
        case .header:
            guard phase == .awaitingHead else { return .none }
            if requestBytesSeen { return .refuseTimedOut }
            beginClosing()
            return .closeWaiting
        case .body:
            if request?.bodyStreaming == true {
                beginClosing()
                return .abortStalledBody
            }
            return phase == .readingBody ? .refuseTimedOut : .none
        case .keepalive:
            guard phase == .awaitingHead, !inputPending else { return .none }
            beginClosing()
            return .close
        case .linger:
            return .close
        case .discard:
            // The client stopped sending the body its answer did not need: nginx closes then too.
            guard request == nil, discardingBody else { return .none }
            beginClosing()
            return .close
        }
    }

    /// The output side is closed for a lingering close: the drain's timer runs.
    mutating func lingeringStarted() -> Timer {
        timer = .linger
        return .linger
    }

    // MARK: - Ends

    /// A graceful stop: an idle connection closes now; one with a request under way answers it with
    /// `Connection: close`.
    mutating func quiesce(requestBytesSeen: Bool) -> Close? {
        quiescing = true
        guard phase == .awaitingHead, !requestBytesSeen else { return nil }
        beginClosing()
        return .afterWrites(linger: false)
    }

    /// The client will send nothing more (half-closure on): like nginx, taken as the client leaving, and the end
    /// of a lingering close.
    mutating func inputClosed() -> Close {
        beginClosing()
        return .now
    }

    /// The channel is gone: how the request under way ends.
    mutating func channelInactive() -> Abandoned {
        let abandoned: Abandoned = request == nil ? .none : (phase == .writingStream ? .responseCut : .clientLeft)
        phase = .closed
        request = nil
        timer = nil
        waitingForWritability = false
        discardingBody = false
        return abandoned
    }

    private mutating func beginClosing() {
        if phase != .closed { phase = .closing }
        request = nil
        timer = nil
        discardingBody = false
    }

    /// nginx's phrase for what the connection is doing, for log lines.
    func phaseDescription(requestBytesSeen: Bool) -> String {
        switch phase {
        case .awaitingHead where discardingBody: return "reading client request body"
        case .awaitingHead: return requestBytesSeen ? "reading client request headers" : "waiting for request"
        case .readingBody: return "reading client request body"
        case .processing: return "processing request"
        case .writingStream: return "sending response to client"
        case .tunnelled: return "proxying upgraded connection"
        case .closing, .closed: return "closing request"
        }
    }
}
