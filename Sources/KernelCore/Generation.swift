import Atomics
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// One loaded configuration: its router (whose decisions hold each location's filters), listeners and services.
///
/// A reload builds a new generation and makes it current; requests already begun keep the generation they
/// started with, and a retired generation stops its services once its last request has finished.
public final class KernelGeneration: Sendable {
    public let number: Int
    public let core: CoreConfiguration
    public let activeModules: [String]
    let router: any RequestRouter
    let listeners: [ListenerSpec]
    /// The listeners this configuration opens.
    public var listenerSpecs: [ListenerSpec] { listeners }
    let services: [any KernelService]
    /// Observers modules registered for every finished exchange (besides each route's access log).
    let finishObservers: [any RequestFinishObserver]
    /// Whether each exchange's duration is measured: for the observers, and for the stats server's
    /// `running_time`/`avg_rt` when `kernel.stats` is set.
    let timesRequests: Bool
    /// The readiness conditions modules added (models loaded and warmed).
    public let readinessChecks: [any ReadinessCheck]
    /// Every upstream group of the configuration, by name (for metrics: each peer's state).
    public let upstreamGroups: [any UpstreamGroup]
    /// The names of the groups some location uses (for readiness: each needs a live peer).
    public let usedUpstreamGroupNames: Set<String>
    private let inFlight = ManagedAtomic<Int>(0)
    private let retired = ManagedAtomic<Bool>(false)
    private let onDrained = NIOLockedValueBox<(@Sendable () -> Void)?>(nil)

    init(number: Int, core: CoreConfiguration, registrar: Registrar, activeModules: [String]) {
        self.number = number
        self.core = core
        self.activeModules = activeModules
        router = registrar.router ?? NotFoundRouter(filters: registrar.filterChain([]))
        // A listener without a `backlog` of its own takes `kernel.listen_backlog`.
        listeners = registrar.listeners.map { spec in
            var spec = spec
            if spec.backlog == nil { spec.backlog = core.listenBacklog }
            return spec
        }
        services = registrar.services
        finishObservers = registrar.finishObservers
        timesRequests = !finishObservers.isEmpty || core.stats != nil
        readinessChecks = registrar.readinessChecks
        upstreamGroups = registrar.allUpstreamGroups
        usedUpstreamGroupNames = registrar.usedUpstreamGroupNames
    }

    /// Requests holding this generation now.
    var requestsInFlight: Int { inFlight.load(ordering: .relaxed) }

    func acquire() { inFlight.wrappingIncrement(ordering: .relaxed) }

    // `release` and `retire` each write one of (inFlight, retired) and then read the other; sequential consistency
    // guarantees at least one of them sees both writes, so the drain callback cannot be missed (and `fireDrained`
    // runs it at most once).
    func release() {
        if inFlight.wrappingDecrementThenLoad(ordering: .sequentiallyConsistent) == 0, retired.load(ordering: .sequentiallyConsistent) {
            fireDrained()
        }
    }

    /// Marks the generation as no longer current; `drained` runs once no request holds it.
    func retire(drained: @escaping @Sendable () -> Void) {
        onDrained.withLockedValue { $0 = drained }
        retired.store(true, ordering: .sequentiallyConsistent)
        if inFlight.load(ordering: .sequentiallyConsistent) == 0 { fireDrained() }
    }

    private func fireDrained() {
        let callback = onDrained.withLockedValue { value -> (@Sendable () -> Void)? in
            defer { value = nil }
            return value
        }
        callback?()
    }

    /// Starts the services in order; on failure stops those already started and rethrows.
    func startServices(logger: Logger) async throws {
        var started: [any KernelService] = []
        for service in services {
            do {
                try await service.start()
                started.append(service)
            } catch {
                for done in started.reversed() { await done.stop() }
                throw error
            }
        }
    }

    /// Stops the services in reverse order; `fast` drops the work they still have queued.
    func stopServices(fast: Bool = false) async {
        for service in services.reversed() {
            if fast { await service.abort() } else { await service.stop() }
        }
    }
}

/// One request's passage through the kernel, from the routed head to the logged response.
///
/// A protocol module calls `KernelRuntime.begin` once the head is parsed, reads at most `maxBodySize` body bytes,
/// calls `start`, writes the response and then `finish`. `finish` tells the request-finish observers (the
/// route's access log, those modules registered) and lets the generation go; it runs at most once (also from
/// `deinit`, so an abandoned exchange never pins a generation).
public final class RequestExchange: @unchecked Sendable {
    public let generation: KernelGeneration
    public let decision: RouteDecision
    public let context: RequestContext
    /// This process's counters and recycling checks, told of the finish.
    let worker: WorkerWatch
    /// When the head was routed (monotonic nanoseconds), or 0 when nobody observes the exchange: then neither
    /// the clock is read nor a `FinishedExchange` made.
    private let started: UInt64
    private var finished = false

