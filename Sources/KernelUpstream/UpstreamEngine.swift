import KernelCore
import Logging
import NIOCore
import NIOPosix

/// The upstream engine (nginx's `ngx_http_upstream.c`), parameterised by protocol: leases peers from the group,
/// connects (TCP or unix) within the connect timeout, sends the protocol's head and the request body, reads the
/// answer's head through the protocol's parser, retries other peers as `*_next_upstream` allows, and hands the
/// client a response whose body streams from the upstream as the client pulls it.
public struct UpstreamEngine<Protocol: UpstreamProtocol>: Sendable {
    public let configuration: UpstreamConfiguration
    public let hooks: Protocol
    /// The same with the protocol erased: what each request's exchange works with. The exchange and the types it
    /// makes per request are not generic, so that no generic metadata is looked up and no type is cast at run
    /// time per request (this module's generic code is not specialised for the protocol modules that use it).
    let core: UpstreamEngineCore

    public init(configuration: UpstreamConfiguration, protocol hooks: Protocol) {
        self.configuration = configuration
        self.hooks = hooks
        core = UpstreamEngineCore(configuration: configuration, hooks: hooks,
                                  pool: UpstreamConnectionPool.shared(for: configuration.group))
    }

    /// The group's idle connections (`keepalive`), shared with every engine of the group; nil without one.
    var pool: UpstreamConnectionPool? { core.pool }

    /// The response to `request`. The future does not fail: an upstream that cannot answer gives a JSON 502/504
    /// with nginx's log line. Every response made here carries its `UpstreamReport`.
    public func proxy(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        proxy(request, context: context, deadline: nil)
    }

    /// The response to `request` within an absolute `deadline` (the location's `request_timeout`, see
    /// `RequestDeadlinePolicy`): when it is reached before the upstream's head arrived, the attempt is closed and
    /// the client answered 504 at once, and no further peer is tried. The peer is not counted as failed: the limit
    /// was the request's, not a fault of the peer's. A body already streaming is not cut at the deadline.
    public func proxy(_ request: KernelRequest, context: RequestContext, deadline: NIODeadline?) -> EventLoopFuture<KernelResponse> {
        let promise = context.eventLoop.makePromise(of: KernelResponse.self)
        proxy(request, context: context, deadline: deadline) { promise.succeed($0) }
        return promise.futureResult
    }

    /// The same, with the answer handed to `respond` (once, on `context.eventLoop`) instead of through a future:
    /// what a handler that answers through a callback (`RequestHandler.answersThroughCallback`) calls.
    public func proxy(_ request: KernelRequest, context: RequestContext, deadline: NIODeadline?,
                      respond: @escaping (KernelResponse) -> Void) {
        UpstreamExchange(engine: core, request: request, context: context, deadline: deadline, answer: respond).start()
    }
}

/// An engine's settings and protocol hooks, made once per engine and shared by its exchanges.
final class UpstreamEngineCore: Sendable {
    let configuration: UpstreamConfiguration
    let hooks: any UpstreamProtocol
    /// The group's idle connections (`keepalive`), shared with every engine of the group; nil without one.
    let pool: UpstreamConnectionPool?

    init(configuration: UpstreamConfiguration, hooks: any UpstreamProtocol, pool: UpstreamConnectionPool?) {
        self.configuration = configuration
        self.hooks = hooks
        self.pool = pool
    }
}

/// One proxied request: its attempts at peers until one answers or none may be tried. Lives on the request's
/// event loop.
final class UpstreamExchange: @unchecked Sendable {
    private let engine: UpstreamEngineCore
    private let request: KernelRequest
    private let context: RequestContext
    /// Who gets the client's answer (once, on the event loop).
    private let answer: (KernelResponse) -> Void
    private var head: ByteBuffer?
    private var tried: [PeerAddress] = []
    private var attempts: [UpstreamAttempt] = []
    private var lastFailure: UpstreamFailure?
    /// When the first attempt began (`*_next_upstream_timeout` counts from it).
    private var firstAttemptStarted: UInt64?
    // The request's deadline and the timer that answers 504 at it.
    private let deadline: NIODeadline?
    private var deadlineTimer: Scheduled<Void>?
    /// The exchange closed its attempt itself (the deadline, or the client leaving): whatever the attempt does
    /// next only gives its lease back (`releaseAbandoned`).
    private var abandoned = false
    private var current: (handler: UpstreamConnectionHandler, peer: PeerAddress, started: UInt64)?
    /// The client has its answer (a response head, or an error): nothing more is sent to the promise.
    private var responded = false

