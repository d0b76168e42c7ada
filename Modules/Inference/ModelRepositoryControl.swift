#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KernelConfig
import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// What loading a model needs once ONNX Runtime is open.
struct ModelLoader: Sendable {
    let runtime: ONNXRuntime
    let logger: Logger
    /// Whether the generation is stopping: a warm-up under way stops between runs, so a stop never waits for all
    /// of a long one (every batch size of a slow model can take minutes).
    var isStopping: @Sendable () -> Bool = { false }
}

/// Loading, reloading and unloading the versions of a repository's models, at start, through the repository API
/// and when polling finds a change. Every operation runs on the repository's own thread (`operationsPool`), one at a
/// time (`operations`).
///
/// A version's new sessions load and warm up before anything changes for requests; then routing switches to them,
/// and the sessions they replace (or the versions the policy no longer serves) finish the requests they have queued
/// or running before they are released. A version that fails to load changes nothing that serves: a model whose new
/// version is broken keeps serving its previous versions.
extension ModelRepository {
    /// Triton's refusal of `load`/`unload` outside explicit mode.
    static let controlRefusal = "explicit model load / unload is not allowed if polling is enabled"

    /// The versions `name` should serve as the disk says now (or as a load request's `override` says), with what
    /// each is loaded from.
    func wantedVersions(_ name: String, override: ModelLoadOverride? = nil) throws -> [(ModelConfiguration, VersionSource)] {
        if let configured = entries.withLockedValue({ $0[name]?.configured }) {
            guard override == nil else {
                throw ModelRepositoryError("it is a models: entry, which loads from its YAML settings: the 'config' and file parameters are for models of the model repository")
            }
            return [(configured, VersionSource(model: FileStamp.of(configured.path), settings: nil))]
        }
        guard let layout else { throw ModelRepositoryError("failed to poll from model repository") }
        let model = try layout.scanModel(name, override: override)
        let settingsStamp = model.settingsPath.flatMap { model.stamps[$0] ?? nil }
        return model.versions.map { ($0, VersionSource(model: model.stamps[$0.path] ?? nil, settings: settingsStamp)) }
    }

    /// Loads every model at start (stopping early when `stopped` turns true), but the repository models that
    /// `startup_models` leaves out.
    func loadAll(_ loader: ModelLoader, stopped: () -> Bool) {
        let names = entries.withLockedValue { entries in entries.values.filter { !$0.unloaded }.map(\.name).sorted() }
        for name in names {
            guard !stopped() else { return }
            operations.withLock {
                do {
                    let wanted = try wantedVersions(name)
                    if wanted.isEmpty {
                        loader.logger.error("inference: model '\(name)' has no version to load in the repository (no numbered directory its version_policy serves)")
                    }
                    _ = apply(name, wanted: wanted, loader)
                } catch {
                    loader.logger.error("inference: model '\(name)' cannot be loaded from the repository: \(error)")
                    markFailed(name, "\(error)")
                }
            }
        }
    }

