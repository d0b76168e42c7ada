import KernelCore
import NIOCore
import XCTest

/// The variable registry and compiled templates, with nginx's values and edge cases.
final class VariableRegistryTests: XCTestCase {
    private func request(_ target: String = "/a/b?x=1&Page=2&empty=&flag", method: String = "GET",
                         headers: HeaderFields = [:], remote: SocketAddress? = try! SocketAddress(ipAddress: "192.0.2.7", port: 40000),
                         local: SocketAddress? = try! SocketAddress(ipAddress: "127.0.0.1", port: 8080),
                         scheme: String = "http", body: String? = nil) -> KernelRequest {
        let (path, query) = KernelRequest.splitTarget(target)!
        var connection = ConnectionInfo(protocolName: "http", listener: "127.0.0.1:8080", remoteAddress: remote,
                                        localAddress: local, scheme: scheme)
        connection.id = 17
        connection.requestNumber = 3
        var buffer: ByteBuffer? = nil
        if let body { buffer = ByteBuffer(string: body) }
        return KernelRequest(method: method, uri: target, path: path, query: query, version: .http1_1,
                             headers: headers, body: buffer, connection: connection)
    }

    private func render(_ text: String, _ request: KernelRequest, route: RouteInfo = RouteInfo(serverName: "example.com", location: "/a/"),
                        finished: FinishedExchange? = nil) throws -> String {
        let template = try VariableTemplate(text)
        if let finished { return template.render(VariableContext(finished: finished)) }
        return template.render(request, route: route)
    }

    func testRequestLineAndTargetVariables() throws {
        let request = request("/a/%62?x=1")
        XCTAssertEqual(try render("$request", request), "GET /a/%62?x=1 HTTP/1.1")
        XCTAssertEqual(try render("$request_method $request_uri $uri $document_uri", request), "GET /a/%62?x=1 /a/b /a/b")
        XCTAssertEqual(try render("[$args][$query_string][$is_args]", request), "[x=1][x=1][?]")
        XCTAssertEqual(try render("[$args][$is_args]", self.request("/plain")), "[][]")
        XCTAssertEqual(try render("$server_protocol $scheme [$https]", request), "HTTP/1.1 http []")
        XCTAssertEqual(try render("$scheme $https", self.request(scheme: "https")), "https on")
        XCTAssertEqual(try render("[$document_root][$remote_user]", request), "[][]")
    }

    func testNamesAndAddresses() throws {
        let request = request(headers: ["Host": "WWW.Example.COM:8080"])
        XCTAssertEqual(try render("$host|$server_name|$hostname", request), "www.example.com|example.com|\(hostname())")
        XCTAssertEqual(try render("$host", self.request()), "example.com", "without Host, the server's name")
        XCTAssertEqual(try render("$remote_addr:$remote_port $server_addr:$server_port", request), "192.0.2.7:40000 127.0.0.1:8080")
        let unix = self.request(remote: try SocketAddress(unixDomainSocketPath: "/tmp/k.sock"),
                                local: try SocketAddress(unixDomainSocketPath: "/tmp/k.sock"))
        XCTAssertEqual(try render("[$remote_addr][$remote_port][$server_addr][$server_port]", unix),
                       "[unix:][][unix:/tmp/k.sock][]", "ports are empty for a unix socket")
        XCTAssertEqual(try render("$connection $connection_requests $listener_protocol", request), "17 3 http")
    }

    func testHeaderVariablesAreCaseInsensitiveWithUnderscoreForDash() throws {
        let headers: HeaderFields = HeaderFields([("X-Custom-Thing", "one"), ("x-custom-thing", "two"), ("User-Agent", "curl/8"),
                                                  ("Cookie", "a=1; SID = abc "), ("Cookie", "b=2"),
                                                  ("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-For", "10.0.0.2"),
                                                  ("Content-Type", "text/plain"), ("Content-Length", "5")])
        let request = request(headers: headers)
        XCTAssertEqual(try render("$http_x_custom_thing", request), "one", "a repeated header gives its first value")
        XCTAssertEqual(try render("$HTTP_X_CUSTOM_THING", request), "one", "variable names are case-insensitive")
        XCTAssertEqual(try render("$http_user_agent", request), "curl/8")
        XCTAssertEqual(try render("[$http_missing]", request), "[]")
        XCTAssertEqual(try render("$http_cookie", request), "a=1; SID = abc ; b=2", "Cookie lines are joined with \"; \"")
        XCTAssertEqual(try render("$http_x_forwarded_for", request), "10.0.0.1, 10.0.0.2", "X-Forwarded-For lines with \", \"")
        XCTAssertEqual(try render("$proxy_add_x_forwarded_for", request), "10.0.0.1, 10.0.0.2, 192.0.2.7")
        XCTAssertEqual(try render("$proxy_add_x_forwarded_for", self.request()), "192.0.2.7")
        XCTAssertEqual(try render("$content_type $content_length", request), "text/plain 5")
        XCTAssertEqual(try render("[$content_length]", self.request(body: "hello")), "[5]", "a body read whole has a length")
        XCTAssertEqual(try render("[$content_length]", self.request()), "[]")
    }

