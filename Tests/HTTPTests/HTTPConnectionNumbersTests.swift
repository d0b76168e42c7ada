import KernelCore
import XCTest
@testable import HTTP

/// `$connection` and `$connection_requests` as the HTTP connection fills them.
final class HTTPConnectionNumbersTests: XCTestCase {
    private func numbers(_ output: String) -> [[UInt64]] {
        output.components(separatedBy: "HTTP/1.1 ").dropFirst().map { response in
            let body = response.components(separatedBy: "\r\n\r\n").last ?? ""
            return body.split(separator: " ").compactMap { UInt64($0) }
        }
    }

    func testRequestsOnAKeptAliveConnectionAreNumberedAndShareTheConnectionsSerial() throws {
        let h = try HTTPHarness()
        let get = "GET /connection HTTP/1.1\r\nHost: test\r\n\r\n"
        try h.send(get + get)
        try h.send(get)
        let seen = numbers(try h.output())
        XCTAssertEqual(seen.map { $0[1] }, [1, 2, 3])
        XCTAssertEqual(Set(seen.map { $0[0] }).count, 1)
        XCTAssertGreaterThan(seen[0][0], 0)

        let other = try HTTPHarness()
        try other.send(get)
        let next = numbers(try other.output())
        XCTAssertEqual(next.first?[1], 1)
        XCTAssertNotEqual(next.first?[0], seen[0][0], "each connection has its own serial")
    }
}
