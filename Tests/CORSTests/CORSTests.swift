import CORS
import Foundation
import KernelConfig
import KernelCore
import NIOCore
import Routing
import XCTest

/// `add_header` and `cors:` through the real loader, the routing module and the location's filter chain.
final class CORSTests: XCTestCase {
    private var runtime: KernelRuntime!
    private var directory = ""

    override func setUpWithError() throws {
        runtime = KernelRuntime.standalone(threads: 1, level: .critical)
        directory = NSTemporaryDirectory() + "kernel-cors-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
        try runtime.eventLoopGroup.syncShutdownGracefully()
    }

    private func load(_ yaml: String) throws {
        let file = directory + "/kernel.yaml"
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        let modules = [ModuleDescriptor(CORSModule.self), ModuleDescriptor(RoutingModule.self)]
        runtime.install(try ConfigurationLoader(modules: modules, role: .edge)
            .load(file: file, runtime: runtime, mode: .run, number: 1))
    }

    private func loadError(_ yaml: String) -> String {
        do {
            try load(yaml)
            XCTFail("expected a configuration error")
            return ""
        } catch {
            return "\(error)".replacingOccurrences(of: directory + "/kernel.yaml", with: "FILE")
        }
    }

    private func respond(_ target: String, method: String = "GET", headers: [(String, String)] = []) throws -> KernelResponse {
        let (path, query) = KernelRequest.splitTarget(target)!
        var fields = HeaderFields()
        fields.add("Host", "localhost")
        for (name, value) in headers { fields.add(name, value) }
        let connection = ConnectionInfo(protocolName: "http", listener: "127.0.0.1:8080",
                                        remoteAddress: try SocketAddress(ipAddress: "192.0.2.7", port: 40000),
                                        localAddress: try SocketAddress(ipAddress: "127.0.0.1", port: 8080))
        let request = KernelRequest(method: method, uri: target, path: path, query: query, version: .http1_1,
                                    headers: fields, connection: connection)
        let exchange = runtime.begin(request, on: runtime.eventLoopGroup.next())
        let response = try exchange.respond(request).wait()
        exchange.finish(request, status: response.status, bodyBytesSent: 0)
        return response
    }

    // MARK: add_header

    private let headersYAML = """
        routing:
          servers:
            - add_header:
                - "X-Server server"
                - "X-Always on always"
              locations:
                - location: /
                  return: 200 "root"
                - location: /own
                  add_header: "Cache-Control 'no-cache, no-store'"
                  return: 200 "own"
                - location: /missing
                  return: 404 "nothing"
                - location: /var
                  add_header: {name: X-Path, value: "$uri?$args"}
                  return: 200 "var"
        """

    func testAddHeaderIsInheritedFromTheServerAndAddedOnlyToSuccessesWithoutAlways() throws {
        try load(headersYAML)
        let root = try respond("/")
        XCTAssertEqual(root.headers["X-Server"], "server")
        XCTAssertEqual(root.headers["X-Always"], "on")
        let missing = try respond("/missing")
        XCTAssertEqual(missing.status, 404)
        XCTAssertNil(missing.headers["X-Server"], "nginx adds to 2xx/3xx only without always")
        XCTAssertEqual(missing.headers["X-Always"], "on")
    }

    func testALocationsOwnAddHeaderReplacesTheServers() throws {
        try load(headersYAML)
        let own = try respond("/own")
        XCTAssertEqual(own.headers["Cache-Control"], "no-cache, no-store")
        XCTAssertNil(own.headers["X-Server"])
        XCTAssertNil(own.headers["X-Always"])
        XCTAssertEqual(try respond("/var?a=1").headers["X-Path"], "/var?a=1")
    }

    func testAddHeaderErrorsNameTheirPlace() {
        XCTAssertTrue(loadError("""
            routing:
              servers:
                - locations:
                    - location: /
                      add_header: "X-Only"
                      return: 200 "x"
            """).contains("FILE:5:23"), "a line without a value")
        XCTAssertTrue(loadError("""
            routing:
              servers:
                - add_header: "X-A $nosuch"
                  locations:
                    - location: /
                      return: 200 "x"
            """).contains("unknown \"nosuch\" variable"))
        XCTAssertTrue(loadError("""
            routing:
              servers:
                - add_header: "Bad(name) x"
                  locations:
                    - location: /
                      return: 200 "x"
            """).contains("invalid header name \"Bad(name)\""))
    }

    // MARK: cors

    private let corsYAML = """
        cors:
          policies:
            app:
              allow_origins: ["https://app.example.com", "https://*.example.org", "~^https://(a|b)\\\\.test$"]
              allow_methods: [GET, POST]
              allow_headers: [Content-Type, Authorization]
              expose_headers: [X-Request-Id]
              allow_credentials: true
              max_age: 1h
        routing:
          servers:
            - cors: app
              locations:
                - location: /
                  return: 200 "api"
                - location: /open
                  cors: {allow_origins: "*"}
                  return: 200 "open"
        """

