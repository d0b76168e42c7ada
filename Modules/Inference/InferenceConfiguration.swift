import KernelConfig
import KernelCore

/// The `inference:` section: where ONNX Runtime is and which models to serve.
public struct InferenceConfiguration: Sendable {
    /// `runtime_library`: the path of libonnxruntime.so, or nil to search for it.
    public var runtimeLibrary: String?
    /// The `models:` entries (each one version of one model).
    public var models: [ModelConfiguration]
    /// `load_before_listen`: whether the first configuration's models load before its listeners open (the
    /// default), or behind them (`false`: liveness answers during a long load, readiness waits for the models).
    public var loadBeforeListen = true
    /// `model_repository` and its control keys, when configured.
    public var repository: RepositorySettings?
    /// The ONNX Runtime memory options of `inference:`, which every model starts from.
    public var memoryDefaults = SessionMemoryOptions()
    /// `pipelines`: steps around the models, mounted with the `pipeline` location directive
    /// (Modules/Inference/Pipeline, decoded by `PipelineConfiguration.decodeList`).
    public var pipelines: [PipelineConfiguration] = []
    /// `vision_library`: the path of libKernelOCRVision.so that pipelines open, or nil to search for it
    /// (`OCRVisionLibrary.candidates`).
    public var visionLibrary: String?
    /// `max_input_size`: the most bytes a compressed infer body may expand to where the location sets no
    /// `client_max_body_size` (`0`); where it sets one, that one bounds the expansion. Triton's
    /// `--http-max-input-size`, with its default of 64 MiB: without a bound a few KB of gzip could claim 4 GiB.
    public var maxInputSize = InferenceConfiguration.defaultMaxInputSize
    /// `allow_client_shm` (Triton's `--allow-client-shm`, off by default as there): whether clients may register
    /// system shared memory regions, which the server then reads inputs from and writes outputs into. A client
    /// that may register one can have the server read any shared memory object this user can open.
    public var allowsClientSharedMemory = false
    /// `trace` (Triton's `--trace-config`): the trace extension's settings at start, and its file.
    public var trace = TraceSettings()
}

/// `inference.model_repository`, `repository_control` and `repository_poll`.
public struct RepositorySettings: Sendable {
    /// Absolute (or configuration-relative, resolved) path of the repository directory.
    public var path: String
    public var control: RepositoryControl
    /// How often `poll` mode rescans the repository.
    public var pollInterval: ConfigDuration
    /// The models found when the configuration was read, by name.
    public var models: [RepositoryModel]
    /// `startup_models` (Triton's `--load-model`): the repository models that load at start with
    /// `repository_control: explicit`; nil for all of them.
    public var startupModels: Set<String>? = nil
}

/// How a repository's models change while the kernel runs (Triton's `--model-control-mode`).
public enum RepositoryControl: String, Sendable {
    /// Models load at start; `load` and `unload` are refused; no rescanning.
    case none
    /// The repository is rescanned every `repository_poll`; `load` and `unload` are refused (as Triton refuses them).
    case poll
    /// `POST /v2/repository/models/{name}/load` and `/unload` load and unload models (at start, those
    /// `startup_models` names: all by default).
    case explicit
}

/// `graph_optimization_level`, with ONNX Runtime's `GraphOptimizationLevel` values.
public enum GraphOptimizationLevel: Int32, Sendable, CaseIterable {
    case disableAll = 0
    case basic = 1
    case extended = 2
    case all = 99

    /// The names of onnxruntime's Python `GraphOptimizationLevel` without their `ORT_` prefix.
    public var configName: String {
        switch self {
        case .disableAll: return "disable_all"
        case .basic: return "basic"
        case .extended: return "extended"
        case .all: return "all"
        }
    }
}

/// `arena_extend_strategy`: how ONNX Runtime's CPU arena grows (`kNextPowerOfTwo`, `kSameAsRequested`).
public enum ArenaExtendStrategy: String, Sendable {
    case nextPowerOfTwo = "next_power_of_two"
    case sameAsRequested = "same_as_requested"
}

