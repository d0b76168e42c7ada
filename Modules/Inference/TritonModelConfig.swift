import KernelConfig

/// The basic fields of a Triton `config.pbtxt` (protobuf text format), read into the settings a repository model's
/// `config.yaml` gives, so that a Triton repository serves as it is.
///
/// Understood: `name` (must be the directory's, or empty), `platform: "onnxruntime_onnx"` / `backend:
/// "onnxruntime"`, `max_batch_size`, `instance_group [{count, kind: KIND_CPU}]` (counts add up), `dynamic_batching
/// {preferred_batch_size, max_queue_delay_microseconds, priority_levels, default_priority_level,
/// default_queue_policy {max_queue_size, default_timeout_microseconds}}` (both times kept to the microsecond),
/// `version_policy`, `input` and `output` entries (`name`, `data_type`, `dims`, and `format`,
/// `reshape {shape}`, an output's `label_filename`), `optimization { graph { level } }` (the ONNX Runtime
/// backend's levels: -1 basic, 0 all, 1 extended, 2 none), `model_warmup` (batch sizes and counts), and the ONNX
/// Runtime backend's `parameters`
/// (`intra_op_thread_count`, `inter_op_thread_count`, `enable_mem_arena`, `enable_mem_pattern`,
/// `memory.enable_memory_arena_shrinkage`, `execution_mode` 0; keys that backend does not read are ignored as it
/// ignores them). The fields Triton writes at their
/// defaults are accepted at those values (`defaults`). Any other field is an error naming its place, rather than
/// something silently not done.
enum TritonModelConfig {
    static let fileName = "config.pbtxt"

    /// The settings of `text` (the file at `file`) as a mapping with `config.yaml`'s keys; errors name the pbtxt's
    /// line and column.
    static func settings(_ text: String, file: String, modelName: String) throws -> YAMLNode {
        var parser = TextFormatParser(bytes: Array(text.utf8), file: file)
        let message = try parser.message(until: nil)
        return try settings(message, start: SourceMark(file: file, line: 1, column: 1), modelName: modelName,
                            unsupportedHint: "not supported in config.pbtxt (write the model's settings in config.yaml)")
    }

    /// Where the fields of a load request's `config` are said to be: JSON values carry no position, so errors
    /// name the field's path alone (`ConfigError.mark` is dropped for them).
    static let loadRequestMark = SourceMark(file: "config", line: 1, column: 1)

    /// The settings of a load request's `config` parameter (Triton's model configuration in its JSON form, as
    /// `GET .../config` answers it) as a mapping with `config.yaml`'s keys. The same fields as `config.pbtxt` are
    /// understood; protobuf's JSON mapping may give 64-bit integers as strings, which is accepted.
    static func settings(json: JSONValue, modelName: String) throws -> YAMLNode {
        guard case .object = json else {
            throw ConfigError(mark: nil, path: "", message: "the model configuration must be a JSON object")
        }
        func number(_ value: JSONNumber) -> YAMLNode {
            .scalar(value.int64.map(String.init) ?? String(value.double), mark: loadRequestMark, isPlain: true)
        }
        func node(_ value: JSONValue) -> YAMLNode {
            switch value {
            case .null: return .scalar("", mark: loadRequestMark, isPlain: true)
            case .bool(let flag): return .scalar(flag ? "true" : "false", mark: loadRequestMark, isPlain: true)
            case .number(let value): return number(value)
            case .string(let text):
                // Protobuf's JSON mapping writes 64-bit integers as strings ("2000"): those read as numbers.
                let digits = text.utf8.drop { $0 == UInt8(ascii: "-") }
                let isInteger = !digits.isEmpty && digits.count >= text.utf8.count - 1 && digits.allSatisfy { (0x30...0x39).contains($0) }
                return .scalar(text, mark: loadRequestMark, isPlain: isInteger)
            case .array(let items): return .sequence(items.map(node), mark: loadRequestMark)
            case .numbers(let values): return .sequence(values.map(number), mark: loadRequestMark)
            case .object(let members):
                return .mapping(members.map { (.scalar($0.key, mark: loadRequestMark, isPlain: true), node($0.value)) },
                                mark: loadRequestMark)
            }
        }
        guard case .mapping(let entries, _) = node(json) else { return .mapping([], mark: loadRequestMark) }
        let message = entries.map { TextFormatField(name: $0.key.scalarText ?? "", nameMark: loadRequestMark, value: $0.value) }
        do {
            return try settings(message, start: loadRequestMark, modelName: modelName,
                                unsupportedHint: "not supported in a load request's config")
        } catch var error as ConfigError {
            error.mark = nil
            throw error
        }
    }

