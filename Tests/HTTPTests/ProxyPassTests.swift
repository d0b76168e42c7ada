import KernelConfig
@testable import KernelCore
import KernelUpstream
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import XCTest
@testable import HTTP

/// A group standing for one the balancing or health-check modules register: a name, a protocol, a pool.
private struct NamedTestGroup: UpstreamGroup {
    var name: String
    var scheme: String?
    var keepalive: UpstreamKeepalive?
    var peers: [PeerAddress] { [.tcp(host: "127.0.0.1", port: 9)] }
    var maxTries: Int { 1 }
    func begin(_ request: KernelRequest, excluding excluded: [PeerAddress]) -> PeerLease? { nil }
}

/// `proxy_pass` locations decoded from YAML through the factory, and the heads they build.
final class ProxyPassTests: XCTestCase {
    private var runtime: KernelRuntime!

    override func setUp() {
        runtime = KernelRuntime.standalone(threads: 1, level: .critical)
    }

    override func tearDown() {
        try? runtime.eventLoopGroup.syncShutdownGracefully()
    }

    private func registrar() -> Registrar {
        let registrar = Registrar(role: .edge, mode: .check, configurationFile: "test.yaml", runtime: runtime)
        HTTPModule.registerProxy(into: registrar)
        registrar.addUpstreamGroup(NamedTestGroup(name: "backend", scheme: nil, keepalive: nil))
        registrar.addUpstreamGroup(NamedTestGroup(name: "pooled", scheme: "http",
                                                  keepalive: UpstreamKeepalive(connections: 8, timeout: .seconds(60), requests: 100)))
        registrar.addUpstreamGroup(NamedTestGroup(name: "workers", scheme: "uwsgi", keepalive: nil))
        return registrar
    }

    /// The handler of a location written as YAML (`proxy_pass: ...` and its options), in `match`.
    private func handler(_ yaml: String, match: String = "/", prefix: String? = "/") throws -> ProxyPassHandler {
        let node = try YAMLParser().parse(yaml, file: "test.yaml")
        let mapping = try ConfigValue(node: node, path: "location").mapping()
        let value = try mapping.required("proxy_pass")
        let handler = try ProxyPassFactory.make(value: value, location: mapping, context: LocationContext(match: match, prefix: prefix),
                                                registrar: registrar())
        try mapping.finish()
        return handler
    }

    private func request(_ target: String, method: String = "GET", headers: HeaderFields = ["Host": "client.test"],
                         body: String? = nil) -> KernelRequest {
        let (path, query) = KernelRequest.splitTarget(target)!
        return KernelRequest(method: method, uri: target, path: path, query: query, version: .http1_1, headers: headers,
                             body: body.map { ByteBuffer(string: $0) },
                             connection: ConnectionInfo(protocolName: "http", listener: "127.0.0.1:8080",
                                                        remoteAddress: try! SocketAddress(ipAddress: "10.0.0.1", port: 5000),
                                                        localAddress: nil))
    }

    private func head(_ handler: ProxyPassHandler, _ request: KernelRequest, route: RouteInfo = RouteInfo()) -> String {
        var buffer = ByteBuffer()
        handler.configuration.head.write(request, route: route, framing: ProxyRequestHead.bodyFraming(of: request), into: &buffer)
        return String(buffer: buffer)
    }

    private func requestLine(_ handler: ProxyPassHandler, _ request: KernelRequest, route: RouteInfo = RouteInfo()) -> String {
        String(head(handler, request, route: route).split(separator: "\r\n").first!)
    }

    // MARK: - The URI rules of nginx's documentation