    init(engine: UpstreamEngineCore, request: KernelRequest, context: RequestContext, deadline: NIODeadline? = nil,
         answer: @escaping (KernelResponse) -> Void) {
        self.engine = engine
        self.request = request
        self.context = context
        self.deadline = deadline
        self.answer = answer
    }

    private var eventLoop: any EventLoop { context.eventLoop }
    private var configuration: UpstreamConfiguration { engine.configuration }

    func start() {
        if eventLoop.inEventLoop { begin() } else { eventLoop.execute { self.begin() } }
    }

    private func begin() {
        do {
            head = try engine.hooks.makeRequestHead(for: request, context: context, allocator: ByteBufferAllocator())
        } catch let refused as UpstreamRequestRefused {
            context.logger.error("\(refused.logMessage)\(suffix(nil))")
            respond(refused.response)
            return
        } catch {
            context.logger.error("\(error)\(suffix(nil))")
            respond(.error(502, "bad gateway"))
            return
        }
        if let deadline {
            deadlineTimer = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { self.reachDeadline() }
        }
        // Weakly: the exchange holds its context, which holds the cancellation and its callbacks; a strong
        // reference back would keep every exchange (its request, its answer) alive for good.
        context.cancellation?.whenCancelled { [weak self] _ in
            guard let self else { return }
            if self.eventLoop.inEventLoop { self.clientLeft() } else { self.eventLoop.execute { self.clientLeft() } }
        }
        attempt()
    }

    /// The client left before its answer's head (nginx's `proxy_ignore_client_abort off`): the attempt in progress
    /// is closed at once, so the upstream learns of it and its read timeout does not run out later to count
    /// against the peer, and its lease is given back as a client close, not a failure of the peer's.
    private func clientLeft() {
        guard !responded else { return }
        abandoned = true
        if let current {
            let phase = current.handler.requestFullySent ? "reading response header from upstream" : "sending request to upstream"
            context.logger.info("client prematurely closed connection, so upstream connection is closed too while \(phase)\(suffix(current.peer))")
            current.handler.fail(UpstreamFailure.error("client prematurely closed connection"))
        }
        deadlineTimer?.cancel()
        // The connection has finished the exchange (499): this answer goes nowhere, it only ends the exchange.
        respond(.error(499, "client closed request"))
    }

    /// The request's deadline: the attempt in progress is closed and the client answered 504 now. The attempt's
    /// own completion then only gives its lease back (`releaseAbandoned`).
    private func reachDeadline() {
        guard !responded else { return }
        abandoned = true
        let failure = UpstreamFailure.timeout("upstream timed out (request deadline reached) while waiting for upstream")
        context.logger.error("\(failure.message)\(suffix(current?.peer))")
        if let current {
            attempts.append(UpstreamAttempt(address: current.peer.description, status: 504,
                                            responseTime: seconds(KernelClock.monotonicNanoseconds() &- current.started),
                                            connectTime: nil))
            current.handler.fail(failure)
        }
        respond(failure.response)
    }

    /// A lease whose attempt the exchange ended (the deadline, the client leaving): given back as a client close,
    /// not a failure of the peer's.
    private func releaseAbandoned(_ lease: PeerLease, started: UInt64) {
        lease.finish(PeerLeaseOutcome(status: nil, bytesReceived: 0,
                                      durationNanoseconds: KernelClock.monotonicNanoseconds() &- started, clientClosed: true))
    }

    /// nginx's error-log suffix naming the request, and the peer (or the group, when no peer was chosen).
    private func suffix(_ peer: PeerAddress?, group: String? = nil) -> String {
        var text = ", client: \(request.connection.remoteIP), server: \(context.route.serverName), request: \"\(request.requestLine)\""
        if let peer { text += ", upstream: \"\(engine.hooks.scheme)://\(peer)\"" }
        if let group { text += ", upstream: \"\(engine.hooks.scheme)://\(group)\"" }
        if let host = request.headers["Host"] { text += ", host: \"\(host)\"" }
        return text
    }

    /// The client's answer, with every attempt so far.
    private func respond(_ response: KernelResponse) {
        guard !responded else { return }
        responded = true
        deadlineTimer?.cancel()
        var response = response
        response.upstream = UpstreamReport(group: configuration.group.name, attempts: attempts)
        answer(engine.hooks.finishResponse(response, request: request, context: context))
    }