    /// Fields Triton's configuration JSON (`GET .../config` of a Triton server) carries at their default values,
    /// with those values: accepted then, since they ask for nothing, and an error otherwise. Lists and messages
    /// with nothing in them are defaults wherever these fields are.
    private static let defaults: [String: Set<String>] = [
        "batch_input": [], "batch_output": [], "model_warmup": [], "parameters": [], "cc_model_filenames": [],
        "metric_tags": [], "model_repository_agents": [], "response_cache": [], "runtime": [""],
        "default_model_filename": [""],
        "response_cache.enable": ["false"], "model_transaction_policy.decoupled": ["false"],
        "optimization.priority": ["PRIORITY_DEFAULT"], "optimization.gather_kernel_buffer_threshold": ["0"],
        "optimization.eager_batching": ["false"], "optimization.execution_accelerators": [],
        "optimization.execution_accelerators.cpu_execution_accelerator": [],
        "optimization.execution_accelerators.gpu_execution_accelerator": [],
        // Pinned host memory is for copies to and from a GPU: on or off, nothing changes for CPU instances.
        "optimization.input_pinned_memory.enable": ["true", "false"],
        "optimization.output_pinned_memory.enable": ["true", "false"],
        "dynamic_batching.preserve_ordering": ["false"], "dynamic_batching.priority_queue_policy": [],
        "default_queue_policy.timeout_action": ["REJECT"], "default_queue_policy.allow_timeout_override": ["false"],
        "instance_group.gpus": [], "instance_group.secondary_devices": [], "instance_group.profile": [],
        "instance_group.passive": ["false"], "instance_group.host_policy": [""],
        "input.format": ["FORMAT_NONE"], "input.is_shape_tensor": ["false"], "input.allow_ragged_batch": ["false"],
        "input.optional": ["false"], "input.is_non_linear_format_io": ["false"], "output.is_shape_tensor": ["false"],
        "output.label_filename": [""], "output.is_non_linear_format_io": ["false"],
    ]

    /// Whether `node`, the value of `field` (its path from the configuration's top), is Triton's default for it:
    /// an empty list or message, a scalar `defaults` lists, or a message whose every member is at its default.
    private static func isDefault(_ node: YAMLNode, field: String) -> Bool {
        switch node {
        case .scalar(let text, _, _): return defaults[field]?.contains(text) ?? false
        case .sequence(let items, _): return items.isEmpty && defaults[field] != nil
        case .mapping(let entries, _):
            guard !entries.isEmpty else { return defaults[field] != nil || defaults.keys.contains { $0.hasPrefix(field + ".") } }
            return entries.allSatisfy { isDefault($0.value, field: field + "." + ($0.key.scalarText ?? "")) }
        }
    }