    /// `generation` must already be acquired for this exchange (`KernelRuntime.begin` does it under the lock that
    /// reads the current generation, so a reload cannot retire it in between).
    init(generation: KernelGeneration, decision: RouteDecision, context: RequestContext, worker: WorkerWatch) {
        self.generation = generation
        self.decision = decision
        self.context = context
        self.worker = worker
        // Only observers and the stats need the start (`$request_time`); the common unobserved exchange reads no clock.
        started = decision.accessLog == nil && !generation.timesRequests ? 0 : KernelClock.monotonicNanoseconds()
    }

    /// `client_max_body_size` of the chosen location; nil is unlimited.
    public var maxBodySize: Int? { decision.maxBodySize }

    /// Runs the filters and the route's handler; the future does not fail. For tests: protocol modules call `start`.
    package func respond(_ request: KernelRequest) -> EventLoopFuture<KernelResponse> {
        switch start(request) {
        case .ready(let response): return context.eventLoop.makeSucceededFuture(response)
        case .future(let future): return future
        }
    }

    /// Runs the location's filter chain (built at load, in the decision) and its handler, giving the response at
    /// once when it is there: what protocol modules call, so that a `return` of a location without filters is
    /// written without a future. A spooled body is read back into memory first (off the event loop) for a handler
    /// that needs it there.
    public func start(_ request: KernelRequest) -> PendingResponse {
        if case .file(let spooled)? = request.bodySource, decision.handler.requestBodyUse == .memory {
            return .future(readBack(spooled, request))
        }
        return decision.filters.start(request, context: context, handler: decision.handler)
    }

    /// Whether `respond(to:with:)` may answer `request`: the location has no filter, its handler answers through
    /// a callback (`RequestHandler.answersThroughCallback`), and no spooled body must be read back first.
    public func answersThroughCallback(_ request: KernelRequest) -> Bool {
        guard decision.filters.isEmpty, decision.handler.answersThroughCallback else { return false }
        if case .file? = request.bodySource, decision.handler.requestBodyUse == .memory { return false }
        return true
    }

    /// Runs the handler of a location that `answersThroughCallback`, without a future: `respond` is called once,
    /// on the exchange's event loop.
    public func respond(to request: KernelRequest, with respond: @escaping (KernelResponse) -> Void) {
        decision.handler.respond(to: request, context: context, with: respond)
    }

    /// A listener's own answer to this routed request (a 413 before the body is read), with the location's
    /// `headers` phase filters applied (`add_header ... always`, `cors`), so a browser reads the real status.
    public func decorateRefusal(_ response: KernelResponse, for request: KernelRequest) -> KernelResponse {
        decision.filters.decorate(response, for: request, context: context)
    }

    /// What the handler needs of the body (`.memory` unless it reads files or streams).
    public var requestBodyUse: RequestBodyUse { decision.handler.requestBodyUse }

    /// A sink for the body of this request, with the location's `client_body_buffer_size` and temp path.
    /// `expectedLength` is the declared body length, when the framing gives one.
    public func makeBodySink(allocator: ByteBufferAllocator, expectedLength: Int64? = nil) -> RequestBodySink {
        RequestBodySink(buffering: decision.bodyBuffering,
                        tempDirectory: decision.bodyBuffering.tempPath ?? generation.core.defaultClientBodyTempPath,
                        logger: context.logger, allocator: allocator, expectedLength: expectedLength)
    }

    private func readBack(_ spooled: SpooledRequestBody, _ request: KernelRequest) -> EventLoopFuture<KernelResponse> {
        let context = self.context
        guard spooled.length <= Int64(maxInMemoryBodySize) else {
            context.logger.error("\(RequestBodyError.tooLargeForMemory(spooled.length)) for location \"\(decision.route.location)\"")
            return context.eventLoop.makeSucceededFuture(.error(413, "request body too large"))
        }
        let filters = decision.filters
        let handler = decision.handler
        return spooled.readAll(allocator: ByteBufferAllocator(), on: context.eventLoop).flatMap { body in
            var request = request
            request.body = body
            request.bodySource = nil
            return filters.run(request, context: context, handler: handler)
        }.flatMapError { error in
            context.logger.critical("\(error)")
            return context.eventLoop.makeSucceededFuture(.error(500, "internal error"))
        }
    }

    /// Tells the observers and releases the generation. `status` is what was sent (or 499 when the client left);
    /// `bytesSent` counts the head too (nil: not counted, and observers see the body bytes); `upstream` is the
    /// response's upstream report, `handlerReport` its handler's.
    public func finish(_ request: KernelRequest, status: Int, bodyBytesSent: Int, bytesSent: Int? = nil,
                       upstream: UpstreamReport? = nil, handlerReport: (any HandlerReport)? = nil) {
        guard !finished else { return }
        finished = true
        var duration: UInt64?
        if started != 0 {
            let ended = KernelClock.monotonicNanoseconds()
            duration = ended &- started
            let exchange = FinishedExchange(request: request, route: decision.route, status: status,
                                            bodyBytesSent: bodyBytesSent, bytesSent: bytesSent ?? bodyBytesSent,
                                            startNanoseconds: started, endNanoseconds: ended,
                                            upstream: upstream, handlerReport: handlerReport)
            decision.accessLog?.exchangeFinished(exchange)
            for observer in generation.finishObservers { observer.exchangeFinished(exchange) }
        }
        // Counted before the generation goes: a recycle asked for here drains with this request already done.
        worker.requestFinished(status: status, bytesSent: bytesSent ?? bodyBytesSent, nanoseconds: duration,
                               limits: generation.core.recycling)
        generation.release()
    }

