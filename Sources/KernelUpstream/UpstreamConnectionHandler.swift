import KernelCore
import Logging
import NIOCore

/// How a response body that was handed to the client ended at the upstream.
enum UpstreamBodyEnd {
    /// The last byte arrived.
    case complete
    /// The upstream failed (closed early, timed out, sent an invalid encoding).
    case failed(any Error)
    /// The client left (or the response was dropped) before the end.
    case cancelled
}

/// The upstream connection's reading side: collects the head, then hands body parts to the consumer one pull at a
/// time, reading from the socket only when the consumer wants more (the channel has `autoRead` off). So the client
/// side's pull drives the upstream's reads, and at most one read's worth of body is held.
///
/// `*_read_timeout` runs while a head or a pulled part is awaited. Lives on the upstream channel's event loop,
/// which is the request's.
///
/// A connection that may be kept alive has one for its whole life, in its pipeline from the connect on: each request
/// it carries starts with `beginRequest`, so a request on a pooled connection adds and removes no handler. What
/// outlives a request (a body stream's pulls and its release) names the request it belongs to (`generation`), and
/// is ignored once the connection serves another.
final class UpstreamConnectionHandler: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = UpstreamResponsePart

    private let readTimeout: TimeAmount
    let eventLoop: any EventLoop
    private var context: ChannelHandlerContext?
    /// Who waits for the head (a callback, not a promise: one object fewer per request), or the head's outcome
    /// when it came before anyone waited.
    private var headObserver: ((Result<UpstreamResponseHead, any Error>) -> Void)?
    private var headOutcome: Result<UpstreamResponseHead, any Error>?
    private var pendingHead: UpstreamResponseHead?
    private var headDelivered = false
    private var parts = CircularBuffer<ByteBuffer>()
    private var ended = false
    private var failure: (any Error)?
    private var waiter: EventLoopPromise<ByteBuffer?>?
    /// `*_read_timeout`: the connection's, shared by the requests of a kept-alive connection.
    private let readTimer: UpstreamReadTimer
    private var readPhase = ""
    private var sent = false
    /// The send timeout of a request head still being written (`UpstreamRequestSender.sendHeadOnly`).
    private var sendWatch: SendTimeoutWatch?
    private var closed = false
    /// Body bytes received from the upstream (for the balancer's outcome).
    private(set) var bodyBytesReceived: Int64 = 0
    /// Socket reads asked for: what the backpressure tests observe.
    private(set) var readsRequested = 0
    private var bodyEnd: UpstreamBodyEnd?
    private var bodyEndObserver: ((UpstreamBodyEnd) -> Void)?
    /// The whole request was written (set by the exchange when its sender completes).
    var requestFullySent = false
    /// When the whole request was written, for the requests whose sending again needs it (a POST, LOCK or
    /// PATCH meeting a closed kept-alive connection); 0 otherwise.
    var requestSentAt: UInt64 = 0
    /// Set for a connection that may go back to its group's keepalive pool (and the pool's cache): it goes back
    /// instead of closing when an answer whose head said `reusable` ends after the whole request was sent.
    var keepAliveAtEnd: (connection: UpstreamConnection, cache: IdleConnectionCache)?
    private var headReusable = false
    private var keptAtReadComplete = false
    /// The answer ended and the connection may be kept, but body parts the client has not pulled are still held:
    /// it goes back to the pool once they are taken (or dropped).
    private var keptWhenDrained = false
    /// The request the handler serves now; incremented by `beginRequest`.
    private(set) var generation: UInt64 = 0
    /// nginx's warning for bytes the upstream sent after the end of its answer, until it is logged: by the
    /// exchange when it takes a whole body with the head (`takeExcessWarning`), else by the body's consumer.
    private var excessWarning: String?
    /// The error log of the body's consumer, from its first pull: an excess seen after that is logged at once.
    private var bodyLog: (logger: Logger, suffix: String)?

    /// `readTimer` is the connection's when it is kept alive across requests (`UpstreamConnection.readTimer`); a
    /// connection for one request gets a timer of its own.
    init(readTimeout: TimeAmount, eventLoop: any EventLoop, readTimer: UpstreamReadTimer? = nil) {
        self.readTimeout = readTimeout
        self.eventLoop = eventLoop
        self.readTimer = readTimer ?? UpstreamReadTimer(eventLoop: eventLoop, shared: false)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        keepAliveAtEnd = nil  // the connection refers to this handler: no cycle is left behind
        keptWhenDrained = false
        stopReadTimer()
        // A handler removed before the head arrived (the channel went away) must not leave the head waited for.
        if !headDelivered { deliver(error: failure ?? UpstreamResponseError.prematureCloseInHead) }
    }

    /// The next request on a kept-alive connection whose previous answer ended: every state of the previous
    /// request is cleared, and calls that still name it (`generation`) change nothing from now on.
    func beginRequest() {
        generation &+= 1
        headObserver = nil
        headOutcome = nil
        pendingHead = nil
        headDelivered = false
        parts.removeAll(keepingCapacity: true)
        ended = false
        failure = nil
        waiter = nil
        readPhase = ""
        sent = false
        sendWatch?.stop()
        sendWatch = nil
        closed = false
        bodyBytesReceived = 0
        bodyEnd = nil
        bodyEndObserver = nil
        requestFullySent = false
        requestSentAt = 0
        keepAliveAtEnd = nil
        headReusable = false
        keptAtReadComplete = false
        keptWhenDrained = false
        excessWarning = nil
        bodyLog = nil
    }

    /// `observer` is called once, with the answer's head or why none came (at once when that is known already).
    func whenHead(_ observer: @escaping (Result<UpstreamResponseHead, any Error>) -> Void) {
        if let headOutcome {
            self.headOutcome = nil
            observer(headOutcome)
        } else {
            headObserver = observer
        }
    }

    /// The head as a future (for tests; the engine uses `whenHead`).
    var headFuture: EventLoopFuture<UpstreamResponseHead> {
        let promise = eventLoop.makePromise(of: UpstreamResponseHead.self)
        whenHead { promise.completeWith($0) }
        return promise.futureResult
    }

    private func resolveHead(_ outcome: Result<UpstreamResponseHead, any Error>) {
        if let observer = headObserver {
            headObserver = nil
            observer(outcome)
        } else {
            headOutcome = outcome
        }
    }

    private func read() {
        guard let context else { return }
        readsRequested += 1
        context.read()
    }

    func startReading() { read() }

    /// Whether `requestSent` was called for the current request.
    var isRequestSent: Bool { sent }

    /// Times the write of the current request's head until `requestSent`.
    func watchSend(_ watch: SendTimeoutWatch) {
        sendWatch = watch
    }

    /// The request is written: from now on the read timeout runs while an answer is awaited.
    func requestSent() {
        sent = true
        sendWatch?.stop()
        sendWatch = nil
        if !headDelivered { armReadTimer(phase: "reading response header from upstream") }
    }

    func fail(_ error: any Error) {
        guard !closed else { return }
        deliver(error: error)
        closed = true
        context?.close(promise: nil)
    }

    /// Closes the connection without an error (an answer that is not passed on: a retried 5xx).
    func close() {
        guard !closed else { return }
        closed = true
        ended = true
        stopReadTimer()
        context?.close(promise: nil)
    }

    /// The answer's body arrived whole with its head, without a failure: its end is known before it is handed on.
    var bodyEndedWhole: Bool {
        guard case .complete? = bodyEnd else { return false }
        return bodyEndObserver == nil
    }

    /// `observer` is called once, when the body handed to the client ends (at once when it already has).
    func observeBodyEnd(_ observer: @escaping (UpstreamBodyEnd) -> Void) {
        if let bodyEnd { observer(bodyEnd) } else { bodyEndObserver = observer }
    }

    private func recordBodyEnd(_ end: UpstreamBodyEnd) {
        guard headDelivered, bodyEnd == nil else { return }
        bodyEnd = end
        if let observer = bodyEndObserver {
            bodyEndObserver = nil
            observer(end)
        }
    }

    private func armReadTimer(phase: String) {
        guard context != nil else { return }
        readPhase = phase
        readTimer.arm(NIODeadline.now() + readTimeout, for: self)
    }

    /// The read under way took longer than `*_read_timeout`.
    fileprivate func readTimedOut() {
        fail(UpstreamFailure.timeout("upstream timed out (110: Connection timed out) while \(readPhase)"))
    }

    /// No read is timed any longer; the timer itself goes with the connection (`stopReadTimer`) or fires idle.
    private func pauseReadTimer() { readTimer.pause(for: self) }

    private func stopReadTimer() { readTimer.stop(for: self) }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if sent || headDelivered { armReadTimer(phase: headDelivered ? "reading upstream" : "reading response header from upstream") }
        switch unwrapInboundIn(data) {
        case .head(let head):
            headReusable = head.reusable
            pendingHead = head
        case .body(let part):
            bodyBytesReceived += Int64(part.readableBytes)
            if let waiter, parts.isEmpty, headDelivered {
                self.waiter = nil
                waiter.succeed(part)
            } else {
                parts.append(part)
            }
        case .end:
            ended = true
            stopReadTimer()
            recordBodyEnd(.complete)
            if let waiter, parts.isEmpty {
                self.waiter = nil
                waiter.succeed(nil)
            }
            closed = true
            if headReusable, requestFullySent, keepAliveAtEnd != nil {
                // Kept once this read is done (the head may still be delivered at its end).
                keptAtReadComplete = true
            } else {
                keepAliveAtEnd = nil
                context.close(promise: nil)
            }
        case .excess(let warning):
            if let bodyLog {
                bodyLog.logger.warning("\(warning) while reading upstream\(bodyLog.suffix)")
            } else {
                excessWarning = warning
            }
        }
    }

    /// The excess warning not yet logged, for the exchange to log (once) with its request's error-log suffix.
    func takeExcessWarning() -> String? {
        defer { excessWarning = nil }
        return excessWarning
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        deliverHeadIfReady()
        if !headDelivered {
            read()
        } else if waiter != nil, parts.isEmpty, !ended {
            read()
        } else if waiter == nil {
            pauseReadTimer()
        }
        context.fireChannelReadComplete()
        if keptAtReadComplete {
            keptAtReadComplete = false
            if parts.isEmpty { keepConnection() } else { keptWhenDrained = true }
        }
    }

    /// The answer has ended and nothing of it is held: the connection goes back to its pool (this handler stays
    /// in its pipeline for the next request), unless the peer sent more than it framed.
    private func keepConnection() {
        keptWhenDrained = false
        guard let (connection, cache) = keepAliveAtEnd else { return }
        keepAliveAtEnd = nil
        let slot = connection.decoderSlot
        slot.decoder = nil
        if slot.bytesAfterEnd {
            connection.channel.close(promise: nil)
        } else {
            cache.keep(connection)
        }
    }

    /// The head goes out once a whole read has been decoded, so that a small answer that came in one read is
    /// handed over as one buffer instead of a stream.
    private func deliverHeadIfReady() {
        guard !headDelivered, let head = pendingHead else { return }
        headDelivered = true
        pendingHead = nil
        if ended { bodyEnd = .complete }
        resolveHead(.success(head))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        deliverHeadIfReady()
        deliver(error: error)
        closed = true
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        deliverHeadIfReady()
        keepAliveAtEnd = nil
        keptWhenDrained = false
        readTimer.cancel()
        closed = true
        if !ended { deliver(error: failure ?? UpstreamResponseError.prematureCloseInHead) }
        context.fireChannelInactive()
    }

    private func deliver(error: any Error) {
        stopReadTimer()
        if !headDelivered {
            headDelivered = true
            resolveHead(.failure(error))
            return
        }
        guard !ended, failure == nil else { return }
        failure = error
        recordBodyEnd(.failed(error))
        if let waiter {
            self.waiter = nil
            waiter.fail(error)
        }
    }

    /// The whole body when it has already arrived (small answers), else nil.
    func takeWholeBody() -> ByteBuffer? {
        guard ended, failure == nil else { return nil }
        guard var first = parts.popFirst() else { return ByteBuffer() }
        while let part = parts.popFirst() { first.writeImmutableBuffer(part) }
        return first
    }

    /// The parts received and not handed on (bytes an upgraded peer sent right behind its `101` head).
    func takeHeldParts() -> [ByteBuffer] {
        defer { parts.removeAll() }
        return Array(parts)
    }

    /// The consumer's pull: a held part, or one more read from the socket.
    func next(logger: Logger, suffix: String) -> EventLoopFuture<ByteBuffer?> {
        next(of: generation, logger: logger, suffix: suffix)
    }

    /// The pull of request `generation`'s consumer: the end once the connection serves another request.
    func next(of generation: UInt64, logger: Logger, suffix: String) -> EventLoopFuture<ByteBuffer?> {
        if eventLoop.inEventLoop { return pull(of: generation, logger: logger, suffix: suffix) }
        return eventLoop.flatSubmit { self.pull(of: generation, logger: logger, suffix: suffix) }
    }

    private func pull(of generation: UInt64, logger: Logger, suffix: String) -> EventLoopFuture<ByteBuffer?> {
        guard generation == self.generation else { return eventLoop.makeSucceededFuture(nil) }
        if bodyLog == nil {
            bodyLog = (logger, suffix)
            if let warning = takeExcessWarning() { logger.warning("\(warning) while reading upstream\(suffix)") }
        }
        if let part = parts.popFirst() {
            // The last held part of an ended answer is taken: the connection may serve the next request.
            if keptWhenDrained, parts.isEmpty { keepConnection() }
            return eventLoop.makeSucceededFuture(part)
        }
        if ended { return eventLoop.makeSucceededFuture(nil) }
        if let failure {
            logger.error("\(UpstreamConnectionHandler.describeBodyFailure(failure))\(suffix)")
            return eventLoop.makeFailedFuture(LoggedBodyFailure(failure))
        }
        precondition(waiter == nil, "ResponseBodyStream.next called again before the previous part arrived")
        let promise = eventLoop.makePromise(of: ByteBuffer?.self)
        waiter = promise
        armReadTimer(phase: "reading upstream")
        read()
        return promise.futureResult.flatMapErrorThrowing { error in
            logger.error("\(UpstreamConnectionHandler.describeBodyFailure(error))\(suffix)")
            throw LoggedBodyFailure(error)
        }
    }

    static func describeBodyFailure(_ error: any Error) -> String {
        switch error {
        case let failure as UpstreamFailure: return failure.message
        case let broken as UpstreamResponseError: return "\(broken) while reading upstream"
        case let invalid as UpstreamInvalidResponse: return "\(invalid) while reading upstream"
        default: return "recv() failed (\(UpstreamFailure.describe(error))) while reading upstream"
        }
    }

    /// What the balancer is told of a body that broke off.
    static func peerFailure(ofBody error: any Error) -> PeerFailure {
        switch error {
        case let failure as UpstreamFailure: return failure.peerFailure
        case is UpstreamInvalidResponse: return .invalidHeader
        default: return .error
        }
    }

    /// The client of the current request is gone: the upstream connection closes and a waiting pull ends.
    func cancel() {
        if eventLoop.inEventLoop { cancel(generation) } else { eventLoop.execute { self.cancel(self.generation) } }
    }

    /// Request `generation`'s client is gone (nothing, once the connection serves another request).
    func cancel(_ generation: UInt64) {
        let close: @Sendable () -> Void = { [self] in
            guard generation == self.generation else { return }
            parts.removeAll()
            // An answer that ended with parts nobody will take: the connection is kept without them.
            if keptWhenDrained { keepConnection() }
            if !ended {
                ended = true
                closed = true
                recordBodyEnd(.cancelled)
                self.context?.close(promise: nil)
            }
            if let waiter { self.waiter = nil; waiter.succeed(nil) }
        }
        if eventLoop.inEventLoop { close() } else { eventLoop.execute(close) }
    }
}