    /// `POST /v2/repository/models/{name}/load`: (re)loads the versions of `name` its policy serves whose files
    /// changed or that are not ready. Throws Triton's statuses and messages.
    ///
    /// With a `config` parameter the model loads with those settings instead of its settings file, and with
    /// `file:` parameters from those files instead of its directory (a model the repository does not have loads
    /// so too); as Triton does, every served version then loads again, and a later load without them goes back to
    /// the repository's files.
    func load(_ name: String, parameters: ModelLoadParameters = ModelLoadParameters()) throws {
        guard control == .explicit else { throw KernelHTTPError(503, ModelRepository.controlRefusal) }
        guard let loader = loader.withLockedValue({ $0 }) else { throw KernelHTTPError(503, "the kernel is stopping") }
        // What the index lists, and no other directory: a name that is no model name is not in the repository.
        guard InferenceConfiguration.isModelName(name) else {
            throw KernelHTTPError(500, "failed to load '\(name)', failed to poll from model repository")
        }
        try operations.withLock {
            let override = parameters.isEmpty ? nil : try parameters.override(for: name)
            defer { override?.removeDirectory() }
            var wanted: [(ModelConfiguration, VersionSource)]
            do {
                wanted = try wantedVersions(name, override: override)
            } catch let error as ModelRepositoryError {
                // A request's configuration that does not decode is the request's fault (400); a repository
                // that cannot be read for the model is Triton's INTERNAL (500).
                throw KernelHTTPError(error.isInvalidRequestConfiguration ? 400 : 500, "failed to load '\(name)', \(error.message)")
            } catch {
                throw KernelHTTPError(500, "failed to load '\(name)': \(error)")
            }
            guard !wanted.isEmpty else { throw KernelHTTPError(500, "failed to load '\(name)', no version is available") }
            if override != nil {
                // New settings or files: every version loads again, even one whose model file has not changed.
                wanted = wanted.map { ($0.0, VersionSource(model: nil, settings: nil, loadRequest: KernelClock.monotonicNanoseconds())) }
            }
            let failures = apply(name, wanted: wanted, loader)
            guard failures.isEmpty else {
                let listed = failures.map { "version \($0.version) is at UNAVAILABLE state: \($0.message);" }
                throw KernelHTTPError(400, "load failed for model '\(name)': \(listed.joined(separator: " "))")
            }
        }
    }

    /// `POST /v2/repository/models/{name}/unload`: takes every version of `name` out of routing, lets each finish
    /// what it has queued or running, then releases its sessions.
    func unload(_ name: String) throws {
        guard control == .explicit else { throw KernelHTTPError(503, ModelRepository.controlRefusal) }
        guard let loader = loader.withLockedValue({ $0 }) else { throw KernelHTTPError(503, "the kernel is stopping") }
        try operations.withLock {
            // Nothing of that name is served: nothing to unload, and done (Triton answers 200), so that an unload
            // before a load is safe to repeat.
            guard entries.withLockedValue({ $0[name] }) != nil else { return }
            unloadVersions(of: name, logger: loader.logger, reason: "unloaded")
        }
    }

    /// One poll of the repository (`repository_control: poll`): loads added models and versions, reloads changed
    /// ones (a model file's size or modification time, or its `config.yaml`), unloads removed ones. What did not
    /// change is left alone.
    func poll() {
        guard let loader = loader.withLockedValue({ $0 }), let layout else { return }
        operations.withLock {
            let names: [String]
            do { names = try layout.modelNames() } catch {
                // What serves keeps serving (an unmounted volume unloads nothing); logged once, not at every poll.
                let message = "\(error)"
                if pollError.withLockedValue({ $0 }) != message {
                    loader.logger.error("inference: polling the model repository: \(message); what serves keeps serving")
                    pollError.withLockedValue { $0 = message }
                }
                return
            }
            if pollError.withLockedValue({ $0 }) != nil {
                loader.logger.notice("inference: the model repository \(layout.path) can be read again")
                pollError.withLockedValue { $0 = nil }
            }
            let known = entries.withLockedValue { entries in entries.values.filter { $0.configured == nil }.map(\.name) }
            for name in known where !names.contains(name) {
                let serving = entries.withLockedValue { entries in !(entries[name]?.requested.isEmpty ?? true) }
                guard serving else { continue }
                loader.logger.notice("inference: model '\(name)' is no longer in the repository: unloading it")
                unloadVersions(of: name, logger: loader.logger, reason: "unloaded: no longer in the model repository")
            }
            for name in names {
                let wanted: [(ModelConfiguration, VersionSource)]
                do {
                    wanted = try wantedVersions(name)
                } catch {
                    let message = "\(error)"
                    let known = entries.withLockedValue { entries -> Bool in
                        defer { entries[name, default: ModelEntry(name: name)].scanError = message }
                        return entries[name]?.scanError == message
                    }
                    if !known { loader.logger.error("inference: model '\(name)': \(message); what serves keeps serving") }
                    continue
                }
                let unchanged = entries.withLockedValue { entries -> Bool in
                    entries[name]?.scanError = nil
                    guard let entry = entries[name] else { return false }
                    return entry.requested == Dictionary(uniqueKeysWithValues: wanted.map { ($0.0.versionNumber, $0.1) })
                }
                if !unchanged {
                    loader.logger.notice("inference: model '\(name)' changed in the repository: loading versions [\(wanted.map(\.0.version).joined(separator: ", "))]")
                    _ = apply(name, wanted: wanted, loader)
                }
            }
        }
    }

