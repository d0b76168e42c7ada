import KernelConfig
import KernelCore

/// `upstreams:`: named groups of servers with a balancing method, as nginx's `upstream NAME { ... }` blocks.
/// `uwsgi_pass NAME` (and later `proxy_pass`) uses a group by name.
///
/// ```yaml
/// upstreams:
///   backend:
///     method: round_robin        # or ip_hash, least_conn
///     servers:
///       - 127.0.0.1:8001 weight=5 max_fails=3 fail_timeout=10s
///       - 127.0.0.1:8002
///       - 127.0.0.1:8003 backup
/// ```
public enum BalancingModule: KernelModule {
    public static let configurationKey = "upstreams"
    public static let roles: Set<KernelRole> = [.edge, .worker]

    public static func decode(_ value: ConfigValue, registrar: Registrar) throws -> [BalancedGroup] {
        let groups = try value.mapping()
        var decoded: [BalancedGroup] = []
        for (name, body) in groups.unread() {
            groups.allow(name)
            guard PeerAddress(parsing: name) == nil, !name.contains("/") else {
                throw body.error("upstream group name \"\(name)\" reads as an address: name groups with a word (backend)")
            }
            let mapping = try body.mapping()
            let method: BalancingMethod
            switch try mapping.optional("method")?.oneOf(["round_robin", "ip_hash", "least_conn"]) ?? "round_robin" {
            case "ip_hash": method = .ipHash
            case "least_conn": method = .leastConn
            default: method = .roundRobin
            }
            let serverValues = try mapping.required("servers").list()
            guard !serverValues.isEmpty else { throw body.error("upstream \"\(name)\" has no servers") }
            var servers: [UpstreamServer] = []
            for serverValue in serverValues {
                let server = try UpstreamServer.decode(serverValue)
                if method == .ipHash, server.backup {
                    // nginx refuses it too: a hash maps clients to servers, a backup has no place in that map.
                    throw serverValue.error("upstream \"\(name)\": ip_hash cannot use a backup server")
                }
                servers.append(server)
            }
            guard servers.contains(where: { !$0.backup }) else {
                throw body.error("upstream \"\(name)\" has only backup servers")
            }
            let keepalive = try decodeKeepalive(mapping)
            try mapping.finish()
            let group = BalancedGroup(name: name, method: method, servers: servers, logger: registrar.logger)
            group.keepalive = keepalive
            decoded.append(group)
        }
        try groups.finish()
        return decoded
    }

    public static func register(_ groups: [BalancedGroup], into registrar: Registrar) throws {
        for group in groups { registrar.addUpstreamGroup(group) }
    }
}
