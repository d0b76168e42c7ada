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

/// What a proxying handler tells the rest of the request path about its upstream: every peer tried, in order.
public struct UpstreamReport: Sendable {
    public var attempts: [UpstreamAttempt]
    /// The upstream group's name (`backend`), or the single address of a `*_pass` without a group.
    public var group: String

    public init(group: String, attempts: [UpstreamAttempt] = []) {
        self.group = group
        self.attempts = attempts
    }
}

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

    public init(request: KernelRequest, route: RouteInfo, status: Int, bodyBytesSent: Int, bytesSent: Int,
                startNanoseconds: UInt64, endNanoseconds: UInt64, upstream: UpstreamReport?) {
        self.request = request
        self.route = route
        self.status = status
        self.bodyBytesSent = bodyBytesSent
        self.bytesSent = bytesSent
        self.startNanoseconds = startNanoseconds
        self.endNanoseconds = endNanoseconds
        self.upstream = upstream
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