    /// Loads the `wanted` versions of `name` that are not already serving from the same files, switches routing to
    /// each as it is ready, and retires the versions no longer wanted once every wanted one loaded.
    /// Returns the versions that failed, with ORT's message. Called under `operations`.
    func apply(_ name: String, wanted: [(ModelConfiguration, VersionSource)], _ loader: ModelLoader)
        -> [(version: Int, message: String)] {
        let logger = loader.logger
        let toLoad = entries.withLockedValue { entries -> [(ModelConfiguration, VersionSource)] in
            var entry = entries[name] ?? ModelEntry(name: name)
            entry.unloaded = false
            entry.requested = Dictionary(uniqueKeysWithValues: wanted.map { ($0.0.versionNumber, $0.1) })
            var toLoad: [(ModelConfiguration, VersionSource)] = []
            for (configuration, source) in wanted {
                let number = configuration.versionNumber
                if let current = entry.versions[number], case .ready = current.state, current.source == source { continue }
                toLoad.append((configuration, source))
                if let current = entry.versions[number], case .ready = current.state { continue }
                entry.versions[number] = ModelVersion(configuration: configuration, state: .loading, source: nil)
            }
            entries[name] = entry
            return toLoad
        }
        var failures: [(version: Int, message: String)] = []
        for (configuration, source) in toLoad {
            let number = configuration.versionNumber
            do {
                let model = try ModelLoadingService.loadModel(configuration, runtime: loader.runtime, logger: logger,
                                                              isStopping: loader.isStopping)
                let replaced = entries.withLockedValue { entries -> LoadedModel? in
                    var replaced: LoadedModel?
                    if case .ready(let old) = entries[name]?.versions[number]?.state { replaced = old }
                    entries[name]?.versions[number] = ModelVersion(configuration: configuration, state: .ready(model), source: source)
                    return replaced
                }
                ModelLoadingService.logReady(model, logger: logger)
                if let replaced {
                    // As in `retire`: the requests routed to the old sessions reach their queue first.
                    replaced.leases.waitUntilReleased()
                    logger.notice("inference: model '\(name)' version \(number): the previous sessions finish their requests, then are released")
                    replaced.scheduler.stop(discardingQueued: false)
                }
            } catch {
                let message = "\(error)"
                failures.append((number, message))
                let keeps = entries.withLockedValue { entries -> Bool in
                    if case .ready = entries[name]?.versions[number]?.state { return true }
                    entries[name]?.versions[number] = ModelVersion(configuration: configuration, state: .failed(message), source: source)
                    return false
                }
                logger.error("inference: model '\(name)' failed to load from \(configuration.path) (version \(number)): \(message)\(keeps ? "; the loaded version \(number) keeps serving" : "")")
            }
        }
        let wantedNumbers = Set(wanted.map { $0.0.versionNumber })
        guard failures.isEmpty else {
            let kept = readyVersions(name).filter { !wantedNumbers.contains(Int($0)!) }
            if !kept.isEmpty {
                logger.warning("inference: model '\(name)': versions [\(kept.joined(separator: ", "))] keep serving, as a wanted version failed to load")
            }
            return failures
        }
        retire(name, versions: { !wantedNumbers.contains($0) }, reason: "unloaded", logger: logger)
        return failures
    }

    /// Unloads every version of `name` and marks it unloaded on purpose. Called under `operations`.
    func unloadVersions(of name: String, logger: Logger, reason: String) {
        entries.withLockedValue { entries in
            entries[name]?.unloaded = true
            entries[name]?.requested = [:]
        }
        retire(name, versions: { _ in true }, reason: reason, logger: logger)
    }

