import KernelCore
import XCTest

/// nginx's virtual server selection: exact name, longest leading wildcard, longest trailing wildcard, first
/// matching regex, default server; and `listen` filtering.
final class ServerSelectionTests: XCTestCase {
    private func fixtureWithNames() throws -> RoutingFixture {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - server_name: first
                  return: 200 "first"
                - server_name: [www.example.com, "*.example.com"]
                  return: 200 "exact-or-short-wildcard"
                - server_name: "*.api.example.com"
                  return: 200 "long-leading"
                - server_name: "www.example.*"
                  return: 200 "trailing"
                - server_name: "www.*"
                  return: 200 "short-trailing"
                - server_name: "~^www\\\\d+\\\\.example\\\\.net$"
                  return: 200 "regex-1"
                - server_name: "~example\\\\.net$"
                  return: 200 "regex-2"
                - server_name: .example.org
                  return: 200 "dot"
                - server_name: ""
                  return: 200 "no-host"
            """)
        return fixture
    }

    func testExactNameWinsOverWildcards() throws {
        let fixture = try fixtureWithNames()
        XCTAssertEqual(try fixture.respond("/", host: "www.example.com").body, "exact-or-short-wildcard")
        XCTAssertEqual(try fixture.respond("/", host: "WWW.Example.COM:8080").body, "exact-or-short-wildcard",
                       "names are case-insensitive and the port is ignored")
        XCTAssertEqual(try fixture.respond("/", host: "www.example.com.").body, "exact-or-short-wildcard",
                       "a trailing dot is ignored")
    }

    func testLongestLeadingWildcardWins() throws {
        let fixture = try fixtureWithNames()
        XCTAssertEqual(try fixture.respond("/", host: "v1.api.example.com").body, "long-leading")
        XCTAssertEqual(try fixture.respond("/", host: "mail.example.com").body, "exact-or-short-wildcard")
        XCTAssertEqual(try fixture.respond("/", host: "example.com").body, "first", "*.example.com needs a label in front")
    }

    func testLeadingWildcardBeatsTrailingWildcard() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - server_name: "www.example.*"
                  return: 200 "trailing"
                - server_name: "*.example.com"
                  return: 200 "leading"
                - server_name: "~^www"
                  return: 200 "regex"
            """)
        XCTAssertEqual(try fixture.respond("/", host: "www.example.com").body, "leading")
        XCTAssertEqual(try fixture.respond("/", host: "www.example.org").body, "trailing")
        XCTAssertEqual(try fixture.respond("/", host: "www.other.org").body, "regex")
    }

    func testLongestTrailingWildcardWins() throws {
        let fixture = try fixtureWithNames()
        XCTAssertEqual(try fixture.respond("/", host: "www.example.com.au").body, "trailing")
        XCTAssertEqual(try fixture.respond("/", host: "www.other.com").body, "short-trailing")
    }

    func testRegexesInFileOrderAfterWildcards() throws {
        let fixture = try fixtureWithNames()
        XCTAssertEqual(try fixture.respond("/", host: "www12.example.net").body, "regex-1")
        XCTAssertEqual(try fixture.respond("/", host: "shop.example.net").body, "regex-2")
        XCTAssertEqual(try fixture.respond("/", host: "www.example.net").body, "trailing",
                       "a trailing wildcard comes before every regex")
    }

    func testDotNameCoversTheDomainAndItsSubdomains() throws {
        let fixture = try fixtureWithNames()
        XCTAssertEqual(try fixture.respond("/", host: "example.org").body, "dot")
        XCTAssertEqual(try fixture.respond("/", host: "a.b.example.org").body, "dot")
    }

    func testEmptyNameTakesRequestsWithoutHostAndUnknownHostsTakeTheFirstServer() throws {
        let fixture = try fixtureWithNames()
        XCTAssertEqual(try fixture.respond("/", host: nil).body, "no-host")
        XCTAssertEqual(try fixture.respond("/", host: "unknown.test").body, "first")
    }

    func testDefaultServerFlag() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - server_name: a.test
                  return: 200 "a"
                - server_name: b.test
                  default_server: true
                  return: 200 "b"
            """)
        XCTAssertEqual(try fixture.respond("/", host: "a.test").body, "a")
        XCTAssertEqual(try fixture.respond("/", host: "zzz.test").body, "b")
        XCTAssertEqual(try fixture.respond("/", host: nil).body, "b")
    }

    func testListenFiltersServersPerListener() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - server_name: shared
                  return: 200 "everywhere"
                - server_name: shared
                  listen: 127.0.0.1:9000
                  return: 200 "never, the first server with the name wins"
                - server_name: admin
                  listen: ["127.0.0.1:9000", "unix:/tmp/kernel-admin.sock"]
                  return: 200 "admin"
                - server_name: api
                  listen: "*:9100"
                  default_server: true
                  return: 200 "api default"
            """)
        XCTAssertEqual(try fixture.respond("/", host: "admin", listener: "127.0.0.1:9000").body, "admin")
        XCTAssertEqual(try fixture.respond("/", host: "admin", listener: "unix:/tmp/kernel-admin.sock").body, "admin")
        XCTAssertEqual(try fixture.respond("/", host: "admin", listener: "127.0.0.1:8080").body, "everywhere",
                       "admin is not on 8080: the default server of 8080 answers")
        XCTAssertEqual(try fixture.respond("/", host: "shared", listener: "127.0.0.1:9000").body, "everywhere")
        XCTAssertEqual(try fixture.respond("/", host: "nobody", listener: "0.0.0.0:9100").body, "api default",
                       "*:9100 and 0.0.0.0:9100 are one listener")
        XCTAssertEqual(try fixture.respond("/", host: "nobody", listener: "*:9100").body, "api default")
        XCTAssertEqual(try fixture.respond("/", host: "nobody", listener: "127.0.0.1:9000").body, "everywhere")
    }

    func testListenerWithoutServersAnswers404() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - listen: 127.0.0.1:9000
                  return: 200 "9000"
            """)
        XCTAssertEqual(try fixture.respond("/", listener: "127.0.0.1:9000").body, "9000")
        let other = try fixture.respond("/", listener: "127.0.0.1:8080")
        XCTAssertEqual(other.status, 404)
        XCTAssertEqual(other.body, "{\"error\":\"not found\"}")
    }

    func testServerNameVariable() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              servers:
                - server_name: [Main.Example, alias.example]
                  return: 200 "$server_name $host"
            """)
        XCTAssertEqual(try fixture.respond("/", host: "alias.example").body, "main.example alias.example")
        XCTAssertEqual(try fixture.respond("/", host: nil).body, "main.example main.example",
                       "$host falls back to the server name")
    }
}