    /// The settings of a parsed configuration message (from a `config.pbtxt` or a load request's JSON).
    private static func settings(_ message: [TextFormatField], start: SourceMark, modelName: String,
                                 unsupportedHint: String) throws -> YAMLNode {
        func unsupported(_ field: TextFormatField, path: String) -> ConfigError {
            let name = path.isEmpty ? field.name : "\(path).\(field.name)"
            return ConfigError(mark: field.nameMark, path: name, message: unsupportedHint)
        }
        var out: [(key: YAMLNode, value: YAMLNode)] = []
        func put(_ key: String, _ value: YAMLNode) {
            out.append((.scalar(key, mark: value.mark, isPlain: true), value))
        }
        var dynamic: [(key: YAMLNode, value: YAMLNode)] = []
        var instances = 0
        var instancesMark: SourceMark?
        for field in message {
            switch field.name {
            case "name":
                // Triton gives a configuration without a name (or an empty one) the model's.
                guard field.value.scalarText == modelName || field.value.scalarText == "" else {
                    throw ConfigError(mark: field.value.mark, path: "name",
                                      message: "unexpected directory name '\(modelName)' for model '\(field.value.scalarText ?? "")', directory name must equal model name")
                }
            case "platform", "backend":
                let accepted = field.name == "platform" ? "onnxruntime_onnx" : "onnxruntime"
                guard field.value.scalarText == accepted else {
                    throw ConfigError(mark: field.value.mark, path: field.name,
                                      message: "expected \"\(accepted)\": the kernel serves ONNX models with ONNX Runtime")
                }
            case "max_batch_size":
                put("max_batch_size", field.value)
            case "input", "output":
                let key = field.name == "input" ? "inputs" : "outputs"
                let declared = try items(field.value).map { try tensor($0, path: field.name, unsupported: unsupported) }
                if let index = out.firstIndex(where: { $0.key.scalarText == key }), case .sequence(let earlier, let mark) = out[index].value {
                    out[index].value = .sequence(earlier + declared, mark: mark)  // a repeated field: more entries
                } else {
                    put(key, .sequence(declared, mark: field.value.mark))
                }
            case "instance_group":
                for group in items(field.value) {
                    // Triton's default count of a CPU group of the ONNX Runtime backend (`SetDefaultInstanceCount`).
                    var count = defaultInstanceCount
                    for member in try fields(group, path: "instance_group") {
                        switch member.name {
                        case "count":
                            count = try ConfigValue(node: member.value, path: "instance_group.count").int(in: 1...256, what: "an integer 1-256")
                        case "kind":
                            guard member.value.scalarText == "KIND_CPU" else {
                                throw ConfigError(mark: member.value.mark, path: "instance_group.kind",
                                                  message: "only KIND_CPU instances are served")
                            }
                        case "name":
                            // Triton names every group (`demo_0`): a name says nothing about how it runs.
                            break
                        case let name where isDefault(member.value, field: "instance_group.\(name)"):
                            break
                        default:
                            throw unsupported(member, path: "instance_group")
                        }
                    }
                    instances += count
                    instancesMark = instancesMark ?? group.mark
                }
            case "dynamic_batching":
                for member in try fields(field.value, path: "dynamic_batching") {
                    switch member.name {
                    case "preferred_batch_size":
                        dynamic.append((.scalar("preferred_batch_sizes", mark: member.value.mark, isPlain: true), member.value))
                    case "max_queue_delay_microseconds":
                        let micro = try ConfigValue(node: member.value, path: "dynamic_batching.max_queue_delay_microseconds")
                            .int(in: 0...Int(Int32.max) * 1000, what: "a non-negative integer")
                        dynamic.append((.scalar("max_queue_delay", mark: member.value.mark, isPlain: true),
                                        .scalar("\(micro)us", mark: member.value.mark, isPlain: true)))
                    case "priority_levels", "default_priority_level":
                        dynamic.append((.scalar(member.name, mark: member.value.mark, isPlain: true), member.value))
                    case "default_queue_policy":
                        for policy in try fields(member.value, path: "dynamic_batching.default_queue_policy") {
                            switch policy.name {
                            case "max_queue_size":
                                put("max_queue", policy.value)
                            case "default_timeout_microseconds":
                                let micro = try ConfigValue(node: policy.value, path: "dynamic_batching.default_queue_policy.default_timeout_microseconds")
                                    .int(in: 0...Int(Int32.max) * 1000, what: "a non-negative integer")
                                put("timeout", .scalar("\(micro)us", mark: policy.value.mark, isPlain: true))
                            case let name where isDefault(policy.value, field: "default_queue_policy.\(name)"):
                                break
                            default:
                                throw unsupported(policy, path: "dynamic_batching.default_queue_policy")
                            }
                        }
                    case let name where isDefault(member.value, field: "dynamic_batching.\(name)"):
                        break
                    default:
                        throw unsupported(member, path: "dynamic_batching")
                    }
                }
                put("dynamic_batching", .mapping(dynamic, mark: field.value.mark))
            case "version_policy":
                put("version_policy", field.value)
            case "model_warmup":
                try warmup(field.value, put: put, unsupported: unsupported)
            case "parameters":
                for (key, value) in try parameterEntries(field.value) {
                    try backendParameter(key, value, put: put)
                }
            case "optimization":
                for member in try fields(field.value, path: "optimization") {
                    switch member.name {
                    case "graph":
                        for setting in try fields(member.value, path: "optimization.graph") {
                            guard setting.name == "level" else { throw unsupported(setting, path: "optimization.graph") }
                            let level = try ConfigValue(node: plain(setting.value), path: "optimization.graph.level")
                                .int(in: -1...2, what: "-1 (basic), 0 (all), 1 (extended) or 2 (none)")
                            put("graph_optimization_level", .scalar(graphLevels[level]!, mark: setting.value.mark, isPlain: true))
                        }
                    case let name where isDefault(member.value, field: "optimization.\(name)"):
                        break
                    default:
                        throw unsupported(member, path: "optimization")
                    }
                }
            case "default_model_filename" where field.value.scalarText == ModelRepositoryLayout.modelFileName:
                break
            case let name where isDefault(field.value, field: name):
                break
            default:
                throw unsupported(field, path: "")
            }
        }
        if let instancesMark {
            put("instances", .scalar(String(instances), mark: instancesMark, isPlain: true))
        } else {
            // No instance_group: Triton adds one CPU group (on a server without GPUs) of its default count.
            put("instances", .scalar(String(defaultInstanceCount), mark: start, isPlain: true))
        }
        // A model that does not batch warms up with one run of its own shapes: Triton's samples for it say
        // `batch_size: 1`, which is no batch size here.
        let batches = out.first { $0.key.scalarText == "max_batch_size" }.flatMap { Int($0.value.scalarText ?? "") } ?? 0
        if batches == 0 { out.removeAll { $0.key.scalarText == "warmup_batch_sizes" } }
        return .mapping(out, mark: start)
    }

