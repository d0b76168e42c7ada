import KernelConfig
import KernelCore

/// The `inference` module.
public enum InferenceModule: KernelModule {
    public static let configurationKey = "inference"
    public static let roles: Set<KernelRole> = [.edge, .worker]
    public static func decode(_ value: ConfigValue, registrar: Registrar) throws -> Void {
        throw value.error("the inference module is not built yet")
    }
    public static func register(_ configuration: Void, into registrar: Registrar) throws {}
}
