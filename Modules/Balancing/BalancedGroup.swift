import CoreMetrics
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
    /// nginx's `hash KEY [consistent]`: the rendered key picks the peer; `consistent` is ketama's ring.
    case hash(HashKey, consistent: Bool)
    /// nginx's `random [two [least_conn]]`: a weighted random peer, or the less loaded of two.
    case random(two: Bool)
    /// nginx Plus's `least_time header|last_byte [inflight]`: the lowest average response time for the load and
    /// weight.
    case leastTime(LeastTimeMeasure, inflight: Bool)
    /// `least_queue`: the lower reported model queue depth of two random peers.
    case leastQueue

    /// Whether the method may have `backup` servers: nginx refuses them with hash, ip_hash and random, whose
    /// peers are chosen by a map a backup has no place in.
    public var allowsBackup: Bool {
        switch self {
        case .roundRobin, .leastConn, .leastTime: return true
        case .ipHash, .hash, .random, .leastQueue: return false
        }
    }

    /// Whether the method may ramp weights with `slow_start` (nginx Plus: not with hash, ip_hash and random).
    public var allowsSlowStart: Bool { allowsBackup }
}

/// An nginx `upstream` block: its servers, its method, and each server's live state (weights, failures,
/// connections, response times, reported queue depths), shared by every event loop under one lock.
///
/// The methods live in their own files as extensions (`HashBalancing.swift`, `RandomBalancing.swift`,
/// `LeastTimeBalancing.swift`, `LeastQueueBalancing.swift`); the `queue` of waiting requests in
/// `UpstreamQueue.swift`, `slow_start` in `SlowStart.swift`.
public final class BalancedGroup: UpstreamGroup, @unchecked Sendable {
    /// One server's state, as nginx's `ngx_http_upstream_rr_peer_t` keeps it, plus what nginx Plus's methods and
    /// `least_queue` measure.
    struct Peer {
        let server: UpstreamServer
        /// `server.address` as text, for the leases (`PeerLease.address`): made once, not per attempt.
        let address: String
        var currentWeight = 0
        var effectiveWeight: Int
        var conns = 0
        var fails = 0
        /// Monotonic nanoseconds of the last failure, and of the last time its failures were checked.
        var accessed: UInt64 = 0
        var checked: UInt64 = 0
        /// Membership and active health checks (GroupMembership.swift, HealthCheck.swift): the index in `servers`
        /// of the `resolve` line this peer is an address of, whether the name stopped having this address (the
        /// slot stays, so that leases in flight finish on it), and whether it passes its health checks.
        var resolvedFrom: Int?
        var removed = false
        var passesHealthChecks = true
        /// `slow_start`: when the weight ramp began (the end of the unavailable period); nil when none.
        var rampStart: UInt64?
        /// `least_time`: the moving average of the measured time, nil before the first sample.
        var averageNanoseconds: Double?
        /// `least_time inflight`: the sum of the start times of the leases in flight (wrapping; only the
        /// difference to `conns × now` is read).
        var inflightStarts: UInt64 = 0
        /// `least_queue`: the depth the peer last reported, when, how many reports it made (so a lease knows
        /// whether it started after the last one), and how many leases started since it.
        var reportedDepth = 0
        var reportedAt: UInt64 = 0
        var reports = 0
        var startedSinceReport = 0

        init(_ server: UpstreamServer) {
            self.server = server
            address = server.address.description
            effectiveWeight = server.weight
        }

        /// Whether membership and health checks let the peer take requests (every method asks `usable`).
        var inService: Bool { !removed && passesHealthChecks }
    }

    /// Where a lease's peer is and what it must undo when it ends.
    struct Slot {
        var backup: Bool
        var index: Int
        var started: UInt64
        var reports: Int
    }

