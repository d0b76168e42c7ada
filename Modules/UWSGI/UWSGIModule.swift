import KernelConfig
import KernelCore

/// The `uwsgi` module.
public enum UWSGIModule: KernelModule {
    public static let configurationKey = "uwsgi"
    public static let roles: Set<KernelRole> = [.edge, .worker]
    public static func decode(_ value: ConfigValue, registrar: Registrar) throws -> Void {
        throw value.error("the uwsgi module is not built yet")
    }
    public static func register(_ configuration: Void, into registrar: Registrar) throws {}
}
