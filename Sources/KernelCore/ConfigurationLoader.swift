import KernelConfig
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Turns a configuration file into a `KernelGeneration`: parses it, checks the top-level keys, and lets every
/// module whose key is present and whose roles include the process's role decode and register itself.
public struct ConfigurationLoader: Sendable {
    public let modules: [ModuleDescriptor]
    public let role: KernelRole

    public init(modules: [ModuleDescriptor], role: KernelRole) {
        self.modules = modules
        self.role = role
    }

    /// Parses `file` (includes and environment variables resolved) into its root value.
    public func parse(_ file: String) throws -> ConfigValue {
        let parser = YAMLParser(environment: ProcessEnvironment.all())
        let root = try parser.parseFile(file)
        guard case .mapping = root else {
            throw ConfigError(mark: root.mark, path: "", message: "expected a mapping of module keys, found \(root.foundDescription)")
        }
        return ConfigValue(node: root, path: "")
    }

    /// Reads only the `kernel:` section (for `-s SIGNAL`, which needs the pid file and nothing else).
    public func coreConfiguration(file: String) throws -> CoreConfiguration {
        let root = try parse(file).mapping()
        return try CoreConfiguration.decode(root.optional(CoreConfiguration.key), directory: ConfigPath.directory(of: file))
    }

    /// Builds a generation. Throws the first `ConfigError` (or module error) found.
    public func load(file: String, runtime: KernelRuntime, mode: Registrar.Mode, number: Int) throws -> KernelGeneration {
        let root = try parse(file).mapping()
        let core = try CoreConfiguration.decode(root.optional(CoreConfiguration.key), directory: ConfigPath.directory(of: file))
        let registrar = Registrar(role: role, mode: mode, configurationFile: file, runtime: runtime)
        registrar.runDirectory = ConfigPath.directory(of: core.pidFile)
        var active: [String] = []
        for module in modules {
            let value: ConfigValue
            if let present = root.optional(module.configurationKey) {
                value = present
            } else if module.enabledWithoutKey {
                value = ConfigValue(node: .mapping([], mark: SourceMark(file: file, line: 1, column: 1)),
                                    path: module.configurationKey)
            } else {
                continue
            }
            guard role.runs(module.roles) else {
                runtime.logger.info("module \(module.configurationKey) is not started in role \(role)")
                continue
            }
            try module.load(value, registrar)
            active.append(module.configurationKey)
        }
        try root.finish()
        try Self.checkListenersDoNotClash(registrar.listeners)
        return KernelGeneration(number: number, core: core, registrar: registrar, activeModules: active)
    }
}

extension ConfigurationLoader {
    /// Two listeners of different modules (`http.listen` and `uwsgi.listen`) on one address would fail only when
    /// the second is bound; `kernel -t` names both places instead. (A module refuses its own duplicates itself.)
    static func checkListenersDoNotClash(_ listeners: [ListenerSpec]) throws {
        for (index, listener) in listeners.enumerated() {
            guard let earlier = listeners[..<index].first(where: { $0.address.clashes(with: listener.address) }) else {
                continue
            }
            let place = earlier.mark.map { " at \($0)" } ?? ""
            throw ConfigError(mark: listener.mark, path: "",
                              message: "\(listener.protocolName) listen address \"\(listener.address)\" is also the \(earlier.protocolName) listener's\(place): one socket cannot serve both")
        }
    }
}

/// The process environment as a dictionary (for `${NAME}` in YAML).
public enum ProcessEnvironment {
    public static func all() -> [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }
}
