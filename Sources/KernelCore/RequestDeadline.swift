import KernelConfig
import Logging
import NIOCore

/// How long a proxied request may take, as a location says: its own `request_timeout`, or a limit the client asks
/// for in a header (`request_timeout_header`), capped. The result is an absolute deadline on this process's clock,
/// taken when the location's handler starts (after a buffered body has arrived, as Envoy's route timeout starts at
/// the end of the request), which the proxying handler answers 504 at and forwards to the upstream as time left
/// (`ForwardedDeadline`).
public struct RequestDeadlinePolicy: Sendable, Equatable {
    /// A request header through which a client sets its own limit, and the largest limit it may set.
    public struct ClientHeader: Sendable, Equatable {
        /// The header's name (`X-Request-Timeout`); its value is a duration in nginx's units (`500ms`, `2s`, a bare
        /// number is seconds).
        public var name: String
        /// A client's limit above this is lowered to it.
        public var max: TimeAmount

        public init(name: String, max: TimeAmount) {
            self.name = name
            self.max = max
        }
    }

    /// `request_timeout`: the location's limit; nil when it has none.
    public var timeout: TimeAmount?
    /// `request_timeout_header`: nil when clients may not set a limit.
    public var clientHeader: ClientHeader?

    public init(timeout: TimeAmount? = nil, clientHeader: ClientHeader? = nil) {
        self.timeout = timeout
        self.clientHeader = clientHeader
    }

    /// No limit: the upstream's own timeouts alone apply.
    public static let none = RequestDeadlinePolicy()

    /// Whether any request of the location can have a deadline.
    public var isEnabled: Bool { timeout != nil || clientHeader != nil }

    /// The limit for `request`: the client's header where allowed, valid and above zero (at most `max`), else
    /// the location's `request_timeout`. An unusable header is ignored with an info line naming it.
    public func limit(for request: KernelRequest, logger: Logger? = nil) -> TimeAmount? {
        guard let clientHeader, let text = request.headers[clientHeader.name] else { return timeout }
        guard let asked = ConfigDuration(parsing: text), asked.milliseconds > 0 else {
            logger?.info("client sent invalid \"\(clientHeader.name)\" header: \"\(text)\", ignored, client: \(request.connection.remoteIP), request: \"\(request.requestLine)\"")
            return timeout
        }
        // At most 365 days (ConfigDuration.maximum): always within TimeAmount.
        return min(.milliseconds(asked.milliseconds), clientHeader.max)
    }

    /// The absolute deadline of `request` if its handler starts at `now`; nil when it has no limit.
    public func deadline(for request: KernelRequest, now: NIODeadline = .now(), logger: Logger? = nil) -> NIODeadline? {
        limit(for: request, logger: logger).map { now + $0 }
    }

    /// The location keys `request_timeout: 30s` and `request_timeout_header: {name: X-Request-Timeout, max: 1m}`
    /// (`max` defaults to `request_timeout`, and one of them is required), read from a proxying location's mapping.
    public static func decode(from location: ConfigMapping) throws -> RequestDeadlinePolicy {
        var policy = RequestDeadlinePolicy()
        if let value = location.optional("request_timeout") {
            let duration = try value.duration()
            guard duration.milliseconds > 0 else { throw value.expected("a duration above zero") }
            policy.timeout = .milliseconds(duration.milliseconds)
        }
        if let value = location.optional("request_timeout_header") {
            let fields = try value.mapping()
            let nameValue = try fields.required("name")
            let name = try nameValue.nonEmptyString()
            guard HTTPToken.isToken(name) else { throw nameValue.expected("a header name") }
            let max: TimeAmount
            if let maxValue = fields.optional("max") {
                let duration = try maxValue.duration()
                guard duration.milliseconds > 0 else { throw maxValue.expected("a duration above zero") }
                max = .milliseconds(duration.milliseconds)
            } else if let timeout = policy.timeout {
                max = timeout
            } else {
                throw value.error("request_timeout_header needs \"max\" when the location has no request_timeout")
            }
            try fields.finish()
            policy.clientHeader = ClientHeader(name: name, max: max)
        }
        return policy
    }
}

/// A deadline as it travels from an edge to a worker: the milliseconds left, in the request header
/// `X-Kernel-Timeout-Ms` (over uwsgi the `HTTP_X_KERNEL_TIMEOUT_MS` variable, which a kernel worker reads back as
/// that header, and a WSGI app finds in its environ). Time left, not a point in time, because the two machines'
/// clocks need not agree; the receiver adds it to its own clock on arrival (as gRPC's `grpc-timeout` and Envoy's
/// `x-envoy-expected-rq-timeout-ms` do). Every proxying handler (uwsgi_pass, proxy_pass) stamps it the same way.
public enum ForwardedDeadline {
    /// The request header that carries the time left.
    public static let headerName = "X-Kernel-Timeout-Ms"

    /// The header's value for `deadline` at `now`: whole milliseconds left, rounded down so that the receiver
    /// never waits past the sender, and at least 1 (a deadline already reached is answered, never forwarded).
    public static func value(for deadline: NIODeadline, now: NIODeadline = .now()) -> String {
        let left = (deadline - now).nanoseconds / 1_000_000
        return String(Swift.max(1, left))
    }

    /// Sets the header for `deadline` in `headers`, replacing any the request arrived with (a client's own value
    /// must not travel on in place of the edge's).
    public static func stamp(_ headers: inout HeaderFields, deadline: NIODeadline, now: NIODeadline = .now()) {
        headers.replace(headerName, value(for: deadline, now: now))
    }

    /// The milliseconds a received value gives: digits only (at most 10 of them, over 100 days), above zero.
    public static func parse(_ text: String) -> Int64? {
        let utf8 = text.utf8
        guard !utf8.isEmpty, utf8.count <= 10, utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let value = Int64(text), value > 0 else {
            return nil
        }
        return value
    }

    /// The deadline a received request carries, on this process's clock from `now` (its arrival); nil when it
    /// carries none or an unusable one.
    public static func deadline(of request: KernelRequest, now: NIODeadline = .now()) -> NIODeadline? {
        guard let text = request.headers[headerName], let milliseconds = parse(text) else { return nil }
        return now + .milliseconds(milliseconds)
    }
}