    func testCookieVariables() throws {
        let request = request(headers: HeaderFields([("Cookie", "a=1; SID = abc;theme=dark"), ("Cookie", "late=yes; a=2")]))
        XCTAssertEqual(try render("$cookie_a $cookie_sid $cookie_theme $cookie_late", request), "1 abc dark yes")
        XCTAssertEqual(try render("[$cookie_the][$cookie_nope]", request), "[][]", "a cookie is named whole")
    }

    func testArgumentVariables() throws {
        let request = request("/?x=1&Page=2&empty=&flag&x=3&a%20b=c")
        XCTAssertEqual(try render("$arg_x", request), "1", "the first of a repeated argument")
        XCTAssertEqual(try render("[$arg_empty][$arg_flag][$arg_missing]", request), "[][][]", "an argument without = is not found")
        // nginx lower-cases variable names and compares argument names ASCII case-insensitively (ngx_http_arg):
        // `$arg_page` and `$arg_PAGE` both find `Page=2`, as nginx 1.22 answers.
        XCTAssertEqual(try render("$arg_page $arg_PAGE $arg_Page", request), "2 2 2")
        XCTAssertEqual(try render("[$arg_pag]", request), "[]", "an argument is named whole")
        XCTAssertEqual(try render("$arg_x", self.request("/?X=up")), "up")
    }

    func testCapturesAndNamedGroups() throws {
        let regex = try PCRERegex("^/(?<kind>[a-z]+)/(\\d+)/(?P<rest>.*)$")
        let request = request("/users/42/x/y")
        let route = RouteInfo(serverName: "s", location: "~ ...", captures: regex.captures(in: request.path)!)
        let template = try VariableTemplate("$1-$2-$3-[$4]-$kind-${rest}-$12", captureNames: regex.captureNames)
        XCTAssertEqual(template.render(request, route: route), "users-42-x/y-[]-users-x/y-users2", "$12 is $1 then \"2\"")
        XCTAssertEqual(template.highestCapture, 4)
        for digit in 1...9 {
            let captures = (1...9).map { "c\($0)" }
            XCTAssertEqual(try VariableTemplate("$\(digit)").render(request, route: RouteInfo(captures: captures)), "c\(digit)")
        }
        XCTAssertThrowsError(try VariableTemplate("$kind")) { error in
            XCTAssertEqual("\(error)", "unknown \"kind\" variable", "a named group is a variable only where its regex is")
        }
    }

    func testBraceSyntaxAndErrors() throws {
        let request = request(headers: ["Host": "h.example"])
        XCTAssertEqual(try render("${host}_x $host-x", request), "h.example_x h.example-x", "braces delimit a name")
        XCTAssertThrowsError(try VariableTemplate("$host_x")) { error in
            XCTAssertEqual("\(error)", "unknown \"host_x\" variable", "without braces the name runs on")
        }
        XCTAssertThrowsError(try VariableTemplate("a $nosuch b")) { error in
            XCTAssertEqual("\(error)", "unknown \"nosuch\" variable")
        }
        XCTAssertThrowsError(try VariableTemplate("${host")) { error in
            XCTAssertEqual("\(error)", "the closing bracket in \"host\" variable is missing")
        }
        XCTAssertThrowsError(try VariableTemplate("cost $")) { error in
            XCTAssertEqual("\(error)", "invalid variable name after \"$\" in \"cost $\" (a literal \"$\" cannot be written)")
        }
        XCTAssertThrowsError(try VariableTemplate("${a-b}"))
        XCTAssertEqual(try VariableTemplate("plain").constantText, "plain")
        XCTAssertNil(try VariableTemplate("x$uri").constantText)
        XCTAssertEqual(try VariableTemplate("$uri$args").variableNames, ["uri", "args"])
    }

    func testRequestIDIsStableWithinARequestAndDiffersAcrossRequests() throws {
        let template = try VariableTemplate("$request_id")
        func id(_ request: KernelRequest) -> String { template.render(request, route: RouteInfo()) }
        let first = request()
        let value = id(first)
        XCTAssertEqual(value.utf8.count, 32)
        XCTAssertTrue(value.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }, value)
        var copy = first
        copy.headers.add("X-Changed", "1")
        XCTAssertEqual(id(copy), value, "a copy of the request keeps its id")
        XCTAssertEqual(template.render(first, route: RouteInfo(serverName: "other")), value)