    func testURIRules() throws {
        struct Case {
            var pass: String
            var match: String
            var prefix: String?
            var target: String
            var expected: String
            var captures: [String] = []
        }
        let cases = [
            // With a URI part, the part matching the location is replaced.
            Case(pass: "http://127.0.0.1/remote/", match: "/name/", prefix: "/name/", target: "/name/x/y?a=b", expected: "/remote/x/y?a=b"),
            Case(pass: "http://127.0.0.1/", match: "/some/path/", prefix: "/some/path/", target: "/some/path/page.html", expected: "/page.html"),
            Case(pass: "http://127.0.0.1/x", match: "/name", prefix: "/name", target: "/name/y", expected: "/x/y"),
            Case(pass: "http://127.0.0.1/target", match: "= /exact", prefix: "/exact", target: "/exact?x=1", expected: "/target?x=1"),
            // The normalised URI is used: dot segments resolved, escapes decoded and made again.
            Case(pass: "http://127.0.0.1/remote/", match: "/name/", prefix: "/name/", target: "/name/a%20b/../c%3Fd", expected: "/remote/c%3Fd"),
            Case(pass: "http://127.0.0.1/remote/", match: "/name/", prefix: "/name/", target: "/name//double", expected: "/remote/double"),
            // Without one, the URI goes as the client sent it.
            Case(pass: "http://127.0.0.1", match: "/name/", prefix: "/name/", target: "/name/a%20b/../c?q=%41", expected: "/name/a%20b/../c?q=%41"),
            Case(pass: "http://127.0.0.1:8000", match: "/", prefix: "/", target: "http://client.test/p?q", expected: "/p?q"),
            Case(pass: "http://unix:/tmp/app.sock", match: "/", prefix: "/", target: "/u", expected: "/u"),
            Case(pass: "http://unix:/tmp/app.sock:/sock/", match: "/s/", prefix: "/s/", target: "/s/u", expected: "/sock/u"),
            // A URI with variables is sent as it renders, in a regex location with its captures.
            Case(pass: "http://127.0.0.1/v1/$1", match: "~ ^/api/(.*)$", prefix: nil, target: "/api/items?x=1",
                 expected: "/v1/items", captures: ["items"]),
            Case(pass: "http://127.0.0.1/search?q=$arg_term", match: "/find", prefix: "/find", target: "/find?term=kernel",
                 expected: "/search?q=kernel"),
        ]
        for item in cases {
            let handler = try handler("proxy_pass: \"\(item.pass)\"", match: item.match, prefix: item.prefix)
            let line = requestLine(handler, request(item.target), route: RouteInfo(captures: item.captures))
            XCTAssertEqual(line, "GET \(item.expected) HTTP/1.1", "\(item.pass) in \(item.match) for \(item.target)")
        }
    }

    func testURIRuleErrors() throws {
        XCTAssertThrowsError(try handler("proxy_pass: http://127.0.0.1/static/", match: "~ ^/a/", prefix: nil)) { error in
            XCTAssertTrue("\(error)".contains("cannot have URI part in location given by regular expression"), "\(error)")
            XCTAssertTrue("\(error)".contains("test.yaml:1:13"), "\(error)")
        }
        XCTAssertThrowsError(try handler("proxy_pass: http://127.0.0.1/$1", match: "/a/", prefix: "/a/")) { error in
            XCTAssertTrue("\(error)".contains("needs a regular expression location"), "\(error)")
        }
        for bad in ["127.0.0.1:8000", "https://127.0.0.1", "ftp://x", "http://", "http://h:0", "http://h:99999", "http://$host/",
                    "http://unix:", "http://unix:relative"] {
            XCTAssertThrowsError(try handler("proxy_pass: \"\(bad)\""), bad)
        }
        XCTAssertThrowsError(try handler("proxy_pass: http://127.0.0.1\nproxy_http_version: \"2.0\""))
        XCTAssertThrowsError(try handler("proxy_pass: http://127.0.0.1\nproxy_set_header: {\"Bad Name\": x}"))
        XCTAssertThrowsError(try handler("proxy_pass: http://127.0.0.1\nproxy_set_header: {X-A: $nope}")) { error in
            XCTAssertTrue("\(error)".contains("nope"), "\(error)")
        }
        XCTAssertThrowsError(try handler("proxy_pass: http://127.0.0.1\nproxy_next_upstream: [error, off]"))
        XCTAssertThrowsError(try handler("proxy_pass: http://127.0.0.1\nproxy_read_timeout: 0s"))
        XCTAssertThrowsError(try handler("proxy_pass: http://127.0.0.1\nproxy_buffers: 8"))
        XCTAssertThrowsError(try handler("proxy_pass: http://127.0.0.1\nproxy_unknown: 1"))
        XCTAssertThrowsError(try handler("proxy_pass: http://127.0.0.1/$1\nproxy_redirect: default", match: "~ ^/(.*)", prefix: nil)) { error in
            XCTAssertTrue("\(error)".contains("cannot be used with \"proxy_pass\" directive with variables"), "\(error)")
        }
    }

    // MARK: - Groups