    /// The members of a message value.
    private static func fields(_ node: YAMLNode, path: String) throws -> [TextFormatField] {
        guard case .mapping(let entries, _) = node else {
            throw ConfigError(mark: node.mark, path: path, message: "expected a message ({ ... })")
        }
        return entries.map { TextFormatField(name: $0.key.scalarText ?? "", nameMark: $0.key.mark, value: $0.value) }
    }

    /// `model_warmup` samples as `warmup` (runs per batch size: the samples' largest `count`, at least one) and
    /// `warmup_batch_sizes` (their `batch_size`s; a sample of batch size 0 is one run of a model that does not
    /// batch). The samples' inputs are checked (`data_type`, `dims`, `zero_data` or `random_data`); each warm-up run
    /// then has inputs at the model's shapes, random bytes for those a sample gives `random_data` (`warmup_data`),
    /// zeros for the others. `input_data_file` is not read.
    private static func warmup(_ node: YAMLNode, put: (String, YAMLNode) -> Void,
                               unsupported: (TextFormatField, String) -> ConfigError) throws {
        var sizes: [YAMLNode] = []
        var random: [YAMLNode] = []
        var runs = 1
        let samples = items(node)
        guard !samples.isEmpty else { return }
        for sample in samples {
            for member in try fields(sample, path: "model_warmup") {
                switch member.name {
                case "name":
                    break
                case "batch_size":
                    let size = try ConfigValue(node: plain(member.value), path: "model_warmup.batch_size")
                        .int(in: 0...1_000_000, what: "a non-negative integer")
                    if size > 0 { sizes.append(.scalar(String(size), mark: member.value.mark, isPlain: true)) }
                case "count":
                    let count = try ConfigValue(node: plain(member.value), path: "model_warmup.count")
                        .int(in: 0...10_000, what: "an integer 0-10000")
                    runs = max(runs, count)
                case "inputs":
                    // A map: entries `{ key: "input" value { ... } }` in a config.pbtxt, `"input": {...}` in JSON.
                    var described: [(name: String, value: YAMLNode)] = []
                    for input in items(member.value) {
                        let entries = try fields(input, path: "model_warmup.inputs")
                        if Set(entries.map(\.name)) == ["key", "value"] {
                            let key = entries.first { $0.name == "key" }?.value.scalarText ?? ""
                            described += entries.filter { $0.name == "value" }.map { (key, $0.value) }
                        } else {
                            described += entries.map { ($0.name, $0.value) }
                        }
                    }
                    for description in described {
                        for setting in try fields(description.value, path: "model_warmup.inputs") {
                            switch setting.name {
                            case "random_data":
                                if setting.value.scalarText == "true" {
                                    random.append(.scalar(description.name, mark: setting.value.mark, isPlain: false))
                                }
                            case "data_type", "dims", "zero_data":
                                break
                            default:
                                throw unsupported(setting, "model_warmup.inputs")
                            }
                        }
                    }
                default:
                    throw unsupported(member, "model_warmup")
                }
            }
        }
        put("warmup", .scalar(String(runs), mark: node.mark, isPlain: true))
        if !sizes.isEmpty { put("warmup_batch_sizes", .sequence(sizes, mark: node.mark)) }
        if !random.isEmpty {
            put("warmup_data", .mapping([(.scalar("random", mark: node.mark, isPlain: true), .sequence(random, mark: node.mark))],
                                        mark: node.mark))
        }
    }

