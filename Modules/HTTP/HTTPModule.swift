import KernelConfig
import KernelCore

/// The `http` module.
public enum HTTPModule: KernelModule {
    public static let configurationKey = "http"
    public static let roles: Set<KernelRole> = [.edge, .worker]
    public static func decode(_ value: ConfigValue, registrar: Registrar) throws -> Void {
        throw value.error("the http module is not built yet")
    }
    public static func register(_ configuration: Void, into registrar: Registrar) throws {}
}