/// ONNX Runtime's memory, graph and thread-pool options of one model's sessions, named as onnxruntime's Python
/// `SessionOptions` and Triton's onnxruntime backend name them; `inference:` gives every model's defaults.
public struct SessionMemoryOptions: Sendable, Equatable {
    /// `cpu_mem_arena` (`enable_cpu_mem_arena`).
    public var cpuMemoryArena = true
    /// `arena_extend_strategy`; nil leaves ONNX Runtime's default (each session's own arena, next power of two).
    public var arenaExtendStrategy: ArenaExtendStrategy?
    /// `memory_pattern` (`enable_mem_pattern`).
    public var memoryPattern = true
    /// `arena_shrinkage`: the CPU arena gives back its unused memory at the end of each run (ONNX Runtime's run
    /// option `memory.enable_memory_arena_shrinkage`), so that one large input does not keep its memory for good.
    /// Each run then allocates what it needs again, which costs CPU where input sizes vary.
    public var arenaShrinkage = false
    /// `graph_optimization_level`.
    public var graphOptimizationLevel = GraphOptimizationLevel.all
    /// `thread_spinning`: whether the session's intra-op and inter-op thread pools spin waiting for work after a
    /// parallel section (`session.intra_op.allow_spinning`, `session.inter_op.allow_spinning`) or sleep at once.
    /// Spinning (ONNX Runtime's default) saves a wake-up when the next section follows soon, but on a machine with
    /// more busy threads than cores (several models' pools beside the pipeline's threads) it takes a core from
    /// the others.
    public var threadSpinning = true

    public init() {}
}

/// One entry of `inference.models`, or one version of a repository model.
public struct ModelConfiguration: Sendable {
    public var name: String
    /// Absolute path of the `.onnx` file.
    public var path: String
    public var version: String
    public var instances: Int
    public var intraOpThreads: Int
    public var interOpThreads: Int
    public var maxBatchSize: Int
    /// Present when `dynamic_batching` is configured.
    public var dynamicBatching: DynamicBatching?
    public var maxQueue: Int
    /// `timeout`: how long a request may wait in the queue, in microseconds (0: no limit). Triton's
    /// `default_timeout_microseconds` is kept exactly.
    public var timeoutMicroseconds: Int64
    /// Runs per instance and batch size at load.
    public var warmup: Int
    /// `queue_full_status`: what a full queue answers, 503 (the default, Triton's) or 429.
    public var queueFullStatus = 503
    /// `warmup_batch_sizes`: the batch sizes warm-up runs; nil for every size the batcher can form.
    public var warmupBatchSizes: [Int]? = nil
    /// The inputs warm-up fills with random bytes instead of zeros (`warmup_data: random`, or Triton's
    /// `random_data` in a `model_warmup` sample). BYTES inputs stay empty strings, as in Triton.
    public var warmupRandomInputs: Set<String> = []
    /// `warmup_data: random`: every input.
    public var warmupRandomEverywhere = false

    /// Whether warm-up fills `input` with random bytes (`warmupRandomInputs`, `warmupRandomEverywhere`).
    public func warmsUpWithRandomData(_ input: String) -> Bool {
        warmupRandomEverywhere || warmupRandomInputs.contains(input)
    }

    /// Whether any input warms up with random bytes.
    public var warmsUpWithRandomData: Bool { warmupRandomEverywhere || !warmupRandomInputs.isEmpty }
    public var memory = SessionMemoryOptions()
    /// Triton's auto-completion for ONNX models, for a repository model whose settings give no `max_batch_size`
    /// and declare no tensors: when every input and output has a free first dimension, it batches up to 4
    /// (Triton's `--backend-config=onnxruntime,default-max-batch-size=4`) with a dynamic batcher.
    public var autofillsMaxBatchSize = false
    /// The repository's `version_policy` for the model (Triton's default, the latest one, for a `models:` entry):
    /// what `GET .../config` reports.
    public var versionPolicy = VersionPolicy.latest(1)
    /// `inputs:` and `outputs:` (Triton's `input` and `output`): what the model must have, checked when it loads.
    public var declaredInputs: [DeclaredTensor] = []
    public var declaredOutputs: [DeclaredTensor] = []