    public let name: String
    public let method: BalancingMethod
    public let servers: [UpstreamServer]
    /// `keepalive` (with `keepalive_timeout`, `keepalive_requests`): set once when the group is decoded, before any
    /// request can see it.
    public internal(set) var keepalive: UpstreamKeepalive?
    /// The worker side a `local` server dispatches to (`--role both`); set once when the group is decoded.
    public internal(set) var localPeer: LocalPeer?
    /// The group's `protocol:` (`http`, `uwsgi`), nil when it does not say.
    public let scheme: String?
    /// Whether active health checks decide which peers are usable: peers then start out of service until they
    /// pass (nginx Plus's `mandatory`).
    public let healthChecked: Bool
    /// nginx Plus's `queue N timeout=T`; nil answers at once when no peer is usable.
    public let queue: UpstreamQueuePolicy?
    let lock = NIOLock()
    // Guarded by `lock`. The arrays are replaced whole (with `ring`, which is derived from `primary`) when the
    // membership changes.
    var primary: [Peer] = []
    var backup: [Peer] = []
    /// `hash ... consistent`: the points of `primary`'s servers.
    var ring = ConsistentHashRing(servers: [])
    /// `queue`: the requests waiting for a peer, oldest first.
    var waiters = CircularBuffer<UpstreamWaiter>()
    var nextWaiterID: UInt64 = 0
    let now: @Sendable () -> UInt64
    /// Uniform random 64-bit values (`random`, `least_queue`); injected by tests.
    let random: @Sendable () -> UInt64
    let logger: Logger?

    public init(name: String, method: BalancingMethod, servers: [UpstreamServer], queue: UpstreamQueuePolicy? = nil,
                scheme: String? = nil, healthChecked: Bool = false, logger: Logger? = nil,
                now: @escaping @Sendable () -> UInt64 = { KernelClock.monotonicNanoseconds() },
                random: @escaping @Sendable () -> UInt64 = { UInt64.random(in: .min ... .max) }) {
        self.name = name
        self.method = method
        self.servers = servers
        self.queue = queue
        self.scheme = scheme
        self.healthChecked = healthChecked
        self.logger = logger
        self.now = now
        self.random = random
        // A `resolve` line has no peer until its name is resolved (`replaceResolvedPeers`).
        let fixed = servers.filter { !$0.resolve }.map { server -> Peer in
            var peer = Peer(server)
            // A `local` server is never probed (the process itself): it counts as passing.
            peer.passesHealthChecks = !healthChecked || server.address == .local
            return peer
        }
        replacePeers(primary: fixed.filter { !$0.server.backup }, backup: fixed.filter(\.server.backup))
        // Each peer's failure counter exists from the start, at 0, so that a rate over it is defined.
        for peer in fixed { _ = Self.failureCounter(group: name, peer: peer.server.address) }
    }

    /// `kernel_upstream_peer_failures_total{upstream,peer}`: attempts that counted towards the peer's `max_fails`.
    static func failureCounter(group: String, peer: PeerAddress) -> Counter {
        Counter(label: "kernel_upstream_peer_failures_total", dimensions: [("upstream", group), ("peer", peer.description)])
    }

    /// Each peer the group has now and whether a request could go to it (what `usable` asks, but `max_conns`:
    /// a busy peer is up).
    public func peerStates() -> [UpstreamPeerState] {
        lock.withLock {
            let time = now()
            return (primary + backup).filter { !$0.removed }.map { peer in
                UpstreamPeerState(address: peer.server.address.description,
                                  up: !peer.server.down && peer.inService && !Self.failed(peer, at: time))
            }
        }
    }

    /// Installs new peer arrays and what is derived from them. Called with `lock` held (or before the group is
    /// shared).
    func replacePeers(primary: [Peer], backup: [Peer]) {
        self.primary = primary
        self.backup = backup
        if case .hash(_, consistent: true) = method { ring = ConsistentHashRing(servers: primary.filter { !$0.removed }.map(\.server)) }
    }

    /// The peers the group has now: its fixed servers and the current addresses of its `resolve` lines.
    public var peers: [PeerAddress] {
        lock.withLock { (primary + backup).filter { !$0.removed }.map(\.server.address) }
    }

    /// nginx tries each server once at most (`proxy_next_upstream_tries 0`): primaries and backups.
    public var maxTries: Int {
        guard servers.contains(where: \.resolve) else { return servers.count }
        return lock.withLock { primary.count(where: { !$0.removed }) + backup.count(where: { !$0.removed }) }
    }