    /// The instances of a CPU instance group without a `count` (and of a configuration without an
    /// `instance_group`): Triton's default for the ONNX Runtime backend.
    static let defaultInstanceCount = 2

    /// The ONNX Runtime backend's `optimization.graph.level` as `graph_optimization_level`.
    static let graphLevels = [-1: "basic", 0: "all", 1: "extended", 2: "disable_all"]

    /// A scalar read as plain (a quoted `"4"` is the number 4), as the backend parses its string values.
    private static func plain(_ node: YAMLNode) -> YAMLNode {
        if case .scalar(let text, let mark, _) = node { return .scalar(text, mark: mark, isPlain: true) }
        return node
    }

    /// The entries of `parameters`: in a `config.pbtxt`, map entries `{ key: "k" value { string_value: "v" } }`
    /// (repeated); in the JSON form, an object of `"k": {"string_value": "v"}`. Each value is its string.
    private static func parameterEntries(_ node: YAMLNode) throws -> [(key: String, value: YAMLNode)] {
        func stringValue(_ value: YAMLNode, key: String) throws -> YAMLNode {
            let members = try fields(value, path: "parameters.\(key)")
            guard members.count == 1, members[0].name == "string_value", case .scalar = members[0].value else {
                throw ConfigError(mark: value.mark, path: "parameters.\(key)", message: "expected { string_value: \"...\" }")
            }
            return members[0].value
        }
        func mapEntry(_ item: YAMLNode) throws -> (key: String, value: YAMLNode) {
            let members = try fields(item, path: "parameters")
            guard let key = members.first(where: { $0.name == "key" })?.value.scalarText,
                  let value = members.first(where: { $0.name == "value" })?.value, members.count == 2 else {
                throw ConfigError(mark: item.mark, path: "parameters", message: "expected { key: \"...\" value { string_value: \"...\" } }")
            }
            return (key, try stringValue(value, key: key))
        }
        if case .sequence(let items, _) = node { return try items.map(mapEntry) }
        let members = try fields(node, path: "parameters")
        if Set(members.map(\.name)) == ["key", "value"] { return [try mapEntry(node)] }
        return try members.map { ($0.name, try stringValue($0.value, key: $0.name)) }
    }

    /// One of the ONNX Runtime backend's parameters as the settings it stands for. The backend's GPU parameters
    /// mean nothing on CPU instances; keys it does not read are ignored, as it ignores them.
    private static func backendParameter(_ key: String, _ value: YAMLNode, put: (String, YAMLNode) -> Void) throws {
        func flag() throws -> YAMLNode {
            switch value.scalarText?.lowercased() {
            case "1", "true", "on", "yes": return .scalar("true", mark: value.mark, isPlain: true)
            case "0", "false", "off", "no": return .scalar("false", mark: value.mark, isPlain: true)
            default: throw ConfigError(mark: value.mark, path: "parameters.\(key)", message: "expected a boolean such as \"1\" or \"0\"")
            }
        }
        switch key {
        case "intra_op_thread_count": put("intra_op_threads", plain(value))
        case "inter_op_thread_count": put("inter_op_threads", plain(value))
        case "enable_mem_arena": put("cpu_mem_arena", try flag())
        case "enable_mem_pattern": put("memory_pattern", try flag())
        case "execution_mode":
            guard value.scalarText == "0" else {
                throw ConfigError(mark: value.mark, path: "parameters.execution_mode",
                                  message: "only 0 (sequential) is served: a model's runs are parallel across instances, not within one")
            }
        case "memory.enable_memory_arena_shrinkage":
            // The backend passes the run option on as it is (`cpu:0`, `cpu:0;gpu:0`): the CPU arena is the one here.
            let devices = (value.scalarText ?? "").split(separator: ";")
            put("arena_shrinkage", .scalar(devices.contains { $0.hasPrefix("cpu") } ? "true" : "false", mark: value.mark, isPlain: true))
        default:
            break
        }
    }

    /// A repeated field's values (one value when it is written once).
    private static func items(_ node: YAMLNode) -> [YAMLNode] {
        if case .sequence(let values, _) = node { return values }
        return [node]
    }