    /// A tensor a model's settings declare: its name, data type and dimensions (without the batch dimension when
    /// `max_batch_size` > 0; -1 where any size goes), as Triton's model configuration declares them.
    public struct DeclaredTensor: Sendable, Equatable {
        public var name: String
        public var dataType: TensorDataType
        public var dims: [Int64]
        /// `format`: Triton's `FORMAT_NONE`, `FORMAT_NCHW` or `FORMAT_NHWC` (inputs); what it says of the layout is
        /// reported, the dimensions are what is checked.
        public var format: String? = nil
        /// `reshape`: the shape the model itself has for the tensor (without the batch dimension), where `dims`
        /// is the shape requests and answers carry (Triton's `reshape { shape }`).
        public var reshape: [Int64]? = nil
        /// `label_filename` (outputs): one label per line, the line's index the element's; relative to the
        /// model's directory. Classification answers carry the labels (`value:index:label`).
        public var labelFile: String? = nil
    }

    /// `dynamic_batching: {max_queue_delay, preferred_batch_sizes, priority_levels, default_priority_level}`.
    public struct DynamicBatching: Sendable {
        /// `max_queue_delay`, in microseconds (Triton's `max_queue_delay_microseconds` is kept exactly).
        public var maxQueueDelayMicroseconds: Int64
        public var preferredBatchSizes: [Int]
        /// Triton's `priority_levels` (0: one queue) and `default_priority_level`.
        public var priorityLevels = 0
        public var defaultPriorityLevel = 0
    }

    /// The scheduler policy these settings describe.
    public var policy: SchedulingPolicy {
        SchedulingPolicy(maxBatchSize: maxBatchSize, dynamicBatching: dynamicBatching != nil,
                         maxQueueDelayNanoseconds: UInt64(max(0, dynamicBatching?.maxQueueDelayMicroseconds ?? 0)) * 1000,
                         preferredBatchSizes: dynamicBatching?.preferredBatchSizes ?? [],
                         maxQueue: maxQueue, timeoutNanoseconds: UInt64(max(0, timeoutMicroseconds)) * 1000,
                         priorityLevels: dynamicBatching?.priorityLevels ?? 0,
                         defaultPriorityLevel: dynamicBatching?.defaultPriorityLevel ?? 0,
                         queueFullStatus: queueFullStatus)
    }

    /// The batch sizes warm-up runs: the configured list, else 1...`max_batch_size` (every size a batch can have),
    /// else one run with the model's free dimensions at 1 (a model that does not batch). Empty when warm-up is off.
    public var warmupSizes: [Int?] {
        guard warmup > 0 else { return [] }
        if let warmupBatchSizes { return warmupBatchSizes }
        return maxBatchSize > 0 ? Array(1...maxBatchSize) : [nil]
    }

    /// The version as a number, for ordering (versions are decimal digits).
    public var versionNumber: Int { Int(version) ?? 0 }
}

extension InferenceConfiguration {
    /// Default of `max_queue`: bounded, so that overload is answered 503 instead of growing memory.
    public static let defaultMaxQueue = 1024
    /// Default of `repository_poll` when `repository_control: poll` gives none (Triton's `--repository-poll-secs`).
    public static let defaultPollInterval = ConfigDuration.seconds(15)
    /// Default of `max_input_size` (Triton's `HTTP_DEFAULT_MAX_INPUT_SIZE`, 64 MiB).
    public static let defaultMaxInputSize = 64 << 20

