import KernelConfig

/// A kernel module: one YAML key, the roles it runs in, a typed configuration, and what it contributes.
///
/// The kernel decodes and registers a module only when its key is present in the configuration and the process's
/// role runs it. Registration happens again, from scratch, on every reload: a module keeps no global state.
public protocol KernelModule: Sendable {
    /// Its strictly decoded configuration.
    associatedtype Configuration: Sendable

    /// The top-level YAML key that enables the module (`http`, `uwsgi`, `routing`, `inference`).
    static var configurationKey: String { get }
    /// The roles it runs in (`both` runs every edge and worker module).
    static var roles: Set<KernelRole> { get }

    /// Decodes the module's YAML mapping. Unknown keys, wrong types and missing keys are `ConfigError`s.
    static func decode(_ value: ConfigValue, registrar: Registrar) throws -> Configuration

    /// Contributes listeners, filters, location handlers, upstream groups and services.
    static func register(_ configuration: Configuration, into registrar: Registrar) throws

    /// Whether the module runs, with an empty mapping, when its key is absent: for modules whose directives nginx
    /// users expect to be there always (`add_header`, as nginx's headers module is always built in).
    static var enabledWithoutKey: Bool { get }
}

extension KernelModule {
    public static var enabledWithoutKey: Bool { false }
}

/// A type-erased entry of the compiled-in module list.
public struct ModuleDescriptor: Sendable {
    public let configurationKey: String
    public let roles: Set<KernelRole>
    /// `KernelModule.enabledWithoutKey`.
    public let enabledWithoutKey: Bool
    let load: @Sendable (ConfigValue, Registrar) throws -> Void

    public init<Module: KernelModule>(_ module: Module.Type) {
        configurationKey = Module.configurationKey
        roles = Module.roles
        enabledWithoutKey = Module.enabledWithoutKey
        load = { value, registrar in
            let configuration = try Module.decode(value, registrar: registrar)
            try Module.register(configuration, into: registrar)
        }
    }
}
