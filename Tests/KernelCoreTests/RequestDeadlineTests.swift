import KernelConfig
import KernelCore
import NIOCore
import XCTest

/// `request_timeout`, `request_timeout_header` and the forwarded `X-Kernel-Timeout-Ms`.
final class RequestDeadlineTests: XCTestCase {
    private func request(_ headers: HeaderFields = [:]) -> KernelRequest {
        KernelRequest(method: "POST", uri: "/v2/models/m/infer", path: "/v2/models/m/infer", query: "", version: .http1_1,
                      headers: headers, connection: ConnectionInfo(protocolName: "http", listener: "test",
                                                                   remoteAddress: try! SocketAddress(ipAddress: "192.0.2.9", port: 1),
                                                                   localAddress: nil))
    }

    private func decode(_ yaml: String) throws -> RequestDeadlinePolicy {
        let root = try YAMLParser().parse(yaml, file: "k.yaml")
        let location = try ConfigValue(node: root, path: "").mapping()
        let policy = try RequestDeadlinePolicy.decode(from: location)
        return policy
    }

    private func decodingError(_ yaml: String) -> String {
        do {
            _ = try decode(yaml)
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    func testTheLocationsTimeoutIsTheLimit() throws {
        let policy = try decode("request_timeout: 30s\n")
        XCTAssertEqual(policy, RequestDeadlinePolicy(timeout: .seconds(30)))
        XCTAssertEqual(policy.limit(for: request(["X-Request-Timeout": "1s"])), .seconds(30), "no header allowed")
        let now = NIODeadline.uptimeNanoseconds(1_000_000_000)
        XCTAssertEqual(policy.deadline(for: request(), now: now), now + .seconds(30))
    }

    func testNoKeysNoDeadline() throws {
        let policy = try decode("uwsgi_pass: backend\n")
        XCTAssertFalse(policy.isEnabled)
        XCTAssertNil(policy.deadline(for: request()))
    }

    func testAClientHeaderSetsTheLimitUpToItsMax() throws {
        let policy = try decode("request_timeout: 30s\nrequest_timeout_header: {name: X-Request-Timeout, max: 1m}\n")
        XCTAssertEqual(policy.clientHeader, .init(name: "X-Request-Timeout", max: .seconds(60)))
        XCTAssertEqual(policy.limit(for: request(["x-request-timeout": "250ms"])), .milliseconds(250))
        XCTAssertEqual(policy.limit(for: request(["X-Request-Timeout": "2"])), .seconds(2), "a bare number is seconds")
        XCTAssertEqual(policy.limit(for: request(["X-Request-Timeout": "10m"])), .seconds(60), "capped")
        XCTAssertEqual(policy.limit(for: request(["X-Request-Timeout": "300d"])), .seconds(60), "capped")
        XCTAssertEqual(policy.limit(for: request()), .seconds(30), "without the header: the location's")
    }

    func testAnUnusableClientHeaderIsIgnored() throws {
        let policy = try decode("request_timeout: 5s\nrequest_timeout_header: {name: X-Request-Timeout}\n")
        XCTAssertEqual(policy.clientHeader?.max, .seconds(5), "max defaults to request_timeout")
        for bad in ["soon", "-1s", "0", "0ms", ""] {
            XCTAssertEqual(policy.limit(for: request(["X-Request-Timeout": bad])), .seconds(5), bad)
        }
        let headerOnly = try decode("request_timeout_header: {name: X-Request-Timeout, max: 10s}\n")
        XCTAssertNil(headerOnly.limit(for: request(["X-Request-Timeout": "soon"])))
        XCTAssertEqual(headerOnly.limit(for: request(["X-Request-Timeout": "3s"])), .seconds(3))
    }

    func testConfigurationErrorsNameTheirPlace() {
        XCTAssertTrue(decodingError("request_timeout: 0s\n").contains("k.yaml:1:18"), decodingError("request_timeout: 0s\n"))
        XCTAssertTrue(decodingError("request_timeout: 0s\n").contains("a duration above zero"))
        XCTAssertTrue(decodingError("request_timeout_header: {name: X-Request-Timeout}\n")
            .contains("request_timeout_header needs \"max\" when the location has no request_timeout"))
        XCTAssertTrue(decodingError("request_timeout_header: {name: \"bad name\", max: 1s}\n").contains("a header name"))
        XCTAssertTrue(decodingError("request_timeout_header: {name: X-T, max: 1s, other: 1}\n").contains("other"))
    }

    func testTheTimeLeftIsForwardedInWholeMillisecondsRoundedDown() {
        let now = NIODeadline.uptimeNanoseconds(5_000_000_000)
        XCTAssertEqual(ForwardedDeadline.value(for: now + .nanoseconds(1_999_999_999), now: now), "1999")
        XCTAssertEqual(ForwardedDeadline.value(for: now + .microseconds(10), now: now), "1", "at least 1")
        var headers: HeaderFields = ["Host": "a", "x-kernel-timeout-ms": "999999", "X-Kernel-Timeout-Ms": "5"]
        ForwardedDeadline.stamp(&headers, deadline: now + .milliseconds(300), now: now)
        XCTAssertEqual(headers.values(ForwardedDeadline.headerName), ["300"], "the client's values are replaced")
        XCTAssertEqual(headers["Host"], "a")
    }

    func testAReceivedDeadlineIsReadOnTheReceiversClock() {
        let now = NIODeadline.uptimeNanoseconds(7_000_000_000)
        XCTAssertEqual(ForwardedDeadline.deadline(of: request(["X-Kernel-Timeout-Ms": "1500"]), now: now), now + .milliseconds(1500))
        XCTAssertNil(ForwardedDeadline.deadline(of: request(), now: now))
        for bad in ["", "0", "-5", "1.5", "12345678901", "1e3", " 5"] {
            XCTAssertNil(ForwardedDeadline.parse(bad), bad)
        }
        XCTAssertEqual(ForwardedDeadline.parse("9999999999"), 9_999_999_999)
    }
}
