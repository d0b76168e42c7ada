import KernelConfig
import KernelCore
import NIOCore

extension BalancingModule {
    /// The idle-connection cache of an `upstreams:` group: nginx's `keepalive N`, `keepalive_timeout` and
    /// `keepalive_requests`. Without `keepalive` no connection is kept (the other two keys then need it).
    ///
    /// `keepalive_timeout` defaults to 4s, not nginx's 60s: a pooled connection must be closed by the edge before
    /// the upstream closes it, or a request can be written into a connection the upstream is closing. Common
    /// upstream servers keep an idle connection 5s (Node.js `keepAliveTimeout`, uvicorn `--timeout-keep-alive`)
    /// or 2s (gunicorn `--keep-alive`); kernel workers and uWSGI keep theirs longer. 4s stays below the 5s ones;
    /// behind gunicorn set it below 2s, behind servers that keep connections longer raise it. A request that still
    /// meets a closed connection is sent again on a new one (the engine's stale-connection retry).
    static func decodeKeepalive(_ mapping: ConfigMapping) throws -> UpstreamKeepalive? {
        let timeoutValue = mapping.optional("keepalive_timeout")
        let requestsValue = mapping.optional("keepalive_requests")
        guard let connectionsValue = mapping.optional("keepalive") else {
            if let orphan = timeoutValue ?? requestsValue {
                throw orphan.error("\"keepalive_timeout\" and \"keepalive_requests\" need \"keepalive\" (the idle connections kept)")
            }
            return nil
        }
        let connections = try connectionsValue.int(in: 1...1_000_000, what: "a number of idle connections (1 or more)")
        var keepalive = UpstreamKeepalive(connections: connections, timeout: defaultKeepaliveTimeout, requests: 1000)
        if let timeoutValue {
            let duration = try timeoutValue.duration()
            guard duration.milliseconds > 0 else { throw timeoutValue.expected("a duration above zero") }
            keepalive.timeout = .milliseconds(duration.milliseconds)
        }
        if let requestsValue {
            keepalive.requests = try requestsValue.int(in: 1...Int(Int32.max), what: "a number of requests (1 or more)")
        }
        return keepalive
    }

    /// The default `keepalive_timeout` (see `decodeKeepalive`).
    static let defaultKeepaliveTimeout = TimeAmount.seconds(4)
}
