import KernelConfig
import KernelCore
import KernelUpstream
import NIOCore

/// One `uwsgi_param`: a variable name and its value template.
public struct UWSGIParam: Sendable {
    public var name: String
    public var value: UWSGIParamTemplate
    /// nginx's `if_not_empty`: the variable is left out when its value is empty.
    public var ifNotEmpty: Bool

    public init(name: String, value: UWSGIParamTemplate, ifNotEmpty: Bool = false) {
        self.name = name
        self.value = value
        self.ifNotEmpty = ifNotEmpty
    }

    /// The params of nginx's stock `uwsgi_params` file, in its order.
    public static let stock: [UWSGIParam] = [
        ("QUERY_STRING", "$query_string", false), ("REQUEST_METHOD", "$request_method", false),
        ("CONTENT_TYPE", "$content_type", false), ("CONTENT_LENGTH", "$content_length", false),
        ("REQUEST_URI", "$request_uri", false), ("PATH_INFO", "$document_uri", false),
        ("DOCUMENT_ROOT", "$document_root", false), ("SERVER_PROTOCOL", "$server_protocol", false),
        ("REQUEST_SCHEME", "$scheme", false), ("HTTPS", "$https", true),
        ("REMOTE_ADDR", "$remote_addr", false), ("REMOTE_PORT", "$remote_port", false),
        ("SERVER_PORT", "$server_port", false), ("SERVER_NAME", "$server_name", false),
    ].map { UWSGIParam(name: $0.0, value: try! UWSGIParamTemplate(parsing: $0.1), ifNotEmpty: $0.2) }

    /// The stock params with `overrides` applied: a param of the same name is replaced in place, others follow.
    public static func merged(_ overrides: [UWSGIParam]) -> [UWSGIParam] {
        var params = stock
        for param in overrides {
            if let index = params.firstIndex(where: { $0.name == param.name }) {
                params[index] = param
            } else {
                params.append(param)
            }
        }
        return params
    }
}

/// The options of one `uwsgi_pass` location.
public struct UWSGIPassConfiguration: Sendable {
    /// The upstream group (a single peer for `uwsgi_pass 127.0.0.1:6666`).
    public var group: any UpstreamGroup
    /// The vars sent, in order: the stock `uwsgi_params` with the location's `uwsgi_param` applied.
    public var params: [UWSGIParam] {
        didSet { headerParamNames = UWSGIPassConfiguration.headerParamNames(of: params) }
    }
    /// The `HTTP_*` names among `params`: the request headers they replace are not sent (kept for the encoder,
    /// which would otherwise look through every param for every header).
    private(set) var headerParamNames: [String]
    public var connectTimeout: TimeAmount
    public var readTimeout: TimeAmount
    public var sendTimeout: TimeAmount
    public var passRequestHeaders: Bool
    /// nginx's `uwsgi_request_buffering`: on, the body is read whole (memory, then a temporary file) before the
    /// upstream is contacted; off, it is sent to the upstream while it arrives.
    public var requestBuffering = true
    /// The largest response head accepted (nginx `uwsgi_buffer_size`).
    public var bufferSize: Int
    /// nginx's `uwsgi_buffering`, `uwsgi_buffers`, `uwsgi_max_temp_file_size` and `uwsgi_temp_path`: the answer is
    /// read ahead of the client (in memory, then a temporary file), so that a slow client does not hold the
    /// application's worker.
    public var buffering = UpstreamBuffering(tempPath: "uwsgi_temp")
    /// `uwsgi_hide_header` and `uwsgi_pass_header`.
    public var headerRules = UpstreamHeaderRules()
    /// `uwsgi_ignore_client_abort`: on, a client that leaves does not end the attempt at the application.
    public var ignoreClientAbort = false
    public var modifier1: UInt8
    public var modifier2: UInt8
    /// nginx's `uwsgi_next_upstream`: which failures go on to the group's next peer.
    public var nextUpstream = NextUpstreamConditions.default
    /// nginx's `uwsgi_next_upstream_tries` (0: each peer of the group once).
    public var nextUpstreamTries = 0
    /// nginx's `uwsgi_next_upstream_timeout` (zero: no limit).
    public var nextUpstreamTimeout = TimeAmount.zero
    /// The addresses of named peers, resolved when the configuration was loaded (nginx resolves `uwsgi_pass
    /// host:port` at start-up too), so that no request waits for a blocking name lookup on its event loop.
    public var resolver: any PeerAddressResolver = PeerAddressBook()
    /// `request_timeout` / `request_timeout_header`: the request's deadline, answered 504 at the edge and forwarded
    /// to the application as `HTTP_X_KERNEL_TIMEOUT_MS` (`ForwardedDeadline`).
    public var deadline = RequestDeadlinePolicy.none

