import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// What a variable is evaluated against: the request and its route always, the response while it is being made
/// (a filter), and the finished exchange once it is over (access logs and other request-finish observers).
public struct VariableContext: Sendable {
    public var request: KernelRequest
    public var route: RouteInfo
    /// The response, when the template is evaluated on the way out (`add_header`); else nil.
    public var response: KernelResponse?
    /// The finished exchange, when the template is evaluated after the response (`log_format`); else nil.
    public var finished: FinishedExchange?

    public init(request: KernelRequest, route: RouteInfo, response: KernelResponse? = nil) {
        self.request = request
        self.route = route
        self.response = response
    }

    public init(finished: FinishedExchange) {
        request = finished.request
        route = finished.route
        self.finished = finished
    }

    /// The upstream report of the finished exchange, else of the response.
    public var upstream: UpstreamReport? { finished?.upstream ?? response?.upstream }

    /// The handler report of the finished exchange, else of the response.
    public var handlerReport: (any HandlerReport)? { finished?.handlerReport ?? response?.handlerReport }
}

/// How a variable's value is found. Nil is nginx's "not found": it renders as the empty string in `return` and
/// `uwsgi_param`, and as `-` in an access log line (empty with `escape=json`).
public typealias VariableGetter = @Sendable (_ context: VariableContext) -> String?

/// The variables templates may use, by name, as nginx's `ngx_http_variables.c` keeps them: exact names
/// (`$remote_addr`) and prefixes whose rest names a header, an argument or a cookie (`$http_user_agent`,
/// `$arg_page`, `$cookie_sid`).
///
/// Names are case-insensitive (nginx lower-cases them when it compiles a template). `standard` holds the core's
/// variables; each configuration generation starts from it in `Registrar.variables`, where modules add their own
/// before the templates that use them are compiled. Templates keep the getters they need, so the registry is not
/// consulted per request.
public struct VariableRegistry: Sendable {
    private var exact: [String: VariableGetter] = [:]
    /// Prefix variables, longest prefix first; `make` gets the rest of the name (lower-cased).
    private var prefixes: [(prefix: String, make: @Sendable (String) -> VariableGetter)] = []

    /// A registry with no variables.
    public init() {}

    /// Adds (or replaces) the variable `name` (without `$`).
    public mutating func register(_ name: String, _ getter: @escaping VariableGetter) {
        exact[name.lowercased()] = getter
    }

    /// Adds a family of variables `prefix` + rest (`http_` + `user_agent`): `make` builds the getter of one rest.
    public mutating func registerPrefix(_ prefix: String, _ make: @escaping @Sendable (_ rest: String) -> VariableGetter) {
        let prefix = prefix.lowercased()
        prefixes.removeAll { $0.prefix == prefix }
        prefixes.append((prefix, make))
        prefixes.sort { $0.prefix.utf8.count > $1.prefix.utf8.count }
    }

    /// The getter of `name` (without `$`), or nil when no variable has that name.
    public func getter(for name: String) -> VariableGetter? {
        let name = name.lowercased()
        if let getter = exact[name] { return getter }
        for entry in prefixes where name.hasPrefix(entry.prefix) && name.utf8.count > entry.prefix.utf8.count {
            return entry.make(String(name.dropFirst(entry.prefix.count)))
        }
        return nil
    }

    /// Whether `name` is a variable.
    public func contains(_ name: String) -> Bool { getter(for: name) != nil }

    /// The exact names and the prefixes (`http_NAME`), sorted: for documentation and error messages.
    public var names: [String] {
        (exact.keys + prefixes.map { $0.prefix + "NAME" }).sorted()
    }

    /// The core's variables.
    public static let standard: VariableRegistry = {
        var registry = VariableRegistry()
        StandardVariables.register(into: &registry)
        return registry
    }()
}

