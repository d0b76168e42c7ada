import Foundation
import KernelCore
import NIOConcurrencyHelpers
@testable import Routing
import XCTest

/// PCRE2 through `PCRERegex`, and the `~`/`~*` locations and `server_name ~` that use it.
final class RegexTests: XCTestCase {
    func testPerlConstructsNginxUsersWrite() throws {
        let lookahead = try PCRERegex("^/api/(?!internal)")
        XCTAssertTrue(lookahead.matches("/api/users"))
        XCTAssertFalse(lookahead.matches("/api/internal/x"))
        let lazy = try PCRERegex("^/(.+?)/")
        XCTAssertEqual(lazy.captures(in: "/a/b/c"), ["a"], "a lazy quantifier stops at the first slash")
        let word = try PCRERegex("\\bcat\\b")
        XCTAssertTrue(word.matches("/a cat/"))
        XCTAssertFalse(word.matches("/concat"))
        XCTAssertEqual(try PCRERegex("^/n/(\\d+)$").captures(in: "/n/123"), ["123"])
        XCTAssertNil(try PCRERegex("^/n/(\\d+)$").captures(in: "/n/12a"))
        XCTAssertTrue(try PCRERegex("\\.(?:png|jpe?g)$", caseInsensitive: true).matches("/A.JPG"))
        XCTAssertFalse(try PCRERegex("\\.(?:png|jpe?g)$").matches("/A.JPG"))
    }

    func testNamedGroupsBothSpellings() throws {
        let regex = try PCRERegex("^/(?<kind>[a-z]+)/(?P<id>\\d+)(/(?<rest>.*))?$")
        XCTAssertEqual(regex.captureCount, 4)
        XCTAssertEqual(regex.captureNames, ["kind": 1, "id": 2, "rest": 4])
        XCTAssertEqual(regex.captures(in: "/items/7/x/y"), ["items", "7", "/x/y", "x/y"])
        XCTAssertEqual(regex.captures(in: "/items/7"), ["items", "7", "", ""], "groups that took no part are empty")
    }

    func testCapturesSkipNonCapturingGroupsAndUnmatchedGroupsAreEmpty() throws {
        let regex = try PCRERegex("^/(?:x|y)/(a)?(b)$")
        XCTAssertEqual(regex.captureCount, 2)
        XCTAssertEqual(regex.captures(in: "/x/ab"), ["a", "b"])
        XCTAssertEqual(regex.captures(in: "/y/b"), ["", "b"])
        XCTAssertNil(regex.captures(in: "/z/ab"))
        XCTAssertEqual(try PCRERegex("^$").captures(in: ""), [], "the empty subject matches")
    }

    func testCaseInsensitiveAndUTF8() throws {
        let regex = try PCRERegex("^/caf(é)/(.+)$", caseInsensitive: true)
        XCTAssertEqual(regex.captures(in: "/CAFé/ü"), ["é", "ü"])
    }

    func testCompileErrorsCarryPCREMessageAndOffset() {
        XCTAssertThrowsError(try PCRERegex("^/(a")) { error in
            XCTAssertEqual("\(error)", "missing closing parenthesis at offset 4")
        }
        XCTAssertThrowsError(try PCRERegex("a{2,1}")) { error in
            XCTAssertEqual((error as? PCRERegexError)?.offset, 5)
        }
    }

    func testConcurrentMatchingGivesEachThreadItsOwnResult() throws {
        let regex = try PCRERegex("^/item/([0-9]+)$")
        let wrong = NIOLockedValueBox(0)
        DispatchQueue.concurrentPerform(iterations: 8) { thread in
            for index in 0..<2000 {
                let number = "\(thread * 10_000 + index)"
                if regex.captures(in: "/item/\(number)") != [number] || regex.matches("/other/\(number)") {
                    wrong.withLockedValue { $0 += 1 }
                }
            }
        }
        XCTAssertEqual(wrong.withLockedValue { $0 }, 0)
    }

    func testLookaheadAndImageLocations() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - locations:
                    - location: "~ ^/api/(?!internal)"
                      return: 200 "public api"
                    - location: "~* \\\\.(?:png|jpe?g)$"
                      return: 200 "image"
                    - location: /
                      return: 200 "fallback"
            """)
        XCTAssertEqual(try fixture.respond("/api/users").body, "public api")
        XCTAssertEqual(try fixture.respond("/api/internal/secrets").body, "fallback")
        XCTAssertEqual(try fixture.respond("/pics/a.JPEG").body, "image")
        XCTAssertEqual(try fixture.respond("/pics/a.jpg").body, "image")
        XCTAssertEqual(try fixture.respond("/pics/a.gif").body, "fallback")
    }

    func testNamedCapturesInReturn() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - locations:
                    - location: "~ ^/users/(?<user>\\\\d+)/(?P<section>[a-z]+)$"
                      return: 200 "user=$user section=$${section} first=$1 second=$2"
                    - location: "~ ^/go/(?<slug>.+?)/?$"
                      return: 301 https://example.com/$slug
            """)
        let answer = try fixture.respond("/users/42/posts")
        XCTAssertEqual(answer.body, "user=42 section=posts first=42 second=posts")
        XCTAssertEqual(answer.decision.route.captures, ["42", "posts"])
        XCTAssertEqual(try fixture.respond("/go/docs/").headers["Location"], "https://example.com/docs")
    }

    func testRegexServerName() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - server_name: [fallback.example]
                  return: 200 "fallback"
                - server_name: ["~^(?!admin\\\\.)\\\\w+\\\\.example\\\\.com$"]
                  return: 200 "regex"
            """)
        XCTAssertEqual(try fixture.respond("/", host: "WWW.example.com").body, "regex")
        XCTAssertEqual(try fixture.respond("/", host: "admin.example.com").body, "fallback")
    }

    func testBadPatternIsAConfigurationErrorWithPCREMessage() throws {
        let fixture = try RoutingFixture()
        XCTAssertEqual(fixture.loadError("""
            routing:
              servers:
                - locations:
                    - location: /
                      return: 200
                    - location: "~ ^/(?<id>\\\\d+"
                      return: 200
            """),
                       "FILE:6:21: routing.servers[0].locations[1].location: invalid regular expression \"^/(?<id>\\d+\": missing closing parenthesis at offset 11")
        XCTAssertEqual(fixture.loadError("""
            routing:
              servers:
                - locations:
                    - location: "~ ^/(a)"
                      return: 200 "$b"
            """),
                       "FILE:5:19: routing.servers[0].locations[0].return: unknown \"b\" variable")
    }
}
