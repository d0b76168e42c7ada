import KernelConfig
import KernelCore

/// The `routing` module.
public enum RoutingModule: KernelModule {
    public static let configurationKey = "routing"
    public static let roles: Set<KernelRole> = [.edge, .worker]
    public static func decode(_ value: ConfigValue, registrar: Registrar) throws -> Void {
        throw value.error("the routing module is not built yet")
    }
    public static func register(_ configuration: Void, into registrar: Registrar) throws {}
}
