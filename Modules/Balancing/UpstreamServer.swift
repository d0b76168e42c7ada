import KernelConfig
import KernelCore
import NIOCore

/// One `server` line of an upstream group, as nginx writes it: `127.0.0.1:8001 weight=5 max_fails=3
/// fail_timeout=10s max_conns=100 slow_start=30s backup down`.
public struct UpstreamServer: Sendable, Equatable {
    public var address: PeerAddress
    public var weight = 1
    /// Failures within `failTimeout` that mark the server unavailable for `failTimeout`; 0 never marks it.
    public var maxFails = 1
    public var failTimeoutNanoseconds: UInt64 = 10_000_000_000
    /// Requests at once; 0 is no limit.
    public var maxConns = 0
    public var backup = false
    public var down = false
    /// nginx's `resolve`: the host name is looked up with the group's `resolver` and each address it has is a peer
    /// with this line's parameters, added and removed as the answers change.
    public var resolve = false
    /// nginx Plus's `slow_start`: nanoseconds over which a server back from being unavailable (or new) ramps its
    /// weight from zero to `weight`; 0 is off.
    public var slowStartNanoseconds: UInt64 = 0

    public init(address: PeerAddress) { self.address = address }

    /// Parses the nginx line form.
    static func decode(_ value: ConfigValue) throws -> UpstreamServer {
        let text = try value.nonEmptyString()
        let words = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard let first = words.first, let address = PeerAddress(parsing: first) else {
            throw value.error("upstream server: expected host:port or unix:/path first, found \"\(text)\"")
        }
        var server = UpstreamServer(address: address)
        for word in words.dropFirst() {
            let parts = word.split(separator: "=", maxSplits: 1).map(String.init)
            switch (parts[0], parts.count == 2 ? parts[1] : nil) {
            case ("weight", let number?):
                guard let weight = Int(number), weight >= 1, weight <= 1_000_000 else {
                    throw value.error("upstream server: invalid weight \"\(number)\" (1 or more)")
                }
                server.weight = weight
            case ("max_fails", let number?):
                guard let fails = Int(number), fails >= 0 else { throw value.error("upstream server: invalid max_fails \"\(number)\"") }
                server.maxFails = fails
            case ("fail_timeout", let time?):
                guard let duration = ConfigDuration(parsing: time) else {
                    throw value.error("upstream server: invalid fail_timeout \"\(time)\"")
                }
                server.failTimeoutNanoseconds = UInt64(max(duration.milliseconds, 0)) * 1_000_000
            case ("max_conns", let number?):
                guard let conns = Int(number), conns >= 0 else { throw value.error("upstream server: invalid max_conns \"\(number)\"") }
                server.maxConns = conns
            case ("slow_start", let time?):
                guard let duration = ConfigDuration(parsing: time), duration.milliseconds >= 0 else {
                    throw value.error("upstream server: invalid slow_start \"\(time)\"")
                }
                server.slowStartNanoseconds = UInt64(duration.milliseconds) * 1_000_000
            case ("backup", nil):
                server.backup = true
            case ("down", nil):
                server.down = true
            case ("resolve", nil):
                guard case .tcp(let host, _) = address else {
                    throw value.error("upstream server: resolve needs a host name, not a unix socket")
                }
                // An IP address needs no lookup: the parameter is then a no-op, as in nginx.
                server.resolve = (try? SocketAddress(ipAddress: host, port: 0)) == nil
            default:
                throw value.error("upstream server: unknown parameter \"\(word)\" (weight=, max_fails=, fail_timeout=, max_conns=, slow_start=, backup, down, resolve)")
            }
        }
        return server
    }
}
