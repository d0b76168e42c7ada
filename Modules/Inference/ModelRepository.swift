import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A model that loaded: its signature and its scheduler (which owns the sessions).
public final class LoadedModel: Sendable {
    public let configuration: ModelConfiguration
    public let signature: ModelSignature
    public let scheduler: ModelScheduler

    public init(configuration: ModelConfiguration, signature: ModelSignature, scheduler: ModelScheduler) {
        self.configuration = configuration
        self.signature = signature
        self.scheduler = scheduler
    }
}

/// Where a configured model stands.
public enum ModelState: Sendable {
    case loading
    case ready(LoadedModel)
    /// Loading failed; the message says why (ORT's own words).
    case failed(String)
}

/// The models of one configuration generation, shared by the loading service and the protocol handlers. It is
/// the generation's readiness check for models: ready once every model loaded and ran its warm-up.
public final class ModelRepository: ReadinessCheck, Sendable {
    public let configurations: [ModelConfiguration]
    private let states: NIOLockedValueBox<[String: ModelState]>

    public init(configurations: [ModelConfiguration]) {
        self.configurations = configurations
        states = NIOLockedValueBox(Dictionary(uniqueKeysWithValues: configurations.map { ($0.name, ModelState.loading) }))
    }

    /// The configuration of `name`, or nil when no such model is configured.
    public func configuration(_ name: String) -> ModelConfiguration? {
        configurations.first { $0.name == name }
    }

    public func state(_ name: String) -> ModelState? { states.withLockedValue { $0[name] } }

    func setState(_ state: ModelState, for name: String) { states.withLockedValue { $0[name] = state } }

    /// Whether every configured model is ready.
    public var allReady: Bool {
        states.withLockedValue { states in
            states.values.allSatisfy { if case .ready = $0 { return true } else { return false } }
        }
    }

    /// Each model still loading, or that failed to load (a model is `ready` only after its warm-up ran).
    public func notReady() -> [NotReadyReason] {
        states.withLockedValue { states in
            configurations.compactMap { configuration -> NotReadyReason? in
                switch states[configuration.name] ?? .loading {
                case .ready: return nil
                case .loading: return NotReadyReason(check: "models", name: configuration.name, reason: "loading")
                case .failed(let message): return NotReadyReason(check: "models", name: configuration.name, reason: "not loaded: \(message)")
                }
            }
        }
    }

    /// Models that are ready now.
    var loadedModels: [LoadedModel] {
        states.withLockedValue { states in
            configurations.compactMap { if case .ready(let model) = states[$0.name] { return model } else { return nil } }
        }
    }
}