    func testAnAllowedOriginIsEchoedWithCredentialsAndVary() throws {
        try load(corsYAML)
        for origin in ["https://app.example.com", "https://deep.x.example.org", "https://b.test"] {
            let response = try respond("/", headers: [("Origin", origin)])
            XCTAssertEqual(response.headers["Access-Control-Allow-Origin"], origin)
            XCTAssertEqual(response.headers["Access-Control-Allow-Credentials"], "true")
            XCTAssertEqual(response.headers["Access-Control-Expose-Headers"], "X-Request-Id")
            XCTAssertEqual(response.headers["Vary"], "Origin")
        }
    }

    func testADisallowedOriginGetsNoCORSHeader() throws {
        try load(corsYAML)
        for origin in ["https://evil.example.com", "https://example.org", "http://app.example.com", "https://c.test"] {
            let response = try respond("/", headers: [("Origin", origin)])
            XCTAssertEqual(response.status, 200)
            XCTAssertNil(response.headers["Access-Control-Allow-Origin"], origin)
            XCTAssertNil(response.headers["Access-Control-Allow-Credentials"], origin)
            XCTAssertEqual(response.headers["Vary"], "Origin")
        }
    }

    func testAPreflightIsAnsweredAtTheEdge() throws {
        try load(corsYAML)
        let response = try respond("/", method: "OPTIONS", headers: [
            ("Origin", "https://app.example.com"), ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ])
        XCTAssertEqual(response.status, 204)
        XCTAssertEqual(response.body.knownLength, 0, "the handler's body never comes")
        XCTAssertEqual(response.headers["Access-Control-Allow-Origin"], "https://app.example.com")
        XCTAssertEqual(response.headers["Access-Control-Allow-Methods"], "GET, POST")
        XCTAssertEqual(response.headers["Access-Control-Allow-Headers"], "Content-Type, Authorization")
        XCTAssertEqual(response.headers["Access-Control-Max-Age"], "3600")
        XCTAssertEqual(response.headers["Access-Control-Allow-Credentials"], "true")
    }

    func testARefusedPreflightIs204WithoutCORSHeaders() throws {
        try load(corsYAML)
        for (origin, method) in [("https://evil.test", "POST"), ("https://app.example.com", "DELETE")] {
            let response = try respond("/", method: "OPTIONS", headers: [
                ("Origin", origin), ("Access-Control-Request-Method", method),
            ])
            XCTAssertEqual(response.status, 204)
            XCTAssertNil(response.headers["Access-Control-Allow-Origin"])
            XCTAssertNil(response.headers["Access-Control-Allow-Methods"])
        }
    }

    func testAnyOriginWithoutCredentialsIsAStarAndPreflightEchoesTheAskedHeaders() throws {
        try load(corsYAML)
        let simple = try respond("/open", headers: [("Origin", "https://anyone.test")])
        XCTAssertEqual(simple.headers["Access-Control-Allow-Origin"], "*")
        XCTAssertNil(simple.headers["Vary"])
        let preflight = try respond("/open", method: "OPTIONS", headers: [
            ("Origin", "https://anyone.test"), ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "x-one, x-two"),
        ])
        XCTAssertEqual(preflight.headers["Access-Control-Allow-Headers"], "x-one, x-two")
        XCTAssertEqual(preflight.headers["Vary"], "Origin, Access-Control-Request-Headers")
        XCTAssertEqual(try respond("/open").headers["Access-Control-Allow-Origin"], nil, "no Origin, no CORS")
    }

    func testAStarWithCredentialsEchoesTheOrigin() throws {
        try load("""
            routing:
              servers:
                - locations:
                    - location: /
                      cors: {allow_origins: "*", allow_credentials: true}
                      return: 200 "x"
            """)
        let response = try respond("/", headers: [("Origin", "https://site.test")])
        XCTAssertEqual(response.headers["Access-Control-Allow-Origin"], "https://site.test")
        XCTAssertEqual(response.headers["Access-Control-Allow-Credentials"], "true")
        XCTAssertEqual(response.headers["Vary"], "Origin")
    }

    func testCORSErrorsNameTheirPlace() {
        XCTAssertTrue(loadError("""
            routing:
              servers:
                - cors: nosuch
                  locations:
                    - location: /
                      return: 200 "x"
            """).contains("no policy \"nosuch\""))
        XCTAssertTrue(loadError("""
            routing:
              servers:
                - cors: {allow_origins: ["https://a.test/path"]}
                  locations:
                    - location: /
                      return: 200 "x"
            """).contains("FILE:3:"))
        XCTAssertTrue(loadError("""
            routing:
              servers:
                - cors: {allow_origins: ["~^(a"]}
                  locations:
                    - location: /
                      return: 200 "x"
            """).contains("invalid regular expression"))
    }
}