    /// Makes the peers of the `resolve` line `server` the given addresses (its name's current answer): new
    /// addresses become peers with the line's parameters, addresses no longer there leave the group. A removed
    /// peer's requests in flight finish normally; their leases end on the peer's kept slot.
    @discardableResult
    public func replaceResolvedPeers(of server: UpstreamServer, with addresses: [PeerAddress]) -> PeerMembershipChange {
        guard let line = servers.firstIndex(of: server), server.resolve else { return PeerMembershipChange() }
        return lock.withLock {
            var primary = self.primary
            var backup = self.backup
            let change = server.backup
                ? GroupMembership.replace(line: line, template: server, addresses: addresses, in: &backup,
                                          healthChecked: healthChecked, at: now())
                : GroupMembership.replace(line: line, template: server, addresses: addresses, in: &primary,
                                          healthChecked: healthChecked, at: now())
            // Through `replacePeers`, so that what is derived from the peers (the consistent-hash ring) follows.
            replacePeers(primary: primary, backup: backup)
            return change
        }
    }

    /// Sets whether the peer at `address` passes its active health checks (a no-op for an address the group no
    /// longer has).
    public func setPassesHealthChecks(_ passes: Bool, peer address: PeerAddress) {
        lock.withLock {
            for index in primary.indices where primary[index].server.address == address { primary[index].passesHealthChecks = passes }
            for index in backup.indices where backup[index].server.address == address { backup[index].passesHealthChecks = passes }
        }
    }

    public func begin(_ request: KernelRequest, excluding excluded: [PeerAddress]) -> PeerLease? {
        let key = hashKey(of: request)
        // One critical section picks and counts the connection, so `max_conns` holds across event loops.
        return lock.withLock { pickLocked(request, key: key, excluding: excluded, at: now()) }
    }

    /// The bytes `hash` hashes for `request`; nil for the other methods.
    func hashKey(of request: KernelRequest) -> [UInt8]? {
        guard case .hash(let key, _) = method else { return nil }
        return key.render(request)
    }

    /// Picks a peer, counts its connection and makes its lease. Called with `lock` held.
    func pickLocked(_ request: KernelRequest, key: [UInt8]?, excluding excluded: [PeerAddress], at time: UInt64) -> PeerLease? {
        var choice: (backup: Bool, index: Int)?
        if let index = primaryPick(request, key: key, excluding: excluded, at: time) {
            choice = (false, index)
        } else if !backup.isEmpty, let index = backupPick(excluding: excluded, at: time) {
            choice = (true, index)
        }
        guard let choice else { return nil }
        let slot: Slot
        let address: PeerAddress
        let text: String
        if choice.backup {
            backup[choice.index].conns += 1
            backup[choice.index].inflightStarts &+= time
            address = backup[choice.index].server.address
            text = backup[choice.index].address
            slot = Slot(backup: true, index: choice.index, started: time, reports: backup[choice.index].reports)
        } else {
            primary[choice.index].conns += 1
            primary[choice.index].inflightStarts &+= time
            primary[choice.index].startedSinceReport += 1
            address = primary[choice.index].server.address
            text = primary[choice.index].address
            slot = Slot(backup: false, index: choice.index, started: time, reports: primary[choice.index].reports)
        }
        return PeerLease(peer: address, address: text) { [self] outcome in finished(slot, outcome) }
    }

