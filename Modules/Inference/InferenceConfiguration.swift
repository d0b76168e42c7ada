import KernelConfig
import KernelCore

/// The `inference:` section: where ONNX Runtime is and which models to serve.
public struct InferenceConfiguration: Sendable {
    /// `runtime_library`: the path of libonnxruntime.so, or nil to search for it.
    public var runtimeLibrary: String?
    public var models: [ModelConfiguration]
    /// `load_before_listen`: whether the first configuration's models load before its listeners open (the
    /// default), or behind them (`false`: liveness answers during a long load, readiness waits for the models).
    public var loadBeforeListen = true
    /// `pipelines`: steps around the models, mounted with the `pipeline` location directive
    /// (Modules/Inference/Pipeline, decoded by `PipelineConfiguration.decodeList`).
    public var pipelines: [PipelineConfiguration] = []
}

/// One entry of `inference.models`.
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
    public var timeout: ConfigDuration
    public var warmup: Int

    /// `dynamic_batching: {max_queue_delay, preferred_batch_sizes}`.
    public struct DynamicBatching: Sendable {
        public var maxQueueDelay: ConfigDuration
        public var preferredBatchSizes: [Int]
    }

    /// The scheduler policy these settings describe.
    public var policy: SchedulingPolicy {
        SchedulingPolicy(maxBatchSize: maxBatchSize, dynamicBatching: dynamicBatching != nil,
                         maxQueueDelayNanoseconds: UInt64(max(0, dynamicBatching?.maxQueueDelay.nanoseconds ?? 0)),
                         preferredBatchSizes: dynamicBatching?.preferredBatchSizes ?? [],
                         maxQueue: maxQueue, timeoutNanoseconds: UInt64(max(0, timeout.nanoseconds)))
    }
}

extension InferenceConfiguration {
    /// Default of `max_queue`: bounded, so that overload is answered 503 instead of growing memory.
    public static let defaultMaxQueue = 1024

    /// Decodes the section strictly; relative model paths resolve against the configuration file's directory.
    public static func decode(_ value: ConfigValue, resolvePath: (String) -> String) throws -> InferenceConfiguration {
        let mapping = try value.mapping()
        let runtimeLibrary = try mapping.optional("runtime_library").map { resolvePath(try $0.nonEmptyString()) }
        var models: [ModelConfiguration] = []
        if let list = mapping.optional("models") {
            for item in try list.list() {
                let model = try decodeModel(item, resolvePath: resolvePath)
                if models.contains(where: { $0.name == model.name }) {
                    throw item.error("model \"\(model.name)\" is declared twice")
                }
                models.append(model)
            }
        }
        let loadBeforeListen = try mapping.optional("load_before_listen")?.bool() ?? true
        // Pipelines (Modules/Inference/Pipeline/PipelineConfiguration.swift).
        let pipelines = try mapping.optional("pipelines").map { try PipelineConfiguration.decodeList($0, models: models) } ?? []
        try mapping.finish()
        var configuration = InferenceConfiguration(runtimeLibrary: runtimeLibrary, models: models)
        configuration.loadBeforeListen = loadBeforeListen
        configuration.pipelines = pipelines
        return configuration
    }

    static func decodeModel(_ value: ConfigValue, resolvePath: (String) -> String) throws -> ModelConfiguration {
        let mapping = try value.mapping()
        let nameValue = try mapping.required("name")
        let name = try nameValue.nonEmptyString()
        guard name.utf8.allSatisfy({ $0 > 0x20 && $0 != UInt8(ascii: "/") && $0 < 0x7F }) else {
            throw nameValue.expected("a model name without spaces or '/'")
        }
        let path = resolvePath(try mapping.required("path").nonEmptyString())
        let version = try mapping.optional("version").map { try versionText($0) } ?? "1"
        let positive = "a positive integer"
        let instances = try mapping.optional("instances")?.int(in: 1...256, what: "an integer 1-256") ?? 1
        let intra = try mapping.optional("intra_op_threads")?.int(in: 0...1024, what: "an integer 0-1024 (0: ONNX Runtime decides)") ?? 1
        let inter = try mapping.optional("inter_op_threads")?.int(in: 0...1024, what: "an integer 0-1024 (0: ONNX Runtime decides)") ?? 1
        let maxBatchSize = try mapping.optional("max_batch_size")?.int(in: 0...1_000_000, what: "a non-negative integer") ?? 0
        var dynamicBatching: ModelConfiguration.DynamicBatching?
        if let batching = mapping.optional("dynamic_batching") {
            let batchingMapping = try batching.mapping()
            let delay = try batchingMapping.optional("max_queue_delay")?.duration() ?? ConfigDuration(milliseconds: 0)
            var preferred: [Int] = []
            if let sizes = batchingMapping.optional("preferred_batch_sizes") {
                for size in try sizes.list(allowScalar: true) {
                    let value = try size.int(in: 1...1_000_000, what: positive)
                    guard value <= maxBatchSize else {
                        throw size.error("preferred batch size \(value) is larger than max_batch_size \(maxBatchSize)")
                    }
                    preferred.append(value)
                }
            }
            try batchingMapping.finish()
            guard maxBatchSize > 0 else {
                throw batching.error("dynamic_batching needs max_batch_size greater than 0")
            }
            dynamicBatching = .init(maxQueueDelay: delay, preferredBatchSizes: preferred)
        }
        let maxQueue = try mapping.optional("max_queue")?.int(in: 0...10_000_000, what: "a non-negative integer (0: unlimited)")
            ?? InferenceConfiguration.defaultMaxQueue
        let timeout = try mapping.optional("timeout")?.duration() ?? ConfigDuration(milliseconds: 0)
        let warmup = try mapping.optional("warmup")?.int(in: 0...10_000, what: "an integer 0-10000") ?? 0
        try mapping.finish()
        return ModelConfiguration(name: name, path: path, version: version, instances: instances,
                                  intraOpThreads: intra, interOpThreads: inter, maxBatchSize: maxBatchSize,
                                  dynamicBatching: dynamicBatching, maxQueue: maxQueue, timeout: timeout, warmup: warmup)
    }

    /// A version is written as a string or a plain positive integer (`"1"` or `1`).
    private static func versionText(_ value: ConfigValue) throws -> String {
        let text = try value.nonEmptyString()
        guard text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            throw value.expected("a version number such as \"1\"")
        }
        return text
    }
}