    /// One `input` or `output` entry as an `inputs:`/`outputs:` item of the settings: `name`, `datatype` (the
    /// protocol's name: `TYPE_FP32` is `FP32`, `TYPE_STRING` is `BYTES`), `dims`, `format`, `reshape` and an
    /// output's `label_filename`. What else the entry sets must be at Triton's default (a shape tensor or a ragged
    /// batch would change what the model is served as).
    private static func tensor(_ node: YAMLNode, path: String,
                               unsupported: (TextFormatField, String) -> ConfigError) throws -> YAMLNode {
        var entries: [(key: YAMLNode, value: YAMLNode)] = []
        var dims: [YAMLNode] = []
        for member in try fields(node, path: path) {
            switch member.name {
            case "name":
                entries.append((.scalar("name", mark: member.nameMark, isPlain: true), member.value))
            case "data_type":
                let text = member.value.scalarText ?? ""
                guard text.hasPrefix("TYPE_") else {
                    throw ConfigError(mark: member.value.mark, path: "\(path).data_type", message: "expected a data type such as TYPE_FP32")
                }
                let type = text == "TYPE_STRING" ? "BYTES" : String(text.dropFirst("TYPE_".count))
                entries.append((.scalar("datatype", mark: member.nameMark, isPlain: true), .scalar(type, mark: member.value.mark, isPlain: false)))
            case "dims":
                dims += items(member.value)
            case "format" where path == "input":
                let text = member.value.scalarText ?? ""
                guard ["FORMAT_NONE", "FORMAT_NCHW", "FORMAT_NHWC"].contains(text) else {
                    throw ConfigError(mark: member.value.mark, path: "input.format", message: "expected FORMAT_NONE, FORMAT_NCHW or FORMAT_NHWC")
                }
                entries.append((.scalar("format", mark: member.nameMark, isPlain: true), .scalar(text, mark: member.value.mark, isPlain: false)))
            case "reshape":
                let shape = try fields(member.value, path: "\(path).reshape").filter { $0.name == "shape" }.flatMap { items($0.value) }
                entries.append((.scalar("reshape", mark: member.nameMark, isPlain: true), .sequence(shape, mark: member.value.mark)))
            case "label_filename" where path == "output" && member.value.scalarText != "":
                entries.append((.scalar("label_filename", mark: member.nameMark, isPlain: true), member.value))
            case let name where isDefault(member.value, field: "\(path).\(name)"):
                break
            default:
                throw unsupported(member, path)
            }
        }
        entries.append((.scalar("dims", mark: node.mark, isPlain: true), .sequence(dims, mark: node.mark)))
        return .mapping(entries, mark: node.mark)
    }
}

/// One `name: value` (or `name { ... }`) of a text-format message.
struct TextFormatField {
    var name: String
    var nameMark: SourceMark
    var value: YAMLNode
}

/// Protobuf's text format, as far as model configurations use it: fields `name: scalar`, `name { ... }` or
/// `name: { ... }`, lists `[a, b]`, repeated fields by repetition, `#` comments, `,` or `;` between fields.
/// Messages become mappings whose repeated fields are sequences; scalars keep their text (a string without quotes).
struct TextFormatParser {
    /// Messages and lists nested in one another at most (protobuf's own text parser stops at 100): the parser
    /// recurses, and a file of a million `[` must be an error at its place, not a stack overflow.
    static let maximumNesting = 100

    let bytes: [UInt8]
    let file: String
    var index = 0
    var line = 1
    var column = 1
    /// Messages and lists open around the current position.
    var nesting = 0

    init(bytes: [UInt8], file: String) {
        self.bytes = bytes
        self.file = file
    }

    var mark: SourceMark { SourceMark(file: file, line: line, column: column) }

    func error(_ message: String) -> ConfigError { ConfigError(mark: mark, path: "", message: message) }

    mutating func advance() {
        if bytes[index] == UInt8(ascii: "\n") { line += 1; column = 1 } else { column += 1 }
        index += 1
    }