    /// The method's choice among the primary servers. The hashing and random methods fall back to round robin as
    /// nginx's do (after 20 tries, for an empty key, with fewer than two servers).
    private func primaryPick(_ request: KernelRequest, key: [UInt8]?, excluding excluded: [PeerAddress], at time: UInt64) -> Int? {
        switch method {
        case .roundRobin:
            return Self.roundRobinPick(&primary, excluding: excluded, at: time)
        case .leastConn:
            return Self.leastConnPick(&primary, excluding: excluded, at: time)
        case .ipHash:
            return ipHashPick(request, excluding: excluded, at: time) ?? Self.roundRobinPick(&primary, excluding: excluded, at: time)
        case .hash(_, let consistent):
            let picked = consistent ? consistentHashPick(key ?? [], excluding: excluded, at: time)
                                    : hashPick(key ?? [], excluding: excluded, at: time)
            return picked ?? Self.roundRobinPick(&primary, excluding: excluded, at: time)
        case .random(let two):
            return randomPick(two: two, excluding: excluded, at: time) ?? Self.roundRobinPick(&primary, excluding: excluded, at: time)
        case .leastTime(_, let inflight):
            return Self.leastTimePick(&primary, inflight: inflight, excluding: excluded, at: time)
        case .leastQueue:
            return leastQueuePick(excluding: excluded, at: time) ?? Self.roundRobinPick(&primary, excluding: excluded, at: time)
        }
    }

    /// The method's choice among the backup servers, once no primary is usable.
    private func backupPick(excluding excluded: [PeerAddress], at time: UInt64) -> Int? {
        switch method {
        case .leastConn: return Self.leastConnPick(&backup, excluding: excluded, at: time)
        case .leastTime(_, let inflight): return Self.leastTimePick(&backup, inflight: inflight, excluding: excluded, at: time)
        default: return Self.roundRobinPick(&backup, excluding: excluded, at: time)
        }
    }

    /// Whether a peer is marked unavailable by its failures (nginx: `max_fails` within `fail_timeout`).
    static func failed(_ peer: Peer, at time: UInt64) -> Bool {
        peer.server.maxFails > 0 && peer.fails >= peer.server.maxFails && time &- peer.checked <= peer.server.failTimeoutNanoseconds
    }

    /// Whether a peer may take a request now (nginx: not `down`, not failed within `fail_timeout`, under
    /// `max_conns`).
    static func usable(_ peer: Peer, at time: UInt64) -> Bool {
        if peer.server.down || !peer.inService || failed(peer, at: time) { return false }
        if peer.server.maxConns > 0, peer.conns >= peer.server.maxConns { return false }
        return true
    }

    /// The usable peers not yet tried, in order.
    static func candidates(_ peers: [Peer], excluding excluded: [PeerAddress], at time: UInt64) -> [Int] {
        peers.indices.filter { usable(peers[$0], at: time) && !excluded.contains(peers[$0].server.address) }
    }

    /// A chosen peer starts a new `fail_timeout` window for its failures (nginx's `checked`).
    static func markChecked(_ peer: inout Peer, at time: UInt64) {
        if time &- peer.checked > peer.server.failTimeoutNanoseconds { peer.checked = time }
    }

    /// nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`): every usable peer gains its effective
    /// weight, the highest is chosen and loses the total. Weights 5, 1, 1 give a a b a c a a.
    static func roundRobinPick(_ peers: inout [Peer], excluding excluded: [PeerAddress], at time: UInt64) -> Int? {
        weightedPick(&peers, among: candidates(peers, excluding: excluded, at: time), at: time)
    }

    /// nginx's `least_conn` (`ngx_http_upstream_get_least_conn_peer`): the usable peers with the fewest requests in
    /// flight for their weight (`conns / weight`, compared crosswise), and among those the smooth weighted round
    /// robin. The counts are right because a lease gives its connection back only when the body has ended.
    static func leastConnPick(_ peers: inout [Peer], excluding excluded: [PeerAddress], at time: UInt64) -> Int? {
        let candidates = candidates(peers, excluding: excluded, at: time)
        guard let first = candidates.first else { return nil }
        // Weights in slow start count at their ramped value.
        let weights = Dictionary(uniqueKeysWithValues: candidates.map { ($0, peers[$0].server.weight * slowStartPermille(peers[$0], at: time)) })
        var least = first
        for index in candidates.dropFirst()
        where peers[index].conns * weights[least]! < peers[least].conns * weights[index]! {
            least = index
        }
        let tied = candidates.filter { peers[$0].conns * weights[least]! == peers[least].conns * weights[$0]! }
        return weightedPick(&peers, among: tied, at: time)
    }