/// Loads the models of a generation before its listeners open, and unloads them when the generation retires.
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
        guard loadsInBackground else {
            try await NIOThreadPool.singleton.runIfActive { try self.loadModels(self.openRuntime()) }
            return
        }
        let runtime = try await NIOThreadPool.singleton.runIfActive { try self.openRuntime() }
        logger.notice("inference: \(repository.configurations.count) model(s) load in the background (load_before_listen: false); not ready until they have")
        let task = Task {
            do {
                try await NIOThreadPool.singleton.runIfActive { self.loadModels(runtime) }
            } catch {
                self.logger.error("inference: the background model load did not run: \(error)")
            }
        }
        backgroundLoad.withLockedValue { $0 = task }
    }

    func stop() async { await stop(discardingQueued: false) }

    func abort() async { await stop(discardingQueued: true) }

    private func stop(discardingQueued: Bool) async {
        stopped.withLockedValue { $0 = true }
        // A model whose load is under way finishes loading (ONNX Runtime cannot be interrupted), then unloads with
        // the others; the models after it are not loaded.
        if let load = backgroundLoad.withLockedValue({ $0 }) { await load.value }
        let models = repository.loadedModels
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            // Joining the instance threads blocks: do it off the concurrency pool.
            NIOThreadPool.singleton.submit { _ in
                for model in models { model.scheduler.stop(discardingQueued: discardingQueued) }
                continuation.resume()
            }
        }
        for configuration in repository.configurations {
            repository.setState(.failed("the model was unloaded"), for: configuration.name)
        }
        runtime.withLockedValue { $0 = nil }
    }

    private func openRuntime() throws -> ONNXRuntime {
        let path = try ONNXRuntime.locate(configured: runtimeLibrary, environment: environment)
        let runtime = try ONNXRuntime.open(path: path)
        self.runtime.withLockedValue { $0 = runtime }
        logger.notice("inference: ONNX Runtime \(runtime.version) loaded from \(path)")
        return runtime
    }

    private func loadModels(_ runtime: ONNXRuntime) {
        for configuration in repository.configurations {
            guard !stopped.withLockedValue({ $0 }) else { return }
            do {
                let model = try ModelLoadingService.loadModel(configuration, runtime: runtime, logger: logger)
                repository.setState(.ready(model), for: configuration.name)
                let inputs = model.signature.inputs.map { "\($0.name) \($0.dataType.rawValue)\($0.shapeText)" }
                let outputs = model.signature.outputs.map { "\($0.name) \($0.dataType.rawValue)\($0.shapeText)" }
                logger.notice("inference: model '\(configuration.name)' version \(configuration.version) ready: \(configuration.instances) instance(s), inputs [\(inputs.joined(separator: ", "))], outputs [\(outputs.joined(separator: ", "))], max_batch_size \(configuration.maxBatchSize)")
            } catch {
                repository.setState(.failed("\(error)"), for: configuration.name)
                logger.error("inference: model '\(configuration.name)' failed to load from \(configuration.path): \(error)")
            }
        }
    }

    /// Creates one session per instance, checks the model can batch as configured, runs the warm-up, and starts
    /// the scheduler.
    static func loadModel(_ configuration: ModelConfiguration, runtime: ONNXRuntime, logger: Logger) throws -> LoadedModel {
        let options = SessionOptions(intraOpThreads: configuration.intraOpThreads, interOpThreads: configuration.interOpThreads)
        var sessions: [ONNXSession] = []
        for _ in 0..<configuration.instances {
            sessions.append(try ONNXSession(runtime: runtime, path: configuration.path, options: options))
        }
        let first = sessions[0]
        if configuration.maxBatchSize > 0 {
            for spec in first.inputs + first.outputs where spec.shape.first != -1 {
                throw ONNXRuntimeError("max_batch_size \(configuration.maxBatchSize) needs dimension 0 of every input and output to be dynamic, but '\(spec.name)' has shape \(spec.shapeText)")
            }
        }
        if configuration.warmup > 0 {
            let inputs = first.inputs.map { spec -> Tensor in
                let shape = spec.shape.map { $0 < 0 ? Int64(1) : $0 }
                // The model file's fixed dimensions: a size that does not fit gives an empty tensor, which the
                // model rejects (warm-up failing is only a warning).
                let byteCount = TensorSize.byteCount(shape, spec.dataType).flatMap { $0 <= TensorSize.bufferLimit ? $0 : nil } ?? 0
                return Tensor(dataType: spec.dataType, shape: shape, bytes: [UInt8](repeating: 0, count: byteCount))
            }
            // Warm-up inputs are guesses (zeros, free dimensions 1): a model that rejects them still serves.
            do {
                for session in sessions {
                    for _ in 0..<configuration.warmup { _ = try session.run(inputs) }
                }
            } catch {
                logger.warning("inference: model '\(configuration.name)': warm-up with zero inputs (free dimensions 1) failed, serving without it: \(error)")
            }
        }
        let signature = ModelSignature(name: configuration.name, version: configuration.version, inputs: first.inputs,
                                       outputs: first.outputs, maxBatchSize: configuration.maxBatchSize)
        let scheduler = ModelScheduler(modelName: configuration.name, policy: configuration.policy, runners: sessions,
                                       logger: logger)
        return LoadedModel(configuration: configuration, signature: signature, scheduler: scheduler)
    }
}