    public init(group: any UpstreamGroup, params: [UWSGIParam] = UWSGIParam.stock, connectTimeout: TimeAmount = .seconds(60),
                readTimeout: TimeAmount = .seconds(60), sendTimeout: TimeAmount = .seconds(60),
                passRequestHeaders: Bool = true, bufferSize: Int = 4096, modifier1: UInt8 = 0, modifier2: UInt8 = 0) {
        self.group = group
        self.params = params
        headerParamNames = UWSGIPassConfiguration.headerParamNames(of: params)
        self.connectTimeout = connectTimeout
        self.readTimeout = readTimeout
        self.sendTimeout = sendTimeout
        self.passRequestHeaders = passRequestHeaders
        self.bufferSize = bufferSize
        self.modifier1 = modifier1
        self.modifier2 = modifier2
    }

    /// The vars block nginx would send for `request`: params first (empty `if_not_empty` ones left out), then one
    /// `HTTP_*` var per request header name (repeated fields joined with `, `, cookies with `; `), except those a
    /// param of the same name already carries. `Transfer-Encoding` is not passed: the body goes out de-chunked with
    /// its length in `CONTENT_LENGTH`.
    public func variables(for request: KernelRequest, route: RouteInfo) -> UWSGIVariables {
        var variables = UWSGIVariables()
        for param in params {
            let value: String
            if param.name == "CONTENT_LENGTH", param.value == UWSGIPassConfiguration.contentLengthTemplate,
               let length = UWSGIPassConfiguration.sentBodyLength(of: request) {
                // uwsgi frames the body by this value: it is the length of the body the engine sends (in memory,
                // spooled, or the declared length of a stream), never a header string read back.
                value = String(length)
            } else {
                value = param.value.evaluate(request, route: route)
            }
            if param.ifNotEmpty && value.isEmpty { continue }
            variables.append(param.name, value)
        }
        guard passRequestHeaders else {
            // The deadline travels even when the client's headers do not.
            if deadline.isEnabled, let left = request.headers[ForwardedDeadline.headerName] {
                variables.append(UWSGIPassConfiguration.variableName(forHeader: ForwardedDeadline.headerName), left)
            }
            return variables
        }
        // Repeated fields are joined by their name, case-insensitively, as nginx links them: two names that only
        // map to the same variable (`X-Forwarded-For`, and `X_Forwarded_For` where `underscores_in_headers` lets
        // it in) stay two variables and are never merged into one value.
        var order: [HeaderName] = []
        var merged: [HeaderName: (name: String, values: [String])] = [:]
        for (name, value) in request.headers {
            let key = HeaderName(name)
            if merged[key] == nil { order.append(key); merged[key] = (name, []) }
            merged[key]!.values.append(value)
        }
        let paramNames = Set(params.lazy.map(\.name).filter { $0.hasPrefix("HTTP_") })
        for key in order {
            let entry = merged[key]!
            let variable = UWSGIPassConfiguration.variableName(forHeader: entry.name)
            guard !paramNames.contains(variable), variable != "HTTP_TRANSFER_ENCODING" else { continue }
            if entry.name.equalsCaseInsensitive("Host"), let authority = request.effectiveAuthority {
                // What Debian's uwsgi_params fixes and nginx 1.30 recommends (`$host$is_request_port$request_port`):
                // the raw `Host` would let `GET http://example.com/` with `Host: other` reach the application as
                // `other`; this is the authority the request is for, with the port the client wrote.
                variables.append(variable, authority)
                continue
            }
            variables.append(variable, entry.values.joined(separator: entry.name.equalsCaseInsensitive("Cookie") ? "; " : ", "))
        }
        return variables
    }

    static func headerParamNames(of params: [UWSGIParam]) -> [String] {
        params.lazy.map(\.name).filter { $0.hasPrefix("HTTP_") }
    }

    /// The stock `CONTENT_LENGTH` value.
    static let contentLengthTemplate = try! UWSGIParamTemplate(parsing: "$content_length")

    /// The `CONTENT_LENGTH` of the body the engine sends: its length when there is one, and `0` for an empty
    /// chunked body (nginx counts the de-chunked body; WSGI then reads a length of 0, not none). Nil for a request
    /// that declared no body: `$content_length` (empty) then.
    static func sentBodyLength(of request: KernelRequest) -> Int64? {
        guard let length = request.bodyLength else {
            return request.headers["Transfer-Encoding"] == nil ? nil : 0
        }
        return length > 0 || request.headers["Transfer-Encoding"] != nil ? length : nil
    }

    /// The engine's settings for this location.
    var upstream: UpstreamConfiguration {
        var upstream = UpstreamConfiguration(group: group, connectTimeout: connectTimeout, sendTimeout: sendTimeout,
                                             readTimeout: readTimeout, nextUpstream: nextUpstream, resolver: resolver)
        upstream.nextUpstreamTries = nextUpstreamTries
        upstream.nextUpstreamTimeout = nextUpstreamTimeout
        return upstream
    }