    /// The smooth weighted round robin among `candidates`. Weights count in thousandths so that a peer in
    /// `slow_start` adds the ramped share of its weight; scaling every weight alike leaves nginx's sequence as it is.
    static func weightedPick(_ peers: inout [Peer], among candidates: [Int], at time: UInt64) -> Int? {
        var best: Int?
        var total = 0
        for index in candidates {
            let share = peers[index].effectiveWeight * slowStartPermille(peers[index], at: time)
            peers[index].currentWeight += share
            total += share
            if peers[index].effectiveWeight < peers[index].server.weight { peers[index].effectiveWeight += 1 }
            if best == nil || peers[index].currentWeight > peers[best!].currentWeight { best = index }
        }
        guard let best else { return nil }
        peers[best].currentWeight -= total
        markChecked(&peers[best], at: time)
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
            let index = Self.peerIndex(atWeight: hash % totalWeight, of: primary)
            if Self.usable(primary[index], at: time), !excluded.contains(primary[index].server.address) {
                Self.markChecked(&primary[index], at: time)
                return index
            }
        }
        return nil
    }

    /// The peer whose share of the summed weights holds `point` (the walk nginx's hashing methods make).
    static func peerIndex(atWeight point: Int, of peers: [Peer]) -> Int {
        var weight = point
        var index = 0
        while weight >= peers[index].server.weight {
            weight -= peers[index].server.weight
            index += 1
        }
        return index
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

    /// nginx's `peers->single`: the one primary server of a group without backup servers, never marked unavailable
    /// by its failures (its max_fails and fail_timeout are ignored), since there is nothing else to send to. Peers a
    /// re-resolution removed (still draining) do not count. Under the lock; asked only for a failure.
    private func isSinglePeer(_ slot: Slot) -> Bool {
        !slot.backup && backup.allSatisfy(\.removed) && primary.lazy.filter { !$0.removed }.count == 1
    }

    /// A lease ended: nginx's `ngx_http_upstream_free_round_robin_peer`, plus the measurements of `least_time`
    /// and `least_queue`; a freed slot goes to the oldest waiting request that can use it.
    private func finished(_ slot: Slot, _ outcome: PeerLeaseOutcome) {
        let (disabled, served): (PeerAddress?, [(UpstreamWaiter, PeerLease)]) = lock.withLock {
            let time = now()
            // A membership change may have replaced the arrays since the lease began.
            guard slot.index < (slot.backup ? backup.count : primary.count) else { return (nil, serveWaiters(at: time)) }
            var peer = slot.backup ? backup[slot.index] : primary[slot.index]
            peer.conns -= 1
            peer.inflightStarts &-= slot.started
            var disabled: PeerAddress?
            if outcome.isFailure {
                Self.failureCounter(group: name, peer: peer.server.address).increment()
            }
            if outcome.isFailure, !isSinglePeer(slot) {
                peer.fails += 1
                peer.accessed = time
                peer.checked = time
                if peer.server.maxFails > 0 {
                    peer.effectiveWeight -= peer.server.weight / peer.server.maxFails
                    if peer.fails >= peer.server.maxFails {
                        disabled = peer.server.address
                        // Back after fail_timeout, its weight then ramps up over slow_start.
                        Self.scheduleSlowStart(&peer, at: time &+ peer.server.failTimeoutNanoseconds)
                    }
                }
                if peer.effectiveWeight < 0 { peer.effectiveWeight = 0 }
            } else if !outcome.isFailure, peer.accessed < peer.checked {
                // A success after fail_timeout has passed since the last failure: the count starts again.
                peer.fails = 0
            }
            if case .leastTime(let measure, _) = method { Self.recordTime(outcome, measure: measure, into: &peer) }
            Self.recordQueueDepth(outcome, lease: slot, into: &peer, at: time)
            if slot.backup { backup[slot.index] = peer } else { primary[slot.index] = peer }
            return (disabled, serveWaiters(at: time))
        }
        if let disabled {
            let phase = outcome.failurePhase ?? "connecting to upstream"
            logger?.warning("upstream server temporarily disabled while \(phase), upstream: \"\(disabled)\", group: \"\(name)\"")
        }
        deliver(served)
    }
}