/// An upstream connection's `*_read_timeout`: one scheduled task whose deadline moves with each read instead of
/// being cancelled and scheduled again; the task, when it fires early, waits again for the moved deadline. A
/// kept-alive connection has one for its whole life, shared by the requests it carries, so a request on a pooled
/// connection costs no timer scheduling at all. Used on the connection's event loop only.
final class UpstreamReadTimer: @unchecked Sendable {
    private let eventLoop: any EventLoop
    /// Shared by the requests of a kept-alive connection: stopping leaves the task to fire idle (or serve the
    /// next request) instead of cancelling it; it is cancelled when the connection closes.
    private let shared: Bool
    private var task: Scheduled<Void>?
    /// When the read under way times out; nil: no read is timed.
    private var deadline: NIODeadline?
    /// Whose read is timed: told when it times out.
    private var owner: UpstreamConnectionHandler?

    init(eventLoop: any EventLoop, shared: Bool) {
        self.eventLoop = eventLoop
        self.shared = shared
    }

    /// Times a read of `owner`'s until `deadline`.
    func arm(_ deadline: NIODeadline, for owner: UpstreamConnectionHandler) {
        self.deadline = deadline
        self.owner = owner
        if task == nil { schedule(at: deadline) }
    }

    /// No read of `owner`'s is timed until the next `arm`. (A handler of an earlier request on the same
    /// connection changes nothing.)
    func pause(for owner: UpstreamConnectionHandler) {
        guard self.owner == nil || self.owner === owner else { return }
        deadline = nil
    }

    /// `owner`'s reading is over: nothing is timed, and a timer of one request's connection is cancelled.
    func stop(for owner: UpstreamConnectionHandler) {
        guard self.owner == nil || self.owner === owner else { return }
        deadline = nil
        self.owner = nil
        if !shared { cancel() }
    }

    /// The connection is gone.
    func cancel() {
        deadline = nil
        owner = nil
        task?.cancel()
        task = nil
    }

    private func schedule(at deadline: NIODeadline) {
        task = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            task = nil
            guard let current = self.deadline else {
                owner = nil
                return
            }
            if current > .now() {
                schedule(at: current)  // read progress since the timer was set
                return
            }
            let owner = self.owner
            self.deadline = nil
            self.owner = nil
            owner?.readTimedOut()
        }
    }
}
