import KernelCore
import NIOCore
import XCTest
@testable import HTTP

final class HTTPResponseHeadTests: XCTestCase {
    private func head(status: Int = 200, reason: String = "OK", headers: HeaderFields = [:],
                      framing: HTTPBodyFraming, close: Bool = false) -> String {
        var out = ByteBuffer()
        HTTPResponseHeadWriter.write(status: status, reason: reason, headers: headers, framing: framing, close: close,
                                     serverLine: "Server: kernel\r\n", date: "Wed, 25 Nov 2026 08:29:18 GMT", into: &out)
        return String(buffer: out)
    }

    func testHeadIsWrittenInNginxOrderWithTheConnectionsOwnFraming() {
        let headers = HeaderFields([("Content-Type", "text/plain"), ("Content-Length", "999"), ("X-Trace", "a b"),
                                    ("Connection", "upgrade"), ("date", "yesterday"), ("X-Two", "1"), ("X-Two", "2")])
        XCTAssertEqual(head(headers: headers, framing: .length(1_234_567_890)),
                       "HTTP/1.1 200 OK\r\nServer: kernel\r\nDate: Wed, 25 Nov 2026 08:29:18 GMT\r\n" +
                       "Content-Type: text/plain\r\nX-Trace: a b\r\nX-Two: 1\r\nX-Two: 2\r\n" +
                       "Content-Length: 1234567890\r\nConnection: keep-alive\r\n\r\n")
        XCTAssertEqual(head(status: 404, reason: "Not Found", framing: .length(0), close: true),
                       "HTTP/1.1 404 Not Found\r\nServer: kernel\r\nDate: Wed, 25 Nov 2026 08:29:18 GMT\r\n" +
                       "Content-Length: 0\r\nConnection: close\r\n\r\n")
        XCTAssertEqual(head(framing: .chunked),
                       "HTTP/1.1 200 OK\r\nServer: kernel\r\nDate: Wed, 25 Nov 2026 08:29:18 GMT\r\n" +
                       "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n")
        XCTAssertEqual(head(status: 204, reason: "No Content", framing: .none),
                       "HTTP/1.1 204 No Content\r\nServer: kernel\r\nDate: Wed, 25 Nov 2026 08:29:18 GMT\r\n" +
                       "Connection: keep-alive\r\n\r\n")
    }

    func testFieldsThatWouldBreakTheFramingAreDropped() {
        let headers = HeaderFields([("X-Bad", "a\r\nSet-Cookie: x=1"), ("X-Nul", "a\u{0}b"), ("", "empty name"),
                                    ("X-Good", "é ünïcode"), ("Bad\nName", "v")])
        XCTAssertEqual(head(reason: "Fine\r\nX-Injected: 1", headers: headers, framing: .length(5)),
                       "HTTP/1.1 200 OK\r\nServer: kernel\r\nDate: Wed, 25 Nov 2026 08:29:18 GMT\r\n" +
                       "X-Good: é ünïcode\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n",
                       "an unsafe reason phrase falls back to the standard one")
    }

    func testManyAndLongFieldsFitTheMeasuredHead() {
        var fields: [(String, String)] = []
        for index in 0..<200 { fields.append(("X-Field-\(index)", String(repeating: "v", count: index * 7))) }
        let text = head(headers: HeaderFields(fields), framing: .length(Int.max))
        XCTAssertTrue(text.hasSuffix("Content-Length: \(Int.max)\r\nConnection: keep-alive\r\n\r\n"))
        XCTAssertTrue(text.contains("X-Field-199: \(String(repeating: "v", count: 199 * 7))\r\n"))
        XCTAssertEqual(text.components(separatedBy: "\r\n").count, 200 + 6 + 1)
    }
}