    /// Decodes the section strictly; relative model paths resolve against the configuration file's directory.
    /// A `model_repository` is scanned here, so that its per-model files and a name in both it and `models:` are
    /// reported with their file, line and column.
    public static func decode(_ value: ConfigValue, resolvePath: (String) -> String) throws -> InferenceConfiguration {
        let mapping = try value.mapping()
        let runtimeLibrary = try mapping.optional("runtime_library").map { resolvePath(try $0.nonEmptyString()) }
        let memoryDefaults = try decodeMemoryOptions(mapping, defaults: SessionMemoryOptions())
        var models: [ModelConfiguration] = []
        var modelValues: [ConfigValue] = []
        if let list = mapping.optional("models") {
            for item in try list.list() {
                let model = try decodeModel(item, resolvePath: resolvePath, memoryDefaults: memoryDefaults)
                if models.contains(where: { $0.name == model.name }) {
                    throw item.error("model \"\(model.name)\" is declared twice")
                }
                models.append(model)
                modelValues.append(item)
            }
        }
        let loadBeforeListen = try mapping.optional("load_before_listen")?.bool() ?? true
        var repository: RepositorySettings?
        let controlValue = mapping.optional("repository_control")
        let pollValue = mapping.optional("repository_poll")
        if let repositoryValue = mapping.optional("model_repository") {
            let path = resolvePath(try repositoryValue.nonEmptyString())
            let poll = try pollValue.map { value -> ConfigDuration in
                let interval = try value.duration()
                guard interval.milliseconds > 0 else { throw value.expected("a positive duration") }
                return interval
            }
            var control: RepositoryControl = poll == nil ? .none : .poll
            if let controlValue {
                control = RepositoryControl(rawValue: try controlValue.oneOf(["none", "poll", "explicit"]))!
                if let pollValue, control != .poll {
                    throw pollValue.error("repository_poll needs repository_control: poll (it is \(control.rawValue))")
                }
            }
            let layout = ModelRepositoryLayout(path: path, memoryDefaults: memoryDefaults)
            let names: [String]
            do { names = try layout.modelNames() } catch { throw repositoryValue.error("\(error)") }
            var startupModels: Set<String>?
            if let startupValue = mapping.optional("startup_models") {
                guard control == .explicit else {
                    throw startupValue.error("startup_models needs repository_control: explicit (with \(control.rawValue) every model of the repository loads at start)")
                }
                startupModels = try decodeStartupModels(startupValue, names: names, path: path)
            }
            var found: [RepositoryModel] = []
            for name in names {
                do {
                    found.append(try layout.scanModel(name))
                } catch where startupModels.map({ !$0.contains(name) }) ?? false {
                    // Explicit mode, and not loaded at start: its settings are read when a load asks for it (a
                    // broken one is that load's error), as Triton reads only what it loads.
                    continue
                } catch let error as ConfigError {
                    throw error
                } catch {
                    throw repositoryValue.error("\(error)")
                }
            }
            for model in found {
                if let index = models.firstIndex(where: { $0.name == model.name }) {
                    let nameValue = try modelValues[index].mapping().required("name")
                    throw nameValue.error("model \"\(model.name)\" is declared here and in model_repository \(path)")
                }
            }
            repository = RepositorySettings(path: path, control: control,
                                            pollInterval: poll ?? defaultPollInterval, models: found)
            repository?.startupModels = startupModels
        } else if let stray = controlValue ?? pollValue ?? mapping.optional("startup_models") {
            throw stray.error("needs model_repository")
        }
        // Pipelines (Modules/Inference/Pipeline/PipelineConfiguration.swift).
        let pipelines = try mapping.optional("pipelines").map { try PipelineConfiguration.decodeList($0, models: models) } ?? []
        let visionLibrary = try mapping.optional("vision_library").map { resolvePath(try $0.nonEmptyString()) }
        let maxInputSize = try mapping.optional("max_input_size").map { value -> Int in
            let size = try value.size()
            guard size.bytes > 0, size.bytes <= Int(UInt32.max) else { throw value.expected("a size from 1 to 4g (e.g. 64m)") }
            return size.bytes
        } ?? defaultMaxInputSize
        let allowsClientSharedMemory = try mapping.optional("allow_client_shm")?.bool() ?? false
        let trace = try mapping.optional("trace").map { try TraceSettings.decode($0, resolvePath: resolvePath) } ?? TraceSettings()
        try mapping.finish()
        var configuration = InferenceConfiguration(runtimeLibrary: runtimeLibrary, models: models)
        configuration.allowsClientSharedMemory = allowsClientSharedMemory
        configuration.trace = trace
        configuration.loadBeforeListen = loadBeforeListen
        configuration.repository = repository
        configuration.memoryDefaults = memoryDefaults
        configuration.pipelines = pipelines
        configuration.visionLibrary = visionLibrary
        configuration.maxInputSize = maxInputSize
        return configuration
    }

    static func decodeModel(_ value: ConfigValue, resolvePath: (String) -> String,
                            memoryDefaults: SessionMemoryOptions = SessionMemoryOptions()) throws -> ModelConfiguration {
        let mapping = try value.mapping()
        let nameValue = try mapping.required("name")
        let name = try modelName(nameValue)
        let path = resolvePath(try mapping.required("path").nonEmptyString())
        let version = try mapping.optional("version").map { try versionText($0) } ?? "1"
        let model = try decodeModelSettings(mapping, name: name, path: path, version: version, memoryDefaults: memoryDefaults)
        try mapping.finish()
        return model
    }