    mutating func skipSpace() {
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "#") {
                while index < bytes.count, bytes[index] != UInt8(ascii: "\n") { advance() }
            } else if byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D {
                advance()
            } else {
                return
            }
        }
    }

    func peek() -> UInt8? { index < bytes.count ? bytes[index] : nil }

    /// Fields until `closing` (or the end of the text when nil), repeated names gathered into sequences.
    mutating func message(until closing: UInt8?) throws -> [TextFormatField] {
        var fields: [TextFormatField] = []
        while true {
            skipSpace()
            guard let byte = peek() else {
                if closing != nil { throw error("expected '\(Character(Unicode.Scalar(closing!)))' before the end of the file") }
                return fields
            }
            if byte == closing {
                advance()
                return fields
            }
            let nameMark = mark
            let name = try identifier()
            skipSpace()
            var value: YAMLNode
            if peek() == UInt8(ascii: ":") {
                advance()
                skipSpace()
                value = try self.value()
            } else if peek() == UInt8(ascii: "{") || peek() == UInt8(ascii: "[") {
                value = try self.value()
            } else {
                throw error("expected ':' or '{' after \"\(name)\"")
            }
            skipSpace()
            if peek() == UInt8(ascii: ",") || peek() == UInt8(ascii: ";") { advance() }
            if let existing = fields.firstIndex(where: { $0.name == name }) {
                // A repeated field: its values in order, a list's items included.
                var values: [YAMLNode]
                if case .sequence(let earlier, _) = fields[existing].value { values = earlier } else { values = [fields[existing].value] }
                if case .sequence(let more, _) = value { values += more } else { values.append(value) }
                fields[existing].value = .sequence(values, mark: fields[existing].value.mark)
            } else {
                fields.append(TextFormatField(name: name, nameMark: nameMark, value: value))
            }
        }
    }

    mutating func value() throws -> YAMLNode {
        let start = mark
        switch peek() {
        case UInt8(ascii: "{"):
            try enter()
            defer { nesting -= 1 }
            advance()
            let fields = try message(until: UInt8(ascii: "}"))
            return .mapping(fields.map { (YAMLNode.scalar($0.name, mark: $0.nameMark, isPlain: true), $0.value) }, mark: start)
        case UInt8(ascii: "["):
            try enter()
            defer { nesting -= 1 }
            advance()
            var items: [YAMLNode] = []
            while true {
                skipSpace()
                if peek() == UInt8(ascii: "]") { advance(); return .sequence(items, mark: start) }
                items.append(try value())
                skipSpace()
                if peek() == UInt8(ascii: ",") { advance(); continue }
                guard peek() == UInt8(ascii: "]") else { throw error("expected ',' or ']' in a list") }
            }
        case UInt8(ascii: "\""), UInt8(ascii: "'"):
            return .scalar(try string(), mark: start, isPlain: false)
        case .some:
            var text: [UInt8] = []
            while let byte = peek(), byte == UInt8(ascii: "-") || byte == UInt8(ascii: "+") || byte == UInt8(ascii: ".")
                    || byte == UInt8(ascii: "_") || (byte >= 0x30 && byte <= 0x39) || (byte | 0x20 >= 0x61 && byte | 0x20 <= 0x7A) {
                text.append(byte)
                advance()
            }
            guard !text.isEmpty else { throw error("expected a value") }
            return .scalar(String(decoding: text, as: UTF8.self), mark: start, isPlain: true)
        case .none:
            throw error("expected a value before the end of the file")
        }
    }

    /// Counts a message or list opening at the current position, refusing one past `maximumNesting`.
    mutating func enter() throws {
        guard nesting < TextFormatParser.maximumNesting else {
            throw error("messages and lists nested deeper than \(TextFormatParser.maximumNesting) levels")
        }
        nesting += 1
    }

    mutating func identifier() throws -> String {
        var text: [UInt8] = []
        while let byte = peek(), byte == UInt8(ascii: "_") || (byte >= 0x30 && byte <= 0x39 && !text.isEmpty)
                || (byte | 0x20 >= 0x61 && byte | 0x20 <= 0x7A) {
            text.append(byte)
            advance()
        }
        guard !text.isEmpty else { throw error("expected a field name") }
        return String(decoding: text, as: UTF8.self)
    }

    mutating func string() throws -> String {
        let quote = bytes[index]
        advance()
        var text: [UInt8] = []
        while let byte = peek() {
            advance()
            if byte == quote { return String(decoding: text, as: UTF8.self) }
            if byte == UInt8(ascii: "\\"), let escaped = peek() {
                advance()
                switch escaped {
                case UInt8(ascii: "n"): text.append(0x0A)
                case UInt8(ascii: "t"): text.append(0x09)
                default: text.append(escaped)
                }
            } else if byte == 0x0A {
                throw error("a string does not end on its line")
            } else {
                text.append(byte)
            }
        }
        throw error("a string does not end before the end of the file")
    }
}
