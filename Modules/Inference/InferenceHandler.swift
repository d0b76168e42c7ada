import KernelCore
import Logging
import NIOCore
import NIOPosix

/// Serves the Open Inference Protocol (KServe v2, Triton's HTTP API) for the models of a repository.
///
/// The protocol's paths are `/v2`, `/v2/health/live`, `/v2/health/ready`, `/v2/models/stats`,
/// `/v2/models/{name}[/versions/{v}]` with nothing (metadata), `/ready`, `/config`, `/stats`, and `POST .../infer`,
/// the repository extension's `POST /v2/repository/index` and `/v2/repository/models/{name}/load|unload`, the
/// logging (`/v2/logging`), trace (`/v2[/models/{name}]/trace/setting`) and shared memory
/// (`/v2/systemsharedmemory/...`, `/v2/cudasharedmemory/...`) extensions.
/// Without a version, a model path reaches the model's highest ready version.
/// The handler serves them under the prefix location it is mounted on, which takes the place of `/v2`: with
/// `location ^~ /v2` the paths are the protocol's own; with `location /models/`, `/models/health/ready` is
/// `/v2/health/ready` and `/models/models/m/infer` is `/v2/models/m/infer`. It does not look for `/v2` itself.
public struct InferenceHandler: RequestHandler {
    public let repository: ModelRepository
    /// The location prefix standing for `/v2`, without a trailing slash (`/v2`, `/models`, or empty for `/`).
    public let mount: String
    /// What keeps the process from being ready (`/v2/health/ready`): the whole process's readiness when the
    /// module mounts the handler (`KernelRuntime.notReadyReasons`), this repository's models alone by default.
    let notReady: @Sendable () -> [NotReadyReason]
    /// The process group a load or unload is shared with, so that every worker process serves the same models;
    /// nil, or a process that runs alone, runs it here.
    let supervision: (any ProcessSupervision)?
    /// `inference.max_input_size`: the bound of a compressed body's expansion where the location sets no
    /// `client_max_body_size`.
    let maxInputSize: Int
    public static let serverName = "kernel"
    /// The error log whose level Triton's logging extension (`/v2/logging`) reads and sets; nil serves no such path.
    let errorLog: ErrorLogHandler.Destination?
    /// The shared memory regions clients registered (`SharedMemoryEndpoints.swift`), which tensors may name.
    let sharedMemory: SharedMemoryRegistry
    /// Triton's trace extension: its settings (`/v2[/models/{name}]/trace/setting`) and the requests it samples.
    let tracer: TraceRecorder
    /// Triton's names, as its server metadata lists them (both shared memory extensions, as Triton lists them
    /// whether or not it has GPUs).
    public static let extensions = ["binary_tensor_data", "classification", "statistics", "model_configuration", "model_repository",
                                    "parameters", "logging", "system_shared_memory", "cuda_shared_memory", "trace"]
    /// A client that leaves takes its queued request out of the model's queue (`RequestContext.cancellation`).
    public var cancelsWhenClientLeaves: Bool { true }

    /// `mount`: the location's prefix (`LocationContext.prefix`); a trailing slash is dropped, so `/v2/` and `/v2`
    /// mount the same paths.
    public init(repository: ModelRepository, mount: String = "/v2", notReady: (@Sendable () -> [NotReadyReason])? = nil,
                supervision: (any ProcessSupervision)? = nil,
                maxInputSize: Int = InferenceConfiguration.defaultMaxInputSize, errorLog: ErrorLogHandler.Destination? = nil,
                sharedMemory: SharedMemoryRegistry = SharedMemoryRegistry(allowsClientRegions: false),
                tracer: TraceRecorder = TraceRecorder(configured: TraceSettings(), workerNumber: 0, logger: Logger(label: "kernel.trace"))) {
        self.repository = repository
        self.sharedMemory = sharedMemory
        self.tracer = tracer
        self.errorLog = errorLog
        self.maxInputSize = maxInputSize
        self.mount = mount.hasSuffix("/") ? String(mount.dropLast()) : mount
        self.notReady = notReady ?? { repository.notReady() }
        self.supervision = supervision
    }

    /// The segments of `path` below the mount point (the protocol path after `/v2`), nil when `path` is not at or
    /// below it: `/v2x` is not under `/v2`, though location `^~ /v2` matches it.
    func protocolSegments(of path: String) -> ArraySlice<Substring>? {
        guard path.utf8.starts(with: mount.utf8) else { return nil }
        let rest = path.utf8.dropFirst(mount.utf8.count)
        guard rest.isEmpty || rest.first == UInt8(ascii: "/") else { return nil }
        // The mount point itself, with or without its slash, is the protocol's root (server metadata).
        if rest.count <= 1 { return [] }
        // Split as bytes: Substring's own split compares Characters, which costs a grapheme check per byte. An
        // empty segment (`/v2/models/m/infer/`, `/v2//models`) names no path of the protocol's: Triton matches
        // its paths whole and answers those 404.
        let segments = rest.dropFirst().split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        guard !segments.contains(where: \.isEmpty) else { return nil }
        return segments.map { Substring($0) }[...]
    }

