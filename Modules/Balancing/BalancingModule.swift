import KernelConfig
import KernelCore

/// `upstreams:`: named groups of servers with a balancing method, as nginx's `upstream NAME { ... }` blocks.
/// `uwsgi_pass NAME` (and later `proxy_pass`) uses a group by name.
///
/// ```yaml
/// upstreams:
///   backend:
///     method: round_robin        # ip_hash, least_conn, hash $request_uri [consistent], random [two [least_conn]],
///                                # least_time header|last_byte [inflight], least_queue
///     queue: 100 timeout=30s     # wait for a server under max_conns (nginx Plus)
///     servers:
///       - 127.0.0.1:8001 weight=5 max_fails=3 fail_timeout=10s max_conns=8 slow_start=30s
///       - 127.0.0.1:8002
///       - 127.0.0.1:8003 backup
///       - app.internal:6666 resolve   # each address of the name, re-resolved as its TTL expires
///     protocol: uwsgi                 # or http: what the servers speak
///     resolver: 127.0.0.1:53 valid=30s ipv6=off
///     health_check: {interval: 5s, uri: /healthz, status: 200-399, rise: 2, fall: 3, timeout: 2s}
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
            let method = try mapping.optional("method").map { try decodeMethod($0, variables: registrar.variables) } ?? .roundRobin
            let queue = try mapping.optional("queue").map(decodeQueue)
            let serverValues = try mapping.required("servers").list()
            guard !serverValues.isEmpty else { throw body.error("upstream \"\(name)\" has no servers") }
            var servers: [UpstreamServer] = []
            var serverLines: [(server: UpstreamServer, value: ConfigValue)] = []
            for serverValue in serverValues {
                let server = try UpstreamServer.decode(serverValue)
                if server.backup, !method.allowsBackup {
                    // nginx refuses it too: a hash or a draw maps requests to servers, a backup has no place in it.
                    throw serverValue.error("upstream \"\(name)\": balancing method \"\(methodName(method))\" does not support parameter \"backup\"")
                }
                if server.slowStartNanoseconds > 0, !method.allowsSlowStart {
                    throw serverValue.error("upstream \"\(name)\": balancing method \"\(methodName(method))\" does not support parameter \"slow_start\"")
                }
                servers.append(server)
                serverLines.append((server, serverValue))
            }
            guard servers.contains(where: { !$0.backup }) else {
                throw body.error("upstream \"\(name)\" has only backup servers")
            }
            let options = try GroupOptions.decode(mapping, group: name, servers: serverLines, body: body)
            let keepalive = try decodeKeepalive(mapping)
            try mapping.finish()
            if queue != nil, !servers.contains(where: { $0.maxConns > 0 }) {
                // nginx Plus queues only for servers at max_conns: without it nothing would ever wait.
                throw body.error("upstream \"\(name)\": queue needs max_conns= on a server")
            }
            let group = BalancedGroup(name: name, method: method, servers: servers, queue: queue, scheme: options.scheme,
                                      healthChecked: options.healthCheck != nil, logger: registrar.logger)
            group.keepalive = keepalive
            if let local = serverLines.first(where: { $0.server.address == .local }) {
                // `local` is this process's own worker side: only a process that is both has one.
                guard registrar.role == .both else {
                    throw local.value.error("upstream \"\(name)\": a local server needs --role both (this process is \(registrar.role))")
                }
                group.localPeer = LocalPeer(runtime: registrar.runtime)
            }
            try options.addServices(for: group, registrar: registrar, body: body)
            decoded.append(group)
        }
        try groups.finish()
        return decoded
    }

    /// `method:` in nginx's words: `round_robin`, `ip_hash`, `least_conn`, `hash KEY [consistent]`,
    /// `random [two [least_conn]]`, `least_time header|last_byte [inflight]`, `least_queue`.
    static func decodeMethod(_ value: ConfigValue, variables: VariableRegistry) throws -> BalancingMethod {
        let words = try value.nonEmptyString().split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        let expected = "round_robin, ip_hash, least_conn, hash KEY [consistent], random [two [least_conn]], least_time header|last_byte [inflight], least_queue"
        func invalid(_ word: String) -> ConfigError { value.error("invalid parameter \"\(word)\" in method (\(expected))") }
        switch words.first ?? "" {
        case "round_robin" where words.count == 1: return .roundRobin
        case "ip_hash" where words.count == 1: return .ipHash
        case "least_conn" where words.count == 1: return .leastConn
        case "least_queue" where words.count == 1: return .leastQueue
        case "hash":
            guard words.count >= 2 else { throw value.error("method hash needs a key (hash $request_uri)") }
            guard words.count == 2 || (words.count == 3 && words[2] == "consistent") else { throw invalid(words.last!) }
            do {
                return .hash(try HashKey(words[1], variables: variables), consistent: words.count == 3)
            } catch {
                throw value.error("method hash: \(error)")
            }
        case "random":
            if words.count == 1 { return .random(two: false) }
            guard words[1] == "two" else { throw invalid(words[1]) }
            // least_conn is the only (and default) way random two compares its pair.
            guard words.count == 2 || (words.count == 3 && words[2] == "least_conn") else { throw invalid(words.last!) }
            return .random(two: true)
        case "least_time":
            guard words.count >= 2, let measure = LeastTimeMeasure(rawValue: words[1]) else {
                throw value.error("method least_time needs header or last_byte (least_time header)")
            }
            guard words.count == 2 || (words.count == 3 && words[2] == "inflight") else { throw invalid(words.last!) }
            return .leastTime(measure, inflight: words.count == 3)
        default:
            throw value.error("unknown balancing method \"\(words.joined(separator: " "))\" (\(expected))")
        }
    }

    /// `queue: N [timeout=T]`.
    static func decodeQueue(_ value: ConfigValue) throws -> UpstreamQueuePolicy {
        let words = try value.nonEmptyString().split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard let size = words.first.flatMap({ Int($0) }), size >= 1 else {
            throw value.error("queue: expected a number of requests first (queue: 100 timeout=30s)")
        }
        var policy = UpstreamQueuePolicy(size: size)
        for word in words.dropFirst() {
            guard word.hasPrefix("timeout="), let duration = ConfigDuration(parsing: String(word.dropFirst(8))),
                  duration.milliseconds > 0 else {
                throw value.error("queue: invalid parameter \"\(word)\" (timeout=30s)")
            }
            policy.timeout = .milliseconds(duration.milliseconds)
        }
        return policy
    }

    static func methodName(_ method: BalancingMethod) -> String {
        switch method {
        case .roundRobin: return "round_robin"
        case .ipHash: return "ip_hash"
        case .leastConn: return "least_conn"
        case .hash: return "hash"
        case .random: return "random"
        case .leastTime: return "least_time"
        case .leastQueue: return "least_queue"
        }
    }

    public static func register(_ groups: [BalancedGroup], into registrar: Registrar) throws {
        for group in groups { registrar.addUpstreamGroup(group) }
    }
}