    /// Whether a failed attempt may go on to another peer (nginx's `ngx_http_upstream_test_next`): the condition
    /// is configured, tries are left, and the request can be sent again: not once an unbuffered body was being
    /// read, nor a POST, LOCK or PATCH once sent unless `non_idempotent` is set.
    private func mayRetry(_ condition: NextUpstreamConditions, requestSent: Bool) -> Bool {
        let next = configuration.nextUpstream
        guard next.contains(condition), tried.count < triesAllowed, withinNextUpstreamTimeout else { return false }
        guard requestSent else { return true }
        if case .stream? = request.bodySource { return false }
        if Self.isNonIdempotent(request.method), !next.contains(.nonIdempotent) { return false }
        return true
    }

    /// How many peers the request may try: each of the group's once (nginx's default), or fewer with
    /// `*_next_upstream_tries`.
    private var triesAllowed: Int {
        let peers = max(1, configuration.group.maxTries)
        let limit = configuration.nextUpstreamTries
        return limit > 0 ? min(limit, peers) : peers
    }

    /// Whether `*_next_upstream_timeout` (if any) leaves time to try another peer.
    private var withinNextUpstreamTimeout: Bool {
        let timeout = configuration.nextUpstreamTimeout.nanoseconds
        guard timeout > 0, let first = firstAttemptStarted else { return true }
        return KernelClock.monotonicNanoseconds() &- first < UInt64(timeout)
    }

    private func attempt() {
        let group = configuration.group
        guard tried.count < triesAllowed else {
            noPeer()
            return
        }
        guard group.leasesAtOnce else {
            group.lease(request, excluding: tried, on: eventLoop).hop(to: eventLoop).assumeIsolated().whenSuccess { lease in
                self.leased(lease)
            }
            return
        }
        leased(group.begin(request, excluding: tried))
    }

    private func leased(_ lease: PeerLease?) {
        if abandoned {
            if let lease { releaseAbandoned(lease, started: KernelClock.monotonicNanoseconds()) }
            return
        }
        if let lease { run(lease) } else { noPeer() }
    }

    /// No peer may be tried: the last failure's answer, or nginx's "no live upstreams" (every peer down, or
    /// none left that was not tried), at once, with the group named in the log line and the answer.
    private func noPeer() {
        if let lastFailure {
            respond(lastFailure.response)
        } else {
            let name = configuration.group.name
            context.logger.error("no live upstreams while connecting to upstream\(suffix(nil, group: name))")
            respond(.error(502, "no live upstreams in upstream \"\(name)\""))
        }
    }