    /// `startup_models: [NAME, ...]` or `"*"` (every model, the default); an empty list loads none, as Triton's
    /// explicit mode does without `--load-model`. A name the repository does not have is an error at its place.
    static func decodeStartupModels(_ value: ConfigValue, names repositoryNames: [String], path: String) throws -> Set<String>? {
        if case .scalar = value.node {
            guard try value.string() == "*" else { throw value.expected("a list of model names, or \"*\" for all") }
            return nil
        }
        var names: Set<String> = []
        for item in try value.list() {
            let name = try modelName(item)
            guard repositoryNames.contains(name) else {
                throw item.error("no model \"\(name)\" in model_repository \(path)")
            }
            names.insert(name)
        }
        return names
    }

    /// A model name as URLs carry it.
    static func modelName(_ value: ConfigValue) throws -> String {
        let name = try value.nonEmptyString()
        guard isModelName(name) else { throw value.expected("a model name without spaces or '/'") }
        return name
    }

    static func isModelName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".."
            && name.utf8.allSatisfy({ $0 > 0x20 && $0 != UInt8(ascii: "/") && $0 < 0x7F })
    }

    /// The keys a `models:` entry shares with a repository model's `config.yaml` (all but name, path, version).
    /// `inRepository`: the settings of a repository model, whose `max_batch_size` may be left to Triton's
    /// auto-completion at load (`ModelConfiguration.autofillsMaxBatchSize`), a `dynamic_batching` with it.
    static func decodeModelSettings(_ mapping: ConfigMapping, name: String, path: String, version: String,
                                    memoryDefaults: SessionMemoryOptions, inRepository: Bool = false) throws -> ModelConfiguration {
        let positive = "a positive integer"
        let instances = try mapping.optional("instances")?.int(in: 1...256, what: "an integer 1-256") ?? 1
        let intra = try mapping.optional("intra_op_threads")?.int(in: 0...1024, what: "an integer 0-1024 (0: ONNX Runtime decides)") ?? 1
        let inter = try mapping.optional("inter_op_threads")?.int(in: 0...1024, what: "an integer 0-1024 (0: ONNX Runtime decides)") ?? 1
        let maxBatchSize = try mapping.optional("max_batch_size")?.int(in: 0...1_000_000, what: "a non-negative integer") ?? 0
        // Checked against the batch size when the load has filled it in.
        let batchSizeAtLoad = inRepository && mapping.optional("max_batch_size") == nil
        var dynamicBatching: ModelConfiguration.DynamicBatching?
        if let batching = mapping.optional("dynamic_batching") {
            let batchingMapping = try batching.mapping()
            let delay = try batchingMapping.optional("max_queue_delay").map(queueDelayMicroseconds) ?? 0
            var preferred: [Int] = []
            if let sizes = batchingMapping.optional("preferred_batch_sizes") {
                for size in try sizes.list(allowScalar: true) {
                    let value = try size.int(in: 1...1_000_000, what: positive)
                    guard value <= maxBatchSize || batchSizeAtLoad else {
                        throw size.error("preferred batch size \(value) is larger than max_batch_size \(maxBatchSize)")
                    }
                    preferred.append(value)
                }
            }
            let levels = try batchingMapping.optional("priority_levels")?.int(in: 0...1000, what: "an integer 0-1000") ?? 0
            let defaultLevelValue = batchingMapping.optional("default_priority_level")
            let defaultLevel = try defaultLevelValue?.int(in: 0...1000, what: "an integer 0-1000") ?? 0
            // As Triton checks the model configuration: a default level in 1...priority_levels when there are levels.
            if levels > 0, !(1...levels).contains(defaultLevel) {
                throw (defaultLevelValue ?? batching).error("default_priority_level must be in range [1, \(levels)] with priority_levels \(levels)")
            }
            try batchingMapping.finish()
            guard maxBatchSize > 0 || batchSizeAtLoad else {
                throw batching.error("dynamic_batching needs max_batch_size greater than 0")
            }
            dynamicBatching = .init(maxQueueDelayMicroseconds: delay, preferredBatchSizes: preferred, priorityLevels: levels,
                                    defaultPriorityLevel: levels > 0 ? defaultLevel : 0)
        }
        let maxQueue = try mapping.optional("max_queue")?.int(in: 0...10_000_000, what: "a non-negative integer (0: unlimited)")
            ?? InferenceConfiguration.defaultMaxQueue
        let timeout = try mapping.optional("timeout").map(queueDelayMicroseconds) ?? 0
        var warmup = try mapping.optional("warmup")?.int(in: 0...10_000, what: "an integer 0-10000") ?? 0
        var warmupBatchSizes: [Int]?
        if let sizes = mapping.optional("warmup_batch_sizes") {
            guard maxBatchSize > 0 else { throw sizes.error("warmup_batch_sizes needs max_batch_size greater than 0") }
            var list: [Int] = []
            for size in try sizes.list(allowScalar: true) {
                let value = try size.int(in: 1...1_000_000, what: positive)
                guard value <= maxBatchSize else {
                    throw size.error("warm-up batch size \(value) is larger than max_batch_size \(maxBatchSize)")
                }
                if !list.contains(value) { list.append(value) }
            }
            warmupBatchSizes = list
            // A list of sizes asks for warm-up: once each unless `warmup` says how many times.
            if mapping.optional("warmup") == nil { warmup = 1 }
        }
        var warmupRandomEverywhere = false
        var warmupRandomInputs: Set<String> = []
        if let data = mapping.optional("warmup_data") {
            if case .scalar = data.node {
                warmupRandomEverywhere = try data.oneOf(["zero", "random"]) == "random"
            } else {
                // `{random: [input, ...]}`: the inputs Triton's samples give `random_data` (config.pbtxt's form).
                let entry = try data.mapping()
                for input in try entry.required("random").list(allowScalar: true) { warmupRandomInputs.insert(try input.nonEmptyString()) }
                try entry.finish()
            }
        }
        var queueFullStatus = 503
        if let status = mapping.optional("queue_full_status") {
            queueFullStatus = try status.int(in: 429...503, what: "503 or 429")
            guard queueFullStatus == 503 || queueFullStatus == 429 else { throw status.expected("503 or 429") }
        }
        let memory = try decodeMemoryOptions(mapping, defaults: memoryDefaults)
        var model = ModelConfiguration(name: name, path: path, version: version, instances: instances,
                                  intraOpThreads: intra, interOpThreads: inter, maxBatchSize: maxBatchSize,
                                  dynamicBatching: dynamicBatching, maxQueue: maxQueue, timeoutMicroseconds: timeout, warmup: warmup,
                                  warmupBatchSizes: warmupBatchSizes, memory: memory)
        model.queueFullStatus = queueFullStatus
        model.warmupRandomEverywhere = warmupRandomEverywhere
        model.warmupRandomInputs = warmupRandomInputs
        model.declaredInputs = try decodeDeclaredTensors(mapping.optional("inputs"), outputs: false)
        model.declaredOutputs = try decodeDeclaredTensors(mapping.optional("outputs"), outputs: true)
        model.autofillsMaxBatchSize = batchSizeAtLoad && model.declaredInputs.isEmpty && model.declaredOutputs.isEmpty
        return model
    }

    /// `max_queue_delay` and `timeout`: a time as nginx writes one (`2ms`, `1s`), or microseconds (`500us`), the
    /// unit of Triton's `max_queue_delay_microseconds` and `default_timeout_microseconds`, often below a millisecond.
    static func queueDelayMicroseconds(_ value: ConfigValue) throws -> Int64 {
        if case .scalar(let text, _, _) = value.node, text.hasSuffix("us") {
            let digits = text.dropLast(2)
            guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let micro = Int64(digits),
                  micro <= Int64(Int32.max) * 1000 else {
                throw value.expected("a time such as 2ms, or microseconds such as 500us")
            }
            return micro
        }
        return try value.duration().milliseconds * 1000
    }

    /// `inputs:`/`outputs:`: a list of `{name, datatype, dims}`, with `format`, `reshape` and `label_filename`
    /// where Triton's configuration has them.
    static func decodeDeclaredTensors(_ value: ConfigValue?, outputs: Bool) throws -> [ModelConfiguration.DeclaredTensor] {
        guard let value else { return [] }
        var declared: [ModelConfiguration.DeclaredTensor] = []
        for item in try value.list() {
            let entry = try item.mapping()
            let name = try entry.required("name").nonEmptyString()
            let typeValue = try entry.required("datatype")
            let typeName = try typeValue.nonEmptyString()
            guard let dataType = TensorDataType(rawValue: typeName) else {
                throw typeValue.expected("one of \(TensorDataType.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            let dimsValue = try entry.required("dims")
            let dims = try dimsValue.list(allowScalar: true).map { Int64(try $0.int(in: -1...Int(Int32.max), what: "-1 or a size")) }
            var tensor = ModelConfiguration.DeclaredTensor(name: name, dataType: dataType, dims: dims)
            if !outputs, let format = entry.optional("format") {
                tensor.format = try format.oneOf(["FORMAT_NONE", "FORMAT_NCHW", "FORMAT_NHWC"])
                // Triton's rule: an image layout names three dimensions (without the batch dimension).
                if tensor.format != "FORMAT_NONE", dims.count != 3 {
                    throw format.error("\(tensor.format!) needs 3 dims (channels, height, width in its order), found \(dims.count)")
                }
            }
            if let reshapeValue = entry.optional("reshape") {
                let reshape = try reshapeValue.list(allowScalar: true).map { Int64(try $0.int(in: -1...Int(Int32.max), what: "-1 or a size")) }
                try TensorReshape.check(dims: dims, reshape: reshape, at: reshapeValue)
                tensor.reshape = reshape
            }
            if outputs, let label = entry.optional("label_filename") { tensor.labelFile = try label.nonEmptyString() }
            try entry.finish()
            guard !declared.contains(where: { $0.name == name }) else { throw item.error("tensor \"\(name)\" is declared twice") }
            declared.append(tensor)
        }
        return declared
    }

    /// `cpu_mem_arena`, `arena_extend_strategy`, `memory_pattern`, `graph_optimization_level`, `thread_spinning`,
    /// `arena_shrinkage`, over `defaults`.
    static func decodeMemoryOptions(_ mapping: ConfigMapping, defaults: SessionMemoryOptions) throws -> SessionMemoryOptions {
        var options = defaults
        if let value = mapping.optional("cpu_mem_arena") { options.cpuMemoryArena = try value.bool() }
        let strategyValue = mapping.optional("arena_extend_strategy")
        if let strategyValue {
            options.arenaExtendStrategy = ArenaExtendStrategy(rawValue: try strategyValue.oneOf(["next_power_of_two", "same_as_requested"]))
        }
        if let value = mapping.optional("memory_pattern") { options.memoryPattern = try value.bool() }
        if let value = mapping.optional("graph_optimization_level") {
            let name = try value.oneOf(GraphOptimizationLevel.allCases.map(\.configName))
            options.graphOptimizationLevel = GraphOptimizationLevel.allCases.first { $0.configName == name }!
        }
        if let value = mapping.optional("thread_spinning") { options.threadSpinning = try value.bool() }
        let shrinkageValue = mapping.optional("arena_shrinkage")
        if let shrinkageValue { options.arenaShrinkage = try shrinkageValue.bool() }
        if options.arenaShrinkage, !options.cpuMemoryArena {
            // Inherited from `inference:` by a model that turns its arena off: there is nothing to shrink.
            guard let shrinkageValue else {
                options.arenaShrinkage = false
                return try checkedStrategy(options, strategyValue)
            }
            throw shrinkageValue.error("arena_shrinkage needs the CPU memory arena (cpu_mem_arena: true)")
        }
        return try checkedStrategy(options, strategyValue)
    }

    /// A strategy inherited from `inference:` does not apply to a model that turns its arena off; one the model
    /// sets itself with its arena off is an error.
    private static func checkedStrategy(_ options: SessionMemoryOptions, _ strategyValue: ConfigValue?) throws -> SessionMemoryOptions {
        var options = options
        if options.arenaExtendStrategy != nil, !options.cpuMemoryArena {
            guard let strategyValue else { options.arenaExtendStrategy = nil; return options }
            throw strategyValue.error("arena_extend_strategy needs the CPU memory arena (cpu_mem_arena: true)")
        }
        return options
    }

    /// A version is written as a string or a plain positive integer (`"1"` or `1`).
    static func versionText(_ value: ConfigValue) throws -> String {
        let text = try value.nonEmptyString()
        guard isVersion(text) else {
            throw value.expected("a version number such as \"1\"")
        }
        return text
    }

    /// Decimal digits that fit an `Int` (Triton's versions are int64).
    static func isVersion(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) && Int(text) != nil
    }
}
