import NIOCore

/// An address a proxy connects to: `host:port` or a unix socket.
public enum PeerAddress: Sendable, Hashable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    /// Parses `127.0.0.1:6666`, `[::1]:6666`, `localhost:6666`, `unix:/run/app.sock`.
    public init?(parsing text: String) {
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
        }
    }
}

/// How a request went at a peer, reported back to the balancer (nginx's `free`, Envoy's outcome).
public enum PeerOutcome: Sendable {
    case success
    /// Connect error, timeout or invalid response: counts towards `max_fails`.
    case failure
}

/// A group of peers with a balancing method (an nginx `upstream` block), contributed by the balancing module.
public protocol UpstreamGroup: Sendable {
    var name: String { get }
    /// Picks a peer for a request, skipping `excluded` (peers already tried for it); nil when none is usable.
    func pick(for request: KernelRequest, excluding excluded: [PeerAddress]) -> PeerAddress?
    /// Tells the group how the request went at `peer`.
    func report(_ peer: PeerAddress, outcome: PeerOutcome)
    /// How many peers a request may try (nginx `proxy_next_upstream_tries`, at most the number of peers).
    var maxTries: Int { get }
}

/// A group of one fixed peer: what `uwsgi_pass 127.0.0.1:6666` means without an `upstream` block.
public struct SinglePeerGroup: UpstreamGroup {
    public let peer: PeerAddress
    public init(_ peer: PeerAddress) { self.peer = peer }
    public var name: String { peer.description }
    public var maxTries: Int { 1 }
    public func pick(for request: KernelRequest, excluding excluded: [PeerAddress]) -> PeerAddress? {
        excluded.contains(peer) ? nil : peer
    }
    public func report(_ peer: PeerAddress, outcome: PeerOutcome) {}
}
