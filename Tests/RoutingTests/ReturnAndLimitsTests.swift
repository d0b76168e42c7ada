import Foundation
import KernelCore
import XCTest

/// `return` responses, `client_max_body_size` inheritance, access logs and handler directives of other modules.
final class ReturnAndLimitsTests: XCTestCase {
    func testRelativeRedirectsGoOutAbsoluteAsNginxSendsThem() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - server_name: [example.com, www.example.com]
                  locations:
                    - location: = /old
                      return: 301 /new
                    - location: = /templated
                      return: 302 /new$is_args$args
                    - location: = /relative-kept
                      absolute_redirect: false
                      return: 301 /new
                    - location: = /no-port
                      port_in_redirect: off
                      return: 301 /new
                    - location: = /server-name
                      server_name_in_redirect: on
                      return: 301 /new
                    - location: = /absolute
                      return: 301 https://other.example/x
                - server_name: "*.wild.example"
                  port_in_redirect: false
                  locations:
                    - location: = /old
                      server_name_in_redirect: true
                      return: 301 /new
            """)
        // The host the client asked for ($host, without its port) and the port it connected to (8080 here).
        XCTAssertEqual(try fixture.respond("/old", host: "WWW.Example.com:9999").headers["Location"], "http://www.example.com:8080/new")
        XCTAssertEqual(try fixture.respond("/templated?a=1", host: "example.com").headers["Location"], "http://example.com:8080/new?a=1")
        XCTAssertEqual(try fixture.respond("/old", host: "example.com", scheme: "https").headers["Location"], "https://example.com:8080/new")
        XCTAssertEqual(try fixture.respond("/relative-kept", host: "example.com").headers["Location"], "/new")
        XCTAssertEqual(try fixture.respond("/no-port", host: "example.com").headers["Location"], "http://example.com/new")
        XCTAssertEqual(try fixture.respond("/server-name", host: "www.example.com").headers["Location"], "http://example.com:8080/new")
        XCTAssertEqual(try fixture.respond("/absolute", host: "example.com").headers["Location"], "https://other.example/x")
        // No Host (HTTP/1.0) and a server name that names no one host: the address the client connected to.
        XCTAssertEqual(try fixture.respond("/old").headers["Location"], "http://example.com:8080/new")
        XCTAssertEqual(try fixture.respond("/old", host: "a.wild.example").headers["Location"], "http://127.0.0.1/new")
    }

    func testReturnVariants() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - server_name: example.com
                  locations:
                    - location: = /text
                      return: 200 "hello"
                    - location: = /escaped
                      return: 201 "line\\n\\"quoted\\" 'single'"
                    - location: = /single
                      return: "403 'forbidden here'"
                    - location: = /empty
                      return: 204
                    - location: = /error
                      return: 404
                    - location: = /unknown-code
                      return: 499
                    - location: = /moved
                      return: 301 https://example.org$request_uri
                    - location: ^~ /moved
                      return: 301 https://example.org$uri
                    - location: = /url
                      return: https://example.org/
                    - location: = /scheme
                      return: $scheme://$host$uri$is_args$args
                    - location: = /list
                      return: [200, "kernel is running: POST /v2\\n"]
                    - location: = /list-redirect
                      return: [308, "https://example.org$uri"]
                    - location: = /vars
                      return: 200 "$request_method $server_protocol $remote_addr $server_port $http_user_agent [$arg_b] [$${args}]"
            """)
        var answer = try fixture.respond("/text")
        XCTAssertEqual(answer.status, 200)
        XCTAssertEqual(answer.headers["Content-Type"], "text/plain")
        XCTAssertEqual(answer.body, "hello")

        XCTAssertEqual(try fixture.respond("/escaped").body, "line\n\"quoted\" 'single'")
        answer = try fixture.respond("/escaped")
        XCTAssertEqual(answer.status, 201)

        answer = try fixture.respond("/single")
        XCTAssertEqual(answer.status, 403)
        XCTAssertEqual(answer.body, "forbidden here")

        answer = try fixture.respond("/empty")
        XCTAssertEqual(answer.status, 204)
        XCTAssertEqual(answer.body, "")
        XCTAssertNil(answer.headers["Content-Type"])

        answer = try fixture.respond("/error")
        XCTAssertEqual(answer.status, 404)
        XCTAssertEqual(answer.headers["Content-Type"], "application/json")
        XCTAssertEqual(answer.body, "{\"error\":\"not found\"}")

        answer = try fixture.respond("/unknown-code")
        XCTAssertEqual(answer.status, 499)
        XCTAssertEqual(answer.body, "{\"error\":\"error 499\"}")

        answer = try fixture.respond("/moved?a=1&b=2")
        XCTAssertEqual(answer.status, 301)
        XCTAssertEqual(answer.headers["Location"], "https://example.org/moved?a=1&b=2")
        XCTAssertEqual(answer.headers["Content-Type"], "text/html")
        XCTAssertEqual(answer.body, "<html>\r\n<head><title>301 Moved Permanently</title></head>\r\n<body>\r\n<center><h1>301 Moved Permanently</h1></center>\r\n</body>\r\n</html>\r\n")

        answer = try fixture.respond("/moved%0d%0aSet-Cookie:%20a=b/%C3%A9")
        XCTAssertEqual(answer.headers["Location"], "https://example.org/moved%0D%0ASet-Cookie:%20a=b/%C3%A9",
                       "decoded bytes that cannot stand in a header are percent-encoded again")

        answer = try fixture.respond("/url")
        XCTAssertEqual(answer.status, 302)
        XCTAssertEqual(answer.headers["Location"], "https://example.org/")

        answer = try fixture.respond("/scheme?q=1", host: "Example.com:8080", scheme: "https")
        XCTAssertEqual(answer.status, 302)
        XCTAssertEqual(answer.headers["Location"], "https://example.com/scheme?q=1")
        XCTAssertEqual(try fixture.respond("/scheme").headers["Location"], "http://example.com/scheme")

        answer = try fixture.respond("/list")
        XCTAssertEqual(answer.body, "kernel is running: POST /v2\n", "the list form needs no nginx quoting")
        answer = try fixture.respond("/list-redirect")
        XCTAssertEqual(answer.status, 308)
        XCTAssertEqual(answer.headers["Location"], "https://example.org/list-redirect")

        answer = try fixture.respond("/vars?a=1&b=two", headers: [("User-Agent", "curl/8")])
        XCTAssertEqual(answer.body, "GET HTTP/1.1 192.0.2.7 8080 curl/8 [two] [a=1&b=two]")
    }

    func testClientMaxBodySizeInheritance() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - server_name: default-size
                  locations:
                    - location: /
                      return: 200
                - server_name: sized
                  client_max_body_size: 100m
                  locations:
                    - location: /inherits
                      return: 200
                    - location: /small
                      client_max_body_size: 64k
                      return: 200
                    - location: /unlimited
                      client_max_body_size: 0
                      return: 200
            """)
        XCTAssertEqual(fixture.decision("/", host: "default-size").maxBodySize, 1 << 20, "nginx's default is 1m")
        XCTAssertEqual(fixture.decision("/inherits", host: "sized").maxBodySize, 100 << 20)
        XCTAssertEqual(fixture.decision("/small", host: "sized").maxBodySize, 64 << 10)
        XCTAssertNil(fixture.decision("/unlimited", host: "sized").maxBodySize, "0 is unlimited")
        XCTAssertEqual(fixture.decision("/nothing-here", host: "sized").maxBodySize, 100 << 20,
                       "the 404 of a server uses the server's limit")
    }

    func testAccessLogsAreOpenedThroughTheRegistryAndInherited() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - server_name: logged
                  access_log: {path: logs-access.json, format: json}
                  locations:
                    - location: /
                      return: 200 "ok"
                    - location: /quiet
                      access_log: off
                      return: 200
                    - location: /quoted-off
                      access_log: "off"
                      return: 200
                    - location: /combined
                      access_log: logs-combined.log
                      return: 200
                - server_name: silent
                  locations:
                    - location: /
                      return: 200
            """)
        XCTAssertEqual(fixture.decision("/", host: "logged").accessLog?.format.name, "json")
        XCTAssertEqual(fixture.decision("/", host: "logged").accessLog?.file.path, "\(fixture.directory)/logs-access.json",
                       "relative paths resolve against the configuration file")
        XCTAssertNil(fixture.decision("/quiet", host: "logged").accessLog)
        XCTAssertNil(fixture.decision("/quoted-off", host: "logged").accessLog, "\"off\" quoted is off too, not a file")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(fixture.directory)/off"))
        XCTAssertEqual(fixture.decision("/combined", host: "logged").accessLog?.format.name, "combined")
        XCTAssertNil(fixture.decision("/", host: "silent").accessLog, "access logs are off unless configured")
        XCTAssertEqual(fixture.decision("/missing", host: "logged").accessLog?.format.name, "json", "404s are logged too")

        _ = try fixture.respond("/", host: "logged")
        let line = try String(contentsOfFile: "\(fixture.directory)/logs-access.json", encoding: .utf8)
        XCTAssertTrue(line.contains("\"request\":\"GET / HTTP/1.1\",\"status\":200,\"body_bytes_sent\":2"), line)
        XCTAssertTrue(line.contains("\"server_name\":\"logged\",\"location\":\"/\""), line)
        // Reopen goes through the runtime's registry, which knows the file.
        XCTAssertEqual(fixture.runtime.logFiles.reopenAll(), [])
    }

    func testCheckModeOpensNoLogFile() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - access_log: never-created.log
                  return: 200
            """, mode: .check)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(fixture.directory)/never-created.log"))
    }

    func testHandlerDirectiveOfAnotherModule() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            echo: {}
            routing:
              servers:
                - locations:
                    - location: "^~ /v2/"
                      echo_pass: upstream-a
                      echo_option: opt
                    - location: = /bare
                      echo_pass:
                    - location: "~ ^/re"
                      echo_pass: r
            """, withEcho: true)
        XCTAssertEqual(try fixture.respond("/v2/models").body, "upstream-a opt /v2/ ^~ /v2/")
        XCTAssertEqual(try fixture.respond("/bare").body, "- - /bare = /bare", "a null value still names the handler")
        XCTAssertEqual(try fixture.respond("/regex").body, "r - nil ~ ^/re")
    }

    func testProxyingPrefixLocationRedirectsTheUnslashedPath() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            echo: {}
            routing:
              servers:
                - locations:
                    - location: /api/
                      echo_pass: backend
                    - location: /docs/
                      return: 200 "docs"
                    - location: /both/
                      echo_pass: backend
                    - location: = /both
                      return: 200 "exact"
                    - location: "~ ^/api"
                      return: 200 "regex"
            """, withEcho: true)
        // The redirect comes before the regex search, as nginx's does.
        let answer = try fixture.respond("/api?x=1")
        XCTAssertEqual(answer.status, 301)
        XCTAssertEqual(answer.headers["Location"], "http://127.0.0.1:8080/api/?x=1")
        XCTAssertEqual(answer.decision.route.location, "/api/")
        XCTAssertEqual(try fixture.respond("/api").headers["Location"], "http://127.0.0.1:8080/api/")
        XCTAssertEqual(try fixture.respond("/api/x").body, "regex", "below the prefix, regexes still win as usual")
        XCTAssertEqual(try fixture.respond("/both/x").body, "backend - /both/ /both/")
        XCTAssertEqual(try fixture.respond("/docs").status, 404, "only locations whose handler declares .proxies redirect")
        XCTAssertEqual(try fixture.respond("/both").body, "exact", "an exact location takes the path over")
    }
}
