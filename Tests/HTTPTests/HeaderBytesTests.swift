import KernelCore
import NIOCore
import XCTest
@testable import HTTP

/// Header values in another charset than UTF-8 (obs-text) leave as the bytes they came as, as nginx passes them:
/// read by the request and upstream response parsers, written by the response head writer.
final class HeaderBytesTests: XCTestCase {
    private let latin: [UInt8] = Array("caf".utf8) + [0xE9]

    func testValueTextKeepsTheBytesOfWhatIsNoUTF8() {
        let ascii = Array("plain".utf8).withUnsafeBytes { HeaderValueText.decode($0) }
        XCTAssertEqual(ascii.text, "plain")
        XCTAssertNil(ascii.undecoded)
        let utf8 = Array("café".utf8).withUnsafeBytes { HeaderValueText.decode($0) }
        XCTAssertEqual(utf8.text, "café")
        XCTAssertNil(utf8.undecoded)
        let other = latin.withUnsafeBytes { HeaderValueText.decode($0) }
        XCTAssertEqual(other.text, "caf\u{FFFD}")
        XCTAssertEqual(other.undecoded, latin)
        // A truncated four-byte sequence is one U+FFFD for three bytes: the same length as the text, still kept.
        let truncated: [UInt8] = [0xF0, 0x90, 0x80, 0x41]
        let cut = truncated.withUnsafeBytes { HeaderValueText.decode($0) }
        XCTAssertEqual(cut.undecoded, truncated)
    }

    func testTheRequestParserKeepsAValuesBytes() throws {
        // Two single bytes that are no UTF-8 read as the same text; each field keeps its own.
        let head = Array("GET / HTTP/1.1\r\nHost: h\r\nX-Name: ".utf8) + latin + Array("\r\nX-Plain: p\r\nX-A: ".utf8)
            + [0xFF] + Array("\r\nX-B: ".utf8) + [0xFE] + Array("\r\n\r\n".utf8)
        let parsed = head.withUnsafeBytes { HTTPRequestHeadParser.parse($0) }
        guard case .success(let request) = parsed else { return XCTFail("\(parsed)") }
        var headers = request.headers
        XCTAssertEqual(headers["X-Name"], "caf\u{FFFD}")
        XCTAssertEqual(headers.undecodedBytes(at: 1), latin)
        XCTAssertNil(headers.undecodedBytes(at: 2))
        XCTAssertEqual(headers["X-A"], "\u{FFFD}")
        XCTAssertEqual(headers["X-B"], "\u{FFFD}")
        XCTAssertEqual(headers.undecodedBytes(at: 3), [0xFF])
        XCTAssertEqual(headers.undecodedBytes(at: 4), [0xFE])
        XCTAssertEqual(headers.undecodedBytes(ofRendered: "caf\u{FFFD}"), latin)
        // A value that only takes a field's text as a part of it keeps that part's bytes; one that takes none, none.
        XCTAssertEqual(headers.undecodedBytes(ofRendered: "caf\u{FFFD}, 127.0.0.1"), latin + Array(", 127.0.0.1".utf8))
        XCTAssertEqual(headers.undecodedBytes(ofRendered: "<caf\u{FFFD}|caf\u{FFFD}>"),
                       Array("<".utf8) + latin + Array("|".utf8) + latin + Array(">".utf8))
        XCTAssertNil(headers.undecodedBytes(ofRendered: "cafe"))
        XCTAssertEqual(headers.undecodedBytes(ofRendered: "\u{FFFD}/caf\u{FFFD}"), [0xFF] + Array("/".utf8) + latin)
        // Removing a field moves the later ones' bytes with them; a value set anew has none.
        headers.remove("X-Plain")
        XCTAssertEqual(headers.undecodedBytes(at: 2), [0xFF])
        XCTAssertEqual(headers.undecodedBytes(at: 3), [0xFE])
        headers.replace("X-A", "new")
        XCTAssertNil(headers.undecodedBytes(at: 2))
        XCTAssertEqual(headers.undecodedBytes(at: 3), [0xFE])
        let kept = headers.filter { $0.name != "X-Name" }
        XCTAssertEqual(kept.undecodedBytes(at: 2), [0xFE])
        XCTAssertNil(kept.undecodedBytes(at: 0))
    }

    func testAnUpstreamsValueReachesTheClientAsItCame() throws {
        let upstream = Array("HTTP/1.1 200 OK\r\nX-Name: ".utf8) + latin + Array("\r\nKeep-Alive: 5\r\nContent-Length: 0\r\n\r\n".utf8)
        let parsed = try upstream.withUnsafeBytes {
            try ProxyResponseParser.parse($0, upgradeRequested: false, isHeadRequest: false, maxTrailerSize: 1024)
        }
        let head = try XCTUnwrap(parsed)
        var out = ByteBuffer()
        HTTPResponseHeadWriter.write(status: 200, reason: "OK", headers: head.headers, framing: .length(0), close: false,
                                     serverLine: "", date: "d", into: &out)
        let written = Array(out.readableBytesView)
        let line = Array("\r\nX-Name: ".utf8) + latin + Array("\r\n".utf8)
        XCTAssertTrue(written.indices.contains { written[$0...].starts(with: line) }, String(decoding: written, as: UTF8.self))
        XCTAssertFalse(written.indices.contains { written[$0...].starts(with: [0xEF, 0xBF, 0xBD]) })
    }
}
