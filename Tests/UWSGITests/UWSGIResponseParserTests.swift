import KernelCore
import KernelUpstream
import NIOCore
import NIOEmbedded
import XCTest
@testable import UWSGI

final class UWSGIResponseParserTests: XCTestCase {
    private func channel(maxHeadSize: Int = 4096, head: Bool = false) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(uwsgiResponseDecoder(maxHeadSize: maxHeadSize, isHeadRequest: head))
        return channel
    }

    func testLengthDelimitedBody() throws {
        let channel = try channel()
        try channel.writeInbound(buffer("HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-Multi: a\r\nX-Multi: b\r\n\r\nhelloTRAILING"))
        let result = try drainResponse(channel)
        XCTAssertEqual(result.heads.count, 1)
        XCTAssertEqual(result.heads[0].status, 201)
        XCTAssertEqual(result.heads[0].reason, "Created")
        XCTAssertEqual(result.heads[0].headers["content-type"], "text/plain")
        XCTAssertEqual(result.heads[0].headers.values("X-Multi"), ["a", "b"])
        XCTAssertEqual(String(decoding: result.body, as: UTF8.self), "hello")
        XCTAssertEqual(result.ends, 1)
        XCTAssertNoThrow(try channel.finish())
    }

    func testLengthDelimitedBodySplitAtEveryByte() throws {
        let bytes = Array("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc".utf8)
        for split in 0...bytes.count {
            let channel = try channel()
            try channel.writeInbound(buffer(Array(bytes[..<split])))
            try channel.writeInbound(buffer(Array(bytes[split...])))
            let result = try drainResponse(channel)
            XCTAssertEqual(result.heads.first?.status, 200, "split \(split)")
            XCTAssertEqual(result.body, Array("abc".utf8), "split \(split)")
            XCTAssertEqual(result.ends, 1, "split \(split)")
        }
    }

    func testCloseDelimitedBody() throws {
        let channel = try channel()
        try channel.writeInbound(buffer("HTTP/1.1 200 OK\nContent-Type: text/plain\n\nfirst "))
        try channel.writeInbound(buffer("second"))
        var result = try drainResponse(channel)
        XCTAssertEqual(result.heads.first?.status, 200)
        XCTAssertEqual(result.ends, 0)
        XCTAssertNoThrow(try channel.finish())
        let rest = try drainResponse(channel)
        result.body += rest.body
        XCTAssertEqual(String(decoding: result.body, as: UTF8.self), "first second")
        XCTAssertEqual(rest.ends, 1)
    }

    func testStatusWithoutReason() throws {
        let channel = try channel()
        try channel.writeInbound(buffer("HTTP/1.1 204\r\n\r\n"))
        let result = try drainResponse(channel)
        XCTAssertEqual(result.heads.first?.status, 204)
        XCTAssertNil(result.heads.first?.reason)
        XCTAssertEqual(result.ends, 1)
    }

    func testCGIStyleStatusHeader() throws {
        let channel = try channel()
        try channel.writeInbound(buffer("Status: 404 Not Here\r\nContent-Length: 0\r\n\r\n"))
        let result = try drainResponse(channel)
        XCTAssertEqual(result.heads.first?.status, 404)
        XCTAssertEqual(result.heads.first?.reason, "Not Here")
        XCTAssertNil(result.heads.first?.headers["Status"])
        XCTAssertEqual(result.ends, 1)
    }

    func testCGIStyleLocationMeans302() throws {
        let channel = try channel()
        try channel.writeInbound(buffer("Location: /elsewhere\r\nContent-Length: 0\r\n\r\n"))
        XCTAssertEqual(try drainResponse(channel).heads.first?.status, 302)
    }

    func testBadStatusLines() throws {
        for line in ["HTTP/1.1 2000 OK", "HTTP/1.1 20 OK", "HTTP/1.1 abc OK", "HTTP/11 200 OK", "HTTP/1.1  200 OK", "HTTP/1.1 099 X"] {
            let channel = try channel()
            XCTAssertThrowsError(try channel.writeInbound(buffer("\(line)\r\n\r\n")), line) { error in
                XCTAssertEqual(uwsgiError(error), .invalidStatusLine(line), line)
            }
        }
    }

    func testInvalidHeaderLine() throws {
        let channel = try channel()
        XCTAssertThrowsError(try channel.writeInbound(buffer("HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n"))) { error in
            XCTAssertEqual(uwsgiError(error), .invalidHeader("No colon here"))
        }
    }

    func testHeaderLineIsSplitOnItsBytes() throws {
        func parse(_ text: String) throws -> (String, String) {
            try UWSGIResponseParser.parseHeaderLine(buffer(Array(text.utf8)))
        }
        let (trimmedName, trimmed) = try parse("X-A: \t value with  inner spaces \t ")
        XCTAssertEqual(trimmedName, "X-A")
        XCTAssertEqual(trimmed, "value with  inner spaces")
        let (name, value) = try parse("Content-Type:text/plain")
        XCTAssertEqual(name, "Content-Type")
        XCTAssertEqual(value, "text/plain")
        let (_, empty) = try parse("X-Empty: \t ")
        XCTAssertEqual(empty, "")
        let (_, snowman) = try parse("X-U: ☃ ")
        XCTAssertEqual(snowman, "☃")
        for bad in [": no name", "X A: space in the name", "X-Nul: a\u{0}b", "no colon"] {
            XCTAssertThrowsError(try parse(bad), bad) { error in
                XCTAssertEqual(error as? UWSGIResponseError, .invalidHeader(bad))
            }
        }
    }

    func testAValueInAnotherCharsetKeepsItsBytes() throws {
        let latin = try UWSGIResponseParser.parseHeaderField(buffer(Array("X-Name: caf".utf8) + [0xE9]))
        XCTAssertEqual(latin.1, "café", "read as ISO-8859-1, as WSGI does")
        XCTAssertEqual(latin.2, [0x63, 0x61, 0x66, 0xE9])
        let utf8 = try UWSGIResponseParser.parseHeaderField(buffer(Array("X-Name: café".utf8)))
        XCTAssertEqual(utf8.1, "café")
        XCTAssertNil(utf8.2, "UTF-8 is its own text")
    }

    func testInvalidCGIStatus() throws {
        let channel = try channel()
        XCTAssertThrowsError(try channel.writeInbound(buffer("Status: bad\r\n\r\n"))) { error in
            XCTAssertEqual(uwsgiError(error), .invalidStatus("bad"))
        }
    }

    func testInvalidAndConflictingContentLength() throws {
        for headers in ["Content-Length: 5x", "Content-Length: 1\r\nContent-Length: 2", "Content-Length: -1"] {
            let channel = try channel()
            XCTAssertThrowsError(try channel.writeInbound(buffer("HTTP/1.1 200 OK\r\n\(headers)\r\n\r\n")), headers)
        }
    }

    func testChunkedAnswerIsRefused() throws {
        let channel = try channel()
        XCTAssertThrowsError(try channel.writeInbound(buffer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))) { error in
            XCTAssertEqual(uwsgiError(error), .unsupportedTransferEncoding("chunked"))
        }
    }

    func testHeadTooLarge() throws {
        let channel = try channel(maxHeadSize: 64)
        XCTAssertThrowsError(try channel.writeInbound(buffer("HTTP/1.1 200 OK\r\nX-Big: \(String(repeating: "x", count: 100))"))) { error in
            XCTAssertEqual(uwsgiError(error), .headTooLarge(limit: 64))
        }
    }

    func testPeerCloseInHead() throws {
        let channel = try channel()
        try channel.writeInbound(buffer("HTTP/1.1 200 OK\r\nContent-"))
        XCTAssertThrowsError(try channel.finish()) { error in
            XCTAssertEqual(error as? UpstreamResponseError, .prematureCloseInHead)
        }
    }

    func testPeerCloseMidBody() throws {
        let channel = try channel()
        try channel.writeInbound(buffer("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
        let partial = try drainResponse(channel)
        XCTAssertEqual(partial.body, Array("abc".utf8))
        XCTAssertThrowsError(try channel.finish()) { error in
            XCTAssertEqual(error as? UpstreamResponseError, .prematureCloseInBody(received: 3, expected: 10))
        }
        XCTAssertEqual(try drainResponse(channel).ends, 0)
    }

    func testAnswerToHeadHasNoBody() throws {
        let channel = try channel(head: true)
        try channel.writeInbound(buffer("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"))
        let result = try drainResponse(channel)
        XCTAssertEqual(result.heads.first?.headers["Content-Length"], "10")
        XCTAssertEqual(result.ends, 1)
        XCTAssertNoThrow(try channel.finish())
    }
}

final class UWSGIHeaderTextTests: XCTestCase {
    func testUTF8IsKeptAndOtherBytesReadAsLatin1() {
        XCTAssertEqual(decodeHeaderText(buffer(Array("café ☃".utf8))), "café ☃")
        XCTAssertEqual(decodeHeaderText(buffer([0x63, 0x61, 0x66, 0xE9])), "caf\u{E9}")
        XCTAssertEqual(decodeHeaderText(buffer([0xFF, 0x00, 0x41])), "\u{FF}\u{0}A")
    }

    func testLatin1HeaderFromTheUpstreamKeepsItsCharacter() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(uwsgiResponseDecoder())
        try channel.writeInbound(buffer(Array("HTTP/1.1 200 OK\r\nX-Reply: caf".utf8) + [0xE9] + Array("\r\nContent-Length: 0\r\n\r\n".utf8)))
        XCTAssertEqual(try drainResponse(channel).heads.first?.headers["X-Reply"], "caf\u{E9}")
    }
}
