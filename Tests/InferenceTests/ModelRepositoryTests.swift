import Foundation
import KernelConfig
import KernelCore
import Logging
import NIOCore
import NIOPosix
import XCTest
@testable import Inference

/// The model repository: scanning a directory, version policies, per-model settings files and their errors, the
/// `inference:` keys, and the state logic of versions (routing, index, readiness, load/poll/unload with ONNX Runtime).
final class ModelRepositoryTests: XCTestCase {
    var directory: String!

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "kernel-repository-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func write(_ relative: String, _ text: String) throws {
        let path = directory + "/" + relative
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }

    private func copyDemo(to relative: String) throws {
        guard FileManager.default.fileExists(atPath: ONNXRuntimeTests.demoPath) else {
            throw MissingPrerequisite("\(ONNXRuntimeTests.demoPath) is missing: run scripts/models/make_models.py")
        }
        let path = directory + "/" + relative
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.copyItem(atPath: ONNXRuntimeTests.demoPath, toPath: path)
    }

    private func decode(_ text: String) throws -> InferenceConfiguration {
        let root = try YAMLParser().parse(text, file: "etc/k.yaml")
        let value = try XCTUnwrap(try ConfigValue(node: root, path: "").mapping().optional("inference"))
        return try InferenceConfiguration.decode(value) { $0.hasPrefix("/") ? $0 : "etc/" + $0 }
    }

    // MARK: - Scanning and policies

    func testVersionPoliciesSelectTheHighestFirst() {
        XCTAssertEqual(VersionPolicy.latest(1).select([1, 3, 2]), [3])
        XCTAssertEqual(VersionPolicy.latest(2).select([1, 3, 2]), [3, 2])
        XCTAssertEqual(VersionPolicy.latest(5).select([1, 2]), [2, 1])
        XCTAssertEqual(VersionPolicy.all.select([2, 10, 1]), [10, 2, 1])
        XCTAssertEqual(VersionPolicy.specific([1, 3, 7]).select([1, 2, 3]), [3, 1])
    }

    func testScansModelsVersionsAndTheirSettings() throws {
        try write("demo/1/model.onnx", "")
        try write("demo/2/model.onnx", "")
        try write("demo/10/model.onnx", "")
        try write("demo/notes/readme", "")  // not a version
        try write("demo/config.yaml", """
            version_policy: {latest: 2}
            max_batch_size: 8
            dynamic_batching: {max_queue_delay: 1ms}
            warmup_batch_sizes: [1, 8]
            cpu_mem_arena: false
            """)
        try write("plain/1/model.onnx", "")
        try write(".hidden/1/model.onnx", "")
        try write("bad name/1/model.onnx", "")
        let layout = ModelRepositoryLayout(path: directory)
        XCTAssertEqual(try layout.modelNames(), ["demo", "plain"])
        let models = try layout.scan()
        let demo = models[0]
        XCTAssertEqual(demo.availableVersions, [10, 2, 1])
        XCTAssertEqual(demo.versions.map(\.version), ["10", "2"], "latest 2, highest first")
        XCTAssertEqual(demo.versions[0].path, directory + "/demo/10/model.onnx")
        XCTAssertEqual(demo.versions[0].maxBatchSize, 8)
        XCTAssertEqual(demo.versions[0].policy.maxQueueDelayNanoseconds, 1_000_000)
        XCTAssertEqual(demo.versions[0].warmupSizes, [1, 8], "a list of sizes turns warm-up on, once each")
        XCTAssertFalse(demo.versions[0].memory.cpuMemoryArena)
        XCTAssertNotNil(demo.stamps[directory + "/demo/config.yaml"] ?? nil)
        let plain = models[1]
        XCTAssertEqual(plain.policy, .latest(1), "Triton's default policy")
        XCTAssertEqual(plain.versions.map(\.version), ["1"])
        XCTAssertEqual(plain.versions[0].maxBatchSize, 0)
    }

    func testPolicyForms() throws {
        func policy(_ text: String) throws -> VersionPolicy {
            try write("m/config.yaml", text)
            return try ModelRepositoryLayout(path: directory).scanModel("m").policy
        }
        try write("m/1/model.onnx", "")
        XCTAssertEqual(try policy("version_policy: {latest: 3}\n"), .latest(3))
        XCTAssertEqual(try policy("version_policy: {latest: {num_versions: 2}}\n"), .latest(2))
        XCTAssertEqual(try policy("version_policy: {all: {}}\n"), .all)
        XCTAssertEqual(try policy("version_policy: {specific: [1, 3]}\n"), .specific([1, 3]))
        XCTAssertEqual(try policy("version_policy: {specific: {versions: [4]}}\n"), .specific([4]))
    }

    func testSettingsErrorsNameTheirFileLineAndColumn() throws {
        try write("m/1/model.onnx", "")
        let file = directory + "/m/config.yaml"
        func error(_ text: String) throws -> String {
            try write("m/config.yaml", text)
            do {
                _ = try ModelRepositoryLayout(path: directory).scanModel("m")
            } catch {
                return "\(error)"
            }
            XCTFail("no error for \(text)")
            return ""
        }
        XCTAssertEqual(try error("max_batch_size: 4\nbatching: 2\n"),
                       "\(file):2:1: batching: unknown key (expected one of: arena_extend_strategy, arena_shrinkage, cpu_mem_arena, dynamic_batching, graph_optimization_level, inputs, instances, inter_op_threads, intra_op_threads, max_batch_size, max_queue, memory_pattern, outputs, queue_full_status, thread_spinning, timeout, version_policy, warmup, warmup_batch_sizes, warmup_data)")
        XCTAssertEqual(try error("version_policy: {latest: 0}\n"),
                       "\(file):1:26: version_policy.latest: expected a positive integer, found \"0\"")
        XCTAssertEqual(try error("version_policy: {newest: 1}\n"),
                       "\(file):1:18: version_policy.newest: unknown key (expected one of: all, latest, specific)")
        XCTAssertEqual(try error("version_policy: {latest: 1, all: {}}\n"),
                       "\(file):1:17: version_policy: expected one of {latest: N}, {all: {}}, {specific: [V, ...]}, found a mapping")
        XCTAssertEqual(try error("max_batch_size: 4\nwarmup_batch_sizes: [2, 8]\n"),
                       "\(file):2:25: warmup_batch_sizes[1]: warm-up batch size 8 is larger than max_batch_size 4")
    }

    func testTritonConfigPbtxtBasicFields() throws {
        try write("demo/1/model.onnx", "")
        try write("demo/3/model.onnx", "")
        try write("demo/config.pbtxt", """
            name: "demo"
            platform: "onnxruntime_onnx"
            max_batch_size: 8
            version_policy: { specific: { versions: [1, 3] } }
            input [ { name: "input" data_type: TYPE_FP32 dims: [ 64 ] } ]
            output [ { name: "output", data_type: TYPE_FP32, dims: [ 10 ] } ]
            # two groups of CPU instances add up
            instance_group [ { count: 2 kind: KIND_CPU }, { count: 1 } ]
            dynamic_batching {
              preferred_batch_size: [ 4, 8 ]
              max_queue_delay_microseconds: 100
              default_queue_policy { max_queue_size: 16 default_timeout_microseconds: 2500 }
            }
            """)
        let model = try ModelRepositoryLayout(path: directory).scanModel("demo")
        XCTAssertEqual(model.policy, .specific([1, 3]))
        XCTAssertEqual(model.versions.map(\.version), ["3", "1"])
        XCTAssertEqual(model.settingsPath, directory + "/demo/config.pbtxt")
        let configuration = model.versions[0]
        XCTAssertEqual(configuration.maxBatchSize, 8)
        XCTAssertEqual(configuration.instances, 3)
        XCTAssertEqual(configuration.dynamicBatching?.preferredBatchSizes, [4, 8])
        XCTAssertEqual(configuration.dynamicBatching?.maxQueueDelayMicroseconds, 100, "Triton's microseconds, kept")
        XCTAssertEqual(configuration.maxQueue, 16)
        XCTAssertEqual(configuration.timeoutMicroseconds, 2500, "Triton's microseconds, kept")
        XCTAssertEqual(configuration.policy.timeoutNanoseconds, 2_500_000)
        // Repeated fields written one by one, and Triton's other policy forms.
        try write("demo/config.pbtxt", "max_batch_size: 4\ndynamic_batching { preferred_batch_size: 2 preferred_batch_size: 4 }\nversion_policy { latest { num_versions: 2 } }\n")
        let repeated = try ModelRepositoryLayout(path: directory).scanModel("demo")
        XCTAssertEqual(repeated.versions[0].dynamicBatching?.preferredBatchSizes, [2, 4])
        XCTAssertEqual(repeated.policy, .latest(2))
        try write("demo/config.pbtxt", "version_policy: { all { } }\n")
        XCTAssertEqual(try ModelRepositoryLayout(path: directory).scanModel("demo").policy, .all)
        // Fields at Triton's defaults, as a configuration saved from a Triton server has them, and priority levels.
        try write("demo/config.pbtxt", """
            name: "demo" runtime: "" max_batch_size: 4
            instance_group [ { name: "demo_0" kind: KIND_CPU count: 2 gpus: [ ] passive: false host_policy: "" } ]
            optimization { priority: PRIORITY_DEFAULT input_pinned_memory { enable: true } eager_batching: false }
            dynamic_batching { preserve_ordering: false priority_levels: 2 default_priority_level: 1
                               default_queue_policy { timeout_action: REJECT allow_timeout_override: false } }
            """)
        let defaults = try XCTUnwrap(ModelRepositoryLayout(path: directory).scanModel("demo").versions.first)
        XCTAssertEqual(defaults.instances, 2)
        XCTAssertEqual(defaults.dynamicBatching?.priorityLevels, 2)
        XCTAssertEqual(defaults.dynamicBatching?.defaultPriorityLevel, 1)
        // The ONNX Runtime backend's parameters and graph level, and Triton's warm-up samples.
        try write("demo/config.pbtxt", """
            max_batch_size: 8
            parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
            parameters { key: "enable_mem_arena" value: { string_value: "0" } }
            optimization { graph { level: -1 } }
            model_warmup [ { name: "small" batch_size: 1 inputs { key: "input" value: { data_type: TYPE_FP32 dims: [ 64 ] zero_data: true } } },
                           { name: "full" batch_size: 8 count: 3 inputs { key: "input" value: { data_type: TYPE_FP32 dims: [ 64 ] random_data: true } } } ]
            """)
        let tuned = try XCTUnwrap(ModelRepositoryLayout(path: directory).scanModel("demo").versions.first)
        XCTAssertEqual(tuned.intraOpThreads, 2)
        XCTAssertFalse(tuned.memory.cpuMemoryArena)
        XCTAssertEqual(tuned.memory.graphOptimizationLevel, .basic)
        XCTAssertEqual(tuned.warmupBatchSizes, [1, 8])
        XCTAssertEqual(tuned.warmup, 3, "the samples' largest count")
        XCTAssertEqual(tuned.warmupRandomInputs, ["input"], "the input a sample gives random_data")
        XCTAssertEqual(tuned.instances, 2, "no instance_group: Triton's one CPU group of two for ONNX Runtime")
        try write("demo/config.pbtxt", "instance_group [ { kind: KIND_CPU }, { count: 3 } ]\n")
        XCTAssertEqual(try ModelRepositoryLayout(path: directory).scanModel("demo").versions.first?.instances, 5,
                       "a group without a count has Triton's two")
        try write("demo/config.pbtxt", "model_warmup [ { batch_size: 1 count: 2 } ]\n")
        let unbatched = try XCTUnwrap(ModelRepositoryLayout(path: directory).scanModel("demo").versions.first)
        XCTAssertNil(unbatched.warmupBatchSizes, "a model that does not batch warms up at its own shapes")
        XCTAssertEqual(unbatched.warmupSizes.count, 1)
        XCTAssertEqual(unbatched.warmup, 2)
        try write("demo/config.pbtxt", """
            model_warmup [ { batch_size: 1 inputs { key: "input" value: { data_type: TYPE_FP32 dims: [ 64 ] input_data_file: "raw" } } } ]
            """)
        XCTAssertThrowsError(try ModelRepositoryLayout(path: directory).scanModel("demo")) {
            XCTAssertTrue("\($0)".contains("model_warmup.inputs.input_data_file: not supported"), "\($0)")
        }
    }

    func testALoadRequestsJSONConfigurationReadsAsConfigPbtxtDoes() throws {
        try write("demo/1/model.onnx", "")
        try write("demo/2/model.onnx", "")
        try write("demo/config.yaml", "max_batch_size: 16\n")
        // As `GET .../config` answers it, with the fields Triton writes at their defaults and 64-bit integers as text.
        let json = try JSONReader.parse(ByteBuffer(string: #"""
            {"name": "demo", "platform": "onnxruntime_onnx", "backend": "onnxruntime", "max_batch_size": 4,
             "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}], "output": [],
             "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
             "dynamic_batching": {"preferred_batch_size": [2, 4], "max_queue_delay_microseconds": "1500",
                                  "default_queue_policy": {"max_queue_size": 9, "default_timeout_microseconds": 0}},
             "version_policy": {"specific": {"versions": [1]}}, "default_model_filename": "model.onnx",
             "batch_input": [], "batch_output": [], "parameters": {}, "model_warmup": [], "optimization": {}}
            """#))
        let settings = try TritonModelConfig.settings(json: json, modelName: "demo")
        let model = try ModelRepositoryLayout(path: directory).scanModel("demo", override: ModelLoadOverride(settings: settings))
        XCTAssertEqual(model.policy, .specific([1]))
        XCTAssertEqual(model.versions.map(\.version), ["1"])
        XCTAssertNil(model.settingsPath, "the settings file is not read")
        let configuration = try XCTUnwrap(model.versions.first)
        XCTAssertEqual(configuration.maxBatchSize, 4)
        XCTAssertEqual(configuration.instances, 2)
        XCTAssertEqual(configuration.dynamicBatching?.preferredBatchSizes, [2, 4])
        XCTAssertEqual(configuration.dynamicBatching?.maxQueueDelayMicroseconds, 1500, "Triton's microseconds, kept")
        XCTAssertEqual(configuration.maxQueue, 9)
        // Errors name the field, with no line or column (a request's JSON has none).
        func error(_ text: String) -> String {
            do {
                let settings = try TritonModelConfig.settings(json: try JSONReader.parse(ByteBuffer(string: text)), modelName: "demo")
                _ = try ModelRepositoryLayout(path: directory).scanModel("demo", override: ModelLoadOverride(settings: settings))
            } catch {
                return "\(error)"
            }
            XCTFail("no error for \(text)")
            return ""
        }
        XCTAssertEqual(error(#"{"name": "other"}"#), "name: unexpected directory name 'demo' for model 'other', directory name must equal model name")
        XCTAssertEqual(error(#"{"optimization": {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "openvino"}]}}}"#),
                       "optimization.execution_accelerators: not supported in a load request's config")
        XCTAssertEqual(error(#"{"optimization": {"graph": {"level": 3}}}"#),
                       #"optimization.graph.level: expected -1 (basic), 0 (all), 1 (extended) or 2 (none), found "3""#)
        XCTAssertEqual(error(#"{"default_model_filename": "model.plan"}"#), "default_model_filename: not supported in a load request's config")
        XCTAssertEqual(error(#"{"max_batch_size": "many"}"#), #"invalid model configuration: max_batch_size: expected a non-negative integer, found "many""#)
        XCTAssertEqual(error("[1]"), "the model configuration must be a JSON object")
    }

    func testVersionDirectoriesOfTheSameNumberAreOneVersion() throws {
        // `1` and `01` are both version 1 (Triton keeps a set of version numbers, and loads `<model>/1`): one
        // version, not two with the same number.
        try write("demo/1/model.onnx", "")
        try write("demo/01/model.onnx", "")
        try write("demo/002/model.onnx", "")
        try write("demo/config.yaml", "version_policy: {all: {}}\n")
        let model = try ModelRepositoryLayout(path: directory).scanModel("demo")
        XCTAssertEqual(model.versions.map(\.version), ["2", "1"])
        XCTAssertEqual(model.availableVersions, [2, 1])
        XCTAssertEqual(model.versions.last?.path, directory + "/demo/1/model.onnx")
    }

    func testRandomLoadRequestConfigurationsAreSettingsOrErrorsNeverACrash() throws {
        // Triton's field names at every level with values of every JSON kind: each configuration reads as
        // settings that scan, or is an error; none stops the process.
        try write("demo/1/model.onnx", "")
        try write("demo/3/model.onnx", "")
        let names = ["name", "platform", "backend", "runtime", "max_batch_size", "instance_group", "count", "kind",
                     "dynamic_batching", "preferred_batch_size", "max_queue_delay_microseconds", "priority_levels",
                     "default_priority_level", "default_queue_policy", "max_queue_size", "default_timeout_microseconds",
                     "timeout_action", "version_policy", "latest", "num_versions", "all", "specific", "versions",
                     "optimization", "enable", "input_pinned_memory", "parameters", "gpus", "passive", "input", ""]
        let scalars = ["null", "true", "false", "0", "1", "2", "-1", "3", "8", "1.5", "1e300", "-0", "\"\"", "\"2000\"",
                       "\"-3\"", "\"demo\"", "\"KIND_CPU\"", "\"REJECT\"", "\"onnxruntime\"", "99999999999999999999"]
        var generator = SystemRandomNumberGenerator()
        func value(_ depth: Int) -> String {
            switch depth > 3 ? 0 : Int.random(in: 0..<4, using: &generator) {
            case 0, 1: return scalars.randomElement(using: &generator)!
            case 2: return "[" + (0..<Int.random(in: 0..<3, using: &generator)).map { _ in value(depth + 1) }.joined(separator: ",") + "]"
            default: return object(depth + 1)
            }
        }
        func object(_ depth: Int) -> String {
            "{" + (0..<Int.random(in: 0..<4, using: &generator)).map { _ in
                "\"\(names.randomElement(using: &generator)!)\": \(value(depth))"
            }.joined(separator: ",") + "}"
        }
        var loaded = 0
        for _ in 0..<5000 {
            let text = object(0)
            guard let json = try? JSONReader.parse(ByteBuffer(string: text)),
                  let settings = try? TritonModelConfig.settings(json: json, modelName: "demo"),
                  let model = try? ModelRepositoryLayout(path: directory).scanModel("demo", override: ModelLoadOverride(settings: settings))
            else { continue }
            XCTAssertEqual(Set(model.versions.map(\.version)).count, model.versions.count, text)
            loaded += 1
        }
        XCTAssertGreaterThan(loaded, 0, "some configurations are settings")
    }

    func testFileParameterPathsResolveAsTritonResolvesThem() {
        XCTAssertEqual(ModelLoadParameters.normalizedFilePath("1/model.onnx"), "1/model.onnx")
        XCTAssertEqual(ModelLoadParameters.normalizedFilePath("1//model.onnx"), "1/model.onnx")
        XCTAssertEqual(ModelLoadParameters.normalizedFilePath("./1/./model.onnx/"), "1/model.onnx")
        XCTAssertEqual(ModelLoadParameters.normalizedFilePath("2/../1/model.onnx"), "1/model.onnx")
        XCTAssertEqual(ModelLoadParameters.normalizedFilePath("1/données é.bin"), "1/données é.bin")
        for outside in ["", "/", "//", ".", "1/..", "..", "../1/model.onnx", "1/../../model.onnx", "/1/model.onnx", "1/a\u{0}b"] {
            XCTAssertNil(ModelLoadParameters.normalizedFilePath(outside), outside)
        }
    }

    func testManyFileParametersKeepTheFirstOfEachPath() throws {
        // Tens of thousands of file members (a body well under a megabyte) are read once each: the first spelling
        // of a path is the one kept, in the order given.
        var members: [String] = [#""config": "{}""#]
        for index in 0..<50_000 { members.append(#""file:1/f\#(index)": "QQ==""#) }
        members.append(#""file:1/./f7": "Qg==""#)
        members.append(#""file:2/../1/f49999": "Qg==""#)
        let body = try RepositoryRequestBody(ByteBuffer(string: #"{"parameters": {"# + members.joined(separator: ",") + "}}"),
                                             what: "load model")
        let parameters = try body.loadParameters(modelName: "m")
        XCTAssertEqual(parameters.files.count, 50_000)
        XCTAssertEqual(parameters.files.first?.path, "1/f0")
        XCTAssertEqual(parameters.files.last?.path, "1/f49999")
        XCTAssertEqual(parameters.files[7].base64, "QQ==")
        XCTAssertEqual(parameters.files[49_999].base64, "QQ==")
    }

    func testTheConfigurationATritonServerAnswersLoadsWithItsDefaultFields() throws {
        try write("demo/1/model.onnx", "")
        // `GET /v2/models/demo/config` of a Triton server for an ONNX model: every field Triton writes at its
        // default (a runtime, optimization, an instance group's name and devices, the batcher's ordering and
        // priorities, the queue policy's action).
        let json = try JSONReader.parse(ByteBuffer(string: #"""
            {"name":"demo","platform":"onnxruntime_onnx","backend":"onnxruntime","runtime":"",
             "version_policy":{"latest":{"num_versions":1}},"max_batch_size":4,
             "input":[{"name":"input","data_type":"TYPE_FP32","format":"FORMAT_NONE","dims":[64],"is_shape_tensor":false,
                       "allow_ragged_batch":false,"optional":false}],
             "output":[{"name":"output","data_type":"TYPE_FP32","dims":[10],"label_filename":"","is_shape_tensor":false}],
             "batch_input":[],"batch_output":[],
             "optimization":{"priority":"PRIORITY_DEFAULT","input_pinned_memory":{"enable":true},
                             "output_pinned_memory":{"enable":true},"gather_kernel_buffer_threshold":0,"eager_batching":false},
             "dynamic_batching":{"preferred_batch_size":[4],"max_queue_delay_microseconds":0,"preserve_ordering":false,
                                 "priority_levels":0,"default_priority_level":0,"priority_queue_policy":{},
                                 "default_queue_policy":{"timeout_action":"REJECT","default_timeout_microseconds":0,
                                                         "allow_timeout_override":false,"max_queue_size":0}},
             "instance_group":[{"name":"demo","kind":"KIND_CPU","count":2,"gpus":[],"secondary_devices":[],"profile":[],
                                "passive":false,"host_policy":""}],
             "default_model_filename":"model.onnx","cc_model_filenames":{},"metric_tags":{},"parameters":{},
             "model_warmup":[],"model_transaction_policy":{"decoupled":false},"response_cache":{"enable":false}}
            """#))
        let settings = try TritonModelConfig.settings(json: json, modelName: "demo")
        let model = try ModelRepositoryLayout(path: directory).scanModel("demo", override: ModelLoadOverride(settings: settings))
        let configuration = try XCTUnwrap(model.versions.first)
        XCTAssertEqual(configuration.maxBatchSize, 4)
        XCTAssertEqual(configuration.instances, 2)
        XCTAssertEqual(configuration.dynamicBatching?.preferredBatchSizes, [4])
        XCTAssertEqual(configuration.maxQueue, 0)
        // Priority levels are the batcher's, as config.yaml's dynamic_batching has them.
        let levels = try TritonModelConfig.settings(json: try JSONReader.parse(ByteBuffer(string: #"""
            {"max_batch_size": 4, "dynamic_batching": {"priority_levels": 3, "default_priority_level": 2}}
            """#)), modelName: "demo")
        let prioritised = try ModelRepositoryLayout(path: directory).scanModel("demo", override: ModelLoadOverride(settings: levels))
        XCTAssertEqual(prioritised.versions.first?.dynamicBatching?.priorityLevels, 3)
        XCTAssertEqual(prioritised.versions.first?.dynamicBatching?.defaultPriorityLevel, 2)
        // Triton gives a configuration with an empty name the model's.
        XCTAssertNoThrow(try TritonModelConfig.settings(json: try JSONReader.parse(ByteBuffer(string: #"{"name": ""}"#)), modelName: "demo"))
        // A field away from its default still asks for something not served.
        func error(_ text: String) -> String {
            do { _ = try TritonModelConfig.settings(json: try JSONReader.parse(ByteBuffer(string: text)), modelName: "demo") } catch { return "\(error)" }
            XCTFail("no error for \(text)")
            return ""
        }
        XCTAssertEqual(error(#"{"optimization": {"eager_batching": true}}"#), "optimization.eager_batching: not supported in a load request's config")
        XCTAssertEqual(error(#"{"instance_group": [{"gpus": [0]}]}"#), "instance_group.gpus: not supported in a load request's config")
        XCTAssertEqual(error(#"{"max_batch_size": 2, "dynamic_batching": {"preserve_ordering": true}}"#),
                       "dynamic_batching.preserve_ordering: not supported in a load request's config")
        XCTAssertEqual(error(#"{"runtime": "model.py"}"#), "runtime: not supported in a load request's config")
    }

    func testTritonConfigPbtxtErrorsNameTheirPlace() throws {
        try write("demo/1/model.onnx", "")
        let file = directory + "/demo/config.pbtxt"
        func error(_ text: String) throws -> String {
            try write("demo/config.pbtxt", text)
            do { _ = try ModelRepositoryLayout(path: directory).scanModel("demo") } catch { return "\(error)" }
            XCTFail("no error for \(text)")
            return ""
        }
        XCTAssertEqual(try error("name: \"other\"\n"), "\(file):1:7: name: unexpected directory name 'demo' for model 'other', directory name must equal model name")
        XCTAssertEqual(try error("platform: \"tensorrt_plan\"\n"), "\(file):1:11: platform: expected \"onnxruntime_onnx\": the kernel serves ONNX models with ONNX Runtime")
        XCTAssertEqual(try error("max_batch_size: 4\noptimization { cuda { graphs: true } }\n"), "\(file):2:16: optimization.cuda: not supported in config.pbtxt (write the model's settings in config.yaml)")
        XCTAssertEqual(try error("parameters { key: \"execution_mode\" value { string_value: \"1\" } }\n"),
                       "\(file):1:58: parameters.execution_mode: only 0 (sequential) is served: a model's runs are parallel across instances, not within one")
        XCTAssertEqual(try error("parameters { key: \"enable_mem_arena\" value { string_value: \"maybe\" } }\n"),
                       "\(file):1:60: parameters.enable_mem_arena: expected a boolean such as \"1\" or \"0\"")
        XCTAssertEqual(try error("input [ { name: \"x\", data_type: TYPE_FP32, dims: [ 4 ], reshape { shape: [ 3 ] } } ]\n"),
                       "\(file):1:65: inputs[0].reshape: reshape [3] has 3 elements, dims [4] 4")
        XCTAssertTrue(try error("input [ { name: \"x\", data_type: TYPE_FP32, dims: [ -1, 5 ], reshape { shape: [ 3, 4 ] } } ]\n")
            .hasSuffix("reshape [3,4] and dims [-1,5] cannot hold the same elements"))
        XCTAssertEqual(try error("input [ { name: \"x\", data_type: TYPE_FP32, format: FORMAT_NCHW, dims: [ 4 ] } ]\n"),
                       "\(file):1:52: inputs[0].format: FORMAT_NCHW needs 3 dims (channels, height, width in its order), found 1")
        XCTAssertEqual(try error("output [ { name: \"y\", data_type: TYPE_FP32, dims: [ 4 ], format: FORMAT_NCHW } ]\n"),
                       "\(file):1:58: output.format: not supported in config.pbtxt (write the model's settings in config.yaml)")
        XCTAssertEqual(try error("instance_group [ { kind: KIND_GPU } ]\n"), "\(file):1:26: instance_group.kind: only KIND_CPU instances are served")
        XCTAssertEqual(try error("max_batch_size: -1\n"), "\(file):1:17: max_batch_size: expected a non-negative integer, found \"-1\"")
        XCTAssertEqual(try error("dynamic_batching {\n  preferred_batch_size: 4\n"), "\(file):3:1: expected '}' before the end of the file")
        XCTAssertEqual(try error("name \"demo\"\n"), "\(file):1:6: expected ':' or '{' after \"name\"")
        // Nesting is bounded: a hostile file is an error at its place, not a stack overflow.
        XCTAssertEqual(try error("parameters: " + String(repeating: "[", count: 1_000_000)),
                       "\(file):1:113: messages and lists nested deeper than 100 levels")
        XCTAssertEqual(try error(String(repeating: "a {", count: 200_000)),
                       "\(file):1:303: messages and lists nested deeper than 100 levels")
        try write("demo/config.yaml", "max_batch_size: 4\n")
        XCTAssertEqual(try error("max_batch_size: 4\n"), "\(file):1:1: model \"demo\" has both config.yaml and config.pbtxt: keep one")
    }

    // MARK: - The inference keys

    func testRepositoryKeysAndTheirDefaults() throws {
        try write("repo/demo/1/model.onnx", "")
        let none = try decode("inference:\n  model_repository: \(directory!)/repo\n")
        XCTAssertEqual(none.repository?.control, RepositoryControl.none)
        XCTAssertEqual(none.repository?.models.map(\.name), ["demo"])
        let poll = try decode("inference:\n  model_repository: \(directory!)/repo\n  repository_poll: 2s\n")
        XCTAssertEqual(poll.repository?.control, .poll)
        XCTAssertEqual(poll.repository?.pollInterval, .seconds(2))
        let pollDefault = try decode("inference:\n  model_repository: \(directory!)/repo\n  repository_control: poll\n")
        XCTAssertEqual(pollDefault.repository?.pollInterval, InferenceConfiguration.defaultPollInterval)
        let explicit = try decode("inference:\n  model_repository: \(directory!)/repo\n  repository_control: explicit\n")
        XCTAssertEqual(explicit.repository?.control, .explicit)
        // Relative paths resolve against the configuration file's directory, as `models:` paths do.
        XCTAssertThrowsError(try decode("inference:\n  model_repository: repo\n")) { error in
            XCTAssertEqual("\(error)", "etc/k.yaml:2:21: inference.model_repository: model_repository etc/repo cannot be read: No such file or directory")
        }
    }

    func testRepositoryKeyErrors() throws {
        try write("repo/demo/1/model.onnx", "")
        let repo = directory! + "/repo"
        func assertError(_ text: String, _ expected: String, line: UInt = #line) {
            XCTAssertThrowsError(try decode(text), line: line) { XCTAssertEqual("\($0)", expected, line: line) }
        }
        assertError("inference:\n  model_repository: \(repo)\n  repository_control: explicit\n  repository_poll: 1s\n",
                    "etc/k.yaml:4:20: inference.repository_poll: repository_poll needs repository_control: poll (it is explicit)")
        assertError("inference:\n  repository_poll: 1s\n", "etc/k.yaml:2:20: inference.repository_poll: needs model_repository")
        assertError("inference:\n  model_repository: \(repo)\n  repository_control: sometimes\n",
                    "etc/k.yaml:3:23: inference.repository_control: expected one of none, poll, explicit, found \"sometimes\"")
        assertError("inference:\n  model_repository: \(repo)\n  repository_poll: 0s\n",
                    "etc/k.yaml:3:20: inference.repository_poll: expected a positive duration, found \"0s\"")
        // A name in both `models:` and the repository: the `models:` entry's name, with its file, line and column.
        assertError("inference:\n  model_repository: \(repo)\n  models:\n    - name: demo\n      path: /m.onnx\n",
                    "etc/k.yaml:4:13: inference.models[0].name: model \"demo\" is declared here and in model_repository \(repo)")
        assertError("inference:\n  model_repository: \(repo)\n  startup_models: [demo]\n",
                    "etc/k.yaml:3:19: inference.startup_models: startup_models needs repository_control: explicit (with none every model of the repository loads at start)")
        assertError("inference:\n  model_repository: \(repo)\n  repository_control: explicit\n  startup_models: [demo, gone]\n",
                    "etc/k.yaml:4:26: inference.startup_models[1]: no model \"gone\" in model_repository \(repo)")
        assertError("inference:\n  model_repository: \(repo)\n  repository_control: explicit\n  startup_models: all\n",
                    "etc/k.yaml:4:19: inference.startup_models: expected a list of model names, or \"*\" for all, found \"all\"")
        assertError("inference:\n  startup_models: []\n", "etc/k.yaml:2:19: inference.startup_models: needs model_repository")
    }

    func testStartupModelsChooseWhatLoadsAtStartInExplicitMode() throws {
        try write("repo/demo/1/model.onnx", "")
        try write("repo/other/1/model.onnx", "")
        let repo = directory! + "/repo"
        func startup(_ line: String) throws -> Set<String>? {
            try XCTUnwrap(decode("inference:\n  model_repository: \(repo)\n  repository_control: explicit\n\(line)").repository).startupModels
        }
        XCTAssertNil(try startup(""), "every model by default")
        XCTAssertNil(try startup("  startup_models: \"*\"\n"))
        XCTAssertEqual(try startup("  startup_models: [other]\n"), ["other"])
        XCTAssertEqual(try startup("  startup_models: []\n"), [], "none, as Triton's explicit mode without --load-model")
        // A model left out is in the index by name, not waited for by readiness, and loads on request.
        let settings = try XCTUnwrap(decode("inference:\n  model_repository: \(repo)\n  repository_control: explicit\n  startup_models: [other]\n").repository)
        let repository = ModelRepository(configurations: [], repository: settings)
        XCTAssertEqual(repository.index(readyOnly: false).map(\.name), ["demo", "other"])
        XCTAssertNil(repository.index(readyOnly: false)[0].state)
        XCTAssertEqual(repository.notReady().map(\.name), ["other"], "only the startup model holds readiness back")
    }

    func testMemoryOptionsAndTheirInferenceDefaults() throws {
        let configuration = try decode("""
            inference:
              graph_optimization_level: basic
              arena_extend_strategy: same_as_requested
              models:
                - {name: a, path: /a.onnx}
                - {name: b, path: /b.onnx, cpu_mem_arena: false, memory_pattern: false, graph_optimization_level: disable_all}
                - {name: c, path: /c.onnx, arena_extend_strategy: next_power_of_two, graph_optimization_level: all}
            """)
        XCTAssertEqual(configuration.memoryDefaults.graphOptimizationLevel, .basic)
        let (a, b, c) = (configuration.models[0].memory, configuration.models[1].memory, configuration.models[2].memory)
        XCTAssertEqual(a.graphOptimizationLevel, .basic)
        XCTAssertEqual(a.arenaExtendStrategy, .sameAsRequested)
        XCTAssertTrue(a.cpuMemoryArena)
        XCTAssertTrue(a.memoryPattern)
        XCTAssertFalse(b.cpuMemoryArena)
        XCTAssertNil(b.arenaExtendStrategy, "an inherited strategy does not apply without an arena")
        // Inherited arena_shrinkage and strategy both fall away for a model that turns its arena off.
        let shrinking = try decode("""
            inference:
              arena_shrinkage: true
              arena_extend_strategy: same_as_requested
              models:
                - {name: a, path: /a.onnx}
                - {name: b, path: /b.onnx, cpu_mem_arena: false}
            """)
        XCTAssertTrue(shrinking.models[0].memory.arenaShrinkage)
        XCTAssertFalse(shrinking.models[1].memory.arenaShrinkage)
        XCTAssertNil(shrinking.models[1].memory.arenaExtendStrategy)
        XCTAssertThrowsError(try decode("inference:\n  models:\n    - {name: a, path: /a.onnx, cpu_mem_arena: false, arena_shrinkage: true}\n"))
        XCTAssertFalse(b.memoryPattern)
        XCTAssertEqual(b.graphOptimizationLevel.rawValue, 0)
        XCTAssertEqual(c.arenaExtendStrategy, .nextPowerOfTwo)
        XCTAssertEqual(c.graphOptimizationLevel.rawValue, 99)
        XCTAssertEqual(try decode("inference: {}\n").memoryDefaults, SessionMemoryOptions(), "ORT's defaults: arena, patterns, all optimisations")
        XCTAssertTrue(SessionMemoryOptions().threadSpinning, "ONNX Runtime's default: pools spin")
        let spinning = try decode("""
            inference:
              thread_spinning: false
              models:
                - {name: a, path: /a.onnx}
                - {name: b, path: /b.onnx, thread_spinning: true}
            """)
        XCTAssertFalse(spinning.memoryDefaults.threadSpinning)
        XCTAssertFalse(spinning.models[0].memory.threadSpinning, "inherited from inference:")
        XCTAssertTrue(spinning.models[1].memory.threadSpinning, "the model's own value wins")
        XCTAssertThrowsError(try decode("inference:\n  models:\n    - {name: a, path: /a.onnx, thread_spinning: sometimes}\n")) {
            XCTAssertTrue("\($0)".contains("inference.models[0].thread_spinning"), "\($0)")
        }
        XCTAssertThrowsError(try decode("inference:\n  models:\n    - {name: a, path: /a.onnx, cpu_mem_arena: false, arena_extend_strategy: same_as_requested}\n")) {
            XCTAssertEqual("\($0)", "etc/k.yaml:3:77: inference.models[0].arena_extend_strategy: arena_extend_strategy needs the CPU memory arena (cpu_mem_arena: true)")
        }
        XCTAssertThrowsError(try decode("inference:\n  graph_optimization_level: most\n")) {
            XCTAssertEqual("\($0)", "etc/k.yaml:2:29: inference.graph_optimization_level: expected one of disable_all, basic, extended, all, found \"most\"")
        }
    }

    func testWarmupCoversEveryBatchSizeOrTheConfiguredList() throws {
        let configuration = try decode("""
            inference:
              models:
                - {name: a, path: /a.onnx, max_batch_size: 4, warmup: 2}
                - {name: b, path: /b.onnx, max_batch_size: 32, warmup_batch_sizes: [1, 8, 32, 8]}
                - {name: c, path: /c.onnx, warmup: 1}
                - {name: d, path: /d.onnx, max_batch_size: 4}
            """)
        XCTAssertEqual(configuration.models[0].warmupSizes, [1, 2, 3, 4])
        XCTAssertEqual(configuration.models[0].warmup, 2)
        XCTAssertEqual(configuration.models[1].warmupSizes, [1, 8, 32])
        XCTAssertEqual(configuration.models[1].warmup, 1)
        XCTAssertEqual(configuration.models[2].warmupSizes, [nil], "a model without batching: one shape, free dimensions 1")
        XCTAssertEqual(configuration.models[3].warmupSizes, [], "no warm-up unless asked for")
        let spec = TensorSpec(name: "x", dataType: .fp32, shape: [-1, 3, -1])
        let tensor = ModelLoadingService.warmupTensor(spec, batchSize: 8)
        XCTAssertEqual(tensor.shape, [8, 3, 1])
        XCTAssertEqual(tensor.bytes, [UInt8](repeating: 0, count: 8 * 3 * 4))
        // Random data: the generator's bytes, in order; BYTES inputs stay empty strings, as in Triton.
        var next: UInt64 = 0x0807_0605_0403_0201
        let random = ModelLoadingService.warmupTensor(TensorSpec(name: "x", dataType: .fp32, shape: [-1, 3]), batchSize: 1) {
            defer { next &+= 0x0808_0808_0808_0808 }
            return next
        }
        XCTAssertEqual(random.bytes, Array(1...12))
        let strings = ModelLoadingService.warmupTensor(TensorSpec(name: "s", dataType: .bytes, shape: [-1, 2]), batchSize: 2) { .max }
        XCTAssertEqual(strings.bytes, [UInt8](repeating: 0, count: 2 * 2 * 4))
        let chosen = try decode("""
            inference:
              models:
                - {name: a, path: /a.onnx, max_batch_size: 4, warmup: 1, warmup_data: random}
                - {name: b, path: /b.onnx, warmup: 1, warmup_data: {random: [x, y]}}
            """)
        XCTAssertTrue(chosen.models[0].warmupRandomEverywhere)
        XCTAssertEqual(chosen.models[1].warmupRandomInputs, ["x", "y"])
        XCTAssertThrowsError(try decode("inference:\n  models:\n    - {name: a, path: /a.onnx, warmup_data: noise}\n"))
    }

    // MARK: - Version state

    private func entryRepository() throws -> ModelRepository {
        try write("repo/m/1/model.onnx", "")
        try write("repo/m/2/model.onnx", "")
        try write("repo/m/3/model.onnx", "")
        try write("repo/m/config.yaml", "version_policy: {all: {}}\n")
        try write("repo/later/1/model.onnx", "")
        let layout = ModelRepositoryLayout(path: directory + "/repo")
        let settings = RepositorySettings(path: layout.path, control: .explicit, pollInterval: .seconds(1),
                                          models: [try layout.scanModel("m")])
        return ModelRepository(configurations: [], repository: settings)
    }

    private func loaded(_ configuration: ModelConfiguration) -> LoadedModel {
        let scheduler = ModelScheduler(modelName: configuration.name, policy: configuration.policy,
                                       runners: [RecordingRunner(blockFirst: false)], logger: Logger(label: "test"))
        scheduler.stop()
        let signature = ModelSignature(name: configuration.name, version: configuration.version, inputs: [], outputs: [],
                                       maxBatchSize: 0)
        return LoadedModel(configuration: configuration, signature: signature, scheduler: scheduler)
    }

    private func setVersion(_ repository: ModelRepository, _ number: Int, _ state: (ModelConfiguration) -> ModelState) {
        repository.entries.withLockedValue { entries in
            let configuration = entries["m"]!.versions[number]!.configuration
            entries["m"]!.versions[number]!.state = state(configuration)
        }
    }

    func testRoutingReachesTheHighestReadyVersion() throws {
        let repository = try entryRepository()
        // Triton: no version named and none ready is NOT_FOUND; a named one that is not ready, UNAVAILABLE.
        guard case .noVersionReady(let loading) = repository.resolve("m", version: nil) else { return XCTFail() }
        XCTAssertEqual(loading, "Request for unknown model: 'm' has no available versions (version 3 is not at ready state)")
        guard case .notReady(let named) = repository.resolve("m", version: "3") else { return XCTFail() }
        XCTAssertEqual(named, "Request for unknown model: 'm' version 3 is not at ready state")
        XCTAssertEqual(repository.notReady().map(\.reason), ["loading"])
        setVersion(repository, 1) { .ready(self.loaded($0)) }
        setVersion(repository, 2) { .ready(self.loaded($0)) }
        setVersion(repository, 3) { _ in .failed("Load model from m/3 failed") }
        guard case .ready(let model) = repository.resolve("m", version: nil) else { return XCTFail() }
        XCTAssertEqual(model.configuration.version, "2", "the highest ready version")
        guard case .ready(let first) = repository.resolve("m", version: "1") else { return XCTFail() }
        XCTAssertEqual(first.configuration.version, "1")
        guard case .notReady(let failed) = repository.resolve("m", version: "3") else { return XCTFail() }
        XCTAssertEqual(failed, "Request for unknown model: 'm' version 3 is not at ready state: Load model from m/3 failed")
        guard case .notFound(let missing) = repository.resolve("m", version: "4") else { return XCTFail() }
        XCTAssertEqual(missing, "Request for unknown model: 'm' version 4 is not found")
        guard case .notFound = repository.resolve("m", version: "x") else { return XCTFail() }
        guard case .notFound(let unknown) = repository.resolve("nope", version: nil) else { return XCTFail() }
        XCTAssertEqual(unknown, "Request for unknown model: 'nope' is not found")
        XCTAssertEqual(repository.readyVersions("m"), ["1", "2"])
        XCTAssertTrue(repository.notReady().isEmpty, "a model with a version serving is ready")
        XCTAssertEqual(repository.loadedModels.map(\.configuration.version), ["1", "2"])
    }

    func testIndexListsEveryVersionAndTheModelsNotLoaded() throws {
        let repository = try entryRepository()
        setVersion(repository, 1) { .ready(self.loaded($0)) }
        setVersion(repository, 2) { _ in .unloading }
        setVersion(repository, 3) { _ in .failed("unloaded") }
        XCTAssertEqual(repository.index(readyOnly: false), [
            RepositoryIndexEntry(name: "later"),
            RepositoryIndexEntry(name: "m", version: "1", state: "READY"),
            RepositoryIndexEntry(name: "m", version: "2", state: "UNLOADING"),
            RepositoryIndexEntry(name: "m", version: "3", state: "UNAVAILABLE", reason: "unloaded"),
        ])
        XCTAssertEqual(repository.index(readyOnly: true), [RepositoryIndexEntry(name: "m", version: "1", state: "READY")])
    }

    func testAnUnloadWaitsForTheRequestsRoutedToTheVersionBeforeItStopsItsQueue() throws {
        let repository = try entryRepository()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        setVersion(repository, 1) { configuration in
            let scheduler = ModelScheduler(modelName: configuration.name, policy: configuration.policy,
                                           runners: [RecordingRunner(blockFirst: false)], logger: Logger(label: "test"))
            let signature = ModelSignature(name: configuration.name, version: configuration.version, inputs: [],
                                           outputs: [], maxBatchSize: 0)
            return .ready(LoadedModel(configuration: configuration, signature: signature, scheduler: scheduler))
        }
        // A request is routed (as the handler routes an inference) and its event loop is slow to submit it.
        guard case .ready(let model) = repository.resolve("m", version: "1", takingLease: true) else { return XCTFail() }
        XCTAssertEqual(model.leases.count, 1)
        let unloaded = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            repository.unloadVersions(of: "m", logger: Logger(label: "test"), reason: "unloaded")
            unloaded.signal()
        }
        let deadline = Date().addingTimeInterval(10)
        while repository.index(readyOnly: false).first(where: { $0.name == "m" && $0.version == "1" })?.state != "UNLOADING",
              Date() < deadline {
            usleep(1_000)
        }
        guard case .notReady = repository.resolve("m", version: "1", takingLease: true) else {
            return XCTFail("a version leaving routing takes no new lease")
        }
        // Longer than any fixed pause would cover: the queue is still open for the routed request.
        usleep(200_000)
        XCTAssertEqual(unloaded.wait(timeout: .now()), .timedOut, "the unload waits for the routed request")
        let answer = model.scheduler.submit([Tensor(float32: [1, 2], shape: [1, 2])], on: group.next())
        model.leases.release()
        XCTAssertNoThrow(try answer.wait(), "the routed request runs instead of meeting a stopped queue")
        XCTAssertEqual(unloaded.wait(timeout: .now() + 10), .success)
        guard case .notReady(let message) = repository.resolve("m", version: "1") else { return XCTFail() }
        XCTAssertEqual(message, "Request for unknown model: 'm' version 1 is not at ready state: unloaded")
        XCTAssertEqual(model.leases.count, 0)
    }

    func testUnloadedModelsDoNotHoldReadinessBack() throws {
        let repository = try entryRepository()
        for number in 1...3 { setVersion(repository, number) { _ in .failed("Load model from x failed") } }
        XCTAssertEqual(repository.notReady().map(\.reason), ["not loaded: Load model from x failed"])
        repository.entries.withLockedValue { $0["m"]!.unloaded = true }
        XCTAssertTrue(repository.notReady().isEmpty)
    }

    func testControlIsRefusedOutsideExplicitMode() throws {
        try write("repo/m/1/model.onnx", "")
        let settings = RepositorySettings(path: directory + "/repo", control: .poll, pollInterval: .seconds(1), models: [])
        let repository = ModelRepository(configurations: [], repository: settings)
        XCTAssertThrowsError(try repository.load("m")) { error in
            XCTAssertEqual((error as? KernelHTTPError)?.status, 503)
            XCTAssertEqual((error as? KernelHTTPError)?.message, ModelRepository.controlRefusal)
        }
        XCTAssertThrowsError(try ModelRepository(configurations: []).unload("m")) { error in
            XCTAssertEqual((error as? KernelHTTPError)?.status, 503, "no repository: control mode none")
        }
    }

    // MARK: - Loading with ONNX Runtime

    func testMemoryOptionsReachTheSessionsAndTheirAnswersDoNotChange() throws {
        let runtime = try ONNXRuntime.open(path: ONNXRuntime.locate(configured: nil, environment: ProcessInfo.processInfo.environment))
        try copyDemo(to: "demo.onnx")
        var configuration = ModelConfiguration(name: "demo", path: directory + "/demo.onnx", version: "1", instances: 1,
                                               intraOpThreads: 1, interOpThreads: 1, maxBatchSize: 4, dynamicBatching: nil,
                                               maxQueue: 8, timeoutMicroseconds: 0, warmup: 1)
        let input = Tensor(dataType: .fp32, shape: [2, 64], bytes: (0..<128).flatMap { index -> [UInt8] in
            withUnsafeBytes(of: Float(index % 7) / 7) { Array($0) }
        })
        let reference = try ONNXSession(runtime: runtime, path: configuration.path, options: SessionOptions()).run([input])
        var variants: [SessionMemoryOptions] = []
        var off = SessionMemoryOptions()
        off.cpuMemoryArena = false
        off.memoryPattern = false
        off.graphOptimizationLevel = .disableAll
        variants.append(off)
        var shared = SessionMemoryOptions()
        shared.arenaExtendStrategy = .sameAsRequested
        shared.graphOptimizationLevel = .extended
        variants.append(shared)
        var own = SessionMemoryOptions()
        own.arenaExtendStrategy = .nextPowerOfTwo
        own.graphOptimizationLevel = .basic
        variants.append(own)
        var quiet = SessionMemoryOptions()
        quiet.threadSpinning = false
        quiet.arenaExtendStrategy = .sameAsRequested
        variants.append(quiet)
        for memory in variants {
            configuration.memory = memory
            // Two intra-op threads for the pool that does not spin, so that it has threads to put to sleep.
            configuration.intraOpThreads = memory.threadSpinning ? 1 : 2
            let options = try runtime.sessionOptions(for: configuration)
            XCTAssertEqual(options.useEnvironmentAllocators, memory.arenaExtendStrategy == .sameAsRequested,
                           "only same_as_requested needs the environment's arena")
            XCTAssertEqual(options.intraOpThreads, configuration.intraOpThreads)
            // What the session is created with (ONNXSession adds exactly these entries).
            var entries = memory.arenaExtendStrategy == .sameAsRequested ? ["session.use_env_allocators=1"] : []
            if !memory.threadSpinning {
                entries += ["session.intra_op.allow_spinning=0", "session.inter_op.allow_spinning=0"]
            }
            XCTAssertEqual(options.configEntries.map { "\($0.key)=\($0.value)" }, entries)
            // Twice: the environment's arena is registered once, and both sessions use it.
            for _ in 0..<2 {
                let session = try ONNXSession(runtime: runtime, path: configuration.path, options: options)
                let outputs = try session.run([input])
                XCTAssertEqual(outputs[0].shape, reference[0].shape)
                let got = outputs[0].bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
                let want = reference[0].bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
                for (a, b) in zip(got, want) { XCTAssertEqual(a, b, accuracy: 1e-5) }
            }
        }
    }

    func testAWarmUpStopsBetweenRunsWhenTheKernelStops() throws {
        let runtime = try ONNXRuntime.open(path: ONNXRuntime.locate(configured: nil, environment: ProcessInfo.processInfo.environment))
        try copyDemo(to: "demo.onnx")
        // 8 batch sizes, 100 runs each: a stop after the third run must not wait for the other 797.
        let configuration = ModelConfiguration(name: "demo", path: directory + "/demo.onnx", version: "1", instances: 1,
                                               intraOpThreads: 1, interOpThreads: 1, maxBatchSize: 8,
                                               dynamicBatching: nil, maxQueue: 8, timeoutMicroseconds: 0, warmup: 100)
        var checks = 0
        XCTAssertThrowsError(try ModelLoadingService.loadModel(configuration, runtime: runtime, logger: Logger(label: "test"),
                                                               isStopping: { checks += 1; return checks > 3 })) { error in
            XCTAssertEqual("\(error)", "the kernel is stopping: the warm-up was interrupted, the model is not loaded")
        }
        XCTAssertEqual(checks, 4, "checked before each run, and no run after the stop")
        XCTAssertNoThrow(try ModelLoadingService.loadModel(configuration, runtime: runtime, logger: Logger(label: "test")).scheduler.stop())
    }

    func testLoadPollAndUnloadChangeOnlyWhatChanged() throws {
        let runtime = try ONNXRuntime.open(path: ONNXRuntime.locate(configured: nil, environment: ProcessInfo.processInfo.environment))
        try copyDemo(to: "repo/m/1/model.onnx")
        try write("repo/m/config.yaml", "max_batch_size: 4\nwarmup: 1\n")
        let layout = ModelRepositoryLayout(path: directory + "/repo")
        let settings = RepositorySettings(path: layout.path, control: .explicit, pollInterval: .seconds(1),
                                          models: try layout.scan())
        let repository = ModelRepository(configurations: [], repository: settings)
        let loader = ModelLoader(runtime: runtime, logger: Logger(label: "test"))
        repository.loader.withLockedValue { $0 = loader }
        defer { repository.stopAll(discardingQueued: true) }
        repository.loadAll(loader) { false }
        XCTAssertEqual(repository.readyVersions("m"), ["1"])
        guard case .ready(let first) = repository.resolve("m", version: nil) else { return XCTFail() }

        // Nothing changed: the same sessions keep serving.
        repository.poll()
        guard case .ready(let same) = repository.resolve("m", version: nil) else { return XCTFail() }
        XCTAssertTrue(same === first)

        // A new version replaces version 1 (latest 1); a broken one after it leaves version 2 serving.
        try copyDemo(to: "repo/m/2/model.onnx")
        repository.poll()
        XCTAssertEqual(repository.readyVersions("m"), ["2"])
        try write("repo/m/3/model.onnx", "not a model")
        repository.poll()
        XCTAssertEqual(repository.readyVersions("m"), ["2"])
        let states = repository.index(readyOnly: false).map { "\($0.version ?? "-") \($0.state ?? "-")" }
        XCTAssertEqual(states, ["1 UNAVAILABLE", "2 READY", "3 UNAVAILABLE"])
        XCTAssertTrue(repository.index(readyOnly: false)[2].reason?.contains("Load model from") ?? false)
        // The broken version is not retried until its file changes.
        repository.poll()
        XCTAssertEqual(repository.readyVersions("m"), ["2"])

        XCTAssertThrowsError(try repository.load("m")) { error in
            XCTAssertEqual((error as? KernelHTTPError)?.status, 400)
            XCTAssertTrue((error as? KernelHTTPError)?.message.hasPrefix("load failed for model 'm': version 3 is at UNAVAILABLE state: ") ?? false)
        }
        try repository.unload("m")
        XCTAssertEqual(repository.readyVersions("m"), [])
        XCTAssertTrue(repository.notReady().isEmpty)
        guard case .notReady(let message) = repository.resolve("m", version: "2") else { return XCTFail() }
        XCTAssertEqual(message, "Request for unknown model: 'm' version 2 is not at ready state: unloaded")
    }
}
