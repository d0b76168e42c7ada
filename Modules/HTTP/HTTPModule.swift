import KernelConfig
import KernelCore
import NIOCore

/// The `http` module: HTTP/1.1 listeners (`http.listen`) with nginx's connection limits and timeouts.
///
/// Each listen address becomes one listener (protocol `http`); its connections get an `HTTPConnectionHandler`
/// built with the configuration of the generation that registered it.
public enum HTTPModule: KernelModule {
    public static let configurationKey = "http"
    public static let roles: Set<KernelRole> = [.edge, .worker]

    public static func decode(_ value: ConfigValue, registrar: Registrar) throws -> HTTPConfiguration {
        try HTTPConfiguration.decode(value)
    }

    public static func register(_ configuration: HTTPConfiguration, into registrar: Registrar) throws {
        for spec in listenerSpecs(for: configuration) { registrar.addListener(spec) }
    }

    /// One listener per `listen` address; each connection's pipeline is built with `configuration` captured.
    public static func listenerSpecs(for configuration: HTTPConfiguration) -> [ListenerSpec] {
        configuration.listen.map { entry in
            let settings = HTTPConnectionSettings(configuration: configuration, listener: entry.text)
            return ListenerSpec(protocolName: "http", address: entry.address, backlog: entry.backlog, mark: entry.mark) { channel, runtime in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(HTTPConnectionHandler(settings: settings, runtime: runtime))
                }
            }
        }
    }
}