/// The core's variables, with nginx's names and values.
enum StandardVariables {
    static func register(into registry: inout VariableRegistry) {
        // The request line and target.
        registry.register("request") { $0.request.requestLine }
        registry.register("request_method") { $0.request.method }
        registry.register("request_uri") { $0.request.requestURI }
        registry.register("uri") { $0.request.path }
        registry.register("document_uri") { $0.request.path }
        registry.register("args") { $0.request.query }
        registry.register("query_string") { $0.request.query }
        registry.register("is_args") { $0.request.query.isEmpty ? "" : "?" }
        registry.register("server_protocol") { $0.request.version.description }
        registry.register("scheme") { $0.request.connection.scheme }
        registry.register("https") { $0.request.connection.scheme == "https" ? "on" : "" }
        registry.register("request_id") { RequestID.text(of: $0.request.identity) }

        // Names and addresses.
        registry.register("host") { $0.request.host ?? $0.route.serverName }
        // nginx 1.30's pair, for `$host$is_request_port$request_port`.
        registry.register("request_port") { $0.request.requestPort ?? "" }
        registry.register("is_request_port") { $0.request.requestPort == nil ? "" : ":" }
        registry.register("hostname") { _ in Hostname.value }
        // nginx's `$pid`: the process (the worker, under a master) that handles the request.
        registry.register("pid") { _ in String(getpid()) }
        registry.register("server_name") { $0.route.serverName }
        registry.register("remote_addr") { $0.request.connection.remoteIP }
        registry.register("remote_port") { port(of: $0.request.connection.remoteAddress) }
        registry.register("server_addr") { address(of: $0.request.connection.localAddress) }
        registry.register("server_port") { port(of: $0.request.connection.localAddress) }
        // No authentication module sets a user: not found, `-` in access logs as in nginx.
        registry.register("remote_user") { _ in nil }
        // No `root` directive: the stock uwsgi params still send DOCUMENT_ROOT, empty.
        registry.register("document_root") { _ in "" }

        // Request headers nginx gives names of their own.
        registry.register("content_type") { $0.request.headers["Content-Type"] }
        registry.register("content_length") { context in
            if let length = context.request.headers["Content-Length"] { return length }
            // A chunked body has been read whole: its length is known now (nginx does the same after reading it).
            if let length = context.request.bodyLength, length > 0 { return String(length) }
            return nil
        }
        registry.register("proxy_add_x_forwarded_for") { context in
            let forwarded = context.request.headers.values("X-Forwarded-For")
            let client = context.request.connection.remoteIP
            return forwarded.isEmpty ? client : forwarded.joined(separator: ", ") + ", " + client
        }
        registry.registerPrefix("http_") { rest in
            let name = String(rest.map { $0 == "_" ? "-" : $0 })
            // nginx (1.22, as Debian ships it) joins repeated Cookie lines with "; " and X-Forwarded-For lines
            // with ", "; of any other header the first line counts.
            switch name {
            case "cookie": return { joined($0.request.headers.values("Cookie"), "; ") }
            case "x-forwarded-for": return { joined($0.request.headers.values("X-Forwarded-For"), ", ") }
            default: return { $0.request.headers[name] }
            }
        }
        registry.registerPrefix("arg_") { name in { argument(name, in: $0.request.query) } }
        registry.registerPrefix("cookie_") { name in { cookie(name, in: $0.request.headers.values("Cookie")) } }

        // The connection.
        registry.register("connection") { String($0.request.connection.id) }
        registry.register("connection_requests") { String($0.request.connection.requestNumber) }
        registry.register("listener_protocol") { $0.request.connection.protocolName }

        // The route.
        registry.register("location") { $0.route.location }

        // The response and the finished exchange.
        registry.register("status") { context in
            let status = context.finished?.status ?? context.response?.status ?? 0
            return status < 10 ? "00\(status)" : status < 100 ? "0\(status)" : String(status)
        }
        registry.register("body_bytes_sent") { String($0.finished?.bodyBytesSent ?? 0) }
        registry.register("bytes_sent") { String($0.finished?.bytesSent ?? 0) }
        registry.register("request_time") { context in
            seconds(milliseconds: Int(((context.finished?.requestTime ?? 0) * 1000).rounded()))
        }

        // Time, as nginx formats it.
        registry.register("msec") { _ in
            let now = KernelClock.wallClockMilliseconds()
            return seconds(milliseconds: Int(now))
        }
        registry.register("time_local") { _ in LogTime.now().accessLog }
        registry.register("time_iso8601") { _ in LogTime.now().iso }

        // The upstream tries, one entry per peer, as nginx lists them (", " between tries of one group).
        registry.register("upstream_addr") { context in
            context.upstream.flatMap { upstream in
                upstream.attempts.isEmpty ? nil : upstream.attempts.map(\.address).joined(separator: ", ")
            }
        }
        registry.register("upstream_status") { context in
            context.upstream.flatMap { upstream in
                upstream.attempts.isEmpty ? nil : upstream.attempts.map { $0.status.map(String.init) ?? "-" }.joined(separator: ", ")
            }
        }
        registry.register("upstream_response_time") { context in
            upstreamTimes(context) { $0.responseTime }
        }
        registry.register("upstream_connect_time") { context in upstreamTimes(context) { $0.connectTime } }
        registry.register("upstream_header_time") { context in upstreamTimes(context) { $0.headerTime } }
    }

