import KernelCore
import XCTest

/// nginx's `location` precedence, checked through the real module decode and `KernelRuntime.begin`.
final class LocationPrecedenceTests: XCTestCase {
    /// The example table of nginx's `location` documentation.
    func testNginxDocumentationExample() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - locations:
                    - location: "= /"
                      return: 200 "A"
                    - location: /
                      return: 200 "B"
                    - location: /documents/
                      return: 200 "C"
                    - location: "^~ /images/"
                      return: 200 "D"
                    - location: "~* \\\\.(gif|jpg|jpeg)$"
                      return: 200 "E"
            """)
        XCTAssertEqual(try fixture.respond("/").body, "A")
        XCTAssertEqual(try fixture.respond("/index.html").body, "B")
        XCTAssertEqual(try fixture.respond("/documents/document.html").body, "C")
        XCTAssertEqual(try fixture.respond("/images/1.gif").body, "D")
        XCTAssertEqual(try fixture.respond("/documents/1.jpg").body, "E")
        // The route names the location as written.
        XCTAssertEqual(fixture.decision("/documents/1.jpg").route.location, "~* \\.(gif|jpg|jpeg)$")
        XCTAssertEqual(fixture.decision("/documents/1.jpg").route.captures, ["jpg"])
        XCTAssertEqual(fixture.decision("/").route.location, "= /")
    }

    func testCaseInsensitiveRegexAndCaseSensitiveRegex() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - locations:
                    - location: "~ \\\\.PNG$"
                      return: 200 "upper"
                    - location: "~* \\\\.png$"
                      return: 200 "any"
                    - location: /
                      return: 200 "root"
            """)
        XCTAssertEqual(try fixture.respond("/a.PNG").body, "upper")
        XCTAssertEqual(try fixture.respond("/a.png").body, "any", "~ is case-sensitive, so ~* answers")
        XCTAssertEqual(try fixture.respond("/a.Png").body, "any")
        XCTAssertEqual(try fixture.respond("/a.gif").body, "root")
    }

    func testRegexesAreTriedInFileOrderNotByLength() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - locations:
                    - location: "~ ^/api"
                      return: 200 "first"
                    - location: "~ ^/api/v1/items$"
                      return: 200 "second"
            """)
        XCTAssertEqual(try fixture.respond("/api/v1/items").body, "first")
    }

    func testLongestPrefixWinsRegardlessOfOrder() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - locations:
                    - location: /a
                      return: 200 "a"
                    - location: /a/b/c
                      return: 200 "abc"
                    - location: /a/b
                      return: 200 "ab"
            """)
        XCTAssertEqual(try fixture.respond("/a/b/c/d").body, "abc")
        XCTAssertEqual(try fixture.respond("/a/b/x").body, "ab")
        XCTAssertEqual(try fixture.respond("/a/bc").body, "ab", "prefixes are strings, not path segments")
        XCTAssertEqual(try fixture.respond("/ab").body, "a")
        XCTAssertEqual(try fixture.respond("/b").status, 404)
    }

    func testRegexBeatsLongestPlainPrefixButNotCaretTilde() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - locations:
                    - location: /static/
                      return: 200 "plain"
                    - location: "^~ /static/fixed/"
                      return: 200 "stop"
                    - location: "~ \\\\.js$"
                      return: 200 "regex"
            """)
        XCTAssertEqual(try fixture.respond("/static/app.js").body, "regex")
        XCTAssertEqual(try fixture.respond("/static/fixed/app.js").body, "stop")
        XCTAssertEqual(try fixture.respond("/static/app.css").body, "plain")
        XCTAssertEqual(try fixture.respond("/other/app.js").body, "regex")
    }

    func testShorterCaretTildeDoesNotStopRegexesWhenALongerPlainPrefixMatches() throws {
        // nginx looks at the longest matching prefix only: a shorter ^~ does not stop the regex search.
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - locations:
                    - location: "^~ /a/"
                      return: 200 "stop"
                    - location: /a/b/
                      return: 200 "plain"
                    - location: "~ \\\\.txt$"
                      return: 200 "regex"
            """)
        XCTAssertEqual(try fixture.respond("/a/b/x.txt").body, "regex")
        XCTAssertEqual(try fixture.respond("/a/x.txt").body, "stop")
    }

    func testExactLocationOnlyMatchesTheWholePath() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - locations:
                    - location: "= /health"
                      return: 200 "exact"
                    - location: /health
                      return: 200 "prefix"
                    - location: "~ health"
                      return: 200 "regex"
            """)
        XCTAssertEqual(try fixture.respond("/health").body, "exact")
        XCTAssertEqual(try fixture.respond("/health?x=1").body, "exact", "the query is not part of the match")
        XCTAssertEqual(try fixture.respond("/health/").body, "regex")
        XCTAssertEqual(try fixture.respond("/healthz").body, "regex")
    }

    func testAttachedModifiersAsNginxAllows() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - locations:
                    - location: "=/x"
                      return: 200 "exact"
                    - location: "^~/y/"
                      return: 200 "stop"
                    - location: "~*\\\\.TXT$"
                      return: 200 "regex"
            """)
        XCTAssertEqual(try fixture.respond("/x").body, "exact")
        XCTAssertEqual(try fixture.respond("/y/a.txt").body, "stop")
        XCTAssertEqual(try fixture.respond("/z/a.txt").body, "regex")
    }

    func testMatchesTheNormalisedPath() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - locations:
                    - location: "= /a/b"
                      return: 200 "ab"
                    - location: /
                      return: 200 "root"
            """)
        XCTAssertEqual(try fixture.respond("/a/./x/../b").body, "ab")
        XCTAssertEqual(try fixture.respond("//a//b").body, "ab")
        XCTAssertEqual(try fixture.respond("/a/%62").body, "ab")
    }

    func testRegexCapturesAndPCREClasses() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - locations:
                    - location: "~ ^/users/(\\\\d+)/(?:posts|notes)/([\\\\w-]+)$"
                      return: 200 "user $1 item $2"
            """)
        let answer = try fixture.respond("/users/42/notes/first-note")
        XCTAssertEqual(answer.body, "user 42 item first-note")
        XCTAssertEqual(answer.decision.route.captures, ["42", "first-note"])
        XCTAssertEqual(try fixture.respond("/users/4d/notes/x").status, 404, "\\d is a digit, not the letter d")
        XCTAssertEqual(try fixture.respond("/users/42/other/x").status, 404)
    }

    func testNoMatchIsJSON404() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - server_name: api.example.com
                  locations:
                    - location: /v1/
                      return: 200 "v1"
            """)
        let answer = try fixture.respond("/v2/x")
        XCTAssertEqual(answer.status, 404)
        XCTAssertEqual(answer.headers["Content-Type"], "application/json")
        XCTAssertEqual(answer.body, "{\"error\":\"not found\"}")
        XCTAssertEqual(answer.decision.route.serverName, "api.example.com")
        XCTAssertEqual(answer.decision.route.location, "")
    }

    func testServerWithoutLocationsAnswers404() throws {
        let fixture = try RoutingFixture()
        try fixture.load("routing:\n  servers:\n    - server_name: x\n")
        XCTAssertEqual(try fixture.respond("/").status, 404)
    }

    func testServerLevelReturnAnswersBeforeLocations() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - return: 301 https://example.com$request_uri
                  locations:
                    - location: /
                      return: 200 "never"
            """)
        let answer = try fixture.respond("/a?b=1")
        XCTAssertEqual(answer.status, 301)
        XCTAssertEqual(answer.headers["Location"], "https://example.com/a?b=1")
    }
}
