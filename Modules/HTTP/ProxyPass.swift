import KernelCore
import KernelUpstream
import NIOCore

/// One `proxy_redirect` rule: a `Location` or `Refresh` value that starts with `from` has that start replaced by
/// `to`. Both are templates of the registry, as nginx's are complex values.
struct ProxyRedirectRule: Sendable {
    var from: VariableTemplate
    var to: VariableTemplate
}

/// The options of one `proxy_pass` location.
public struct ProxyPassConfiguration: Sendable {
    /// The upstream group (a single peer for `proxy_pass http://127.0.0.1:8000`).
    public var group: any UpstreamGroup
    /// The request head: URI rule, `proxy_set_header` lines, `proxy_http_version`, what of the client's request
    /// is passed.
    var head: ProxyRequestHead
    public var connectTimeout: TimeAmount = .seconds(60)
    public var sendTimeout: TimeAmount = .seconds(60)
    public var readTimeout: TimeAmount = .seconds(60)
    /// nginx's `proxy_next_upstream`.
    public var nextUpstream = NextUpstreamConditions.default
    /// nginx's `proxy_next_upstream_tries` (0: each peer of the group once).
    public var nextUpstreamTries = 0
    /// nginx's `proxy_next_upstream_timeout` (0: no limit).
    public var nextUpstreamTimeout = TimeAmount.zero
    /// `request_timeout` / `request_timeout_header`: the request's deadline, answered 504 at the edge and forwarded
    /// to the upstream as `X-Kernel-Timeout-Ms` (`ForwardedDeadline`).
    public var deadline = RequestDeadlinePolicy.none
    /// The addresses of named peers, resolved when the configuration was loaded.
    public var resolver: any PeerAddressResolver = PeerAddressBook()
    /// The largest response head accepted (nginx `proxy_buffer_size`, one memory page).
    public var bufferSize = 4096
    /// nginx's `proxy_buffering`, `proxy_buffers`, `proxy_max_temp_file_size` and `proxy_temp_path`: how far the
    /// answer is read ahead of the client (in memory, then a temporary file).
    public var buffering = UpstreamBuffering(tempPath: "proxy_temp")
    /// nginx's `proxy_request_buffering`: off, the body is sent to the upstream while it arrives.
    public var requestBuffering = true
    /// `proxy_redirect`: the rules applied to `Location` and `Refresh` (empty for `off`).
    var redirects: [ProxyRedirectRule] = []
    /// The location's `absolute_redirect` and the rest: a `Location` that a `proxy_redirect` rule rewrote to a path
    /// goes out absolute, as nginx's header filter sends it (one the upstream sent as a path stays as it came).
    var redirectStyle = RedirectStyle.default
    /// `proxy_hide_header` and `proxy_pass_header`.
    public var headerRules = UpstreamHeaderRules()
    /// `proxy_ignore_client_abort`: on, a client that leaves does not end the attempt at its upstream.
    public var ignoreClientAbort = false

    init(group: any UpstreamGroup, head: ProxyRequestHead) {
        self.group = group
        self.head = head
    }

    /// The engine's settings for this location.
    var upstream: UpstreamConfiguration {
        var upstream = UpstreamConfiguration(group: group, connectTimeout: connectTimeout, sendTimeout: sendTimeout,
                                             readTimeout: readTimeout, nextUpstream: nextUpstream, resolver: resolver)
        upstream.nextUpstreamTries = nextUpstreamTries
        upstream.nextUpstreamTimeout = nextUpstreamTimeout
        return upstream
    }

    /// Whether a response header (in any case) stays from the client: nginx's `proxy_hide_header` defaults
    /// (`X-Pad`, `X-Accel-*`; `Date` and `Server` the engine drops itself), the location's own, less those
    /// `proxy_pass_header` names (`UpstreamHeaderRules`).
    func hides(_ name: String) -> Bool { headerRules.hides(name) }

    /// Rewrites `value` by the first `proxy_redirect` rule whose `from` starts it (from `offset`, which is past
    /// `url=` in a `Refresh`); nil when none applies.
    func rewriteRedirect(_ value: String, from offset: String.Index, context: VariableContext) -> String? {
        let rest = value[offset...]
        for rule in redirects {
            let from = rule.from.render(context)
            guard !from.isEmpty, rest.utf8.starts(with: from.utf8) else { continue }
            let tail = rest.utf8.dropFirst(from.utf8.count)
            return String(value[..<offset]) + rule.to.render(context) + String(decoding: tail, as: UTF8.self)
        }
        return nil
    }