    private static func upstreamTimes(_ context: VariableContext, _ time: (UpstreamAttempt) -> Double?) -> String? {
        guard let upstream = context.upstream, !upstream.attempts.isEmpty else { return nil }
        return upstream.finalAttempts.map { attempt in
            time(attempt).map { seconds(milliseconds: Int(($0 * 1000).rounded())) } ?? "-"
        }.joined(separator: ", ")
    }

    private static func joined(_ values: [String], _ separator: String) -> String? {
        values.isEmpty ? nil : values.joined(separator: separator)
    }

    /// nginx's `%T.%03M`: seconds with milliseconds.
    static func seconds(milliseconds: Int) -> String {
        let fraction = milliseconds % 1000
        return "\(milliseconds / 1000)." + (fraction < 10 ? "00" : fraction < 100 ? "0" : "") + "\(fraction)"
    }

    /// A port as text; empty for a unix socket, as nginx's `$remote_port` and `$server_port`.
    private static func port(of address: SocketAddress?) -> String {
        address?.port.map { String($0) } ?? ""
    }

    /// An IP address as text, `unix:` and the path for a unix socket.
    private static func address(of address: SocketAddress?) -> String {
        guard let address else { return "" }
        if case .unixDomainSocket = address { return "unix:" + (address.pathname ?? "") }
        return address.ipAddress ?? ""
    }

    /// `$arg_NAME`: the value of the first argument called `name` (ASCII case-insensitively, as nginx's
    /// `ngx_http_arg` compares), undecoded; an argument without `=` does not count.
    static func argument(_ name: String, in query: String) -> String? {
        guard !query.isEmpty else { return nil }
        for pair in query.utf8.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
            guard let equals = pair.firstIndex(of: UInt8(ascii: "=")) else { continue }
            if HTTPToken.equalCaseInsensitive(pair[..<equals], name.utf8) {
                return String(Substring(pair[pair.index(after: equals)...]))
            }
        }
        return nil
    }

    /// `$cookie_NAME`: the first cookie called `name` (ASCII case-insensitively) in the Cookie lines, as nginx's
    /// `ngx_http_parse_multi_header_lines` reads them: pairs separated by `;`, blanks around `=` skipped.
    static func cookie(_ name: String, in lines: [String]) -> String? {
        for line in lines {
            for pair in line.utf8.split(separator: UInt8(ascii: ";"), omittingEmptySubsequences: true) {
                let trimmed = pair.drop { $0 == UInt8(ascii: " ") }
                guard let equals = trimmed.firstIndex(of: UInt8(ascii: "=")) else { continue }
                var key = trimmed[..<equals]
                while key.last == UInt8(ascii: " ") { key = key.dropLast() }
                guard HTTPToken.equalCaseInsensitive(key, name.utf8) else { continue }
                let value = trimmed[trimmed.index(after: equals)...].drop { $0 == UInt8(ascii: " ") }
                return String(Substring(value))
            }
        }
        return nil
    }
}

/// `$request_id`: 32 hexadecimal digits, made from the request's identity (two numbers, see
/// `KernelRequest.identity`) with a key drawn at start-up, so that it is the same wherever one request uses it and
/// looks random across requests (nginx hashes a counter with a random key). The mapping is a bijection of the two
/// numbers, so two requests never share an id.
enum RequestID {
    private static let key: (UInt64, UInt64) = {
        var generator = SystemRandomNumberGenerator()
        return (generator.next(), generator.next())
    }()

    static func text(of identity: (UInt64, UInt64)) -> String {
        // Invertible step by step (mix is a bijection): the low half gives back the second number given the high
        // half, the high half then gives back the first.
        let high = mix(identity.0 ^ key.0 ^ mix(identity.1))
        let low = mix(identity.1 ^ key.1 ^ high)
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var bytes = [UInt8](repeating: 0, count: 32)
        for index in 0..<16 {
            bytes[index] = digits[Int((high >> UInt64(60 - 4 * index)) & 15)]
            bytes[16 + index] = digits[Int((low >> UInt64(60 - 4 * index)) & 15)]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// SplitMix64's finaliser: every input bit reaches every output bit.
    private static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// `$hostname`: the machine's name, read once.
enum Hostname {
    static let value: String = {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }()
}