    func testNamedGroupsAndTheirProtocol() throws {
        XCTAssertEqual(try handler("proxy_pass: http://backend").configuration.group.name, "backend")
        // A port makes it an address, not the group.
        XCTAssertThrowsError(try handler("proxy_pass: http://backend:8080"))
        XCTAssertThrowsError(try handler("proxy_pass: http://workers")) { error in
            XCTAssertTrue("\(error)".contains("upstream group \"workers\" speaks uwsgi, not http"), "\(error)")
            XCTAssertTrue("\(error)".contains("test.yaml:1:13"), "\(error)")
        }
        let single = try handler("proxy_pass: http://127.0.0.1:8000/")
        XCTAssertEqual(single.configuration.group.peers, [.tcp(host: "127.0.0.1", port: 8000)])
        let unix = try handler("proxy_pass: http://unix:/tmp/app.sock:/")
        XCTAssertEqual(unix.configuration.group.peers, [.unix(path: "/tmp/app.sock")])
    }

    // MARK: - Headers

    func testDefaultHeadersAndTheClientsLines() throws {
        let handler = try handler("proxy_pass: http://127.0.0.1:8000")
        let text = head(handler, request("/a", headers: [
            "Host": "client.test", "User-Agent": "t/1", "Connection": "keep-alive", "Keep-Alive": "300", "TE": "trailers",
            "Upgrade": "websocket", "Expect": "100-continue", "Proxy-Connection": "x", "X-Forwarded-For": "1.2.3.4",
        ]))
        XCTAssertEqual(text, "GET /a HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: close\r\nUser-Agent: t/1\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")
        // Port 80 is left out of $proxy_host; a unix socket is localhost.
        XCTAssertTrue(head(try self.handler("proxy_pass: http://localhost"), request("/")).contains("\r\nHost: localhost\r\n"))
        XCTAssertTrue(head(try self.handler("proxy_pass: http://unix:/tmp/s"), request("/")).contains("\r\nHost: localhost\r\n"))
        XCTAssertTrue(head(try self.handler("proxy_pass: \"http://[::1]:81\""), request("/")).contains("\r\nHost: [::1]:81\r\n"))
    }

    func testFieldsTheClientsConnectionListsStayOnItsHop() throws {
        // RFC 9110 7.6.1: `Connection: X-Hop` makes X-Hop the client's hop's own. A `proxy_set_header` line is the
        // proxy's, and framing is the proxy's to write whatever the client lists.
        let handler = try handler("""
            proxy_pass: http://127.0.0.1:8000
            proxy_set_header: {X-Real-IP: "10.0.0.9"}
            """)
        let text = head(handler, request("/a", method: "POST", headers: [
            "Host": "client.test", "Connection": "keep-alive, X-Hop", "connection": "x-other , close", "X-Hop": "1",
            "X-OTHER": "2", "X-Kept": "3", "X-Real-IP": "spoofed", "Content-Length": "0",
        ]))
        XCTAssertTrue(text.contains("\r\nX-Kept: 3\r\n"), text)
        XCTAssertTrue(text.contains("\r\nX-Real-IP: 10.0.0.9\r\n"), text)
        XCTAssertFalse(text.contains("X-Hop"), text)
        XCTAssertFalse(text.contains("X-OTHER"), text)
        XCTAssertFalse(text.contains("spoofed"), text)
        XCTAssertEqual(HopByHopHeaders.listedOptions(inConnectionValues: ["keep-alive", "Upgrade", "close", "Content-Length"]), [])
        XCTAssertEqual(HopByHopHeaders.listedOptions(inConnectionValues: [" X-A,,\tx-b ", "TE"]), ["x-a", "x-b"])
    }