    /// Takes the chosen versions out of routing, lets their schedulers finish what is queued or running (drain),
    /// and leaves them `UNAVAILABLE` with `reason`; versions that are not ready are only marked.
    private func retire(_ name: String, versions chosen: (Int) -> Bool, reason: String, logger: Logger) {
        let draining = entries.withLockedValue { entries -> [(Int, LoadedModel)] in
            guard var entry = entries[name] else { return [] }
            var draining: [(Int, LoadedModel)] = []
            for (number, version) in entry.versions where chosen(number) {
                switch version.state {
                case .ready(let model):
                    entry.versions[number]?.state = .unloading
                    draining.append((number, model))
                case .loading, .unloading:
                    break
                case .failed:
                    entry.versions[number]?.state = .failed(reason)
                }
            }
            entries[name] = entry
            return draining
        }
        for (number, model) in draining {
            // A request that resolved the version just before it left routing is on its way to the queue (an event
            // loop between `resolve` and `submit`): once it is there, the drain answers it.
            model.leases.waitUntilReleased()
            model.scheduler.stop(discardingQueued: false)
            entries.withLockedValue { entries in
                if case .unloading = entries[name]?.versions[number]?.state {
                    entries[name]?.versions[number]?.state = .failed(reason)
                }
            }
            logger.notice("inference: model '\(name)' version \(number) unloaded (its requests finished first)")
        }
    }

    /// Records a model that could not even be scanned.
    func markFailed(_ name: String, _ message: String) {
        entries.withLockedValue { entries in
            guard var entry = entries[name] else { return }
            for number in entry.versions.keys { entry.versions[number]?.state = .failed(message) }
            if entry.versions.isEmpty { entry.scanError = message }
            entries[name] = entry
        }
    }

    /// Stops every version at the end of the generation (`discardingQueued`: a fast stop fails what waits).
    func stopAll(discardingQueued: Bool) {
        let models = loadedModels
        for model in models { model.scheduler.stop(discardingQueued: discardingQueued) }
        entries.withLockedValue { entries in
            for name in entries.keys {
                for number in entries[name]!.versions.keys {
                    entries[name]!.versions[number]!.state = .failed("the model was unloaded")
                }
            }
        }
    }
}

/// Loads the models of a generation before its listeners open, polls the repository while it runs, and unloads
/// the models when the generation retires.
///
/// ONNX Runtime itself must load: without it the kernel cannot serve and startup fails. A model that fails to load
/// is logged (naming its file and ORT's message) and reports not ready; the other models still serve.
///
/// With `load_before_listen: false` the first configuration of the process loads its models in the background:
/// `start` returns once ONNX Runtime is open, the listeners open, liveness answers, and readiness reports the
/// models still loading until each has loaded and warmed up. A reload always loads before it switches, so the
/// running configuration keeps serving meanwhile.
final class ModelLoadingService: KernelService {
    let name = "inference"
    let repository: ModelRepository
    let runtimeLibrary: String?
    let environment: [String: String]
    let logger: Logger
    /// Whether `start` leaves the models loading behind it.
    let loadsInBackground: Bool
    private let runtime = NIOLockedValueBox<ONNXRuntime?>(nil)
    /// The background load, while it runs; and whether a stop began (a background load then loads no further model).
    private let backgroundLoad = NIOLockedValueBox<Task<Void, Never>?>(nil)
    private let polling = NIOLockedValueBox<Task<Void, Never>?>(nil)
    private let stopped = NIOLockedValueBox(false)

    init(repository: ModelRepository, runtimeLibrary: String?, environment: [String: String], logger: Logger,
         loadsInBackground: Bool = false) {
        self.repository = repository
        self.runtimeLibrary = runtimeLibrary
        self.environment = environment
        self.logger = logger
        self.loadsInBackground = loadsInBackground
    }