    /// Where the URL of a `Refresh` value starts: after its first `url=`, in any case (nginx's `ngx_strcasestrn`).
    static func afterURLMarker(_ value: String) -> String.Index? {
        let utf8 = value.utf8
        var index = utf8.startIndex
        while index != utf8.endIndex {
            let end = utf8.index(index, offsetBy: 4, limitedBy: utf8.endIndex) ?? utf8.endIndex
            if utf8.distance(from: index, to: end) == 4, HTTPToken.equalCaseInsensitive(utf8[index..<end], "url=".utf8) {
                return end
            }
            index = utf8.index(after: index)
        }
        return nil
    }

    /// The upstream's answer as the client gets it: `proxy_redirect` applied to `Location` and `Refresh`,
    /// `X-Accel-Buffering` read and hidden, and the body read ahead when buffering is on.
    func finish(_ response: KernelResponse, request: KernelRequest, context: RequestContext) -> KernelResponse {
        guard response.upstream?.attempts.last?.headerTime != nil else {
            // The engine's own answer (502, 504): nothing of an upstream to rewrite.
            return response
        }
        var response = buffering.apply(to: response, passAccelHeader: headerRules.passes("x-accel-buffering"),
                                       logger: context.logger, eventLoop: context.eventLoop)
        if !redirects.isEmpty {
            let variables = VariableContext(request: request, route: context.route)
            for (index, field) in response.headers.enumerated() {
                if field.name.equalsCaseInsensitive("Location") {
                    if let rewritten = rewriteRedirect(field.value, from: field.value.startIndex, context: variables) {
                        response.headers.setValue(redirectStyle.location(rewritten, for: request,
                                                                         serverName: context.route.serverName),
                                                  at: index)
                    }
                } else if field.name.equalsCaseInsensitive("Refresh"), let url = Self.afterURLMarker(field.value) {
                    if let rewritten = rewriteRedirect(field.value, from: url, context: variables) {
                        response.headers.setValue(rewritten, at: index)
                    }
                }
            }
        }
        return response
    }
}

/// The `proxy_pass` handler: sends the request to an HTTP server through the upstream engine and streams its
/// answer back.
public struct ProxyPassHandler: RequestHandler {
    public let configuration: ProxyPassConfiguration
    private let lengthFramed: UpstreamEngine<HTTPUpstreamProtocol>
    private let chunked: UpstreamEngine<HTTPUpstreamProtocol>
    /// For a request that asks for an upgrade and whose head sends `Upgrade` upstream: a 101 is its answer.
    private let upgrading: UpstreamEngine<HTTPUpstreamProtocol>

    public init(configuration: ProxyPassConfiguration) {
        self.configuration = configuration
        // The body's framing is chosen per request (chunked only for a stream of unknown length), and so is
        // whether a 101 may answer it; the engine's hooks carry both, so there is one engine for each case. (A
        // body still arriving cannot go with an upgrade: the listener refuses to upgrade such a connection.)
        lengthFramed = UpstreamEngine(configuration: configuration.upstream,
                                      protocol: HTTPUpstreamProtocol(configuration: configuration, framing: .length))
        chunked = UpstreamEngine(configuration: configuration.upstream,
                                 protocol: HTTPUpstreamProtocol(configuration: configuration, framing: .chunked))
        upgrading = UpstreamEngine(configuration: configuration.upstream,
                                   protocol: HTTPUpstreamProtocol(configuration: configuration, framing: .length,
                                                                  upgradeSent: true))
    }

    /// The body goes to the upstream from where it is (memory, the spooled file), or while it arrives with
    /// `proxy_request_buffering off`.
    public var requestBodyUse: RequestBodyUse {
        configuration.requestBuffering && configuration.head.passRequestBody || !configuration.head.passRequestBody ? .spooled : .streamed
    }

    /// The client leaving closes the attempt in progress (the upstream learns it from its connection closing, and
    /// its read timeout does not later count against it); a `local` server's worker side drops the request from
    /// its model's queue (`LocalPeer`). Not with `proxy_ignore_client_abort on`.
    public var cancelsWhenClientLeaves: Bool { !configuration.ignoreClientAbort }