    /// Where an answer goes: `handle`'s promise, or the connection's callback (`respond(to:context:with:)`).
    typealias Reply = (Result<KernelResponse, any Error>) -> Void

    /// An inference answers from the model's completion callback straight to the connection, with no promise or
    /// future per request, where the location has no filters.
    public var answersThroughCallback: Bool { true }

    public func respond(to request: KernelRequest, context: RequestContext, with respond: @escaping (KernelResponse) -> Void) {
        let logger = context.logger
        answer(request, context: context) { result in
            switch result {
            case .success(let response): respond(response)
            case .failure(let error): respond(FilterChain.errorResponse(error, logger: logger))
            }
        }
    }

    public func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        let promise = context.eventLoop.makePromise(of: KernelResponse.self)
        // The routing and the model's completion run on the request's loop, wherever `handle` is called from.
        if context.eventLoop.inEventLoop {
            answer(request, context: context) { promise.completeWith($0) }
        } else {
            context.eventLoop.execute { self.answer(request, context: context) { promise.completeWith($0) } }
        }
        return promise.futureResult
    }

    /// Routes `request` and calls `reply` once, on the request's event loop.
    private func answer(_ request: KernelRequest, context: RequestContext, reply: @escaping Reply) {
        do {
            // Only an inference answers through `reply` itself; every other path makes its answer's future.
            guard let future = try route(request, context: context, reply: reply) else { return }
            future.hop(to: context.eventLoop).assumeIsolated().whenComplete(reply)
        } catch let error as KernelHTTPError {
            reply(.failure(error))
        } catch {
            reply(.failure(KernelHTTPError(500, "\(error)")))
        }
    }

    /// The answer's future, or nil for an inference, which answers through `reply`.
    private func route(_ request: KernelRequest, context: RequestContext, reply: @escaping Reply) throws -> EventLoopFuture<KernelResponse>? {
        guard let rest = protocolSegments(of: request.path) else { throw KernelHTTPError(404, "not found: \(request.path)") }
        let isRead = request.method == "GET" || request.method == "HEAD"
        func read(_ body: () throws -> KernelResponse) throws -> EventLoopFuture<KernelResponse> {
            guard isRead else {
                throw KernelHTTPError(405, "method \(request.method) not allowed on \(request.path)", headers: ["Allow": "GET, HEAD"])
            }
            return context.eventLoop.makeSucceededFuture(try body())
        }
        switch rest.count {
        case 0:
            return try read { serverMetadata() }
        case 2 where rest.first == "health":
            let probe = rest.last!
            if probe == "live" { return try read { KernelResponse(status: 200) } }
            if probe == "ready" {
                return try read {
                    // Triton answers 400 while not ready; the reasons are the ones `/healthz` lists.
                    let reasons = notReady()
                    guard !reasons.isEmpty else { return KernelResponse(status: 200) }
                    let listed = reasons.map { $0.name.isEmpty ? "\($0.check): \($0.reason)" : "\($0.check) '\($0.name)': \($0.reason)" }
                    return .error(400, "server is not ready: \(listed.joined(separator: "; "))")
                }
            }
        case 1 where rest.first == "logging" && errorLog != nil:
            return try logging(request, context: context)
        case 2 where rest.first == "trace" && rest.last == "setting":
            return try traceSetting(model: nil, request: request, context: context)
        case 4 where rest.first == "models" && rest[rest.startIndex + 2] == "trace" && rest.last == "setting":
            return try traceSetting(model: String(rest[rest.startIndex + 1]), request: request, context: context)
        case 2 where rest.first == "models" && rest.last == "stats":
            return try statistics(repository.loadedModels, request: request, context: context) { _, _ in true }
        default:
            break
        }
        guard rest.first == "models", rest.count >= 2 else {
            if rest.first == "repository" { return try repositoryRoute(rest.dropFirst(), request: request, context: context) }
            if rest.first == "systemsharedmemory" || rest.first == "cudasharedmemory" {
                return try sharedMemoryRoute(rest, request: request, context: context)
            }
            throw KernelHTTPError(404, "not found: \(request.path)")
        }
        let name = String(rest[rest.startIndex + 1])
        var tail = rest.dropFirst(2)
        var version: String?
        if tail.first == "versions" {
            guard tail.count >= 2 else { throw KernelHTTPError(404, "not found: \(request.path)") }
            version = String(tail[tail.startIndex + 1])
            tail = tail.dropFirst(2)
        }
        guard tail.count <= 1 else { throw KernelHTTPError(404, "not found: \(request.path)") }
        let action = tail.first.map(String.init) ?? ""
        guard ["", "ready", "config", "stats", "infer"].contains(action) else {
            throw KernelHTTPError(404, "not found: \(request.path)")
        }
        // An inference holds its version's routing lease until it is in the version's queue (`RoutingLeases`):
        // `infer` decodes and submits before it returns.
        let queues = action == "infer" && request.method == "POST"
        let resolution = repository.resolve(name, version: version, takingLease: queues)
        defer { if queues, case .ready(let model) = resolution { model.leases.release() } }
        if action == "stats" {
            // Triton's statistics answer for what is not served is its own: 400, naming the model or the version.
            guard !repository.readyVersions(name).isEmpty else {
                throw KernelHTTPError(400, "requested model '\(name)' is not available")
            }
            guard case .ready = resolution else {
                throw KernelHTTPError(400, "requested model version is not available for model '\(name)'")
            }
        }
        // Readiness is asked of the model Triton finds for the path, so what is not served answers as it does for
        // metadata: 404 for an unknown model or version, or none ready; 503 for a named version not ready.
        if case .notFound(let message) = resolution { throw KernelHTTPError(404, message) }
        if case .noVersionReady(let message) = resolution { throw KernelHTTPError(404, message) }
        guard case .ready(let model) = resolution else {
            if case .notReady(let message) = resolution { throw KernelHTTPError(503, message) }
            throw KernelHTTPError(404, "not found: \(request.path)")
        }
        switch action {
        case "ready": return try read { KernelResponse(status: 200) }
        case "": return try read { modelMetadata(model) }
        case "config": return try read { modelConfig(model) }
        case "stats":
            // Without a version, every ready version of the model (Triton's statistics for an empty version).
            let models = version == nil ? repository.loadedModels.filter { $0.signature.name == name } : [model]
            let wanted: String? = version == nil ? nil : model.signature.version
            return try statistics(models, request: request, context: context) { entryName, entryVersion in
                entryName == name && (wanted == nil || entryVersion == wanted)
            }
        default:
            guard request.method == "POST" else {
                throw KernelHTTPError(405, "method \(request.method) not allowed on \(request.path): use POST", headers: ["Allow": "POST"])
            }
            infer(request, model: model, context: context, reply: reply)
            return nil
        }
    }

    // MARK: - Logging extension

    /// `GET /v2/logging` answers the error log's settings in Triton's words; `POST` changes its level (in every
    /// worker process) and answers the settings after it. A reload sets the level back to `error_log`'s.
    private func logging(_ request: KernelRequest, context: RequestContext) throws -> EventLoopFuture<KernelResponse> {
        let errorLog = errorLog!
        let current = LogSettings.current(errorLog)
        @Sendable func answer(_ settings: LogSettings) -> KernelResponse { json { settings.json(into: &$0) } }
        switch request.method {
        case "GET", "HEAD":
            return context.eventLoop.makeSucceededFuture(answer(current))
        case "POST":
            let next = try current.applying(RepositoryRequestBody(request.body, what: "dynamic logging").value)
            guard next != current else { return context.eventLoop.makeSucceededFuture(answer(next)) }
            if next.level != current.level {
                context.logger.notice("error log level set to \(ErrorLogHandler.name(next.level)) through the logging extension (was \(ErrorLogHandler.name(current.level)))")
            }
            guard let supervision, supervision.isSupervised else {
                next.apply(to: errorLog)
                return context.eventLoop.makeSucceededFuture(answer(next))
            }
            // Every worker process takes it (this one included); one started later replays the latest.
            let promise = context.eventLoop.makePromise(of: KernelResponse.self)
            promise.completeWithTask {
                _ = await supervision.share("\(LogSettings.commandName) \(next.commandArgument)", key: LogSettings.commandName,
                                            memory: .instead, timeout: .seconds(10))
                return answer(LogSettings.current(errorLog))
            }
            return promise.futureResult
        default:
            throw KernelHTTPError(405, "method \(request.method) not allowed on \(request.path)", headers: ["Allow": "GET, HEAD, POST"])
        }
    }

    // MARK: - Model repository extension

    /// `POST /v2/repository/index`, `POST /v2/repository/models/{name}/load` and `/unload` (Triton's paths, bodies
    /// and statuses). A load or unload runs off the event loop and answers once it is done: 200 with no body.
    private func repositoryRoute(_ rest: ArraySlice<Substring>, request: KernelRequest,
                                 context: RequestContext) throws -> EventLoopFuture<KernelResponse> {
        let isIndex = rest.count == 1 && rest.first == "index"
        let isControl = rest.count == 3 && rest.first == "models" && (rest.last == "load" || rest.last == "unload")
        guard isIndex || isControl else {
            // `/v2/repository/{repository}/...` names one of several repositories, which Triton does not support either.
            if rest.count == 2 && rest.last == "index" || rest.count == 4 && rest[rest.startIndex + 1] == "models" {
                throw KernelHTTPError(501, "'repository_name' specification is not supported")
            }
            throw KernelHTTPError(404, "not found: \(request.path)")
        }
        guard request.method == "POST" else {
            throw KernelHTTPError(405, "method \(request.method) not allowed on \(request.path): use POST", headers: ["Allow": "POST"])
        }
        let what = isIndex ? "registry index" : rest.last == "load" ? "load model" : "unload model"
        let bytes = request.body
        // A load's files come base64 in the JSON, megabytes of it: such a body is parsed on the shared pool, so the
        // event loop's other connections do not wait for it.
        let parsed = (bytes?.readableBytes ?? 0) > InferenceHandler.repositoryBodyParsedInline
            ? NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) { try RepositoryRequestBody(bytes, what: what) }
            : context.eventLoop.makeCompletedFuture { try RepositoryRequestBody(bytes, what: what) }
        return parsed.flatMap { [self] body in
            do {
                return try repositoryAction(body, bytes, rest, isIndex: isIndex, context: context)
            } catch {
                return context.eventLoop.makeFailedFuture(error)
            }
        }
    }

    /// Request bodies of the repository extension up to this size are parsed on the event loop.
    static let repositoryBodyParsedInline = 64 << 10

    /// What a repository request with a parsed `body` (from `bytes`) does.
    private func repositoryAction(_ body: RepositoryRequestBody, _ bytes: ByteBuffer?, _ rest: ArraySlice<Substring>,
                                  isIndex: Bool, context: RequestContext) throws -> EventLoopFuture<KernelResponse> {
        if isIndex {
            let readyOnly = try body.readyFlag()
            // The index reads the repository directory: off the event loop, as loads are.
            return NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) { [self] in
                indexResponse(self.repository.index(readyOnly: readyOnly))
            }
        }
        let name = String(rest[rest.startIndex + 1])
        let action: RepositoryCommand.Action = rest.last == "load" ? .load : .unload
        // The parameters' shapes are checked here, so that a request refused for them is shared with nobody.
        if action == .load { _ = try body.loadParameters(modelName: name) } else { try body.checkUnloadParameters() }
        // Refused at once outside explicit mode, without waiting behind a poll's loads.
        guard repository.control == .explicit else { throw KernelHTTPError(503, ModelRepository.controlRefusal) }
        let repository = repository
        let promise = context.eventLoop.makePromise(of: KernelResponse.self)
        if let supervision, supervision.isSupervised {
            let text = RepositoryCommand.text(action: action, model: name, repository: repository.identity, body: bytes)
            guard text.utf8.count <= ProcessSharing.maximumCommandLength else {
                throw KernelHTTPError(413, "failed to load '\(name)': the request (\(text.utf8.count) bytes) is larger than the \(ProcessSharing.maximumCommandLength) bytes that worker processes can share")
            }
            // Every worker process runs it (this one included), each on its repository's own thread; a worker
            // started later replays it. An unload makes the loads of the model before it irrelevant.
            let key = RepositoryCommand.key(model: name, repository: repository.identity)
            promise.completeWithTask {
                let answers = await supervision.share(text, key: key, memory: action == .unload ? .instead : .after, timeout: .minutes(10))
                return try Self.repositoryResponse(SharedCommandOutcome.combine(answers, own: getpid()))
            }
        } else {
            // A single process: the body parsed above runs here, with no command text to write and read back.
            let command = RepositoryCommand(action: action, model: name, repository: repository.identity, request: body.value)
            promise.completeWithTask {
                let answer = await command.run(on: repository)
                return try Self.repositoryResponse(SharedCommandOutcome(encoded: answer)!)
            }
        }
        return promise.futureResult
    }

    /// A load's or unload's answer: 200 with no body, else the outcome's status and Triton's message.
    private static func repositoryResponse(_ outcome: SharedCommandOutcome) throws -> KernelResponse {
        guard outcome.status == 200 else { throw KernelHTTPError(outcome.status, outcome.message) }
        return KernelResponse(status: 200, headers: ["Content-Type": "application/json"])
    }

    /// Triton's index: `[{"name": ..., "version": ..., "state": ..., "reason": ...}]`, absent fields left out.
    private func indexResponse(_ entries: [RepositoryIndexEntry]) -> KernelResponse {
        json { writer in
            writer.byte(UInt8(ascii: "["))
            for (index, entry) in entries.enumerated() {
                if index > 0 { writer.byte(UInt8(ascii: ",")) }
                writer.raw("{\"name\":")
                writer.string(entry.name)
                if let version = entry.version {
                    writer.raw(",\"version\":")
                    writer.string(version)
                }
                if let state = entry.state {
                    writer.raw(",\"state\":")
                    writer.string(state)
                }
                if let reason = entry.reason {
                    writer.raw(",\"reason\":")
                    writer.string(reason)
                }
                writer.byte(UInt8(ascii: "}"))
            }
            writer.byte(UInt8(ascii: "]"))
        }
    }

    private func infer(_ request: KernelRequest, model: LoadedModel, context: RequestContext, reply: @escaping Reply) {
        let decodeStart = KernelClock.monotonicNanoseconds()
        let encoding: InferenceBodyEncoding
        do {
            encoding = try InferenceBodyEncoding.ofRequest(request.headers)
        } catch {
            return reply(.failure(error))
        }
        guard encoding != .identity, let body = request.body, body.readableBytes > Self.compressedBodiesExpandedInline else {
            do {
                let body = try request.body.map { try encoding.expand($0, limit: expansionLimit(context)) }
                submit(request, body: body, model: model, context: context, decodeStart: decodeStart, reply: reply)
            } catch {
                reply(.failure(error))
            }
            return
        }
        // A larger compressed body expands on the shared pool: inflating it (up to client_max_body_size) on the
        // event loop would hold every other connection of the loop. The version keeps a routing lease meanwhile,
        // so that an unload does not retire it before the request is in its queue.
        model.leases.take()
        let limit = expansionLimit(context)
        NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) { try encoding.expand(body, limit: limit) }
            .assumeIsolated().whenComplete { [self] expanded in
                defer { model.leases.release() }
                switch expanded {
                case .success(let body):
                    submit(request, body: body, model: model, context: context, decodeStart: decodeStart, reply: reply)
                case .failure(let error):
                    reply(.failure(error))
                }
            }
    }

    /// The most bytes a compressed body may expand to: the location's `client_max_body_size`, or `max_input_size`
    /// where the location has no limit.
    private func expansionLimit(_ context: RequestContext) -> InferenceBodyEncoding.ExpansionLimit {
        if let bytes = context.maxBodySize { return .init(bytes: bytes, setting: "the location's client_max_body_size") }
        return .init(bytes: maxInputSize, setting: "inference.max_input_size")
    }

    /// Compressed infer bodies up to this size are expanded on the event loop, and answers up to it compressed there.
    static let compressedBodiesExpandedInline = 64 << 10

    /// `response` with `compressed` as its body in `encoding`; as it was when compression gave nothing.
    private static func compressed(_ response: KernelResponse, _ compressed: ByteBuffer?,
                                   _ encoding: InferenceBodyEncoding) -> KernelResponse {
        guard let compressed else { return response }
        var response = response
        response.body = .buffer(compressed)
        response.headers.replace("Content-Encoding", encoding.rawValue)
        return response
    }

    /// Decodes the (expanded) `body` and queues the request in `model`'s scheduler; the answer comes when its batch
    /// has run.
    private func submit(_ request: KernelRequest, body: ByteBuffer?, model: LoadedModel, context: RequestContext,
                        decodeStart: UInt64, reply: @escaping Reply) {
        let decoded: DecodedInferenceRequest
        let priority: Int
        let responseEncoding = InferenceBodyEncoding.forResponse(acceptEncoding: request.headers["Accept-Encoding"])
        do {
            decoded = try InferenceCodec.decodeRequest(body: body, headers: request.headers, model: model.signature,
                                                       sharedMemory: sharedMemory)
            priority = try RequestPriority.of(request, parameter: decoded.priority)
        } catch {
            return reply(.failure(error))
        }
        let queueStart = KernelClock.monotonicNanoseconds()
        let decodeNanoseconds = queueStart &- decodeStart
        let signature = model.signature
        // Triton's trace of a sampled request: what is known before it queues now, the rest when it is answered.
        var trace = tracer.sample(model: signature.name).map(InferenceTraceEvents.init)
        if trace != nil {
            // The body was read before the handler ran: its receipt is stamped with the handler's start.
            trace!.timestamp("HTTP_RECV_START", decodeStart)
            trace!.timestamp("HTTP_RECV_END", decodeStart)
            trace!.header(model: signature, requestID: decoded.id)
            trace!.timestamp("REQUEST_START", decodeStart)
            trace!.timestamp("QUEUE_START", queueStart)
            for (index, input) in decoded.inputs.enumerated() {
                trace!.tensor("TENSOR_QUEUE_INPUT", name: signature.inputs[index].name, input)
            }
        }
        let traced = trace
        let tracer = self.tracer
        // An edge forwards the time its client still waits: queued work past it is dropped (ModelScheduler).
        let deadline = ForwardedDeadline.deadline(of: request)
        let scheduler = model.scheduler
        context.activity?.note("queued or running in model \"\(signature.name)\" (queue depth \(scheduler.depth))")
        let options = SubmitOptions(deadline: deadline, priority: priority, cancellation: context.cancellation)
        let eventLoop = context.eventLoop
        // The scheduler's callback runs on this event loop and answers the request from there.
        let reply = NIOLoopBound(reply, eventLoop: eventLoop)
        scheduler.submit(decoded.inputs, options: options, on: context.eventLoop) { outcome in
            let reply = reply.value
            defer {
                if var trace = traced {
                    let end = KernelClock.monotonicNanoseconds()
                    if case .success(let result) = outcome {
                        for (index, output) in result.outputs.enumerated() where index < signature.outputs.count {
                            trace.tensor("TENSOR_BACKEND_OUTPUT", name: signature.outputs[index].name, output)
                        }
                        trace.timestamp("INFER_RESPONSE_COMPLETE", end)
                        let compute = queueStart &+ result.timing.queueNanoseconds
                        let inputEnd = compute &+ result.timing.compute.inputNanoseconds
                        let outputStart = inputEnd &+ result.timing.compute.inferNanoseconds
                        trace.timestamp("COMPUTE_START", compute)
                        trace.timestamp("COMPUTE_INPUT_END", inputEnd)
                        trace.timestamp("COMPUTE_OUTPUT_START", outputStart)
                        trace.timestamp("COMPUTE_END", outputStart &+ result.timing.compute.outputNanoseconds)
                    }
                    trace.timestamp("REQUEST_END", end)
                    // The answer leaves as the connection writes it, after this: stamped as it is handed over.
                    trace.timestamp("HTTP_SEND_START", end)
                    trace.timestamp("HTTP_SEND_END", end)
                    tracer.finish(trace.ticket, objects: trace.text)
                }
            }
            do {
                let result = try outcome.get()
                let encodeStart = KernelClock.monotonicNanoseconds()
                var response = try InferenceCodec.encodeResponse(model: signature, request: decoded, outputs: result.outputs)
                // Server-Timing and the $inference_* variables: where this request's time went.
                InferenceExchangeReport(timing: result.timing, decodeNanoseconds: decodeNanoseconds,
                                        encodeNanoseconds: KernelClock.monotonicNanoseconds() &- encodeStart)
                    .attach(to: &response)
                response.headers.replace(KernelQueueDepth.headerName, String(scheduler.depth))
                guard responseEncoding != .identity, case .buffer(let body) = response.body else {
                    return reply(.success(response))
                }
                guard body.readableBytes > Self.compressedBodiesExpandedInline else {
                    return reply(.success(Self.compressed(response, responseEncoding.compress(body), responseEncoding)))
                }
                // A larger answer is compressed on the shared pool, as a larger request is expanded there.
                let uncompressed = response
                NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) { responseEncoding.compress(body) }
                    .map { Self.compressed(uncompressed, $0, responseEncoding) }
                    .assumeIsolated().whenComplete(reply)
            } catch var failure as KernelHTTPError {
                // Rejections and timeouts report the depth too: a full queue is what least_queue must hear of.
                failure.headers.replace(KernelQueueDepth.headerName, String(scheduler.depth))
                reply(.failure(failure))
            } catch {
                reply(.failure(error))
            }
        }
    }

    // MARK: - Metadata

    func json(_ body: (inout JSONWriter) -> Void) -> KernelResponse {
        var writer = JSONWriter(buffer: ByteBufferAllocator().buffer(capacity: 512))
        body(&writer)
        return KernelResponse(status: 200, headers: ["Content-Type": "application/json"], body: .buffer(writer.buffer))
    }

    private func serverMetadata() -> KernelResponse {
        json { writer in
            writer.raw("{\"name\":")
            writer.string(InferenceHandler.serverName)
            writer.raw(",\"version\":")
            writer.string(kernelVersion)
            writer.raw(",\"extensions\":[")
            for (index, name) in InferenceHandler.extensions.enumerated() {
                if index > 0 { writer.byte(UInt8(ascii: ",")) }
                writer.string(name)
            }
            writer.raw("]}")
        }
    }

    private func writeTensors(_ specs: [TensorSpec], into writer: inout JSONWriter) {
        writer.byte(UInt8(ascii: "["))
        for (index, spec) in specs.enumerated() {
            if index > 0 { writer.byte(UInt8(ascii: ",")) }
            writer.raw("{\"name\":")
            writer.string(spec.name)
            writer.raw(",\"datatype\":")
            writer.string(spec.dataType.rawValue)
            writer.raw(",\"shape\":[")
            for (dimensionIndex, dimension) in spec.shape.enumerated() {
                if dimensionIndex > 0 { writer.byte(UInt8(ascii: ",")) }
                writer.integer(dimension)
            }
            writer.raw("]}")
        }
        writer.byte(UInt8(ascii: "]"))
    }

    private func modelMetadata(_ model: LoadedModel) -> KernelResponse {
        json { writer in
            writer.raw("{\"name\":")
            writer.string(model.signature.name)
            writer.raw(",\"versions\":[")
            // Every version that serves now (Triton lists the model's versions), the answering one if none other.
            let versions = repository.readyVersions(model.signature.name)
            for (index, version) in (versions.isEmpty ? [model.signature.version] : versions).enumerated() {
                if index > 0 { writer.byte(UInt8(ascii: ",")) }
                writer.string(version)
            }
            writer.raw("],\"platform\":\"onnxruntime_onnx\",\"inputs\":")
            writeTensors(model.signature.inputs, into: &writer)
            writer.raw(",\"outputs\":")
            writeTensors(model.signature.outputs, into: &writer)
            writer.byte(UInt8(ascii: "}"))
        }
    }

    /// Triton's model configuration JSON as `GET .../config` answers it (dimensions without the batch dimension
    /// when batching): every field Triton prints (it prints
    /// primitives, lists and maps at their defaults too), with the defaults its normalisation fills in
    /// (`version_policy`, `preferred_batch_size` of `[max_batch_size]`, pinned memory on, the group named after
    /// the model), so that scripts reading `config["version_policy"]` or `instance_group[0]["name"]` find them.
    private func modelConfig(_ model: LoadedModel) -> KernelResponse {
        let configuration = model.configuration
        func configTensors(_ specs: [TensorSpec], isInput: Bool, into writer: inout JSONWriter) {
            writer.byte(UInt8(ascii: "["))
            for (index, spec) in specs.enumerated() {
                if index > 0 { writer.byte(UInt8(ascii: ",")) }
                writer.raw("{\"name\":")
                writer.string(spec.name)
                writer.raw(",\"data_type\":")
                // Triton's config names BYTES tensors TYPE_STRING; the others are TYPE_ and the protocol's name.
                writer.string("TYPE_" + (spec.dataType == .bytes ? "STRING" : spec.dataType.rawValue))
                writer.raw(",\"dims\":")
                writer.integers(configuration.maxBatchSize > 0 ? spec.shape.dropFirst() : spec.shape[...])
                let declared = (isInput ? configuration.declaredInputs : configuration.declaredOutputs).first { $0.name == spec.name }
                if let reshape = declared?.reshape {
                    writer.raw(",\"reshape\":{\"shape\":")
                    writer.integers(reshape)
                    writer.byte(UInt8(ascii: "}"))
                }
                if isInput {
                    writer.raw(",\"format\":")
                    writer.string(declared?.format ?? "FORMAT_NONE")
                    writer.raw(",\"is_shape_tensor\":false,\"allow_ragged_batch\":false,\"optional\":false,\"is_non_linear_format_io\":false}")
                } else {
                    writer.raw(",\"label_filename\":")
                    writer.string(declared?.labelFile ?? "")
                    writer.raw(",\"is_shape_tensor\":false,\"is_non_linear_format_io\":false}")
                }
            }
            writer.byte(UInt8(ascii: "]"))
        }
        return json { writer in
            writer.raw("{\"name\":")
            writer.string(configuration.name)
            writer.raw(",\"platform\":\"onnxruntime_onnx\",\"backend\":\"onnxruntime\",\"runtime\":\"\",\"version_policy\":")
            switch configuration.versionPolicy {
            case .latest(let count):
                writer.raw("{\"latest\":{\"num_versions\":")
                writer.integer(count)
                writer.raw("}}")
            case .all:
                writer.raw("{\"all\":{}}")
            case .specific(let versions):
                writer.raw("{\"specific\":{\"versions\":")
                writer.integers(versions)
                writer.raw("}}")
            }
            writer.raw(",\"max_batch_size\":")
            writer.integer(configuration.maxBatchSize)
            writer.raw(",\"input\":")
            configTensors(model.signature.inputs, isInput: true, into: &writer)
            writer.raw(",\"output\":")
            configTensors(model.signature.outputs, isInput: false, into: &writer)
            writer.raw(",\"batch_input\":[],\"batch_output\":[],\"optimization\":{")
            // The ONNX Runtime backend's graph level the sessions run with (also at its default, all: a configuration
            // loaded back without it would take `inference:`'s default, which may be another).
            if let level = TritonModelConfig.graphLevels.first(where: { $0.value == configuration.memory.graphOptimizationLevel.configName })?.key {
                writer.raw("\"graph\":{\"level\":")
                writer.integer(level)
                writer.raw("},")
            }
            writer.raw("\"priority\":\"PRIORITY_DEFAULT\",\"input_pinned_memory\":{\"enable\":true},\"output_pinned_memory\":{\"enable\":true},\"gather_kernel_buffer_threshold\":0,\"eager_batching\":false}")
            if let batching = configuration.dynamicBatching {
                writer.raw(",\"dynamic_batching\":{\"preferred_batch_size\":")
                let preferred = batching.preferredBatchSizes.isEmpty && configuration.maxBatchSize > 0
                    ? [configuration.maxBatchSize] : batching.preferredBatchSizes
                writer.integers(preferred)
                writer.raw(",\"max_queue_delay_microseconds\":")
                writer.integer(Int(batching.maxQueueDelayMicroseconds))
                writer.raw(",\"preserve_ordering\":false,\"priority_levels\":")
                writer.integer(batching.priorityLevels)
                writer.raw(",\"default_priority_level\":")
                writer.integer(batching.defaultPriorityLevel)
                // The queue's bound is reported as it is enforced (`max_queue`, 1024 unless set).
                writer.raw(",\"default_queue_policy\":{\"timeout_action\":\"REJECT\",\"default_timeout_microseconds\":")
                writer.integer(Int(configuration.timeoutMicroseconds))
                writer.raw(",\"allow_timeout_override\":false,\"max_queue_size\":")
                writer.integer(configuration.maxQueue)
                writer.raw("},\"priority_queue_policy\":{}}")
            }
            writer.raw(",\"instance_group\":[{\"name\":")
            writer.string(configuration.name)
            writer.raw(",\"kind\":\"KIND_CPU\",\"count\":")
            writer.integer(configuration.instances)
            writer.raw(",\"gpus\":[],\"secondary_devices\":[],\"profile\":[],\"passive\":false,\"host_policy\":\"\"}]")
            writer.raw(",\"default_model_filename\":\"model.onnx\",\"cc_model_filenames\":{},\"metric_tags\":{},\"parameters\":{")
            // The ONNX Runtime backend's parameters for what the sessions run with (the thread counts, whose
            // default of one is not the backend's, and the memory switches, whose defaults `inference:` may
            // change), so that a configuration read here and loaded back runs the same.
            var parameters = [("intra_op_thread_count", String(configuration.intraOpThreads)),
                              ("inter_op_thread_count", String(configuration.interOpThreads)),
                              ("enable_mem_arena", configuration.memory.cpuMemoryArena ? "1" : "0"),
                              ("enable_mem_pattern", configuration.memory.memoryPattern ? "1" : "0")]
            if configuration.memory.arenaShrinkage { parameters.append(("memory.enable_memory_arena_shrinkage", "cpu:0")) }
            for (index, (key, value)) in parameters.enumerated() {
                if index > 0 { writer.byte(UInt8(ascii: ",")) }
                writer.string(key)
                writer.raw(":{\"string_value\":")
                writer.string(value)
                writer.byte(UInt8(ascii: "}"))
            }
            writer.raw("},\"model_warmup\":")
            Self.writeWarmup(configuration, inputs: model.signature.inputs, into: &writer)
            writer.byte(UInt8(ascii: "}"))
        }
    }

    /// The warm-up as Triton's `model_warmup` samples: one per batch size it runs (batch size 1 for a model that
    /// does not batch), `count` the runs per size, zero inputs at the served shapes with free dimensions 1 (what
    /// the warm-up gives ONNX Runtime). `[]` without a warm-up.
    static func writeWarmup(_ configuration: ModelConfiguration, inputs: [TensorSpec], into writer: inout JSONWriter) {
        writer.byte(UInt8(ascii: "["))
        let batched = configuration.maxBatchSize > 0
        for (index, size) in configuration.warmupSizes.enumerated() {
            if index > 0 { writer.byte(UInt8(ascii: ",")) }
            writer.raw("{\"name\":")
            writer.string("warmup_\(size ?? 1)")
            writer.raw(",\"batch_size\":")
            writer.integer(size ?? 1)
            writer.raw(",\"count\":")
            writer.integer(configuration.warmup)
            writer.raw(",\"inputs\":{")
            for (inputIndex, spec) in inputs.enumerated() {
                if inputIndex > 0 { writer.byte(UInt8(ascii: ",")) }
                writer.string(spec.name)
                writer.raw(":{\"data_type\":")
                writer.string("TYPE_" + (spec.dataType == .bytes ? "STRING" : spec.dataType.rawValue))
                writer.raw(",\"dims\":")
                writer.integers((batched ? spec.shape.dropFirst() : spec.shape[...]).map { $0 < 0 ? 1 : $0 })
                let random = configuration.warmsUpWithRandomData(spec.name)
                writer.raw(random && spec.dataType != .bytes ? ",\"random_data\":true}" : ",\"zero_data\":true}")
            }
            writer.raw("}}")
        }
        writer.byte(UInt8(ascii: "]"))
    }

    /// The statistics extension's answer for `models` (this process's), or with worker processes for the
    /// versions `includes` accepts, summed over every worker (`WorkerStatistics`).
    private func statistics(_ models: [LoadedModel], request: KernelRequest, context: RequestContext,
                            includes: @escaping @Sendable (_ name: String, _ version: String) -> Bool) throws -> EventLoopFuture<KernelResponse> {
        guard request.method == "GET" || request.method == "HEAD" else {
            throw KernelHTTPError(405, "method \(request.method) not allowed on \(request.path)", headers: ["Allow": "GET, HEAD"])
        }
        let local = models.map {
            WorkerStatistics.Entry(name: $0.signature.name, version: $0.signature.version, statistics: $0.scheduler.currentStatistics)
        }
        guard let supervision, supervision.isSupervised else {
            return context.eventLoop.makeSucceededFuture(statisticsResponse(local))
        }
        let query = WorkerStatistics.name + " " + repository.identity
        let promise = context.eventLoop.makePromise(of: KernelResponse.self)
        promise.completeWithTask {
            let answers = await supervision.gather(query, timeout: .seconds(5))
            // No answer at all (the master is gone): this worker's own figures are all there are.
            let merged = WorkerStatistics.merge(answers)
            return statisticsResponse(merged.isEmpty ? local : merged.filter { includes($0.name, $0.version) })
        }
        return promise.futureResult
    }

    private func statisticsResponse(_ entries: [WorkerStatistics.Entry]) -> KernelResponse {
        json { writer in
            writer.raw("{\"model_stats\":[")
            for (index, entry) in entries.enumerated() {
                if index > 0 { writer.byte(UInt8(ascii: ",")) }
                entry.statistics.write(name: entry.name, version: entry.version, into: &writer)
            }
            writer.raw("]}")
        }
    }
}
