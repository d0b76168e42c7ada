import KernelCore
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// When a failed attempt goes on to the next peer: nginx's `*_next_upstream`.
public struct NextUpstreamConditions: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let error = NextUpstreamConditions(rawValue: 1 << 0)
    public static let timeout = NextUpstreamConditions(rawValue: 1 << 1)
    public static let invalidHeader = NextUpstreamConditions(rawValue: 1 << 2)
    public static let http500 = NextUpstreamConditions(rawValue: 1 << 3)
    public static let http502 = NextUpstreamConditions(rawValue: 1 << 4)
    public static let http503 = NextUpstreamConditions(rawValue: 1 << 5)
    public static let http504 = NextUpstreamConditions(rawValue: 1 << 6)
    public static let http403 = NextUpstreamConditions(rawValue: 1 << 7)
    public static let http404 = NextUpstreamConditions(rawValue: 1 << 8)
    public static let http429 = NextUpstreamConditions(rawValue: 1 << 9)
    /// Retry POST, LOCK and PATCH too once they were sent (nginx does not by default).
    public static let nonIdempotent = NextUpstreamConditions(rawValue: 1 << 10)

    /// nginx's default: `error timeout`.
    public static let `default`: NextUpstreamConditions = [.error, .timeout]

    /// The words of nginx's directive, for configuration decoders: `off` is the empty set.
    public static let words: [String: NextUpstreamConditions] = [
        "error": .error, "timeout": .timeout, "invalid_header": .invalidHeader, "http_500": .http500,
        "http_502": .http502, "http_503": .http503, "http_504": .http504, "http_403": .http403,
        "http_404": .http404, "http_429": .http429, "non_idempotent": .nonIdempotent, "off": [],
    ]

    /// The condition a status answers to, if `*_next_upstream` can name it.
    public static func condition(forStatus status: Int) -> NextUpstreamConditions? {
        switch status {
        case 500: return .http500
        case 502: return .http502
        case 503: return .http503
        case 504: return .http504
        case 403: return .http403
        case 404: return .http404
        case 429: return .http429
        default: return nil
        }
    }
}

/// Everything the engine needs of a proxying location beside its protocol.
public struct UpstreamConfiguration: Sendable {
    /// The peers and their balancer (a single peer for `uwsgi_pass 127.0.0.1:6666`).
    public var group: any UpstreamGroup
    /// `*_connect_timeout`: the longest a connect may take.
    public var connectTimeout: TimeAmount
    /// `*_send_timeout`: the longest time without progress while the request is written.
    public var sendTimeout: TimeAmount
    /// `*_read_timeout`: the longest time between two reads of the answer.
    public var readTimeout: TimeAmount
    /// `*_next_upstream`.
    public var nextUpstream: NextUpstreamConditions
    /// `*_next_upstream_tries`: the most peers one request tries; 0 (nginx's default) limits it only by the
    /// group's peers (each once).
    public var nextUpstreamTries = 0
    /// `*_next_upstream_timeout`: no other peer is tried once this long has passed since the first attempt
    /// began; zero (nginx's default) sets no limit.
    public var nextUpstreamTimeout = TimeAmount.zero
    /// Where the current addresses of named peers come from: filled when the configuration loads, refreshed by
    /// `UpstreamResolverService`. The engine never resolves a name itself.
    public var resolver: any PeerAddressResolver

    public init(group: any UpstreamGroup, connectTimeout: TimeAmount = .seconds(60), sendTimeout: TimeAmount = .seconds(60),
                readTimeout: TimeAmount = .seconds(60), nextUpstream: NextUpstreamConditions = .default,
                resolver: any PeerAddressResolver = PeerAddressBook()) {
        self.group = group
        self.connectTimeout = connectTimeout
        self.sendTimeout = sendTimeout
        self.readTimeout = readTimeout
        self.nextUpstream = nextUpstream
        self.resolver = resolver
    }
}

/// Why one attempt at a peer failed, and what the client gets for it.
public enum UpstreamFailure: Error, Sendable {
    /// Connection refused, reset, unreachable, broken pipe: 502 (nginx's `error`).
    case error(String)
    /// Connect, send or read timeout: 504 (nginx's `timeout`).
    case timeout(String)
    /// An answer that could not be parsed: 502 (nginx's `invalid_header`).
    case invalidHeader(String)

    /// The client's answer when this was the last attempt.
    public var response: KernelResponse {
        switch self {
        case .error, .invalidHeader: return .error(502, "bad gateway")
        case .timeout: return .error(504, "gateway timeout")
        }
    }

    /// The log message, without the request's details.
    public var message: String {
        switch self {
        case .error(let text), .timeout(let text), .invalidHeader(let text): return text
        }
    }

    /// What the attempt was doing, from the message's `while ...` (a connect failure's message has none).
    public var phase: String {
        let bytes = Array(message.utf8), marker = Array(" while ".utf8)
        guard bytes.count >= marker.count else { return "connecting to upstream" }
        for start in stride(from: bytes.count - marker.count, through: 0, by: -1)
        where bytes[start..<(start + marker.count)].elementsEqual(marker) {
            return String(decoding: bytes[(start + marker.count)...], as: UTF8.self)
        }
        return "connecting to upstream"
    }

    /// What the balancer is told.
    public var peerFailure: PeerFailure {
        switch self {
        case .error: return .error
        case .timeout: return .timeout
        case .invalidHeader: return .invalidHeader
        }
    }

    /// The `*_next_upstream` condition it answers to.
    public var condition: NextUpstreamConditions {
        switch self {
        case .error: return .error
        case .timeout: return .timeout
        case .invalidHeader: return .invalidHeader
        }
    }

    /// A failed connect in nginx's words: `connect() failed (111: Connection refused)`, or a timeout.
    public static func connectFailure(_ error: any Error) -> UpstreamFailure {
        if let error = error as? ChannelError, case .connectTimeout = error {
            return .timeout("upstream timed out (110: Connection timed out)")
        }
        if let error = error as? NIOConnectionError, let first = error.connectionErrors.first {
            return connectFailure(first.error)
        }
        if let error = error as? IOError {
            return .error("connect() failed (\(describeErrno(error.errnoCode)))")
        }
        return .error("connect() failed (\(error))")
    }

    /// `111: Connection refused` for an `IOError`, the error itself otherwise.
    public static func describe(_ error: any Error) -> String {
        if let error = error as? IOError { return describeErrno(error.errnoCode) }
        return "\(error)"
    }
}


func describeErrno(_ code: CInt) -> String { "\(code): \(String(cString: strerror(code)))" }
