import Atomics
import NIOCore

/// An address a proxy connects to: `host:port`, a unix socket, or `local`: this process's own worker side
/// (`--role both`), reached without a socket (`LocalPeer`).
public enum PeerAddress: Sendable, Hashable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)
    case local

    /// Parses `127.0.0.1:6666`, `[::1]:6666`, `localhost:6666`, `unix:/run/app.sock`, `local`.
    public init?(parsing text: String) {
        if text == "local" {
            self = .local
            return
        }
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { return nil }
            self = .unix(path: path)
            return
        }
        guard let (host, port) = ListenAddress.splitHostPort(text), let port, (1...65535).contains(port), !host.isEmpty else {
            return nil
        }
        self = .tcp(host: host, port: port)
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): return "unix:\(path)"
        case .local: return "local"
        }
    }
}

/// Why an attempt at a peer failed in a way that counts towards its `max_fails` (nginx's `NGX_PEER_FAILED`).
public enum PeerFailure: Sendable, Hashable {
    /// Connection refused or reset, unreachable, a broken pipe: nginx's `error`.
    case error
    /// Connect, send or read timeout: nginx's `timeout`.
    case timeout
    /// The answer could not be parsed: nginx's `invalid_header`.
    case invalidHeader
    /// The peer answered with a status that `*_next_upstream` names (`http_502`, ...), and the request went on to
    /// another peer.
    case status(Int)
}

/// How one attempt at a peer ended, told to the balancer once, when the response body has ended (or failed, or
/// the client left).
public struct PeerLeaseOutcome: Sendable {
    /// The status the peer answered with; nil when it gave none (connect error, timeout, invalid header).
    public var status: Int?
    /// Body bytes received from the peer.
    public var bytesReceived: Int64
    /// Nanoseconds from the start of the connect to the end of the attempt (its body's end, or its failure).
    public var durationNanoseconds: UInt64
    /// Set when the attempt failed in a way that counts towards `max_fails`; nil for a usable answer.
    public var failure: PeerFailure?
    /// Whether the client left before the body ended (not the peer's fault: no failure).
    public var clientClosed: Bool
    /// Nanoseconds from the start of the connect to the end of the answer's head; nil when no head arrived
    /// (what `least_time header` measures; `durationNanoseconds` is what `least_time last_byte` measures).
    public var headerNanoseconds: UInt64?
    /// The model queue depth the peer reported in its answer (`KernelQueueDepth.headerName`); nil when it
    /// reported none (what `least_queue` balances on).
    public var queueDepth: Int?
    /// What the attempt was doing when it failed, in nginx's words (`connecting to upstream`, `reading response
    /// header from upstream`, `reading upstream`): the end of the log line of a peer that the failure disables.
    public var failurePhase: String?

    public init(status: Int?, bytesReceived: Int64, durationNanoseconds: UInt64, failure: PeerFailure? = nil,
                clientClosed: Bool = false, headerNanoseconds: UInt64? = nil, queueDepth: Int? = nil,
                failurePhase: String? = nil) {
        self.status = status
        self.bytesReceived = bytesReceived
        self.durationNanoseconds = durationNanoseconds
        self.failure = failure
        self.clientClosed = clientClosed
        self.headerNanoseconds = headerNanoseconds
        self.queueDepth = queueDepth
        self.failurePhase = failurePhase
    }

    /// Whether the attempt counts towards the peer's `max_fails`.
    public var isFailure: Bool { failure != nil }
}

/// The response header in which a kernel worker reports its model queue depth (requests of the answering model
/// queued or running when the answer was made), for an edge's `least_queue` balancing. The edge strips it before
/// the client sees the response.
public enum KernelQueueDepth {
    public static let headerName = "X-Kernel-Queue-Depth"

    /// The depth a header value reports: a non-negative decimal number; nil for anything else.
    public static func parse(_ value: String?) -> Int? {
        guard let value, !value.isEmpty, value.utf8.count <= 18, value.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else {
            return nil
        }
        return Int(value)
    }
}

/// One attempt of one request at one peer, handed out by a group's balancer (nginx's `get`/`free` pair as one
/// object). The proxy calls `finish` exactly once per lease, when the response body has ended (or failed, or the
/// client left), so a balancer that counts active requests (`least_conn`) or measures response times sees each
/// attempt start and end once. A second `finish` is ignored.
public final class PeerLease: Sendable {
    /// The peer to connect to.
    public let peer: PeerAddress
    /// The peer as logs and `$upstream_addr` show it (`peer.description`), made once per peer by the group
    /// rather than once per attempt.
    public let address: String
    private let onFinish: @Sendable (PeerLeaseOutcome) -> Void
    /// An atomic flag rather than a lock: a lease is made per attempt, and a lock costs its own allocation and
    /// mutex set-up.
    private let finished = ManagedAtomic(false)

    /// `onFinish` is the balancer's bookkeeping; it runs once, on the thread that finishes the lease. `address`
    /// is `peer.description`, which a group that leases its peers often keeps made.
    public init(peer: PeerAddress, address: String? = nil, onFinish: @escaping @Sendable (PeerLeaseOutcome) -> Void = { _ in }) {
        self.peer = peer
        self.address = address ?? peer.description
        self.onFinish = onFinish
    }

