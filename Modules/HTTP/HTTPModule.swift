import KernelConfig
import KernelCore
import NIOCore

/// The `http` module: HTTP/1.1 listeners (`http.listen`) with nginx's connection limits and timeouts, and the
/// client side, `proxy_pass` (nginx's `ngx_http_proxy_module`) on the upstream engine.
///
/// Each listen address becomes one listener (protocol `http`); its connections get an `HTTPConnectionHandler`
/// built with the configuration of the generation that registered it. `proxy_pass` is a location handler; the
/// module registers it, `$proxy_host` and `$proxy_port`, and the health-check prober of the `http` scheme.
public enum HTTPModule: KernelModule {
    public static let configurationKey = "http"
    public static let roles: Set<KernelRole> = [.edge, .worker]

    public static func decode(_ value: ConfigValue, registrar: Registrar) throws -> HTTPConfiguration {
        try HTTPConfiguration.decode(value)
    }

    public static func register(_ configuration: HTTPConfiguration, into registrar: Registrar) throws {
        for spec in listenerSpecs(for: configuration) { registrar.addListener(spec) }
        registerProxy(into: registrar)
    }

    /// `proxy_pass`, its variables and the `http` prober. The variables are the location's own in its
    /// `proxy_set_header` lines and URI (compiled there as constants); elsewhere they are not found.
    static func registerProxy(into registrar: Registrar) {
        registrar.variables.register("proxy_host") { _ in nil }
        registrar.variables.register("proxy_port") { _ in nil }
        registrar.addLocationHandler("proxy_pass", capabilities: .proxies) { value, location, context in
            try ProxyPassFactory.make(value: value, location: location, context: context, registrar: registrar)
        }
        registrar.addUpstreamProber(scheme: "http", HTTPUpstreamProber(logger: registrar.logger))
        // nginx allows these at server (and http) level too; a location's own value replaces the server's.
        registrar.addServerInheritedKeys([
            "proxy_set_header", "proxy_hide_header", "proxy_pass_header", "proxy_redirect", "proxy_http_version",
            "proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout", "proxy_next_upstream",
            "proxy_next_upstream_tries", "proxy_next_upstream_timeout", "proxy_buffer_size", "proxy_buffers",
            "proxy_buffering", "proxy_max_temp_file_size", "proxy_temp_path", "proxy_request_buffering",
            "proxy_pass_request_headers", "proxy_pass_request_body", "proxy_ignore_client_abort",
            "request_timeout", "request_timeout_header",
        ])
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