    func start() async throws {
        repository.operationsPool.start()
        let runtime: ONNXRuntime
        do {
            runtime = try await repository.operationsPool.runIfActive { try self.openRuntime() }
        } catch {
            // The generation does not start, and its stop may never come: the thread must not outlive it.
            try? await repository.operationsPool.shutdownGracefully()
            throw error
        }
        let stopped = stopped
        let loader = ModelLoader(runtime: runtime, logger: logger, isStopping: { stopped.withLockedValue { $0 } })
        repository.loader.withLockedValue { $0 = loader }
        // From here on loads and unloads shared by other worker processes reach this repository.
        ServingRepositories.shared.add(repository)
        guard loadsInBackground else {
            try await repository.operationsPool.runIfActive { self.repository.loadAll(loader) { self.stopped.withLockedValue { $0 } } }
            startPolling()
            return
        }
        logger.notice("inference: \(repository.configurations.count + (repository.settings?.models.count ?? 0)) model(s) load in the background (load_before_listen: false); not ready until they have")
        let task = Task {
            do {
                try await self.repository.operationsPool.runIfActive { self.repository.loadAll(loader) { self.stopped.withLockedValue { $0 } } }
                self.startPolling()
            } catch {
                self.logger.error("inference: the background model load did not run: \(error)")
            }
        }
        backgroundLoad.withLockedValue { $0 = task }
    }

