#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KernelConfig

/// Which versions of a repository model are served (Triton's `version_policy`).
public enum VersionPolicy: Sendable, Equatable {
    /// The N highest versions (Triton's default: `latest: 1`).
    case latest(Int)
    case all
    case specific([Int])

    /// The versions of `available` this policy serves, highest first.
    public func select(_ available: [Int]) -> [Int] {
        let descending = available.sorted(by: >)
        switch self {
        case .latest(let count): return Array(descending.prefix(count))
        case .all: return descending
        case .specific(let versions): return descending.filter { versions.contains($0) }
        }
    }
}

/// What identifies a file's content for polling: a changed size or modification time is a changed model.
public struct FileStamp: Sendable, Equatable {
    public var size: Int64
    public var modifiedNanoseconds: Int64

    /// The stamp of `path`, or nil when it cannot be read.
    public static func of(_ path: String) -> FileStamp? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return FileStamp(size: Int64(info.st_size),
                         modifiedNanoseconds: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec))
    }
}

/// One model directory of a repository as scanned: the versions its policy serves, each as a configuration.
public struct RepositoryModel: Sendable {
    public var name: String
    public var policy: VersionPolicy
    /// The versions found on disk (numeric subdirectories), highest first.
    public var availableVersions: [Int]
    /// The versions to serve, highest first, with the settings of the model's file.
    public var versions: [ModelConfiguration]
    /// The model file's stamp of each served version, and the per-model settings file's: what polling compares.
    public var stamps: [String: FileStamp?]
    /// The per-model settings file (`config.yaml` or Triton's `config.pbtxt`), when there is one.
    public var settingsPath: String? = nil
}

/// Reads a Triton-style model repository: `<repository>/<name>/<version>/model.onnx`, with optional per-model
/// settings in `<repository>/<name>/config.yaml` (the keys of a `models:` entry but `name`, `path` and `version`,
/// plus `version_policy`) or, for a repository made for Triton, the basic fields of `config.pbtxt`.
public struct ModelRepositoryLayout: Sendable {
    public static let modelFileName = "model.onnx"
    public static let settingsFileName = "config.yaml"

    public var path: String
    public var memoryDefaults: SessionMemoryOptions

    public init(path: String, memoryDefaults: SessionMemoryOptions = SessionMemoryOptions()) {
        self.path = path
        self.memoryDefaults = memoryDefaults
    }

    /// Every model of the repository; the first model whose settings file is wrong stops the scan with its error.
    public func scan() throws -> [RepositoryModel] {
        try modelNames().map { try scanModel($0) }
    }

    /// The model directories: subdirectories whose names are model names (hidden ones are skipped).
    public func modelNames() throws -> [String] {
        guard let entries = ModelRepositoryLayout.directories(in: path) else {
            throw ModelRepositoryError("model_repository \(path) cannot be read: \(String(cString: strerror(errno)))")
        }
        return entries.filter { !$0.hasPrefix(".") && InferenceConfiguration.isModelName($0) }.sorted()
    }

    /// One model as it is on disk now. Errors: the settings file's (with file:line:column), or a missing directory.
    ///
    /// `override` is what a load request gives instead (Triton's `config` and `file:` parameters): its settings
    /// replace the model's settings file, and its directory, when it has one, the model's directory.
    public func scanModel(_ name: String, override: ModelLoadOverride? = nil) throws -> RepositoryModel {
        let directory = override?.directory ?? (path.hasSuffix("/") ? path + name : path + "/" + name)
        guard let entries = ModelRepositoryLayout.directories(in: directory) else {
            throw ModelRepositoryError("failed to poll from model repository: no model directory \(directory)")
        }
        // Version numbers, each once: `1` and `01` are one version (as Triton keeps a set of them), never two
        // versions of one number.
        let available = Set(entries.filter { InferenceConfiguration.isVersion($0) }.compactMap { Int($0) }).sorted(by: >)
        let yamlPath = directory + "/" + ModelRepositoryLayout.settingsFileName
        let pbtxtPath = directory + "/" + TritonModelConfig.fileName
        let hasYAML = override == nil && access(yamlPath, F_OK) == 0
        let hasPbtxt = override == nil && access(pbtxtPath, F_OK) == 0
        if let settings = override?.settings {
            var policy = VersionPolicy.latest(1)
            let template: ModelConfiguration
            do {
                let mapping = try ConfigValue(node: settings, path: "").mapping()
                if let policyValue = mapping.optional("version_policy") { policy = try ModelRepositoryLayout.decodePolicy(policyValue) }
                template = try InferenceConfiguration.decodeModelSettings(mapping, name: name, path: "", version: "",
                                                                          memoryDefaults: memoryDefaults, inRepository: true)
                try mapping.finish()
            } catch var error as ConfigError {
                // A request's JSON has no lines and columns to name: the field's path says where.
                if error.mark == TritonModelConfig.loadRequestMark { error.mark = nil }
                throw ModelRepositoryError("invalid model configuration: \(error)", isInvalidRequestConfiguration: true)
            }
            return model(name, directory: directory, policy: policy, available: available, template: template,
                         stamps: [:], settingsPath: nil)
        }
        if hasYAML && hasPbtxt {
            throw ConfigError(mark: SourceMark(file: pbtxtPath, line: 1, column: 1), path: "",
                              message: "model \"\(name)\" has both \(ModelRepositoryLayout.settingsFileName) and \(TritonModelConfig.fileName): keep one")
        }
        var policy = VersionPolicy.latest(1)
        var template: ModelConfiguration
        var stamps: [String: FileStamp?] = [:]
        var settingsPath: String?
        if hasYAML || hasPbtxt {
            let path = hasYAML ? yamlPath : pbtxtPath
            settingsPath = path
            stamps[path] = FileStamp.of(path)
            let root: YAMLNode
            if hasYAML {
                root = try YAMLParser().parseFile(path)
            } else {
                // A settings file is small: a huge one is refused rather than read whole.
                guard let text = readConfigurationFile(path, limit: 16 << 20) else {
                    throw ModelRepositoryError("\(path) cannot be read: \(String(cString: strerror(errno)))")
                }
                root = try TritonModelConfig.settings(text, file: path, modelName: name)
            }
            let mapping = try ConfigValue(node: root, path: "").mapping()
            if let policyValue = mapping.optional("version_policy") { policy = try ModelRepositoryLayout.decodePolicy(policyValue) }
            template = try InferenceConfiguration.decodeModelSettings(mapping, name: name, path: "", version: "",
                                                                      memoryDefaults: memoryDefaults, inRepository: true)
            try mapping.finish()
        } else {
            let empty = YAMLNode.mapping([], mark: SourceMark(file: yamlPath, line: 1, column: 1))
            template = try InferenceConfiguration.decodeModelSettings(try ConfigValue(node: empty, path: "").mapping(),
                                                                      name: name, path: "", version: "",
                                                                      memoryDefaults: memoryDefaults, inRepository: true)
        }
        return model(name, directory: directory, policy: policy, available: available, template: template,
                     stamps: stamps, settingsPath: settingsPath)
    }

