import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// How a group picks its peer.
public enum BalancingMethod: Sendable, Equatable {
    /// nginx's smooth weighted round robin (the default).
    case roundRobin
    /// nginx's `ip_hash`: the first three octets of an IPv4 client, the whole IPv6 address.
    case ipHash
    /// nginx's `least_conn`: the fewest requests in flight for its weight; ties by weighted round robin.
    case leastConn
}

/// An nginx `upstream` block: its servers, its method, and each server's live state (weights, failures,
/// connections), shared by every event loop under one lock.
public final class BalancedGroup: UpstreamGroup, @unchecked Sendable {
    /// One server's state, as nginx's `ngx_http_upstream_rr_peer_t` keeps it.
    struct Peer {
        let server: UpstreamServer
        var currentWeight = 0
        var effectiveWeight: Int
        var conns = 0
        var fails = 0
        /// Monotonic nanoseconds of the last failure, and of the last time its failures were checked.
        var accessed: UInt64 = 0
        var checked: UInt64 = 0

        init(_ server: UpstreamServer) {
            self.server = server
            effectiveWeight = server.weight
        }
    }

    public let name: String
    public let method: BalancingMethod
    public let servers: [UpstreamServer]
    /// `keepalive` (with `keepalive_timeout`, `keepalive_requests`): set once when the group is decoded, before any
    /// request can see it.
    public internal(set) var keepalive: UpstreamKeepalive?
    private let lock = NIOLock()
    // Guarded by `lock`.
    private var primary: [Peer]
    private var backup: [Peer]
    private let now: @Sendable () -> UInt64
    private let logger: Logger?

    public init(name: String, method: BalancingMethod, servers: [UpstreamServer], logger: Logger? = nil,
                now: @escaping @Sendable () -> UInt64 = { KernelClock.monotonicNanoseconds() }) {
        self.name = name
        self.method = method
        self.servers = servers
        primary = servers.filter { !$0.backup }.map(Peer.init)
        backup = servers.filter(\.backup).map(Peer.init)
        self.logger = logger
        self.now = now
    }

    public var peers: [PeerAddress] { servers.map(\.address) }

    /// nginx tries each server once at most (`proxy_next_upstream_tries 0`): primaries and backups.
    public var maxTries: Int { servers.count }

    public func begin(_ request: KernelRequest, excluding excluded: [PeerAddress]) -> PeerLease? {
        // One critical section picks and counts the connection, so `max_conns` holds across event loops.
        let picked: (backup: Bool, index: Int, address: PeerAddress)? = lock.withLock {
            let time = now()
            var choice: (backup: Bool, index: Int)?
            if method == .ipHash, let index = ipHashPick(request, excluding: excluded, at: time) {
                choice = (false, index)
            } else {
                let pick = method == .leastConn ? Self.leastConnPick : Self.roundRobinPick
                if let index = pick(&primary, excluded, time) {
                    choice = (false, index)
                } else if let index = pick(&backup, excluded, time) {
                    choice = (true, index)
                }
            }
            guard let choice else { return nil }
            if choice.backup {
                backup[choice.index].conns += 1
                return (true, choice.index, backup[choice.index].server.address)
            }
            primary[choice.index].conns += 1
            return (false, choice.index, primary[choice.index].server.address)
        }
        guard let picked else { return nil }
        let address = picked.address
        let slot = (backup: picked.backup, index: picked.index)
        return PeerLease(peer: address) { [self] outcome in finished(slot, outcome) }
    }

    /// Whether a peer may take a request now (nginx: not `down`, not failed within `fail_timeout`, under
    /// `max_conns`).
    private static func usable(_ peer: Peer, at time: UInt64) -> Bool {
        if peer.server.down { return false }
        if peer.server.maxFails > 0, peer.fails >= peer.server.maxFails,
           time &- peer.checked <= peer.server.failTimeoutNanoseconds {
            return false
        }
        if peer.server.maxConns > 0, peer.conns >= peer.server.maxConns { return false }
        return true
    }

    /// nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`): every usable peer gains its effective
    /// weight, the highest is chosen and loses the total. Weights 5, 1, 1 give a a b a c a a.
    static func roundRobinPick(_ peers: inout [Peer], excluding excluded: [PeerAddress], at time: UInt64) -> Int? {
        let candidates = peers.indices.filter { usable(peers[$0], at: time) && !excluded.contains(peers[$0].server.address) }
        return weightedPick(&peers, among: candidates, at: time)
    }