    /// Ends the attempt with `outcome`.
    public func finish(_ outcome: PeerLeaseOutcome) {
        if !finished.exchange(true, ordering: .acquiringAndReleasing) { onFinish(outcome) }
    }

    /// Whether `finish` was called.
    public var isFinished: Bool { finished.load(ordering: .acquiring) }
}

/// A group of peers with a balancing method (an nginx `upstream` block), contributed by the balancing module.
public protocol UpstreamGroup: Sendable {
    var name: String { get }
    /// Every peer of the group, so that named ones are resolved when the configuration loads.
    var peers: [PeerAddress] { get }
    /// Leases a peer for one attempt of `request`, skipping `excluded` (peers already tried for it); nil when none
    /// is usable (nginx's "no live upstreams").
    func begin(_ request: KernelRequest, excluding excluded: [PeerAddress]) -> PeerLease?
    /// How many peers a request may try (nginx `proxy_next_upstream_tries`, at most the number of peers).
    var maxTries: Int { get }
    /// Leases a peer for one attempt, possibly later: a group with a `queue` waits for a peer under `max_conns`
    /// to free up. The future succeeds on `eventLoop` with nil when none is usable (or the wait timed out). The
    /// default answers at once with `begin`.
    func lease(_ request: KernelRequest, excluding excluded: [PeerAddress], on eventLoop: any EventLoop) -> EventLoopFuture<PeerLease?>
    /// Whether `lease` always answers at once with what `begin` answers: a proxy then calls `begin` itself and
    /// makes no future per attempt. The default is true; a group that implements `lease` with a wait says false.
    var leasesAtOnce: Bool { get }
    /// The group's idle connection pool (nginx's `keepalive` in an `upstream` block); nil keeps no connection
    /// open after an answer. The default is nil.
    var keepalive: UpstreamKeepalive? { get }
    /// The protocol the group's servers speak (`http`, `uwsgi`); nil when the group does not say, and any proxy
    /// handler may use it. A handler refuses a group that speaks another protocol when the configuration loads.
    var scheme: String? { get }
    /// What the group's `local` server dispatches to; nil when it has none. The default is nil.
    var localPeer: LocalPeer? { get }
    /// Each peer and whether the group would send it a request now (not `down`, not failed within
    /// `fail_timeout`, passing its health checks), for metrics (`kernel_upstream_peer_up`) and readiness (a
    /// group with no live peer makes the process not ready). The default counts every peer up.
    func peerStates() -> [UpstreamPeerState]
}

/// A peer of an upstream group as metrics and readiness see it.
public struct UpstreamPeerState: Sendable, Equatable {
    /// The peer as written (`127.0.0.1:6666`, `unix:/run/app.sock`, `local`).
    public var address: String
    /// Whether the group would send it a request now.
    public var up: Bool

    public init(address: String, up: Bool) {
        self.address = address
        self.up = up
    }
}

extension UpstreamGroup {
    public func lease(_ request: KernelRequest, excluding excluded: [PeerAddress], on eventLoop: any EventLoop) -> EventLoopFuture<PeerLease?> {
        eventLoop.makeSucceededFuture(begin(request, excluding: excluded))
    }

    public var leasesAtOnce: Bool { true }

    public var keepalive: UpstreamKeepalive? { nil }

    public var scheme: String? { nil }

    public var localPeer: LocalPeer? { nil }

    public func peerStates() -> [UpstreamPeerState] { peers.map { UpstreamPeerState(address: $0.description, up: true) } }
}

/// nginx's `keepalive`, `keepalive_timeout` and `keepalive_requests` of an `upstream` block: idle connections to
/// the group's peers kept for reuse by each event loop.
public struct UpstreamKeepalive: Sendable, Equatable {
    /// Idle connections kept per event loop (nginx's `keepalive N` is per worker process).
    public var connections: Int
    /// How long an idle connection is kept.
    public var timeout: TimeAmount
    /// Requests served over one connection before it is closed.
    public var requests: Int

    public init(connections: Int, timeout: TimeAmount, requests: Int) {
        self.connections = connections
        self.timeout = timeout
        self.requests = requests
    }
}

/// Sends one health-check request to a peer in a protocol's own wire format and reports the status it answered
/// with. Protocol modules register one per scheme (`Registrar.addUpstreamProber`); the balancing module's active
/// health checks use the one of their group's scheme.
public protocol UpstreamProber: Sendable {
    /// The status of `peer`'s answer to a `GET uri` (with `host` as its Host), or a failed future when it did not
    /// answer within `timeout` or the answer was not valid.
    func probe(_ peer: PeerAddress, uri: String, host: String, timeout: TimeAmount,
               on eventLoop: any EventLoop) -> EventLoopFuture<Int>
}

/// A group of one fixed peer: what `uwsgi_pass 127.0.0.1:6666` means without an `upstream` block.
public struct SinglePeerGroup: UpstreamGroup {
    public let peer: PeerAddress
    /// `peer.description`, made once.
    public let name: String
    public init(_ peer: PeerAddress) {
        self.peer = peer
        name = peer.description
    }
    public var peers: [PeerAddress] { [peer] }
    public var maxTries: Int { 1 }
    public func begin(_ request: KernelRequest, excluding excluded: [PeerAddress]) -> PeerLease? {
        excluded.contains(peer) ? nil : PeerLease(peer: peer, address: name)
    }
}