    /// A header name compared and hashed without ASCII case (nginx's `lowcase_key`), with no lowered copy made.
    struct HeaderName: Hashable {
        let name: String

        init(_ name: String) { self.name = name }

        static func == (a: HeaderName, b: HeaderName) -> Bool { a.name.equalsCaseInsensitive(b.name) }

        func hash(into hasher: inout Hasher) {
            for byte in name.utf8 { hasher.combine((byte >= 65 && byte <= 90) ? byte | 0x20 : byte) }
        }
    }

    /// `X-Foo-Bar` → `HTTP_X_FOO_BAR`.
    /// Other bytes are kept as they are (a name's UTF-8 stays UTF-8).
    public static func variableName(forHeader name: String) -> String {
        var bytes: [UInt8] = Array("HTTP_".utf8)
        bytes.reserveCapacity(5 + name.utf8.count)
        for byte in name.utf8 { bytes.append(UWSGIVarsWriter.variableByte(byte)) }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The `uwsgi_pass` handler: sends the request to a uwsgi application server (uWSGI, a kernel worker) through
/// the upstream engine and streams its answer back.
public struct UWSGIPassHandler: RequestHandler {
    public let configuration: UWSGIPassConfiguration
    private let engine: UpstreamEngine<UWSGIUpstreamProtocol>

    public init(configuration: UWSGIPassConfiguration) {
        self.configuration = configuration
        engine = UpstreamEngine(configuration: configuration.upstream, protocol: UWSGIUpstreamProtocol(configuration: configuration))
    }

    /// The body is streamed to the upstream from where it is: memory, the spooled file, or (buffering off) the
    /// connection, so it is never loaded into memory whole.
    public var requestBodyUse: RequestBodyUse { configuration.requestBuffering ? .spooled : .streamed }

    /// The client leaving closes the attempt in progress (a remote worker learns it from its connection closing,
    /// and its read timeout does not later count against it); a `local` server's worker side drops the request
    /// from its model's queue (`LocalPeer`). Not with `uwsgi_ignore_client_abort on`.
    public var cancelsWhenClientLeaves: Bool { !configuration.ignoreClientAbort }

    /// The engine answers through a callback: a location without filters makes no future per request.
    public var answersThroughCallback: Bool { true }

    public func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        let promise = context.eventLoop.makePromise(of: KernelResponse.self)
        respond(to: request, context: context) { promise.succeed($0) }
        return promise.futureResult
    }

    public func respond(to request: KernelRequest, context: RequestContext, with respond: @escaping (KernelResponse) -> Void) {
        guard configuration.deadline.isEnabled,
              let deadline = configuration.deadline.deadline(for: request, logger: context.logger) else {
            engine.proxy(request, context: context, deadline: nil, respond: respond)
            return
        }
        // The time left goes to the application with the request, replacing any value the client sent.
        var stamped = request
        ForwardedDeadline.stamp(&stamped.headers, deadline: deadline)
        engine.proxy(stamped, context: context, deadline: deadline, respond: respond)
    }
}

/// What is uwsgi about a proxied request: the vars packet before the body (which follows as it is, its length in
/// `CONTENT_LENGTH`), and the raw HTTP head a uwsgi application writes back.
struct UWSGIUpstreamProtocol: UpstreamProtocol {
    let configuration: UWSGIPassConfiguration

    var scheme: String { "uwsgi" }

    func makeRequestHead(for request: KernelRequest, context: RequestContext,
                         allocator: ByteBufferAllocator) throws -> ByteBuffer {
        guard let packet = configuration.encodedPacket(for: request, route: context.route, allocator: allocator) else {
            let size = configuration.variables(for: request, route: context.route).encodedSize
            throw UpstreamRequestRefused(logMessage: "uwsgi request is too big: \(size)",
                                         response: .error(502, "request head too large for uwsgi"))
        }
        return packet
    }

    func makeResponseParser(for request: KernelRequest) -> UWSGIResponseParser {
        UWSGIResponseParser(maxHeadSize: configuration.bufferSize)
    }

    /// nginx's `uwsgi_hide_header` defaults (`X-Accel-*`), and `X-Pad`, with the location's `uwsgi_hide_header`
    /// and `uwsgi_pass_header`; `Status` is the answer's status, never a header. `X-Accel-Buffering` is read by
    /// `finishResponse` first, which hides it then.
    func hidesResponseHeader(_ name: String) -> Bool {
        name.equalsCaseInsensitive("status") || configuration.headerRules.hides(name)
    }

    /// The answer's body read ahead of the client (`uwsgi_buffering`, or the application's `X-Accel-Buffering`).
    func finishResponse(_ response: KernelResponse, request: KernelRequest, context: RequestContext) -> KernelResponse {
        configuration.buffering.apply(to: response, passAccelHeader: configuration.headerRules.passes("x-accel-buffering"),
                                      logger: context.logger, eventLoop: context.eventLoop)
    }
}