    func testTheTutorialsHeadersAndOverrides() throws {
        let handler = try handler("""
            proxy_pass: http://127.0.0.1:8000
            proxy_set_header:
              Host: $host
              X-Real-IP: $remote_addr
              X-Forwarded-For: $proxy_add_x_forwarded_for
              X-Forwarded-Protocol: $scheme
              X-Upstream: $proxy_host-$proxy_port
              User-Agent: ""
            """)
        let text = head(handler, request("/x", headers: ["Host": "Client.Test:9000", "X-Forwarded-For": "1.2.3.4", "User-Agent": "t/1",
                                                         "X-Real-IP": "spoofed"]))
        XCTAssertEqual(text, """
            GET /x HTTP/1.1\r
            Host: client.test\r
            Connection: close\r
            X-Real-IP: 10.0.0.1\r
            X-Forwarded-For: 1.2.3.4, 10.0.0.1\r
            X-Forwarded-Protocol: http\r
            X-Upstream: 127.0.0.1:8000-8000\r
            \r

            """)
        // Connection can be set (WebSocket: `Upgrade $http_upgrade`, `Connection upgrade`).
        let upgrade = try self.handler("""
            proxy_pass: http://127.0.0.1:8000
            proxy_set_header: {Upgrade: $http_upgrade, Connection: upgrade}
            """)
        let upgraded = head(upgrade, request("/ws", headers: ["Host": "h", "Upgrade": "websocket", "Connection": "Upgrade"]))
        XCTAssertEqual(upgraded, "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    }

    func testKeepaliveGroupsGetNoConnectionCloseAndHTTP10IsAllowed() throws {
        XCTAssertFalse(head(try handler("proxy_pass: http://pooled"), request("/")).contains("Connection:"))
        let old = try handler("proxy_pass: http://pooled\nproxy_http_version: \"1.0\"")
        let text = head(old, request("/"))
        XCTAssertTrue(text.hasPrefix("GET / HTTP/1.0\r\n") && text.contains("Connection: close\r\n"), text)
    }

    func testBodiesAndWhatIsPassed() throws {
        let handler = try handler("proxy_pass: http://127.0.0.1:8000")
        let posted = head(handler, request("/p", method: "POST", headers: ["Host": "h", "Content-Length": "5", "Content-Type": "text/plain"],
                                           body: "hello"))
        XCTAssertEqual(posted, "POST /p HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: close\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n")
        // A chunked upload that was read whole goes with its length.
        let dechunked = head(handler, request("/p", method: "POST", headers: ["Host": "h", "Transfer-Encoding": "chunked"], body: "abc"))
        XCTAssertTrue(dechunked.contains("Content-Length: 3\r\n") && !dechunked.contains("Transfer-Encoding"), dechunked)
        let empty = head(handler, request("/p", method: "POST", headers: ["Host": "h", "Content-Length": "0"]))
        XCTAssertTrue(empty.contains("Content-Length: 0\r\n"), empty)
        // A stream of unknown length goes chunked.
        var streamed = request("/p", method: "POST", headers: ["Host": "h"])
        streamed.bodySource = .stream(RequestBodyStream(length: nil, eventLoop: runtime.eventLoopGroup.next()))
        XCTAssertEqual(ProxyRequestHead.bodyFraming(of: streamed), .chunked)
        XCTAssertTrue(head(handler, streamed).contains("Transfer-Encoding: chunked\r\n"))
        let chunked = HTTPUpstreamProtocol(configuration: handler.configuration, framing: .chunked)
        XCTAssertEqual(String(buffer: chunked.frameRequestBodyPart(ByteBuffer(string: String(repeating: "z", count: 26)))),
                       "1a\r\n" + String(repeating: "z", count: 26) + "\r\n")
        XCTAssertEqual(chunked.requestBodyTrailer(allocator: ByteBufferAllocator()).map { String(buffer: $0) }, "0\r\n\r\n")
        XCTAssertEqual(String(buffer: HTTPUpstreamProtocol(configuration: handler.configuration, framing: .length)
            .frameRequestBodyPart(ByteBuffer(string: "as is"))), "as is")

        let noHeaders = try self.handler("proxy_pass: http://127.0.0.1:8000\nproxy_pass_request_headers: off\nproxy_pass_request_body: off")
        let bare = head(noHeaders, request("/p", method: "POST", headers: ["Host": "h", "Content-Length": "5", "X-A": "1"], body: "hello"))
        XCTAssertEqual(bare, "POST /p HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: close\r\n\r\n")
        XCTAssertEqual(noHeaders.requestBodyUse, .spooled)
        XCTAssertEqual(try self.handler("proxy_pass: http://127.0.0.1\nproxy_request_buffering: off").requestBodyUse, .streamed)
    }

    func testOnlyAHeadSendingUpgradeMayBeAnsweredWithA101() throws {
        let websocket = try handler("proxy_pass: http://127.0.0.1:8000\nproxy_http_version: \"1.1\"\n"
                                    + "proxy_set_header: {Upgrade: $http_upgrade, Connection: upgrade}")
        let plain = try handler("proxy_pass: http://127.0.0.1:8000")
        let asking = request("/ws", headers: ["Host": "h", "Upgrade": "websocket", "Connection": "Upgrade"])
        let notAsking = request("/ws", headers: ["Host": "h"])
        // The WebSocket lines pass the client's Upgrade on; without them it is hop-by-hop and dropped.
        XCTAssertTrue(head(websocket, asking).contains("\r\nUpgrade: websocket\r\n"), head(websocket, asking))
        XCTAssertTrue(head(websocket, asking).contains("\r\nConnection: upgrade\r\n"), head(websocket, asking))
        XCTAssertFalse(head(plain, asking).contains("Upgrade"), head(plain, asking))
        XCTAssertTrue(websocket.asksUpstreamToUpgrade(asking, route: RouteInfo()))
        XCTAssertFalse(plain.asksUpstreamToUpgrade(asking, route: RouteInfo()))
        // `$http_upgrade` is empty for a client that did not ask: no Upgrade line, no 101.
        XCTAssertFalse(head(websocket, notAsking).contains("Upgrade"))
        XCTAssertFalse(websocket.asksUpstreamToUpgrade(notAsking, route: RouteInfo()))
        // A fixed Upgrade line does not make a client that did not ask into one that did (nginx keys on the
        // client's request too), nor does an empty one ask.
        let fixed = try handler("proxy_pass: http://127.0.0.1:8000\nproxy_set_header: {Upgrade: websocket}")
        XCTAssertFalse(fixed.asksUpstreamToUpgrade(notAsking, route: RouteInfo()))
        XCTAssertTrue(fixed.asksUpstreamToUpgrade(asking, route: RouteInfo()))
        let emptied = try handler("proxy_pass: http://127.0.0.1:8000\nproxy_set_header: {Upgrade: \"\"}")
        XCTAssertFalse(emptied.asksUpstreamToUpgrade(asking, route: RouteInfo()))
        // The parser of each accepts a 101 only when the head asked.
        let switching = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        var upgraded = HTTPUpstreamProtocol(configuration: websocket.configuration, framing: .length, upgradeSent: true)
            .makeResponseParser(for: asking)
        var bytes = ByteBuffer(string: switching)
        XCTAssertEqual(try upgraded.parseHead(&bytes)?.status, 101)
        var refused = HTTPUpstreamProtocol(configuration: plain.configuration, framing: .length).makeResponseParser(for: asking)
        bytes = ByteBuffer(string: switching)
        XCTAssertThrowsError(try refused.parseHead(&bytes)) { error in
            XCTAssertEqual(error as? ProxyResponseError, .unrequestedSwitch)
        }
    }

    // MARK: - Response headers

    func testRedirectDefaultOffAndRules() throws {
        let withURI = try handler("proxy_pass: http://127.0.0.1:8000/two/", match: "/one/", prefix: "/one/")
        let context = VariableContext(request: request("/one/x"), route: RouteInfo())
        func rewrite(_ handler: ProxyPassHandler, _ value: String) -> String? {
            handler.configuration.rewriteRedirect(value, from: value.startIndex, context: context)
        }
        XCTAssertEqual(rewrite(withURI, "http://127.0.0.1:8000/two/landing"), "/one/landing")
        XCTAssertNil(rewrite(withURI, "http://127.0.0.1:8000/other"))
        XCTAssertNil(rewrite(withURI, "HTTP://127.0.0.1:8000/two/x"), "the comparison is case-sensitive, as nginx's")
        let noURI = try handler("proxy_pass: http://127.0.0.1:8000")
        XCTAssertEqual(rewrite(noURI, "http://127.0.0.1:8000/a/b"), "/a/b")
        XCTAssertTrue(try handler("proxy_pass: http://127.0.0.1:8000\nproxy_redirect: off").configuration.redirects.isEmpty)
        let rules = try handler("""
            proxy_pass: http://127.0.0.1:8000
            proxy_redirect: {"http://internal/": "https://$host/", "/old/": /new/}
            """)
        XCTAssertEqual(rewrite(rules, "http://internal/x"), "https://client.test/x")
        XCTAssertEqual(rewrite(rules, "/old/y"), "/new/y")
        XCTAssertNil(rewrite(rules, "http://127.0.0.1:8000/a"), "own rules replace the default")
        XCTAssertEqual(ProxyPassConfiguration.afterURLMarker("5; URL=http://x/").map { String("5; URL=http://x/"[$0...]) }, "http://x/")
        XCTAssertNil(ProxyPassConfiguration.afterURLMarker("5"))
    }

    func testHiddenAndPassedHeaders() throws {
        let plain = try handler("proxy_pass: http://127.0.0.1:8000").configuration
        XCTAssertTrue(plain.hides("x-pad") && plain.hides("x-accel-redirect") && plain.hides("x-accel-limit-rate"))
        XCTAssertFalse(plain.hides("x-accel-buffering"), "read by the handler, then hidden")
        XCTAssertFalse(plain.hides("content-type"))
        let custom = try handler("proxy_pass: http://127.0.0.1:8000\nproxy_hide_header: [X-Internal]\nproxy_pass_header: X-Pad").configuration
        XCTAssertTrue(custom.hides("x-internal") && !custom.hides("x-pad"))
        XCTAssertTrue(custom.hides("X-Internal"), "names in any case")
        XCTAssertTrue(try handler("proxy_pass: http://127.0.0.1:8000").cancelsWhenClientLeaves)
        XCTAssertFalse(try handler("proxy_pass: http://127.0.0.1:8000\nproxy_ignore_client_abort: on").cancelsWhenClientLeaves)
    }

    func testFinishHonoursXAccelBufferingAndRewritesLocation() throws {
        let handler = try handler("proxy_pass: http://127.0.0.1:8000/two/", match: "/one/", prefix: "/one/")
        let loop = runtime.eventLoopGroup.next()
        let context = RequestContext(eventLoop: loop, logger: runtime.logger, route: RouteInfo())
        var response = KernelResponse(status: 302, headers: ["Location": "http://127.0.0.1:8000/two/x", "Refresh": "3; url=http://127.0.0.1:8000/two/y",
                                                             "X-Accel-Buffering": "no"],
                                      body: .stream(ResponseBodyStream(next: { loop.makeSucceededFuture(nil) }, cancel: {})))
        response.upstream = UpstreamReport(group: "g", attempts: [UpstreamAttempt(address: "a", status: 302, responseTime: 0, headerTime: 0)])
        let finished = handler.configuration.finish(response, request: request("/one/z"), context: context)
        // The rewritten Location goes out absolute (absolute_redirect on), the Refresh as rewritten: nginx's way.
        XCTAssertEqual(finished.headers["Location"], "http://client.test/one/x")
        XCTAssertEqual(finished.headers["Refresh"], "3; url=/one/y")
        XCTAssertNil(finished.headers["X-Accel-Buffering"])
        var relative = handler.configuration
        relative.redirectStyle.absolute = false
        XCTAssertEqual(relative.finish(response, request: request("/one/z"), context: context).headers["Location"], "/one/x")
        // A path the upstream sent, which no rule rewrites, stays a path.
        var own = response
        own.headers.replace("Location", "/elsewhere")
        XCTAssertEqual(handler.configuration.finish(own, request: request("/one/z"), context: context).headers["Location"], "/elsewhere")
        // The engine's own answers (no head from a peer) pass untouched.
        var failed = KernelResponse.error(502, "bad gateway")
        failed.headers.add("Location", "http://127.0.0.1:8000/two/x")
        failed.upstream = UpstreamReport(group: "g", attempts: [UpstreamAttempt(address: "a", status: 502, responseTime: 0)])
        XCTAssertEqual(handler.configuration.finish(failed, request: request("/one/z"), context: context).headers["Location"],
                       "http://127.0.0.1:8000/two/x")
    }

    func testTargetParsing() throws {
        let target = try ProxyTarget(parsing: "http://unix:/tmp/app.sock:/uri/")
        XCTAssertEqual(target.url, "http://unix:/tmp/app.sock")
        XCTAssertEqual(target.uri, "/uri/")
        XCTAssertEqual(target.proxyHost, "localhost")
        XCTAssertEqual(target.proxyPort, "")
        let plain = try ProxyTarget(parsing: "http://example.test/")
        XCTAssertEqual(plain.proxyHost, "example.test")
        XCTAssertEqual(plain.proxyPort, "80")
        XCTAssertEqual(plain.url, "http://example.test")
        XCTAssertEqual(ProxyRequestHead.escapeURI("/a b#c%d?e\u{7f}é"), "/a%20b%23c%25d%3Fe%7F%C3%A9")
        // A rendered template keeps its `%`, `?` and `#`; what would break the request line is escaped.
        XCTAssertEqual(PercentEncoding.escaped("/b\r\nX-Injected: 1?q=%41#f"), "/b%0D%0AX-Injected:%201?q=%41#f")
        XCTAssertEqual(PercentEncoding.escaped("/é\u{0}\t\u{7f}"), "/%C3%A9%00%09%7F")
        XCTAssertEqual(PercentEncoding.escaped("/plain/7?x=1"), "/plain/7?x=1")
    }
}