    /// Whether a 101 may answer `request`: nginx tunnels only for a client that asked (`Upgrade` in its request),
    /// and the client's `Upgrade` is hop-by-hop and never passed, so the upstream is asked only by a
    /// `proxy_set_header Upgrade` line. A 101 to a head that did not ask is an invalid answer, never a tunnel.
    func asksUpstreamToUpgrade(_ request: KernelRequest, route: RouteInfo) -> Bool {
        request.headers.contains("Upgrade") && configuration.head.sendsUpgrade(request, route: route)
    }

    /// The engine answers through a callback: a location without filters makes no future per request.
    public var answersThroughCallback: Bool { true }

    public func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        let promise = context.eventLoop.makePromise(of: KernelResponse.self)
        respond(to: request, context: context) { promise.succeed($0) }
        return promise.futureResult
    }

    public func respond(to request: KernelRequest, context: RequestContext, with respond: @escaping (KernelResponse) -> Void) {
        var request = request
        if !configuration.head.passRequestBody {
            request.body = nil
            request.bodySource = nil
        }
        let engine: UpstreamEngine<HTTPUpstreamProtocol>
        if ProxyRequestHead.bodyFraming(of: request) == .chunked {
            engine = chunked
        } else if asksUpstreamToUpgrade(request, route: context.route) {
            engine = upgrading
        } else {
            engine = lengthFramed
        }
        var deadline: NIODeadline?
        if configuration.deadline.isEnabled {
            deadline = configuration.deadline.deadline(for: request, logger: context.logger)
            // The time left goes to the upstream with the request, replacing any value the client sent.
            if let deadline { ForwardedDeadline.stamp(&request.headers, deadline: deadline) }
        }
        // The engine hands its answer through `HTTPUpstreamProtocol.finishResponse` (`ProxyPassConfiguration.finish`).
        engine.proxy(request, context: context, deadline: deadline, respond: respond)
    }
}

/// What is HTTP about a proxied request: the request head, the body's framing (as it is with a length, in
/// chunks for a stream of unknown length), and the parser of the answer's head.
struct HTTPUpstreamProtocol: UpstreamProtocol {
    let configuration: ProxyPassConfiguration
    let framing: ProxyBodyFraming
    /// The head sent upstream carries `Upgrade` for a client that asked for one: a 101 may answer it.
    var upgradeSent = false

    var scheme: String { "http" }

    func makeRequestHead(for request: KernelRequest, context: RequestContext,
                         allocator: ByteBufferAllocator) throws -> ByteBuffer {
        if framing == .chunked, configuration.head.http10 {
            throw UpstreamRequestRefused(
                logMessage: "a request body of unknown length cannot be sent with \"proxy_http_version 1.0\"",
                response: .error(411, "length required"))
        }
        var buffer = allocator.buffer(capacity: 256 + request.headers.count * 48)
        configuration.head.write(request, route: context.route, framing: framing, into: &buffer)
        return buffer
    }

    func frameRequestBodyPart(_ part: ByteBuffer) -> ByteBuffer {
        guard framing == .chunked, part.readableBytes > 0 else { return part }
        var framed = ByteBuffer()
        framed.reserveCapacity(part.readableBytes + 20)
        framed.writeString(String(part.readableBytes, radix: 16))
        framed.writeStaticString("\r\n")
        framed.writeImmutableBuffer(part)
        framed.writeStaticString("\r\n")
        return framed
    }

    func requestBodyTrailer(allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard framing == .chunked else { return nil }
        var last = allocator.buffer(capacity: 5)
        last.writeStaticString("0\r\n\r\n")
        return last
    }

    func makeResponseParser(for request: KernelRequest) -> ProxyResponseParser {
        ProxyResponseParser(maxHeadSize: configuration.bufferSize, upgradeRequested: upgradeSent,
                            isHeadRequest: request.method == "HEAD")
    }

    func hidesResponseHeader(_ name: String) -> Bool { configuration.hides(name) }

    func finishResponse(_ response: KernelResponse, request: KernelRequest, context: RequestContext) -> KernelResponse {
        configuration.finish(response, request: request, context: context)
    }
}
