import KernelConfig
import KernelCore
import XCTest
@testable import HTTP

final class HTTPConfigurationTests: XCTestCase {
    private func decode(_ yaml: String) throws -> HTTPConfiguration {
        let root = try YAMLParser().parse(yaml, file: "k.yaml")
        let section = try ConfigValue(node: root, path: "").mapping().required("http")
        return try HTTPConfiguration.decode(section)
    }

    private func error(_ yaml: String) -> String {
        do {
            _ = try decode(yaml)
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    func testDefaultsAreNginxs() throws {
        let c = try decode("http:\n  listen: 127.0.0.1:8080\n")
        XCTAssertEqual(c.listen, [HTTPListenAddress(text: "127.0.0.1:8080", address: .tcp(host: "127.0.0.1", port: 8080))])
        XCTAssertEqual(c.clientHeaderTimeout, .seconds(60))
        XCTAssertEqual(c.clientBodyTimeout, .seconds(60))
        XCTAssertEqual(c.sendTimeout, .seconds(60))
        XCTAssertEqual(c.keepaliveTimeout, .seconds(75))
        XCTAssertEqual(c.keepaliveRequests, 1000)
        XCTAssertEqual(c.clientHeaderBufferSize.bytes, 1024)
        XCTAssertEqual(c.largeHeaderBufferCount, 4)
        XCTAssertEqual(c.largeHeaderBufferSize.bytes, 8192)
        XCTAssertTrue(c.serverTokens)
        XCTAssertFalse(c.underscoresInHeaders)
        XCTAssertTrue(c.ignoreInvalidHeaders)
    }

    func testEveryKey() throws {
        let c = try decode("""
        http:
          listen: ["127.0.0.1:8080", {address: "[::1]:8081", backlog: 128}, "unix:/tmp/k.sock", 9000]
          client_header_timeout: 10s
          client_body_timeout: 1m
          send_timeout: 500ms
          keepalive_timeout: 0
          keepalive_requests: 10
          client_header_buffer_size: 2k
          large_client_header_buffers: 8 16k
          server_tokens: off
          underscores_in_headers: on
          ignore_invalid_headers: off

        """)
        XCTAssertEqual(c.listen.map(\.text), ["127.0.0.1:8080", "[::1]:8081", "unix:/tmp/k.sock", "9000"])
        XCTAssertEqual(c.listen.map(\.address), [.tcp(host: "127.0.0.1", port: 8080), .tcp(host: "::1", port: 8081),
                                                 .unix(path: "/tmp/k.sock"), .tcp(host: "0.0.0.0", port: 9000)])
        XCTAssertEqual(c.listen.map(\.backlog), [nil, 128, nil, nil])
        XCTAssertEqual(c.clientHeaderTimeout, .seconds(10))
        XCTAssertEqual(c.clientBodyTimeout, .seconds(60))
        XCTAssertEqual(c.sendTimeout.milliseconds, 500)
        XCTAssertEqual(c.keepaliveTimeout.milliseconds, 0)
        XCTAssertEqual(c.keepaliveRequests, 10)
        XCTAssertEqual(c.clientHeaderBufferSize.bytes, 2048)
        XCTAssertEqual(c.largeHeaderBufferCount, 8)
        XCTAssertEqual(c.largeHeaderBufferSize.bytes, 16384)
        XCTAssertFalse(c.serverTokens)
        XCTAssertTrue(c.underscoresInHeaders)
        XCTAssertFalse(c.ignoreInvalidHeaders)
    }

    func testErrorsNameTheKey() {
        XCTAssertEqual(error("http:\n  listen: [\"127.0.0.1:8080\", \"127.0.0.1:8080\"]\n"),
                       "k.yaml:2:30: http.listen[1]: duplicate listen address \"127.0.0.1:8080\" (same as \"127.0.0.1:8080\")")
        XCTAssertEqual(error("http:\n  listen: [\"8080\", {address: \"*:8080\"}]\n"),
                       "k.yaml:2:30: http.listen[1].address: duplicate listen address \"*:8080\" (same as \"8080\")")
        XCTAssertEqual(error("http:\n  listen: localhost\n"),
                       "k.yaml:2:11: http.listen: expected an address such as 127.0.0.1:8080, [::1]:8080, *:8080, 8080 or unix:/path, found \"localhost\"")
        XCTAssertEqual(error("http:\n  client_header_timeout: 5s\n"), "k.yaml:2:3: http: missing required key \"listen\"")
        XCTAssertEqual(error("http:\n  listen: 80\n  keepalive: 5\n"),
                       "k.yaml:3:3: http.keepalive: unknown key (expected one of: client_body_timeout, client_header_buffer_size, client_header_timeout, ignore_invalid_headers, keepalive_requests, keepalive_timeout, large_client_header_buffers, listen, send_timeout, server_tokens, underscores_in_headers)")
        XCTAssertEqual(error("http:\n  listen: 80\n  large_client_header_buffers: 8k\n"),
                       "k.yaml:3:32: http.large_client_header_buffers: expected \"NUMBER SIZE\" such as \"4 8k\", found \"8k\"")
        XCTAssertEqual(error("http:\n  listen: 80\n  underscores_in_headers: maybe\n"),
                       "k.yaml:3:27: http.underscores_in_headers: expected true or false, found \"maybe\"")
        XCTAssertEqual(error("http:\n  listen: 80\n  send_timeout: 0\n"),
                       "k.yaml:3:17: http.send_timeout: expected a duration greater than zero, found \"0\"")
        XCTAssertEqual(error("http:\n  listen: [{address: 80, backlog: 0}]\n"),
                       "k.yaml:2:35: http.listen[0].backlog: expected an integer 1-65535, found \"0\"")
        XCTAssertEqual(error("http:\n  listen: [{address: 80, mode: \"0660\"}]\n"),
                       "k.yaml:2:26: http.listen[0].mode: unknown key (expected one of: address, backlog)")
    }

    func testOneListenerPerAddressIsRegistered() throws {
        let c = try decode("http:\n  listen: [\"127.0.0.1:0\", {address: \"127.0.0.2:0\", backlog: 64}]\n")
        let runtime = KernelRuntime.standalone(threads: 1, level: .critical)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let specs = HTTPModule.listenerSpecs(for: c)
        XCTAssertEqual(specs.map(\.identity), ["http 127.0.0.1:0", "http 127.0.0.2:0"])
        XCTAssertEqual(specs.map(\.backlog), [nil, 64])
    }
}
