import KernelCore
import XCTest

/// Configuration errors of the routing section: exact text with `file:line:column` and key path.
final class RoutingConfigErrorTests: XCTestCase {
    private var fixture: RoutingFixture!

    override func setUpWithError() throws {
        fixture = try RoutingFixture()
    }

    override func tearDown() {
        fixture = nil
    }

    /// A location list whose third location has the given lines (after `- location: /c`).
    private func thirdLocation(_ lines: String) -> String {
        """
        routing:
          servers:
            - locations:
                - location: /a
                  return: 200
                - location: /b
                  return: 200
                - location: /c
        \(lines)
        """
    }

    func testBadStatusCode() {
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: abc")),
                       "FILE:9:19: routing.servers[0].locations[2].return: expected a status code 100-599, found \"abc\"")
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: 700 \"x\"")),
                       "FILE:9:19: routing.servers[0].locations[2].return: expected a status code 100-599, found \"700\"")
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: 20")),
                       "FILE:9:19: routing.servers[0].locations[2].return: expected a status code 100-599, found \"20\"")
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: 444")),
                       "FILE:9:19: routing.servers[0].locations[2].return: 444 (close the connection without a response) is not supported; use a status such as 403 or 404")
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: 101")),
                       "FILE:9:19: routing.servers[0].locations[2].return: a 1xx status is not a final response, found \"101\"")
    }

    func testReturnShapeErrors() {
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: 200 hello world")),
                       "FILE:9:19: routing.servers[0].locations[2].return: expected a status code and one text or URL (quote a text with spaces: 200 \"hello world\"), found \"200 hello world\"")
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: 200 \"open")),
                       "FILE:9:19: routing.servers[0].locations[2].return: unterminated quoted text in \"200 \"open\"")
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: 204 \"body\"")),
                       "FILE:9:19: routing.servers[0].locations[2].return: a 204 response has no body, found the text \"body\"")
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: {code: 200}")),
                       "FILE:9:19: routing.servers[0].locations[2].return: expected a string, found a mapping")
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: [200, a, b]")),
                       "FILE:9:19: routing.servers[0].locations[2].return: expected [CODE], [CODE, TEXT], [CODE, URL] or [URL], found 3 items")
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: [2OO, \"x\"]")),
                       "FILE:9:20: routing.servers[0].locations[2].return[0]: expected a status code 100-599, found \"2OO\"")
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: [200, \"$bad\"]")),
                       "FILE:9:25: routing.servers[0].locations[2].return[1]: unknown \"bad\" variable")
        XCTAssertEqual(fixture.loadError(thirdLocation("          return:")),
                       "FILE:9:18: routing.servers[0].locations[2].return: expected a string, found null")
    }

    /// Three good locations, then `lines` (from line 10: a fourth location is `locations[3]` at column 21).
    private func afterThreeLocations(_ lines: String) -> String {
        thirdLocation("          return: 200\n" + lines)
    }

    func testUnknownAndMalformedVariables() {
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: 200 \"$nope\"")),
                       "FILE:9:19: routing.servers[0].locations[2].return: unknown \"nope\" variable")
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: '200 \"cost $\"'")),
                       "FILE:9:19: routing.servers[0].locations[2].return: invalid variable name after \"$\" in \"cost $\" (a literal \"$\" cannot be written)")
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: 200 \"$1\"")),
                       "FILE:9:19: routing.servers[0].locations[2].return: $1 needs a regular expression location (~ or ~*)")
        XCTAssertEqual(fixture.loadError("""
            routing:
              servers:
                - locations:
                    - location: ~ ^/(a)(b)
                      return: 200 "$3"
            """),
                       "FILE:5:19: routing.servers[0].locations[0].return: $3 refers to a group the regular expression \"^/(a)(b)\" does not have (it has 2)")
    }

    func testBadRegularExpressions() {
        XCTAssertEqual(fixture.loadError(afterThreeLocations("        - location: ~ ^/(a\n          return: 200")),
                       "FILE:10:21: routing.servers[0].locations[3].location: invalid regular expression \"^/(a\": missing closing parenthesis at offset 4")
        XCTAssertEqual(fixture.loadError(afterThreeLocations("        - location: ~* a**\n          return: 200")),
                       "FILE:10:21: routing.servers[0].locations[3].location: invalid regular expression \"a**\": quantifier does not follow a repeatable item at offset 2")
        XCTAssertEqual(fixture.loadError("""
            routing:
              servers:
                - server_name: [ok.example, "~^(www"]
            """),
                       "FILE:3:33: routing.servers[0].server_name[1]: invalid regular expression \"^(www\": missing closing parenthesis at offset 5")
    }

    func testHandlerCountErrors() {
        XCTAssertEqual(fixture.loadError(thirdLocation("          client_max_body_size: 1m")),
                       "FILE:8:11: routing.servers[0].locations[2]: missing a handler (one of: return)")
        XCTAssertEqual(fixture.loadError(thirdLocation("          retrun: 200")),
                       "FILE:9:19: routing.servers[0].locations[2].retrun: unknown key (a location needs one handler: return)")
        XCTAssertEqual(fixture.loadError("echo: {}\n" + thirdLocation("          return: 200\n          echo_pass: x"), withEcho: true),
                       "FILE:11:22: routing.servers[0].locations[2].echo_pass: a location has one handler, found \"return\" and \"echo_pass\"")
        XCTAssertEqual(fixture.loadError("echo: {}\n" + thirdLocation("          echo_pas: x"), withEcho: true),
                       "FILE:10:21: routing.servers[0].locations[2].echo_pas: unknown key (a location needs one handler: echo_pass, return)")
    }

    func testUnknownKeysAfterTheHandlerRan() {
        XCTAssertEqual(fixture.loadError(thirdLocation("          return: 200\n          proxy_pass: x")),
                       "FILE:10:11: routing.servers[0].locations[2].proxy_pass: unknown key (expected one of: absolute_redirect, access_log, client_body_buffer_size, client_body_temp_path, client_max_body_size, location, port_in_redirect, return, server_name_in_redirect)")
        XCTAssertEqual(fixture.loadError("echo: {}\n" + thirdLocation("          echo_pass: x\n          echo_opton: y"), withEcho: true),
                       "FILE:11:11: routing.servers[0].locations[2].echo_opton: unknown key (expected one of: absolute_redirect, access_log, client_body_buffer_size, client_body_temp_path, client_max_body_size, echo_option, echo_pass, location, port_in_redirect, server_name_in_redirect)")
        XCTAssertEqual(fixture.loadError("routing:\n  servers:\n    - server_names: x\n"),
                       "FILE:3:7: routing.servers[0].server_names: unknown key (expected one of: absolute_redirect, access_log, client_body_buffer_size, client_body_temp_path, client_max_body_size, default_server, listen, locations, port_in_redirect, return, server_name, server_name_in_redirect)")
        XCTAssertEqual(fixture.loadError("routing:\n  server: []\n"),
                       "FILE:2:3: routing: missing required key \"servers\"")
    }

    func testStructureErrors() {
        XCTAssertEqual(fixture.loadError("routing:\n  servers: []\n"),
                       "FILE:2:12: routing.servers: expected at least one server, found an empty list")
        XCTAssertEqual(fixture.loadError("routing:\n  servers:\n    - locations: {location: /}\n"),
                       "FILE:3:18: routing.servers[0].locations: expected a list, found a mapping")
        XCTAssertEqual(fixture.loadError("routing:\n  servers:\n    - locations:\n        - return: 200\n"),
                       "FILE:4:11: routing.servers[0].locations[0]: missing required key \"location\"")
        XCTAssertEqual(fixture.loadError("routing:\n  servers:\n    - default_server: maybe\n"),
                       "FILE:3:23: routing.servers[0].default_server: expected true or false, found \"maybe\"")
    }

    func testLocationSyntaxErrors() {
        XCTAssertEqual(fixture.loadError(afterThreeLocations("        - location: images/\n          return: 200")),
                       "FILE:10:21: routing.servers[0].locations[3].location: expected a path starting with \"/\" (forms: = /exact, ^~ /prefix, ~ regex, ~* regex, /prefix), found \"images/\"")
        XCTAssertEqual(fixture.loadError(afterThreeLocations("        - location: \"@fallback\"\n          return: 200")),
                       "FILE:10:21: routing.servers[0].locations[3].location: named locations (@name) are not supported")
        XCTAssertEqual(fixture.loadError(afterThreeLocations("        - location: /a\n          return: 200")),
                       "FILE:10:21: routing.servers[0].locations[3].location: duplicate location \"/a\" (first defined at FILE:4:21)")
        XCTAssertEqual(fixture.loadError(afterThreeLocations("        - location: ^~ /b\n          return: 200")),
                       "FILE:10:21: routing.servers[0].locations[3].location: duplicate location \"^~ /b\" (first defined at FILE:6:21)")
    }

    func testSizeAndLogErrors() {
        XCTAssertEqual(fixture.loadError(thirdLocation("          client_max_body_size: 10q\n          return: 200")),
                       "FILE:9:33: routing.servers[0].locations[2].client_max_body_size: expected a size such as 512, 64k, 100m or 1g, found \"10q\"")
        XCTAssertEqual(fixture.loadError(thirdLocation("          access_log: {path: a.log, format: xml}\n          return: 200")),
                       "FILE:9:45: routing.servers[0].locations[2].access_log.format: unknown log format \"xml\" (known: combined, json)")
        XCTAssertEqual(fixture.loadError(thirdLocation("          access_log: {format: json}\n          return: 200")),
                       "FILE:9:23: routing.servers[0].locations[2].access_log: missing required key \"path\"")
        XCTAssertEqual(fixture.loadError(thirdLocation("          access_log: {path: a.log, buffer: 32k}\n          return: 200")),
                       "FILE:9:37: routing.servers[0].locations[2].access_log.buffer: unknown key (expected one of: format, path)")
    }

    func testUnopenableAccessLogFailsTheRun() throws {
        // Missing directories are created (`mkdir -p`); one that cannot be (under /proc, even as root) is named.
        XCTAssertThrowsError(try fixture.load("routing:\n  servers:\n    - access_log: /proc/kernel-logs/a.log\n      return: 200\n")) { error in
            XCTAssertEqual("\(error)".replacingOccurrences(of: fixture.directory, with: "DIR"),
                           "DIR/kernel-1.yaml:3:19: routing.servers[0].access_log: cannot open log file \"/proc/kernel-logs/a.log\": mkdir() \"/proc/kernel-logs\" failed (2: No such file or directory)")
        }
        try fixture.load("routing:\n  servers:\n    - access_log: logs/new/a.log\n      return: 200\n")
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(fixture.directory)/logs/new/a.log"))
    }

    func testServerErrors() {
        XCTAssertEqual(fixture.loadError("""
            routing:
              servers:
                - default_server: true
                - listen: 127.0.0.1:9000
                - default_server: yes
            """),
                       "FILE:5:23: routing.servers[2].default_server: a second default server for every listener (the first is routing.servers[0])")
        XCTAssertEqual(fixture.loadError("""
            routing:
              servers:
                - listen: 127.0.0.1:9000
                  default_server: true
                - listen: [127.0.0.1:9001, 127.0.0.1:9000]
                  default_server: true
            """),
                       "FILE:6:23: routing.servers[1].default_server: a second default server for 127.0.0.1:9000 (the first is routing.servers[0])")
        XCTAssertEqual(fixture.loadError("routing:\n  servers:\n    - listen: [127.0.0.1:9000, \"host:port\"]\n"),
                       "FILE:3:32: routing.servers[0].listen[1]: expected a listener address as in http.listen or uwsgi.listen (127.0.0.1:8080, [::1]:8080, 8080, unix:/path), found \"host:port\"")
        XCTAssertEqual(fixture.loadError("routing:\n  servers:\n    - server_name: w*.example.com\n"),
                       "FILE:3:20: routing.servers[0].server_name: a wildcard server name has one \"*\" at its start (\"*.example.com\") or end (\"www.example.*\"), found \"w*.example.com\"")
    }

    /// Two default servers on different listeners are fine; the tables do not mix.
    func testDefaultServersOnDifferentListeners() throws {
        try fixture.load("""
            routing:
              servers:
                - listen: 127.0.0.1:9000
                  default_server: true
                  return: 200 "9000"
                - listen: 127.0.0.1:9001
                  default_server: true
                  return: 200 "9001"
            """)
        XCTAssertEqual(try fixture.respond("/", listener: "127.0.0.1:9001").body, "9001")
    }
}