    /// The versions `policy` serves of those `available` in `directory`, each `template` with its version and path.
    private func model(_ name: String, directory: String, policy: VersionPolicy, available: [Int],
                       template: ModelConfiguration, stamps: [String: FileStamp?], settingsPath: String?) -> RepositoryModel {
        var stamps = stamps
        let versions = policy.select(available).map { version -> ModelConfiguration in
            var configuration = template
            configuration.version = String(version)
            configuration.path = "\(directory)/\(version)/\(ModelRepositoryLayout.modelFileName)"
            configuration.versionPolicy = policy
            stamps[configuration.path] = FileStamp.of(configuration.path)
            return configuration
        }
        return RepositoryModel(name: name, policy: policy, availableVersions: available, versions: versions, stamps: stamps,
                               settingsPath: settingsPath)
    }

    /// `version_policy`: `{latest: N}` (or Triton's `{latest: {num_versions: N}}`), `{all: {}}`,
    /// `{specific: [1, 3]}` (or `{specific: {versions: [1, 3]}}`).
    static func decodePolicy(_ value: ConfigValue) throws -> VersionPolicy {
        let mapping = try value.mapping()
        let keys = mapping.keys
        guard keys.count == 1 else { throw value.expected("one of {latest: N}, {all: {}}, {specific: [V, ...]}") }
        let policy: VersionPolicy
        if let latest = mapping.optional("latest") {
            if case .mapping = latest.node {
                let inner = try latest.mapping()
                policy = .latest(try inner.required("num_versions").int(in: 1...1_000_000, what: "a positive integer"))
                try inner.finish()
            } else {
                policy = .latest(try latest.int(in: 1...1_000_000, what: "a positive integer"))
            }
        } else if let all = mapping.optional("all") {
            try all.mapping().finish()
            policy = .all
        } else if let specific = mapping.optional("specific") {
            var list = specific
            if case .mapping = specific.node {
                let inner = try specific.mapping()
                list = try inner.required("versions")
                try inner.finish()
            }
            let versions = try list.list(allowScalar: true).map { try $0.int(in: 0...Int.max, what: "a version number") }
            guard !versions.isEmpty else { throw list.expected("at least one version") }
            policy = .specific(versions)
        } else {
            try mapping.finish()
            throw value.expected("one of {latest: N}, {all: {}}, {specific: [V, ...]}")
        }
        try mapping.finish()
        return policy
    }

    /// The names of the subdirectories of `path`, or nil when it is no readable directory.
    static func directories(in path: String) -> [String]? {
        guard let stream = opendir(path) else { return nil }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            guard name != ".", name != ".." else { continue }
            var info = stat()
            guard stat(path + "/" + name, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else { continue }
            names.append(name)
        }
        return names
    }
}

/// A repository that cannot be read, or a model that is not in it.
public struct ModelRepositoryError: Error, Sendable, CustomStringConvertible {
    public var message: String
    /// The configuration a load request gave does not decode: the request's fault, not the repository's.
    public var isInvalidRequestConfiguration = false
    public init(_ message: String, isInvalidRequestConfiguration: Bool = false) {
        self.message = message
        self.isInvalidRequestConfiguration = isInvalidRequestConfiguration
    }
    public var description: String { message }
}