        // On a numbered connection: one id per request number, and per connection.
        var numbered: Set<String> = []
        for connection in UInt64(1)...10 {
            for number in 1...10 {
                var request = request()
                request.connection.id = connection
                request.connection.requestNumber = number
                numbered.insert(id(request))
            }
        }
        XCTAssertEqual(numbered.count, 100)
        // Without a connection serial (a listener that does not number connections): a process-wide serial.
        let unnumbered = (0..<100).map { _ in
            KernelRequest(method: "GET", uri: "/", path: "/", query: "", version: .http1_1, headers: [:],
                          connection: ConnectionInfo(protocolName: "http", listener: "-", remoteAddress: nil, localAddress: nil))
        }
        XCTAssertEqual(Set(unnumbered.map(id)).count, 100)
        XCTAssertTrue(Set(unnumbered.map(id)).isDisjoint(with: numbered))
        XCTAssertEqual(unnumbered.map(id), unnumbered.map(id), "evaluated again, the same ids")
    }

    func testResponseAndFinishedExchangeVariables() throws {
        let request = request()
        XCTAssertEqual(try render("$status $body_bytes_sent $bytes_sent $request_time", request), "000 0 0 0.000",
                       "before the response, as nginx shows them")
        XCTAssertEqual(try render("[$upstream_addr][$upstream_status][$upstream_response_time]", request), "[][][]")
        let upstream = UpstreamReport(group: "backend", attempts: [
            UpstreamAttempt(address: "127.0.0.1:6001", status: nil, responseTime: 0.0012, connectTime: nil),
            UpstreamAttempt(address: "unix:/run/app.sock", status: 200, responseTime: 0.25, connectTime: 0.001, headerTime: 0.2),
        ])
        let finished = FinishedExchange(request: request, route: RouteInfo(serverName: "s", location: "/a/"), status: 499,
                                        bodyBytesSent: 120, bytesSent: 300, startNanoseconds: 1_000_000_000,
                                        endNanoseconds: 2_234_500_000, upstream: upstream)
        XCTAssertEqual(try render("$status $body_bytes_sent $bytes_sent $request_time $location", request, finished: finished),
                       "499 120 300 1.235 /a/")
        XCTAssertEqual(try render("$upstream_addr|$upstream_status|$upstream_response_time|$upstream_connect_time|$upstream_header_time",
                                  request, finished: finished),
                       "127.0.0.1:6001, unix:/run/app.sock|-, 200|0.001, 0.250|-, 0.001|-, 0.200")
        var response = KernelResponse(status: 201)
        response.upstream = UpstreamReport(group: "g", attempts: [UpstreamAttempt(address: "10.0.0.9:80", status: 201, responseTime: 0)])
        let context = VariableContext(request: request, route: RouteInfo(), response: response)
        XCTAssertEqual(try VariableTemplate("$status $upstream_addr").render(context), "201 10.0.0.9:80")
    }

    func testTimeVariables() throws {
        let request = request()
        let before = KernelClock.wallClockMilliseconds()
        let msec = try render("$msec", request)
        let after = KernelClock.wallClockMilliseconds()
        let parts = msec.split(separator: ".")
        XCTAssertEqual(parts.count, 2)
        XCTAssertEqual(parts[1].count, 3)
        let value = UInt64(parts[0])! * 1000 + UInt64(parts[1])!
        XCTAssertTrue(value >= before && value <= after, msec)
        let local = try render("$time_local", request)
        XCTAssertNotNil(local.range(of: #"^\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}$"#, options: .regularExpression), local)
        let iso = try render("$time_iso8601", request)
        XCTAssertNotNil(iso.range(of: #"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}$"#, options: .regularExpression), iso)
    }

    func testModulesAddVariablesAndPrefixes() throws {
        var registry = VariableRegistry.standard
        registry.register("model_name") { context in context.route.location.isEmpty ? nil : "m:" + context.route.location }
        registry.registerPrefix("tag_") { rest in { _ in rest.uppercased() } }
        let template = try VariableTemplate("$model_name $tag_blue $uri", variables: registry)
        XCTAssertEqual(template.render(request(), route: RouteInfo(location: "/v2")), "m:/v2 BLUE /a/b")
        XCTAssertTrue(registry.names.contains("tag_NAME"))
        XCTAssertThrowsError(try VariableTemplate("$model_name"), "the standard registry is unchanged")
    }

    private func hostname() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, 255)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