    /// `repository_control: poll`: rescans every `repository_poll` until the generation stops.
    private func startPolling() {
        guard let settings = repository.settings, settings.control == .poll, !stopped.withLockedValue({ $0 }) else { return }
        let interval = settings.pollInterval.nanoseconds
        let repository = repository
        let task = Task {
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: UInt64(interval))
                guard !Task.isCancelled else { return }
                try? await repository.operationsPool.runIfActive { repository.poll() }
            }
        }
        polling.withLockedValue { $0 = task }
    }

    func stop() async { await stop(discardingQueued: false) }

    func abort() async { await stop(discardingQueued: true) }

    private func stop(discardingQueued: Bool) async {
        stopped.withLockedValue { $0 = true }
        ServingRepositories.shared.remove(repository)
        // A model whose load is under way finishes loading (ONNX Runtime cannot be interrupted), then unloads with
        // the others; the models after it are not loaded.
        if let load = backgroundLoad.withLockedValue({ $0 }) { await load.value }
        if let poll = polling.withLockedValue({ $0 }) {
            poll.cancel()
            await poll.value
        }
        repository.loader.withLockedValue { $0 = nil }
        let repository = repository
        // Joining the instance threads blocks, and a load or unload under way finishes first: on the operations
        // thread, after what is queued there (a load or unload then finds the loader gone and answers 503). In a
        // task of its own: a fast stop (SIGTERM) cancels the task that stops the services, and a cancelled
        // `runIfActive` would return at once, leaving a model run going while the process exits under it.
        await Task.detached {
            _ = try? await repository.operationsPool.runIfActive {
                repository.operations.withLock { repository.stopAll(discardingQueued: discardingQueued) }
            }
            try? await repository.operationsPool.shutdownGracefully()
        }.value
        runtime.withLockedValue { $0 = nil }
    }

    private func openRuntime() throws -> ONNXRuntime {
        let path = try ONNXRuntime.locate(configured: runtimeLibrary, environment: environment)
        let runtime = try ONNXRuntime.open(path: path)
        self.runtime.withLockedValue { $0 = runtime }
        logger.notice("inference: ONNX Runtime \(runtime.version) loaded from \(path)")
        return runtime
    }

    static func logReady(_ model: LoadedModel, logger: Logger) {
        let configuration = model.configuration
        let inputs = model.signature.inputs.map { "\($0.name) \($0.dataType.rawValue)\($0.shapeText)" }
        let outputs = model.signature.outputs.map { "\($0.name) \($0.dataType.rawValue)\($0.shapeText)" }
        logger.notice("inference: model '\(configuration.name)' version \(configuration.version) ready: \(configuration.instances) instance(s), inputs [\(inputs.joined(separator: ", "))], outputs [\(outputs.joined(separator: ", "))], max_batch_size \(configuration.maxBatchSize)")
    }

    /// Creates one session per instance, checks the model can batch as configured, runs the warm-up, and starts
    /// the scheduler. The model is ready (routable) only once this returns, so only after its warm-up.
    static func loadModel(_ configuration: ModelConfiguration, runtime: ONNXRuntime, logger: Logger,
                          isStopping: () -> Bool = { false }) throws -> LoadedModel {
        var configuration = configuration
        let options = try runtime.sessionOptions(for: configuration)
        var sessions: [ONNXSession] = []
        for _ in 0..<configuration.instances {
            sessions.append(try ONNXSession(runtime: runtime, path: configuration.path, options: options))
        }
        let first = sessions[0]
        if configuration.autofillsMaxBatchSize, configuration.maxBatchSize == 0,
           (first.inputs + first.outputs).allSatisfy({ $0.shape.count > 0 && $0.shape[0] == -1 }) {
            configuration.maxBatchSize = autofilledMaxBatchSize
            if configuration.dynamicBatching == nil {
                configuration.dynamicBatching = .init(maxQueueDelayMicroseconds: 0, preferredBatchSizes: [])
            }
            logger.warning("inference: autofilled max_batch_size to \(autofilledMaxBatchSize) for model '\(configuration.name)' since batching is supported but no max_batch_size is specified in model configuration (as Triton fills it in); give max_batch_size to batch more, or 0 not to batch")
        }
        if configuration.dynamicBatching != nil, configuration.maxBatchSize == 0 {
            // Settings whose batcher waited for the auto-completion, which this model's tensors do not allow.
            throw ModelRepositoryError("dynamic_batching needs max_batch_size greater than 0, and the model cannot batch (not every input and output has a free first dimension)")
        }
        if configuration.maxBatchSize > 0 {
            for spec in first.inputs + first.outputs where spec.shape.first != -1 {
                throw ONNXRuntimeError("max_batch_size \(configuration.maxBatchSize) needs dimension 0 of every input and output to be dynamic, but '\(spec.name)' has shape \(spec.shapeText)")
            }
        }
        try checkDeclaredTensors(configuration, inputs: first.inputs, outputs: first.outputs)
        // What requests are checked against and metadata reports: the model's tensors, with the dimensions the
        // configuration fixes where the model leaves them free (Triton serves the configuration's shapes), or the
        // served shapes of the tensors it reshapes.
        let batching = configuration.maxBatchSize > 0
        let inputs = narrowed(first.inputs, by: configuration.declaredInputs, batching: batching)
        let outputs = narrowed(first.outputs, by: configuration.declaredOutputs, batching: batching)
        let labels = try outputLabels(configuration)
        var runners: [any ModelRunner] = sessions
        if (inputs + outputs).contains(where: { $0.reshape != nil }) {
            runners = sessions.map { ReshapingRunner(base: $0, inputs: inputs.map(\.reshape), outputs: outputs.map(\.reshape)) }
        }
        guard warmUp(configuration, sessions: runners, inputs: inputs, logger: logger, isStopping: isStopping) else {
            throw ModelRepositoryError("the kernel is stopping: the warm-up was interrupted, the model is not loaded")
        }
        var signature = ModelSignature(name: configuration.name, version: configuration.version, inputs: inputs,
                                       outputs: outputs, maxBatchSize: configuration.maxBatchSize)
        signature.labels = labels
        let scheduler = ModelScheduler(modelName: configuration.name, modelVersion: configuration.version,
                                       policy: configuration.policy, runners: runners, logger: logger)
        return LoadedModel(configuration: configuration, signature: signature, scheduler: scheduler)
    }

    /// Triton's `default-max-batch-size` of its ONNX Runtime backend.
    static let autofilledMaxBatchSize = 4

    /// Triton's check of a configuration's `input` and `output` entries against the model: each names a tensor of
    /// the model, with its data type and its dimensions (after the batch dimension when batching), where the
    /// configuration may fix a dimension the model leaves free but not the reverse.
    static func checkDeclaredTensors(_ configuration: ModelConfiguration, inputs: [TensorSpec], outputs: [TensorSpec]) throws {
        let batching = configuration.maxBatchSize > 0
        for (kind, declared, specs) in [("input", configuration.declaredInputs, inputs), ("output", configuration.declaredOutputs, outputs)] {
            for tensor in declared {
                guard let spec = specs.first(where: { $0.name == tensor.name }) else {
                    throw ModelRepositoryError("unexpected inference \(kind) '\(tensor.name)', allowed \(kind)s are: \(specs.map(\.name).joined(separator: ", "))")
                }
                guard spec.dataType == tensor.dataType else {
                    throw ModelRepositoryError("unexpected datatype TYPE_\(tensor.dataType == .bytes ? "STRING" : tensor.dataType.rawValue) for \(kind) '\(tensor.name)', model provides TYPE_\(spec.dataType == .bytes ? "STRING" : spec.dataType.rawValue)")
                }
                let modelDims = batching ? Array(spec.shape.dropFirst()) : spec.shape
                // A reshaped tensor's model shape is the reshape's; `dims` is what is served.
                let declaredDims = tensor.reshape ?? tensor.dims
                let matches = modelDims.count == declaredDims.count
                    && zip(modelDims, declaredDims).allSatisfy { model, declared in model == -1 || model == declared }
                guard matches else {
                    let complete = (batching ? [-1] : []) + declaredDims
                    throw ModelRepositoryError("model '\(configuration.name)', tensor '\(tensor.name)': the model expects \(spec.shape.count) dimensions (shape [\(spec.shape.map(String.init).joined(separator: ","))]) but the model configuration specifies \(complete.count) dimensions (\(batching ? "an initial batch dimension because max_batch_size > 0 followed by the explicit tensor shape, making complete shape" : "shape") [\(complete.map(String.init).joined(separator: ","))])")
                }
            }
        }
    }

    /// `specs` with the dimensions of their `declared` entries (after the batch dimension when batching), which
    /// `checkDeclaredTensors` has found compatible: a declared `-1` keeps the model's free dimension.
    static func narrowed(_ specs: [TensorSpec], by declared: [ModelConfiguration.DeclaredTensor], batching: Bool) -> [TensorSpec] {
        specs.map { spec in
            guard let tensor = declared.first(where: { $0.name == spec.name }) else { return spec }
            var narrowed = spec
            narrowed.shape = (batching ? Array(spec.shape.prefix(1)) : []) + tensor.dims
            if let reshape = tensor.reshape {
                narrowed.reshape = TensorReshape(served: tensor.dims, model: reshape, batched: batching)
            }
            return narrowed
        }
    }

    /// The labels of each output with a `label_filename` (Triton's label file: one label per line, in index
    /// order), read when the model loads; a relative name is in the model's directory (the one above its version
    /// directory), as Triton keeps it beside `config.pbtxt`.
    static func outputLabels(_ configuration: ModelConfiguration) throws -> [String: [String]] {
        var labels: [String: [String]] = [:]
        for output in configuration.declaredOutputs {
            guard let file = output.labelFile else { continue }
            func parent(_ path: String) -> String {
                guard let slash = path.lastIndex(of: "/") else { return "." }
                return slash == path.startIndex ? "/" : String(path[..<slash])
            }
            let path = file.hasPrefix("/") ? file : parent(parent(configuration.path)) + "/" + file
            guard let text = readConfigurationFile(path, limit: 64 << 20) else {
                throw ModelRepositoryError("label file \(path) of output '\(output.name)' cannot be read (missing, unreadable, or over 64 MiB)")
            }
            var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { line in
                line.hasSuffix("\r") ? String(line.dropLast()) : String(line)
            }
            if lines.last == "" { lines.removeLast() }
            labels[output.name] = lines
        }
        return labels
    }

    /// Runs every instance `warmup` times at every batch size the batcher can form (or `warmup_batch_sizes`), with
    /// zero-filled inputs (random bytes for `warmup_data: random`), so that no first batch of a size pays ONNX Runtime's
    /// first-run costs (Triton's `model_warmup`). Warm-up inputs are guesses (other free dimensions 1): a model that rejects them still
    /// serves, with a warning. Returns false when it stopped early because `isStopping` turned true (checked
    /// before each run).
    @discardableResult
    static func warmUp(_ configuration: ModelConfiguration, sessions: [any ModelRunner], inputs specs: [TensorSpec], logger: Logger,
                       isStopping: () -> Bool = { false }) -> Bool {
        let sizes = configuration.warmupSizes
        guard !sizes.isEmpty, let first = sessions.first else { return true }
        let described = sizes.map { $0.map(String.init) ?? "1" }
        logger.info("inference: model '\(configuration.name)' version \(configuration.version): warming up \(sessions.count) instance(s), \(configuration.warmup) run(s) at batch size(s) [\(described.joined(separator: ", "))]")
        do {
            var generator = SystemRandomNumberGenerator()
            for size in sizes {
                let inputs = specs.map { spec in
                    let random = configuration.warmsUpWithRandomData(spec.name)
                    return warmupTensor(spec, batchSize: size, random: random ? { generator.next() } : nil)
                }
                for session in sessions {
                    for _ in 0..<configuration.warmup {
                        if isStopping() {
                            logger.notice("inference: model '\(configuration.name)' version \(configuration.version): warm-up interrupted, the kernel is stopping")
                            return false
                        }
                        _ = try session.run(inputs)
                    }
                }
            }
        } catch {
            logger.warning("inference: model '\(configuration.name)': warm-up with \(configuration.warmsUpWithRandomData ? "random" : "zero") inputs (free dimensions 1) failed, serving without it: \(error)")
        }
        return true
    }

    /// A tensor for `spec`: dimension 0 at `batchSize` when batching, other free dimensions 1; zeros, or the bytes
    /// `random` gives (Triton's `random_data`: any bit pattern, NaNs included). A BYTES input holds empty strings
    /// (each element a zero 4-byte length, Triton's serialisation) either way, as Triton's random data does.
    static func warmupTensor(_ spec: TensorSpec, batchSize: Int?, random: (() -> UInt64)? = nil) -> Tensor {
        var shape = spec.shape.map { $0 < 0 ? Int64(1) : $0 }
        if let batchSize, !shape.isEmpty { shape[0] = Int64(batchSize) }
        if let reshape = spec.reshape, reshape.toModel(shape) == nil {
            // A free served dimension at 1 may hold too few elements for the model's fixed shape: the served shape
            // is then the one the model's shape (free dimensions 1) gives.
            let model = (reshape.batched ? [shape.first ?? 1] : []) + reshape.model.map { $0 < 0 ? Int64(1) : $0 }
            if let served = reshape.toServed(model) { shape = served }
        }
        let byteCount: Int
        if spec.dataType == .bytes {
            byteCount = TensorSize.elementCount(shape).flatMap { $0 <= TensorSize.bufferLimit / 4 ? $0 * 4 : nil } ?? 0
        } else {
            // The model file's fixed dimensions: a size that does not fit gives an empty tensor, which the model
            // rejects (warm-up failing is only a warning).
            byteCount = TensorSize.byteCount(shape, spec.dataType).flatMap { $0 <= TensorSize.bufferLimit ? $0 : nil } ?? 0
        }
        var bytes = [UInt8](repeating: 0, count: byteCount)
        if let random, spec.dataType != .bytes {
            for index in bytes.indices where index % 8 == 0 {
                let word = random()
                for offset in 0..<min(8, bytes.count - index) { bytes[index + offset] = UInt8(truncatingIfNeeded: word >> (offset * 8)) }
            }
        }
        return Tensor(dataType: spec.dataType, shape: shape, bytes: bytes)
    }
}
