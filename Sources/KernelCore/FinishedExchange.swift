import Atomics

/// One try of a request at an upstream peer, as `$upstream_addr`, `$upstream_status` and
/// `$upstream_response_time` show it (one entry per peer tried, in order).
public struct UpstreamAttempt: Sendable {
    /// The peer as written (`127.0.0.1:6666`, `unix:/run/app.sock`).
    public var address: String
    /// The status the peer answered with; nil when it gave none (connect error, timeout, invalid header).
    public var status: Int?
    /// Seconds from the start of the connect to the end of the response (or of the failure).
    public var responseTime: Double
    /// Seconds until the connection was established (`$upstream_connect_time`); nil when it never was.
    public var connectTime: Double?
    /// Seconds until the response head was read (`$upstream_header_time`); nil when it never was.
    public var headerTime: Double?

    public init(address: String, status: Int?, responseTime: Double, connectTime: Double? = nil,
                headerTime: Double? = nil) {
        self.address = address
        self.status = status
        self.responseTime = responseTime
        self.connectTime = connectTime
        self.headerTime = headerTime
    }
}

/// When the body of a streamed upstream answer ended: the answer is handed to the client at its head, so the
/// answering attempt's response time is known only later. The upstream engine marks the end on the event loop
/// the body arrives on; observers read it after the response has been written.
public final class UpstreamBodyTiming: Sendable {
    /// Monotonic nanoseconds (`KernelClock`) when the attempt began connecting.
    public let startNanoseconds: UInt64
    private let end = ManagedAtomic<UInt64>(0)

    public init(startNanoseconds: UInt64) { self.startNanoseconds = startNanoseconds }

    /// Records the body's end (its last byte, or the moment it failed or was cancelled); only the first call counts.
    public func markEnd(at nanoseconds: UInt64 = KernelClock.monotonicNanoseconds()) {
        _ = end.compareExchange(expected: 0, desired: max(nanoseconds, 1), ordering: .relaxed)
    }

    /// Seconds from the start to the body's end; nil while the body is still arriving.
    public var responseTime: Double? {
        let end = end.load(ordering: .relaxed)
        return end == 0 ? nil : Double(end &- startNanoseconds) / 1e9
    }
}

/// What a proxying handler tells the rest of the request path about its upstream: every peer tried, in order.
public struct UpstreamReport: Sendable {
    public var attempts: [UpstreamAttempt]
    /// The upstream group's name (`backend`), or the single address of a `*_pass` without a group.
    public var group: String
    /// The end of the answering (last) attempt's body, when the answer was streamed.
    public var bodyTiming: UpstreamBodyTiming?

    public init(group: String, attempts: [UpstreamAttempt] = [], bodyTiming: UpstreamBodyTiming? = nil) {
        self.group = group
        self.attempts = attempts
        self.bodyTiming = bodyTiming
    }

    /// The attempts with the answering one's response time running to the end of its body once that is known
    /// (`$upstream_response_time` counts the whole answer, as nginx's does).
    public var finalAttempts: [UpstreamAttempt] {
        guard let time = bodyTiming?.responseTime, !attempts.isEmpty else { return attempts }
        var attempts = attempts
        attempts[attempts.count - 1].responseTime = time
        return attempts
    }
}

/// What a handler tells the access log about how it made a response, beyond upstream peers: the variables its
/// module registers read it (the inference module's `$inference_queue_time`). It travels from the response to the
/// finished exchange as the upstream report does. A class, so that a response carries one reference.
public protocol HandlerReport: AnyObject, Sendable {}

/// A finished exchange, as request-finish observers (the access log, metrics, stats) see it.
public struct FinishedExchange: Sendable {
    public var request: KernelRequest
    public var route: RouteInfo
    /// The status sent, or 499 when the client closed the connection before its response was written.
    public var status: Int
    /// Bytes of the response body sent (`$body_bytes_sent`).
    public var bodyBytesSent: Int
    /// Bytes sent in all, head included (`$bytes_sent`).
    public var bytesSent: Int
    /// Monotonic nanoseconds (`KernelClock`) when the head was routed, and when the exchange finished.
    public var startNanoseconds: UInt64
    public var endNanoseconds: UInt64
    /// The upstream the response came from, when a proxying handler made it.
    public var upstream: UpstreamReport?
    /// The response's handler report, when its handler made one.
    public var handlerReport: (any HandlerReport)?

    public init(request: KernelRequest, route: RouteInfo, status: Int, bodyBytesSent: Int, bytesSent: Int,
                startNanoseconds: UInt64, endNanoseconds: UInt64, upstream: UpstreamReport?,
                handlerReport: (any HandlerReport)? = nil) {
        self.request = request
        self.route = route
        self.status = status
        self.bodyBytesSent = bodyBytesSent
        self.bytesSent = bytesSent
        self.startNanoseconds = startNanoseconds
        self.endNanoseconds = endNanoseconds
        self.upstream = upstream
        self.handlerReport = handlerReport
    }

    /// Seconds from routing to finish (`$request_time`).
    public var requestTime: Double { Double(endNanoseconds &- startNanoseconds) / 1e9 }
}

/// Sees every finished exchange of the locations it is attached to: the access log is one, metrics and stats are
/// others. Called on the connection's event loop once the response has been written (or the client left), so it
/// must not block.
public protocol RequestFinishObserver: Sendable {
    func exchangeFinished(_ exchange: FinishedExchange)
}
