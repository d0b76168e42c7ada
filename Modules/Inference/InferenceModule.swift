#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KernelConfig
import KernelCore

/// The `inference` module: serves ONNX models through ONNX Runtime over the Open Inference Protocol.
///
/// Runs in the worker role (and so in `both`). It contributes a service that loads the models before the listeners
/// open, and the `inference` location directive (`inference: {}` or `inference: true`), which serves the protocol's
/// `/v2/...` paths under the prefix location it is written in (`InferenceHandler.mount`).
public enum InferenceModule: KernelModule {
    public static let configurationKey = "inference"
    public static let roles: Set<KernelRole> = [.worker]

    public static func decode(_ value: ConfigValue, registrar: Registrar) throws -> InferenceConfiguration {
        let configuration = try InferenceConfiguration.decode(value, resolvePath: registrar.resolvePath)
        // Only pipelines need the vision library (OpenCV): opened here, so that `kernel -t` and the start report a
        // library that cannot be opened; a configuration without pipelines never loads it.
        if !configuration.pipelines.isEmpty {
            do {
                _ = try OCRVisionLibrary.open(configured: configuration.visionLibrary, environment: ProcessEnvironment.all())
            } catch {
                let mapping = try value.mapping()
                throw (mapping.optional("vision_library") ?? mapping.optional("pipelines") ?? value).error("\(error)")
            }
        }
        // `kernel -t` reports a model file it cannot read. When running, the load itself reports it (with ONNX
        // Runtime's message) and only that model is not ready, as for any other model that fails to load.
        guard registrar.mode == .check else { return configuration }
        let models = try value.mapping().optional("models").map { try $0.list() } ?? []
        for (index, model) in configuration.models.enumerated() where access(model.path, R_OK) != 0 {
            let pathValue = try models[index].mapping().required("path")
            throw pathValue.error("model file \"\(model.path)\" cannot be read: \(String(cString: strerror(errno)))")
        }
        return configuration
    }

    public static func register(_ configuration: InferenceConfiguration, into registrar: Registrar) throws {
        let repository = ModelRepository(configurations: configuration.models, repository: configuration.repository,
                                         memoryDefaults: configuration.memoryDefaults)
        InferenceVariables.register(into: &registrar.variables)
        registrar.addReadinessCheck(repository)
        let runtime = registrar.runtime
        let sharedMemory = SharedMemoryRegistry(allowsClientRegions: configuration.allowsClientSharedMemory)
        let tracer = TraceRecorder(configured: configuration.trace, workerNumber: runtime.supervision.workerNumber,
                                   logger: registrar.logger)
        if registrar.mode == .run {
            // Loads and unloads of the repository extension, as every worker process runs them (`RepositoryCommand`).
            runtime.processQueries.registerCommand(RepositoryCommand.name) { await RepositoryCommand.respond(to: $0) }
            // Statistics summed over the worker processes (`WorkerStatistics`).
            runtime.processQueries.registerCommand(WorkerStatistics.name) { WorkerStatistics.respond(to: $0) }
            // The error log's level set through Triton's logging extension, in every worker process.
            runtime.processQueries.registerCommand(LogSettings.commandName) { [errorLog = runtime.errorLog] argument in
                LogSettings.respond(to: argument, errorLog: errorLog)
            }
            // Triton's nv_inference_* metrics, which the metrics location adds to its answer.
            runtime.processQueries.register(TritonMetrics.query) { TritonMetrics.respond(repository: repository) }
            // Trace settings changed through Triton's trace extension, in every worker process; traces left are
            // written when the configuration stops.
            runtime.processQueries.registerCommand(TraceCommand.name) { TraceCommand.respond(to: $0, recorder: tracer) }
            registrar.addService(TraceFlushService(recorder: tracer))
            // Shared memory regions registered and unregistered through Triton's extension, in every worker process.
            runtime.processQueries.registerCommand(SharedMemoryCommand.name) { argument in
                SharedMemoryCommand.respond(to: argument, registry: sharedMemory)
            }
            // In the background only for the process's first configuration: a reload loads before it switches.
            let background = !configuration.loadBeforeListen && registrar.runtime.currentGeneration == nil
            registrar.addService(ModelLoadingService(repository: repository, runtimeLibrary: configuration.runtimeLibrary,
                                                     environment: ProcessEnvironment.all(), logger: registrar.logger,
                                                     loadsInBackground: background))
        }
        // `.stripsPrefix`: the location's prefix stands for `/v2`, so only prefix locations can hold it.
        registrar.addLocationHandler("inference", capabilities: .stripsPrefix) { value, _, context in
            if case .scalar = value.node {
                guard try value.bool() else { throw value.expected("true or a mapping ({})") }
            } else {
                try value.mapping().finish()
            }
            return InferenceHandler(repository: repository, mount: context.prefix ?? "",
                                    notReady: { runtime.notReadyReasons() }, supervision: runtime.supervision,
                                    maxInputSize: configuration.maxInputSize, errorLog: runtime.errorLog,
                                    sharedMemory: sharedMemory, tracer: tracer)
        }
        // Pipelines (Modules/Inference/Pipeline): `pipeline: <name>` serves one on its location.
        let pipelines = configuration.pipelines.map {
            Pipeline(configuration: $0, repository: repository, runtimeLibrary: configuration.runtimeLibrary)
        }
        if registrar.mode == .run, !pipelines.isEmpty {
            registrar.addService(PipelineLoadingService(pipelines: pipelines, logger: registrar.logger))
        }
        registrar.addLocationHandler("pipeline") { value, _, _ in
            let name = try value.nonEmptyString()
            guard let pipeline = pipelines.first(where: { $0.configuration.name == name }) else {
                throw value.error("no pipeline \"\(name)\" in inference.pipelines")
            }
            return PipelineHandler(pipeline: pipeline)
        }
    }
}