    deinit {
        if !finished { generation.release() }
    }
}

/// What lives for the whole process: event loops, logs, the current generation, the listeners.
public final class KernelRuntime: Sendable {
    public let eventLoopGroup: MultiThreadedEventLoopGroup
    public let logger: Logger
    public let logFiles: LogFileRegistry
    /// The error log destination (swapped when a reload changes `kernel.error_log`).
    public let errorLog: ErrorLogHandler.Destination
    /// The responders this process has for queries gathered across the process group.
    public let processQueries: ProcessQueryRegistry
    /// The process group this process runs in (`StandaloneSupervision` for a single process).
    public let supervision: any ProcessSupervision
    /// Set when this process begins to stop: readiness reports false from then on.
    public let stopping = StoppingFlag()
    /// This process's request counters, recycling limits and harakiri watchdog.
    public let worker: WorkerWatch
    /// The listener manager of the server running this runtime, for `listenerStatus` (weak: it holds the runtime).
    let listenerManager = WeakListenerManager()
    private let current = NIOLockedValueBox<KernelGeneration?>(nil)

    /// `supervision` makes the supervision from this runtime's query registry; nil runs the process alone.
    public init(eventLoopGroup: MultiThreadedEventLoopGroup, logger: Logger, logFiles: LogFileRegistry,
                errorLog: ErrorLogHandler.Destination,
                supervision: ((ProcessQueryRegistry) -> any ProcessSupervision)? = nil) {
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.logFiles = logFiles
        self.errorLog = errorLog
        let queries = ProcessQueryRegistry()
        processQueries = queries
        let supervision = supervision?(queries) ?? StandaloneSupervision(queries: queries, logger: logger)
        self.supervision = supervision
        worker = WorkerWatch(supervision: supervision, logger: logger)
    }

    /// The generation new requests use.
    public var currentGeneration: KernelGeneration? { current.withLockedValue { $0 } }

    func makeCurrent(_ generation: KernelGeneration) -> KernelGeneration? {
        current.withLockedValue { value in
            defer { value = generation }
            return value
        }
    }

    /// Routes a request head with the current generation and opens its exchange.
    public func begin(_ request: KernelRequest, on eventLoop: any EventLoop) -> RequestExchange {
        let generation = current.withLockedValue { current in
            current!.acquire()
            return current!
        }
        let decision = generation.router.route(request)
        // A cancellation only for handlers that drop queued work when the client leaves (the connection fires it).
        let context = RequestContext(eventLoop: eventLoop, logger: logger, route: decision.route,
                                     activity: generation.core.recycling.harakiri == nil ? nil : RequestActivity(),
                                     cancellation: decision.handler.cancelsWhenClientLeaves ? RequestCancellation() : nil,
                                     maxBodySize: decision.maxBodySize)
        return RequestExchange(generation: generation, decision: decision, context: context, worker: worker)
    }

}

extension KernelGeneration {
    /// A generation made directly from a router, with no listeners or services: for embedding the request path
    /// (codec tests on `EmbeddedChannel`). The router's decisions carry their filters.
    public convenience init(router: any RequestRouter, runtime: KernelRuntime, core: CoreConfiguration = CoreConfiguration()) {
        let registrar = Registrar(role: .both, mode: .check, configurationFile: "-", runtime: runtime)
        registrar.setRouter(router)
        self.init(number: 0, core: core, registrar: registrar, activeModules: [])
    }
}

extension KernelRuntime {
    /// Makes `generation` current without listeners: for embedding and tests.
    package func install(_ generation: KernelGeneration) { _ = makeCurrent(generation) }

    /// A runtime logging to stderr at `level`, on `threads` event loops: for tests and tools.
    public static func standalone(threads: Int = 1, level: Logger.Level = .notice) -> KernelRuntime {
        let file = try! LogFile(path: "stderr")
        let destination = ErrorLogHandler.Destination(file: file, level: level)
        let logger = Logger(label: "kernel") { _ in ErrorLogHandler(destination: destination) }
        return KernelRuntime(eventLoopGroup: MultiThreadedEventLoopGroup(numberOfThreads: threads), logger: logger,
                             logFiles: LogFileRegistry(), errorLog: destination)
    }
}

extension KernelGeneration {
    /// Retires the generation outside a server (tests of the drain rule).
    package func retireForTesting(drained: @escaping @Sendable () -> Void) { retire(drained: drained) }
}
