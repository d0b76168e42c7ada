import KernelCore
import NIOCore
import XCTest
@testable import UWSGI

/// The deadline a `uwsgi_pass` location forwards: `HTTP_X_KERNEL_TIMEOUT_MS` in the vars packet.
final class UWSGIDeadlineTests: XCTestCase {
    private func request(_ headers: HeaderFields) -> KernelRequest {
        KernelRequest(method: "POST", uri: "/v2/models/m/infer", path: "/v2/models/m/infer", query: "", version: .http1_1,
                      headers: headers, connection: ConnectionInfo(protocolName: "http", listener: "x",
                                                                   remoteAddress: try! SocketAddress(ipAddress: "10.0.0.1", port: 1),
                                                                   localAddress: nil))
    }

    func testTheStampedHeaderTravelsAsItsVariable() {
        var configuration = UWSGIPassConfiguration(group: SinglePeerGroup(.tcp(host: "127.0.0.1", port: 6666)))
        configuration.deadline = RequestDeadlinePolicy(timeout: .seconds(2))
        var headers: HeaderFields = ["Host": "h", "X-Kernel-Timeout-Ms": "999999"]
        let now = NIODeadline.now()
        ForwardedDeadline.stamp(&headers, deadline: now + .milliseconds(1500), now: now)
        let variables = configuration.variables(for: request(headers), route: RouteInfo())
        XCTAssertEqual(variables.entries.filter { $0.name == "HTTP_X_KERNEL_TIMEOUT_MS" }.map(\.value), ["1500"])
    }

    func testTheDeadlineTravelsEvenWithoutTheRequestHeaders() {
        var configuration = UWSGIPassConfiguration(group: SinglePeerGroup(.tcp(host: "127.0.0.1", port: 6666)))
        configuration.passRequestHeaders = false
        configuration.deadline = RequestDeadlinePolicy(timeout: .seconds(2))
        let stamped = configuration.variables(for: request(["X-A": "1", "X-Kernel-Timeout-Ms": "700"]), route: RouteInfo())
        XCTAssertEqual(stamped.entries.filter { $0.name.hasPrefix("HTTP_") }.map(\.name), ["HTTP_X_KERNEL_TIMEOUT_MS"])
        // Without a deadline of the location's, a client's value is one of its headers, and those are not passed.
        configuration.deadline = .none
        let unstamped = configuration.variables(for: request(["X-Kernel-Timeout-Ms": "700"]), route: RouteInfo())
        XCTAssertFalse(unstamped.entries.contains { $0.name.hasPrefix("HTTP_") })
    }
}
