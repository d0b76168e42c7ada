import Foundation
import KernelCore
import XCTest
@testable import HTTP

/// nginx's header-name rules (`underscores_in_headers`, `ignore_invalid_headers`), the shared Content-Length
/// limit, and the length of a bodiless answer to HEAD.
final class HTTPHeaderNameTests: XCTestCase {
    private func inspect(_ headerLines: String, _ configure: (inout HTTPConfiguration) -> Void = { _ in }) throws -> (body: String, log: [String]) {
        let h = try HTTPHarness(configure)
        try h.send("GET /inspect HTTP/1.1\r\nHost: test\r\n" + headerLines + "\r\n")
        let out = try h.output()
        XCTAssertTrue(out.hasPrefix("HTTP/1.1 200 OK\r\n"), out)
        let body = out.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
        return (body.split(separator: "\n").dropFirst(2).joined(separator: "\n"), h.errorLogLines())
    }

    private func logged(_ line: String) -> String {
        "[info] client sent invalid header line: \"\(line)\" while reading client request headers, client: 127.0.0.1, server: 127.0.0.1:8080, request: \"GET /inspect HTTP/1.1\""
    }

    func testUnderscoresAndOtherInvalidNamesAreDroppedAndLoggedByDefault() throws {
        let (headers, log) = try inspect("X-Forwarded-For: 10.0.0.1\r\nX_Forwarded_For: 6.6.6.6\r\n_: a\r\nX.Dot: b\r\n"
                                         + "X!Bang: c\r\nX(Paren: d\r\nX\u{e9}: e\r\nContent_Length: 5\r\nX-Ok-9: f\r\n")
        XCTAssertEqual(headers, "Host=test\nX-Forwarded-For=10.0.0.1\nX-Ok-9=f")
        XCTAssertEqual(log, [logged("X_Forwarded_For: 6.6.6.6"), logged("_: a"), logged("X.Dot: b"), logged("X!Bang: c"),
                             logged("X(Paren: d"), logged("X\u{e9}: e"), logged("Content_Length: 5")])
    }

    func testUnderscoresInHeadersOnLetsThemIn() throws {
        let (headers, log) = try inspect("X_Forwarded_For: 6.6.6.6\r\nX.Dot: b\r\n") { $0.underscoresInHeaders = true }
        XCTAssertEqual(headers, "Host=test\nX_Forwarded_For=6.6.6.6")
        XCTAssertEqual(log, [logged("X.Dot: b")])
    }

    func testIgnoreInvalidHeadersOffPassesInvalidNamesOn() throws {
        let (headers, log) = try inspect("X_Forwarded_For: 6.6.6.6\r\nX.Dot: b\r\nX\u{e9}: e\r\n") { $0.ignoreInvalidHeaders = false }
        XCTAssertEqual(headers, "Host=test\nX_Forwarded_For=6.6.6.6\nX.Dot=b\nX\u{e9}=e")
        XCTAssertEqual(log, [])
    }

    func testAnInvalidNameNeverFrames() throws {
        // Neither dropped nor kept, `Content_Length` is no length: the request has no body and the bytes behind the
        // head are the next request.
        for configure: (inout HTTPConfiguration) -> Void in [{ _ in }, { $0.ignoreInvalidHeaders = false }, { $0.underscoresInHeaders = true }] {
            let h = try HTTPHarness(configure)
            try h.send("GET /hello HTTP/1.1\r\nHost: test\r\nContent_Length: 5\r\n\r\nGET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
            XCTAssertEqual(try h.output(), hello() + hello())
        }
    }

    func testControlsSpacesAndALeadingColonRefuseTheLineWhateverTheSettings() throws {
        let lines = ["X Space: a", "X-Space : a", "X\tTab: a", ": empty name", ":colon: a", "X\u{1}Ctl: a", "X\u{7f}Del: a", "No-Colon"]
        for configure: (inout HTTPConfiguration) -> Void in [{ _ in }, { $0.ignoreInvalidHeaders = false; $0.underscoresInHeaders = true }] {
            for line in lines {
                let h = try HTTPHarness(configure)
                try h.send("GET /hello HTTP/1.1\r\nHost: test\r\n\(line)\r\n\r\n")
                XCTAssertEqual(try h.output(), jsonError("400 Bad Request", "invalid header line"), line.debugDescription)
                XCTAssertEqual(h.errorLogLines(), ["[info] client sent invalid header line while reading client request headers, client: 127.0.0.1, server: 127.0.0.1:8080"], line.debugDescription)
                XCTAssertFalse(h.isOpen)
            }
        }
    }

    func testAnIgnoredLineStillNeedsAValidValue() throws {
        let h = try HTTPHarness()
        try h.send("GET /hello HTTP/1.1\r\nHost: test\r\nX_Bad: a\u{0}b\r\n\r\n")
        XCTAssertEqual(try h.output(), jsonError("400 Bad Request", "invalid header line"))
    }

    func testContentLengthUpToIntMax() throws {
        // 19 digits parse (and are over the location's limit: 413 before the body); one more is no length at all.
        let big = try HTTPHarness()
        try big.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 9223372036854775807\r\n\r\n")
        XCTAssertEqual(try big.output(), jsonError("413 Request Entity Too Large", "request body too large"))
        XCTAssertEqual(big.errorLogLines(), ["[error] client intended to send too large body: 9223372036854775807 bytes, client: 127.0.0.1, server: 127.0.0.1:8080, request: \"POST /echo HTTP/1.1\""])

        for value in ["9223372036854775808", "10000000000000000000", "99999999999999999999"] {
            let h = try HTTPHarness()
            try h.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: \(value)\r\n\r\n")
            XCTAssertEqual(try h.output(), jsonError("400 Bad Request", "invalid Content-Length"), value)
            XCTAssertEqual(h.errorLogLines(), ["[info] client sent invalid \"Content-Length\" header while reading client request headers, client: 127.0.0.1, server: 127.0.0.1:8080"], value)
        }

        // Leading zeros do not count against the limit (ngx_atoof).
        let zeros = try HTTPHarness()
        try zeros.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 000000000000000000000003\r\n\r\nabc")
        XCTAssertEqual(try zeros.output(), response("200 OK", ["Content-Type: application/octet-stream", "X-Method: POST", "Content-Length: 3"], body: "abc"))
    }

    func testHeadKeepsTheDeclaredLengthOfABodilessAnswer() throws {
        let h = try HTTPHarness()
        try h.send("HEAD /declared-length HTTP/1.1\r\nHost: test\r\n\r\nGET /declared-length HTTP/1.1\r\nHost: test\r\n\r\n")
        // For GET the length written is the body's: the declared one would announce bytes that never come.
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: text/plain", "Content-Length: 1234"])
                       + response("200 OK", ["Content-Type: text/plain", "Content-Length: 0"]))
        XCTAssertTrue(h.isOpen)
    }
}