    /// nginx's `least_conn` (`ngx_http_upstream_get_least_conn_peer`): the usable peers with the fewest requests in
    /// flight for their weight (`conns / weight`, compared crosswise), and among those the smooth weighted round
    /// robin. The counts are right because a lease gives its connection back only when the body has ended.
    static func leastConnPick(_ peers: inout [Peer], excluding excluded: [PeerAddress], at time: UInt64) -> Int? {
        let candidates = peers.indices.filter { usable(peers[$0], at: time) && !excluded.contains(peers[$0].server.address) }
        guard let first = candidates.first else { return nil }
        var least = first
        for index in candidates.dropFirst()
        where peers[index].conns * peers[least].server.weight < peers[least].conns * peers[index].server.weight {
            least = index
        }
        let tied = candidates.filter {
            peers[$0].conns * peers[least].server.weight == peers[least].conns * peers[$0].server.weight
        }
        return weightedPick(&peers, among: tied, at: time)
    }

    private static func weightedPick(_ peers: inout [Peer], among candidates: [Int], at time: UInt64) -> Int? {
        var best: Int?
        var total = 0
        for index in candidates {
            peers[index].currentWeight += peers[index].effectiveWeight
            total += peers[index].effectiveWeight
            if peers[index].effectiveWeight < peers[index].server.weight { peers[index].effectiveWeight += 1 }
            if best == nil || peers[index].currentWeight > peers[best!].currentWeight { best = index }
        }
        guard let best else { return nil }
        peers[best].currentWeight -= total
        if time &- peers[best].checked > peers[best].server.failTimeoutNanoseconds { peers[best].checked = time }
        return best
    }

    /// nginx's `ip_hash` (`ngx_http_upstream_get_ip_hash_peer`): the hash walks the weights; a peer that cannot
    /// take the request is hashed past, and after 20 tries round robin decides.
    private func ipHashPick(_ request: KernelRequest, excluding excluded: [PeerAddress], at time: UInt64) -> Int? {
        guard let key = Self.ipHashKey(request.connection.remoteAddress), !primary.isEmpty else { return nil }
        let totalWeight = primary.reduce(0) { $0 + $1.server.weight }
        var hash = 89
        for _ in 0..<20 {
            for byte in key { hash = (hash &* 113 &+ Int(byte)) % 6271 }
            var weight = hash % totalWeight
            var index = 0
            while weight >= primary[index].server.weight {
                weight -= primary[index].server.weight
                index += 1
            }
            if Self.usable(primary[index], at: time), !excluded.contains(primary[index].server.address) {
                if time &- primary[index].checked > primary[index].server.failTimeoutNanoseconds { primary[index].checked = time }
                return index
            }
        }
        return nil
    }

    /// The bytes nginx hashes: three octets of IPv4, sixteen of IPv6; nil for other clients (unix sockets),
    /// which round robin serves.
    static func ipHashKey(_ address: SocketAddress?) -> [UInt8]? {
        guard let address else { return nil }
        switch address {
        case .v4(let v4):
            let value = UInt32(bigEndian: v4.address.sin_addr.s_addr)
            return [UInt8(value >> 24), UInt8((value >> 16) & 0xff), UInt8((value >> 8) & 0xff)]
        case .v6(let v6):
            return withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
        case .unixDomainSocket:
            return nil
        }
    }

    /// A lease ended: nginx's `ngx_http_upstream_free_round_robin_peer`.
    private func finished(_ picked: (backup: Bool, index: Int), _ outcome: PeerLeaseOutcome) {
        let disabled: PeerAddress? = lock.withLock {
            let time = now()
            var peer = picked.backup ? backup[picked.index] : primary[picked.index]
            peer.conns -= 1
            var disabled: PeerAddress?
            if outcome.isFailure {
                peer.fails += 1
                peer.accessed = time
                peer.checked = time
                if peer.server.maxFails > 0 {
                    peer.effectiveWeight -= peer.server.weight / peer.server.maxFails
                    if peer.fails >= peer.server.maxFails { disabled = peer.server.address }
                }
                if peer.effectiveWeight < 0 { peer.effectiveWeight = 0 }
            } else if peer.accessed < peer.checked {
                // A success after fail_timeout has passed since the last failure: the count starts again.
                peer.fails = 0
            }
            if picked.backup { backup[picked.index] = peer } else { primary[picked.index] = peer }
            return disabled
        }
        if let disabled {
            logger?.warning("upstream server temporarily disabled while connecting to upstream, upstream: \"\(disabled)\", group: \"\(name)\"")
        }
    }
}