    /// One attempt at the leased peer: over an idle connection of the group's pool when there is one to the peer,
    /// else a new one. `afterStaleConnection`: the same attempt again, on a new connection, after a kept-alive one
    /// failed before answering (not another try).
    private func run(_ lease: PeerLease, afterStaleConnection: Bool = false) {
        let peer = lease.peer
        if !afterStaleConnection { tried.append(peer) }
        context.activity?.note("waiting for upstream \"\(engine.hooks.scheme)://\(peer)\"")
        let started = KernelClock.monotonicNanoseconds()
        if firstAttemptStarted == nil { firstAttemptStarted = started }
        if case .local = peer {
            runLocal(lease, started: started)
            return
        }
        let decoder = UpstreamResponseDecoder(parser: engine.hooks.makeResponseParser(for: request),
                                              isHeadRequest: request.method == "HEAD")
        let cache = engine.pool?.cache(on: eventLoop)
        if !afterStaleConnection, let cache, let idle = cache.take(peer) {
            // The connection's reader stays in its pipeline from request to request.
            let handler = idle.reader
            handler.beginRequest()
            current = (handler, peer, started)
            idle.decoderSlot.decoder = decoder
            connected(idle.channel, lease: lease, handler: handler, started: started, connection: idle, reused: true)
            return
        }
        // A connection that may be kept gets a decoder it keeps across requests, the keepalive watch first, and a
        // read timer its requests share.
        let kept = cache.map {
            (watch: UpstreamKeepaliveHandler(readTimer: UpstreamReadTimer(eventLoop: eventLoop, shared: true)),
             slot: UpstreamDecoderSlot(decoder), cache: $0)
        }
        let handler = UpstreamConnectionHandler(readTimeout: configuration.readTimeout, eventLoop: eventLoop,
                                                readTimer: kept?.watch.readTimer)
        current = (handler, peer, started)
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(configuration.connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Set here, on the loop, rather than as a bootstrap option: each bootstrap option is applied
                    // through a future of its own, on every connection.
                    try channel.syncOptions?.setOption(.autoRead, value: false)
                    let pipeline = channel.pipeline.syncOperations
                    if let kept {
                        try pipeline.addHandlers([kept.watch, ByteToMessageHandler(UpstreamConnectionDecoder(slot: kept.slot)), handler])
                    } else {
                        try pipeline.addHandlers([ByteToMessageHandler(decoder), handler])
                    }
                }
            }
        let connecting: EventLoopFuture<any Channel>
        switch peer {
        case .tcp(let host, let port):
            if let address = (try? SocketAddress(ipAddress: host, port: port)) ?? configuration.resolver.address(host: host, port: port) {
                connecting = bootstrap.connect(to: address)
            } else {
                // A name nobody resolved: never looked up here, on the event loop.
                connecting = eventLoop.makeFailedFuture(UnresolvedPeer(host: host))
            }
        case .unix(let path):
            connecting = bootstrap.connect(unixDomainSocketPath: path)
        case .local:
            preconditionFailure("a local peer is dispatched by runLocal, never connected")
        }
        connecting.hop(to: eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let channel):
                let connection = kept.map {
                    UpstreamConnection(channel: channel, peer: peer, keepalive: $0.watch, decoderSlot: $0.slot, reader: handler,
                                       cache: $0.cache)
                }
                self.connected(channel, lease: lease, handler: handler, started: started, connection: connection, reused: false)
            case .failure(let error):
                if self.abandoned {
                    self.releaseAbandoned(lease, started: started)
                    return
                }
                let failure: UpstreamFailure
                if let unresolved = error as? UnresolvedPeer {
                    failure = .error("\(unresolved.host) could not be resolved (3: Host not found)")
                } else {
                    failure = UpstreamFailure.connectFailure(error)
                }
                handler.fail(failure)
                self.context.logger.error("\(failure.message) while connecting to upstream\(self.suffix(peer))")
                self.failed(lease, failure, started: started, connectTime: nil, requestSent: false)
            }
        }
    }

    /// An attempt at the group's `local` server: this process's worker side answers (`LocalPeer`), with no
    /// socket. Its answer is treated as a peer's: `*_next_upstream` statuses go on to the next peer, the worker's
    /// queue depth feeds `least_queue` and is dropped, and the lease ends with the body.
    private func runLocal(_ lease: PeerLease, started: UInt64) {
        let answered: EventLoopFuture<KernelResponse>
        do {
            guard let local = configuration.group.localPeer else {
                throw LocalPeer.Refusal(description: "no local worker side in this process (local needs --role both)")
            }
            answered = try local.dispatch(request, on: eventLoop, cancellation: context.cancellation)
        } catch {
            let failure = UpstreamFailure.error("\(error)")
            context.logger.error("\(failure.message) while sending request to upstream\(suffix(lease.peer))")
            failed(lease, failure, started: started, connectTime: nil, requestSent: false)
            return
        }
        answered.hop(to: eventLoop).assumeIsolated().whenSuccess { response in
            self.answeredLocally(response, lease: lease, started: started)
        }
    }

    private func answeredLocally(_ response: KernelResponse, lease: PeerLease, started: UInt64) {
        var response = response
        let headerNanoseconds = KernelClock.monotonicNanoseconds() &- started
        if abandoned {
            if case .stream(let stream) = response.body { stream.cancel() }
            releaseAbandoned(lease, started: started)
            return
        }
        let queueDepth = KernelQueueDepth.parse(response.headers[KernelQueueDepth.headerName])
        response.headers.remove(KernelQueueDepth.headerName)
        let status = response.status
        if let condition = NextUpstreamConditions.condition(forStatus: status), mayRetry(condition, requestSent: true),
           let next = configuration.group.begin(request, excluding: tried) {
            if case .stream(let stream) = response.body { stream.cancel() }
            attempts.append(UpstreamAttempt(address: lease.address, status: status,
                                            responseTime: seconds(headerNanoseconds), connectTime: 0,
                                            headerTime: seconds(headerNanoseconds)))
            let counts = status != 403 && status != 404
            lease.finish(PeerLeaseOutcome(status: status, bytesReceived: 0, durationNanoseconds: headerNanoseconds,
                                          failure: counts ? .status(status) : nil, headerNanoseconds: headerNanoseconds,
                                          queueDepth: queueDepth))
            lastFailure = nil
            run(next)
            return
        }
        let timing = UpstreamBodyTiming(startNanoseconds: started)
        response.body = LocalAnswerBody.observing(response.body) { end, bytes in
            let now = KernelClock.monotonicNanoseconds()
            timing.markEnd(at: now)
            lease.finish(PeerLeaseOutcome(status: status, bytesReceived: bytes, durationNanoseconds: now &- started,
                                          failure: end == .failed ? .error : nil, clientClosed: end == .cancelled,
                                          headerNanoseconds: headerNanoseconds, queueDepth: queueDepth))
        }
        attempts.append(UpstreamAttempt(address: lease.address, status: status,
                                        responseTime: seconds(headerNanoseconds), connectTime: 0,
                                        headerTime: seconds(headerNanoseconds)))
        response.upstream = UpstreamReport(group: configuration.group.name, attempts: attempts, bodyTiming: timing)
        responded = true
        deadlineTimer?.cancel()
        answer(engine.hooks.finishResponse(response, request: request, context: context))
    }

    /// An attempt that gave no usable answer: the balancer hears of it, then the next peer or the last failure.
    private func failed(_ lease: PeerLease, _ failure: UpstreamFailure, started: UInt64, connectTime: Double?,
                        requestSent: Bool) {
        if abandoned {
            releaseAbandoned(lease, started: started)
            return
        }
        let now = KernelClock.monotonicNanoseconds()
        // `$upstream_status` shows the status the failure stands for (502, or 504 for a timeout), as nginx's
        // `ngx_http_upstream_next` records it; the balancer hears of no status, the peer gave none.
        attempts.append(UpstreamAttempt(address: lease.address, status: failure.response.status,
                                        responseTime: seconds(now &- started), connectTime: connectTime))
        lease.finish(PeerLeaseOutcome(status: nil, bytesReceived: 0, durationNanoseconds: now &- started,
                                      failure: failure.peerFailure, failurePhase: failure.phase))
        lastFailure = failure
        if mayRetry(failure.condition, requestSent: requestSent) {
            attempt()
        } else {
            respond(failure.response)
        }
    }

    /// The connection is there (new, or reused from the pool): the request goes out and the head is awaited.
    /// `connection` is set when the connection may go back to the pool after the answer.
    private func connected(_ channel: any Channel, lease: PeerLease, handler: UpstreamConnectionHandler,
                           started: UInt64, connection: UpstreamConnection?, reused: Bool) {
        if abandoned {
            channel.close(promise: nil)
            releaseAbandoned(lease, started: started)
            return
        }
        let connectTime = seconds(KernelClock.monotonicNanoseconds() &- started)
        var sendError: (any Error)?
        if let connection {
            // Its own loop's cache, found once when it was made (not through the pool's lock per request).
            let cache = connection.cache
            connection.requests += 1
            if connection.requests < cache.settings.requests {
                handler.keepAliveAtEnd = (connection, cache)
            }
        }
        let timesSending = Self.isNonIdempotent(request.method)
        let sent: (Result<Void, any Error>) -> Void = { result in
            switch result {
            case .success:
                handler.requestFullySent = true
                if timesSending { handler.requestSentAt = KernelClock.monotonicNanoseconds() }
            case .failure(let error):
                // A failure of the request's own (a timeout, the client's body broken off) ends the attempt and is
                // logged with it; a failed write shows as the upstream closing.
                if let failure = error as? UpstreamFailure { handler.fail(failure) }
                sendError = error
            }
            handler.requestSent()
        }
        let requestHead = head ?? ByteBuffer()
        if !UpstreamRequestSender.sendHeadOnly(requestHead, of: request, hooks: engine.hooks, channel: channel,
                                                sendTimeout: configuration.sendTimeout, reader: handler, completion: sent) {
            let sender = UpstreamRequestSender(channel: channel, hooks: engine.hooks, sendTimeout: configuration.sendTimeout,
                                               eventLoop: eventLoop) {
                handler.fail(UpstreamFailure.timeout(UpstreamRequestSender.timeoutMessage))
            }
            sender.send(head: requestHead, request: request, completion: sent)
        }
        handler.startReading()
        let peer = lease.peer
        handler.whenHead { result in
            switch result {
            case .success(let head):
                self.answered(head, lease: lease, handler: handler, channel: channel, started: started, connectTime: connectTime)
            case .failure(let error):
                if self.abandoned {  // closed by the deadline or the client leaving, already logged and answered
                    channel.close(promise: nil)
                    self.releaseAbandoned(lease, started: started)
                    return
                }
                if reused, let connection, self.isStale(after: error, sendError: sendError, connection: connection, handler: handler) {
                    // The peer closed a kept-alive connection before this request reached it (its keep-alive ran
                    // out): nothing was processed, so the request goes again, on a new connection to the same peer,
                    // whatever its method, and the peer is not blamed.
                    self.context.logger.info("upstream closed a kept-alive connection before answering (\(UpstreamFailure.describe(sendError ?? error))), retrying on a new connection\(self.suffix(peer))")
                    channel.close(promise: nil)
                    self.run(lease, afterStaleConnection: true)
                    return
                }
                let failure: UpstreamFailure
                switch error {
                case let known as UpstreamFailure:
                    failure = known
                case let broken as UpstreamResponseError:
                    if broken == .prematureCloseInHead, let sendError {
                        failure = .error("writev() failed (\(UpstreamFailure.describe(sendError))) while sending request to upstream")
                    } else {
                        failure = .error("\(broken) while reading response header from upstream")
                    }
                case let invalid as UpstreamInvalidResponse:
                    failure = .invalidHeader("\(invalid) while reading response header from upstream")
                default:
                    failure = .error("recv() failed (\(UpstreamFailure.describe(error))) while reading response header from upstream")
                }
                self.context.logger.error("\(failure.message)\(self.suffix(peer))")
                channel.close(promise: nil)
                self.failed(lease, failure, started: started, connectTime: connectTime, requestSent: true)
            }
        }
    }

    /// Whether a failure on a reused connection is the peer having closed it while it was idle: no byte of the
    /// answer arrived, no timeout ran out, and the request can be sent again (its body is not a stream being
    /// read from the client, and did not fail on the client's side).
    private func isStale(after error: any Error, sendError: (any Error)?, connection: UpstreamConnection,
                         handler: UpstreamConnectionHandler) -> Bool {
        guard !connection.keepalive.answerStarted else { return false }
        if case .stream? = request.bodySource { return false }
        if error is UpstreamFailure || sendError is UpstreamFailure || error is UpstreamInvalidResponse { return false }
        // A POST, LOCK or PATCH the peer had whole may have been acted on before it closed: it goes again only when
        // the close followed its last byte at once (the peer's close crossed the request: a connection it had
        // closed while idle), or when `*_next_upstream non_idempotent` lets such requests go again anyway. Later,
        // it is the peer's failure, and nginx's 502.
        if handler.requestFullySent, Self.isNonIdempotent(request.method), !configuration.nextUpstream.contains(.nonIdempotent),
           KernelClock.monotonicNanoseconds() &- handler.requestSentAt > Self.staleCloseWindowNanoseconds {
            return false
        }
        return true
    }

    /// How soon after a non-idempotent request's last byte a kept-alive connection's close still counts as the peer
    /// having closed it idle (its close crossing the request), rather than the peer failing on the request.
    static let staleCloseWindowNanoseconds: UInt64 = 50_000_000

    /// The methods nginx does not send to another peer once sent (`ngx_http_upstream_next`): POST, LOCK, PATCH.
    static func isNonIdempotent(_ method: String) -> Bool {
        method == "POST" || method == "LOCK" || method == "PATCH"
    }

    /// A head arrived: passed on, or (a status `*_next_upstream` names, with another peer to try) dropped.
    private func answered(_ head: UpstreamResponseHead, lease: PeerLease, handler: UpstreamConnectionHandler,
                          channel: any Channel, started: UInt64, connectTime: Double) {
        if abandoned {
            handler.close()
            releaseAbandoned(lease, started: started)
            return
        }
        let headerNanoseconds = KernelClock.monotonicNanoseconds() &- started
        if head.status == 101 {
            upgraded(head, lease: lease, handler: handler, channel: channel, started: started, connectTime: connectTime)
            return
        }
        // A kernel worker's model queue depth, for `least_queue`; responseHeaders keeps it from the client.
        let queueDepth = KernelQueueDepth.parse(head.headers[KernelQueueDepth.headerName])
        // Without another peer to lease, the answer is passed on as it is (nginx does the same).
        if let condition = NextUpstreamConditions.condition(forStatus: head.status), mayRetry(condition, requestSent: true),
           let next = configuration.group.begin(request, excluding: tried) {
            handler.close()
            attempts.append(UpstreamAttempt(address: lease.address, status: head.status,
                                            responseTime: seconds(headerNanoseconds), connectTime: connectTime,
                                            headerTime: seconds(headerNanoseconds)))
            // nginx counts a 403 or 404 that went on to the next peer as no failure of the peer's.
            let counts = head.status != 403 && head.status != 404
            lease.finish(PeerLeaseOutcome(status: head.status, bytesReceived: handler.bodyBytesReceived,
                                          durationNanoseconds: headerNanoseconds,
                                          failure: counts ? .status(head.status) : nil, headerNanoseconds: headerNanoseconds,
                                          queueDepth: queueDepth))
            lastFailure = nil
            run(next)
            return
        }
        // The balancer hears of the attempt once, when its body has ended, so `least_conn` and response-time
        // balancing count the whole exchange.
        let status = head.status
        if handler.bodyEndedWhole {
            // A body that is already whole (the common small answer): told now, with the answer's response time
            // known, so no timing object or end observer is made.
            if let warning = handler.takeExcessWarning() {
                context.logger.warning("\(warning) while reading upstream\(suffix(lease.peer))")
            }
            let now = KernelClock.monotonicNanoseconds()
            lease.finish(PeerLeaseOutcome(status: status, bytesReceived: handler.bodyBytesReceived, durationNanoseconds: now &- started,
                                          headerNanoseconds: headerNanoseconds, queueDepth: queueDepth))
            var response = makeResponse(head, handler: handler)
            attempts.append(UpstreamAttempt(address: lease.address, status: status, responseTime: seconds(now &- started),
                                            connectTime: connectTime, headerTime: seconds(headerNanoseconds)))
            response.upstream = UpstreamReport(group: configuration.group.name, attempts: attempts)
            responded = true
            deadlineTimer?.cancel()
            answer(engine.hooks.finishResponse(response, request: request, context: context))
            return
        }
        let timing = UpstreamBodyTiming(startNanoseconds: started)
        handler.observeBodyEnd { [handler] end in
            let now = KernelClock.monotonicNanoseconds()
            timing.markEnd(at: now)
            let duration = now &- started
            switch end {
            case .complete:
                lease.finish(PeerLeaseOutcome(status: status, bytesReceived: handler.bodyBytesReceived, durationNanoseconds: duration,
                                              headerNanoseconds: headerNanoseconds, queueDepth: queueDepth))
            case .failed(let error):
                lease.finish(PeerLeaseOutcome(status: status, bytesReceived: handler.bodyBytesReceived, durationNanoseconds: duration,
                                              failure: UpstreamConnectionHandler.peerFailure(ofBody: error),
                                              headerNanoseconds: headerNanoseconds, queueDepth: queueDepth,
                                              failurePhase: "reading upstream"))
            case .cancelled:
                lease.finish(PeerLeaseOutcome(status: status, bytesReceived: handler.bodyBytesReceived, durationNanoseconds: duration,
                                              clientClosed: true, headerNanoseconds: headerNanoseconds, queueDepth: queueDepth))
            }
        }
        var response = makeResponse(head, handler: handler)
        let handed = KernelClock.monotonicNanoseconds() &- started
        attempts.append(UpstreamAttempt(address: lease.address, status: head.status,
                                        responseTime: seconds(handed), connectTime: connectTime,
                                        headerTime: seconds(headerNanoseconds)))
        response.upstream = UpstreamReport(group: configuration.group.name, attempts: attempts, bodyTiming: timing)
        responded = true
        deadlineTimer?.cancel()
        answer(engine.hooks.finishResponse(response, request: request, context: context))
    }

    /// A `101 Switching Protocols`: the client gets the head, with the upgrade that joins its connection to this
    /// one once the head is written. The lease ends when the tunnel closes.
    private func upgraded(_ head: UpstreamResponseHead, lease: PeerLease, handler: UpstreamConnectionHandler,
                          channel: any Channel, started: UInt64, connectTime: Double) {
        let headerTime = seconds(KernelClock.monotonicNanoseconds() &- started)
        var response = KernelResponse(status: 101, reason: head.reason, headers: responseHeaders(head, keepingUpgrade: true))
        response.upgrade = UpstreamUpgrade(upstream: channel, handler: handler, lease: lease,
                                           readTimeout: configuration.readTimeout, logger: context.logger,
                                           suffix: suffix(lease.peer), started: started)
        attempts.append(UpstreamAttempt(address: lease.address, status: 101, responseTime: headerTime,
                                        connectTime: connectTime, headerTime: headerTime))
        respond(response)
    }

    /// The upstream's header fields the client gets: hop-by-hop fields, `Date`/`Server` (the kernel writes its own),
    /// a worker's queue depth report (`KernelQueueDepth`, for the balancer only) and those the protocol hides are
    /// dropped; `Upgrade` stays on a `101`, for the listener to write.
    /// A parser may have left out what is dropped here already (the HTTP one makes no strings for hop-by-hop
    /// fields, `Date` and `Server`); when nothing is left to drop, the head's fields are passed on as they are,
    /// without a copy.
    private func responseHeaders(_ head: UpstreamResponseHead, keepingUpgrade: Bool = false) -> HeaderFields {
        // One pass to learn whether anything goes: most answers lose nothing and are passed as they came.
        var dropsAny = false
        var contentTypes = 0
        for field in head.headers.fields {
            if drops(field.name, keepingUpgrade: keepingUpgrade) {
                dropsAny = true
            } else if field.name.equalsCaseInsensitive("content-type") {
                contentTypes += 1
            }
        }
        guard dropsAny || contentTypes > 1 else { return head.headers }
        // A repeated `Content-Type` keeps its last value, as nginx's single `content_type` does (two would leave
        // the client to choose).
        var contentTypesSeen = 0
        return head.headers.filter { field in
            if drops(field.name, keepingUpgrade: keepingUpgrade) { return false }
            guard contentTypes > 1, field.name.equalsCaseInsensitive("content-type") else { return true }
            contentTypesSeen += 1
            return contentTypesSeen == contentTypes
        }
    }

    /// Whether the client never gets a response header of this name.
    private func drops(_ name: String, keepingUpgrade: Bool) -> Bool {
        if HopByHopHeaders.contains(name) { return !(keepingUpgrade && name.equalsCaseInsensitive("upgrade")) }
        return name.equalsCaseInsensitive("date") || name.equalsCaseInsensitive("server") || engine.hooks.hidesResponseHeader(name)
            || name.equalsCaseInsensitive(KernelQueueDepth.headerName)
    }

    /// The client-facing response, with the headers `responseHeaders` keeps.
    private func makeResponse(_ head: UpstreamResponseHead, handler: UpstreamConnectionHandler) -> KernelResponse {
        var headers = responseHeaders(head)
        let body: ResponseBody
        if let whole = handler.takeWholeBody() {
            if request.method == "HEAD" {
                // The upstream's Content-Length (the length a GET would have) stays for HEAD, as nginx passes it.
                // Without one the length is unknown: an empty stream says so, and no length goes out.
                if head.headers["Content-Length"] != nil {
                    body = .empty
                } else {
                    let eventLoop = self.eventLoop
                    body = .stream(ResponseBodyStream(next: { eventLoop.makeSucceededFuture(nil) }, cancel: {}))
                }
            } else if whole.readableBytes == 0 {
                body = .empty
                if head.headers["Content-Length"] == nil, !(head.status == 204 || head.status == 304) {
                    headers.add("Content-Length", "0")
                }
            } else {
                body = .buffer(whole)
            }
        } else {
            let logger = context.logger
            // The peer is named, as nginx names it in a `while reading upstream` line.
            let suffix = self.suffix(current?.peer)
            let release = UpstreamBodyRelease(handler: handler)
            body = .stream(ResponseBodyStream(
                next: { release.handler.next(of: release.generation, logger: logger, suffix: suffix) },
                cancel: { release.handler.cancel(release.generation) }))
        }
        return KernelResponse(status: head.status, reason: head.reason, headers: headers, body: body)
    }
}

/// Held by a streamed response body: when the last copy of the stream goes without having been read to its end
/// or cancelled (a filter replaced the response, a protocol module dropped it), the upstream connection closes
/// and the lease is finished as a client close, so a balancer never counts an attempt that nobody reads.
///
/// It names the request it belongs to: the handler of a kept-alive connection serves the next request once this
/// one's answer has ended, and what this stream does later must not touch that one.
final class UpstreamBodyRelease: Sendable {
    let handler: UpstreamConnectionHandler
    let generation: UInt64

    init(handler: UpstreamConnectionHandler) {
        self.handler = handler
        generation = handler.generation
    }

    deinit { handler.cancel(generation) }
}

/// A named peer without an address in the resolver.
struct UnresolvedPeer: Error {
    var host: String
}

@inline(__always)
func seconds(_ nanoseconds: UInt64) -> Double { Double(nanoseconds) / 1e9 }
