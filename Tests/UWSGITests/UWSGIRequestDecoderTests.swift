import NIOCore
import NIOEmbedded
import XCTest
@testable import UWSGI

final class UWSGIRequestDecoderTests: XCTestCase {
    let vars: [(String, String)] = [
        ("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/v1/parse?x=1"), ("CONTENT_LENGTH", "11"),
        ("CONTENT_TYPE", "text/plain"), ("HTTP_X_EMPTY", ""), ("SERVER_PROTOCOL", "HTTP/1.1"),
    ]
    let body = Array("hello world".utf8)

    private func assertDecodedWhole(_ result: DecodedRequest, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(result.heads.count, 1, file: file, line: line)
        XCTAssertEqual(result.heads.first?.variables.entries.map { "\($0.name)=\($0.value)" },
                       vars.map { "\($0.0)=\($0.1)" }, file: file, line: line)
        XCTAssertEqual(result.heads.first?.contentLength, 11, file: file, line: line)
        XCTAssertEqual(result.body, body, file: file, line: line)
        XCTAssertEqual(result.ends, 1, file: file, line: line)
    }

    func testWholePacketInOneRead() throws {
        let channel = try decoderChannel()
        try channel.writeInbound(buffer(handMadePacket(vars, body: body)))
        assertDecodedWhole(try drainRequest(channel))
        XCTAssertNoThrow(try channel.finish())
    }

    func testPacketSplitAtEveryByteBoundary() throws {
        let packet = handMadePacket(vars, body: body)
        for split in 0...packet.count {
            let channel = try decoderChannel()
            try channel.writeInbound(buffer(Array(packet[..<split])))
            try channel.writeInbound(buffer(Array(packet[split...])))
            assertDecodedWhole(try drainRequest(channel))
            XCTAssertNoThrow(try channel.finish(), "split at \(split)")
        }
    }

    func testPacketFedOneByteAtATime() throws {
        let channel = try decoderChannel()
        for byte in handMadePacket(vars, body: body) { try channel.writeInbound(buffer([byte])) }
        assertDecodedWhole(try drainRequest(channel))
    }

    func testEmptyVarsBlockAndNoBody() throws {
        let channel = try decoderChannel()
        try channel.writeInbound(buffer([0, 0, 0, 0]))
        let result = try drainRequest(channel)
        XCTAssertEqual(result.heads.count, 1)
        XCTAssertEqual(result.heads.first?.variables.count, 0)
        XCTAssertEqual(result.heads.first?.contentLength, 0)
        XCTAssertEqual(result.ends, 1)
    }

    func testBytesAfterTheBodyAreDropped() throws {
        let channel = try decoderChannel()
        try channel.writeInbound(buffer(handMadePacket(vars, body: body + Array("EXTRA".utf8))))
        assertDecodedWhole(try drainRequest(channel))
        try channel.writeInbound(buffer("more"))
        XCTAssertNil(try channel.readInbound(as: UWSGIRequestPart.self))
    }

    func testBlockOverBufferSizeIsRejectedBeforeItIsRead() throws {
        let channel = try decoderChannel(maxBlockSize: 4096)
        // Only the header: the size alone decides, nothing of the block needs to arrive.
        XCTAssertThrowsError(try channel.writeInbound(buffer([0, 0x01, 0x10, 0]))) { error in
            XCTAssertEqual(error as? UWSGIDecodingError, .blockTooLarge(size: 4097, maximum: 4096))
            XCTAssertEqual("\(error)", "invalid request block size: 4097 (max 4096)...skip")
        }
    }

    func testBlockOfExactlyBufferSizeIsAccepted() throws {
        let value = String(repeating: "a", count: 100 - 4 - 1)
        let packet = handMadePacket([("K", value)])
        XCTAssertEqual(packet.count, 104)
        let channel = try decoderChannel(maxBlockSize: 100)
        try channel.writeInbound(buffer(packet))
        XCTAssertEqual(try drainRequest(channel).heads.first?.variables["K"], value)
    }

    func testUnknownModifier1IsRejected() throws {
        let channel = try decoderChannel()
        XCTAssertThrowsError(try channel.writeInbound(buffer(handMadePacket(vars, modifier1: 5, body: body)))) { error in
            XCTAssertEqual(error as? UWSGIDecodingError, .unsupportedModifier(5))
            XCTAssertEqual("\(error)", "-- unavailable modifier requested: 5 --")
        }
        XCTAssertNil(try channel.readInbound(as: UWSGIRequestPart.self))
    }

    func testModifier2IsCarried() throws {
        let channel = try decoderChannel()
        try channel.writeInbound(buffer(handMadePacket([("REQUEST_METHOD", "GET")], modifier2: 7)))
        XCTAssertEqual(try drainRequest(channel).heads.first?.modifier2, 7)
    }

    func testValueLengthPastTheBlockIsRejected() throws {
        // Key "A", then a value length of 10 with only 2 bytes left in a 7-byte block.
        let packet: [UInt8] = [0, 7, 0, 0, 1, 0, 0x41, 10, 0, 0x42, 0x43]
        let channel = try decoderChannel()
        XCTAssertThrowsError(try channel.writeInbound(buffer(packet))) { error in
            XCTAssertEqual(error as? UWSGIDecodingError, .variableOutOfBounds(offset: 3, length: 10))
        }
    }

    func testKeyLengthPastTheBlockIsRejected() throws {
        let packet: [UInt8] = [0, 4, 0, 0, 200, 0, 0x41, 0x42]
        let channel = try decoderChannel()
        XCTAssertThrowsError(try channel.writeInbound(buffer(packet))) { error in
            XCTAssertEqual(error as? UWSGIDecodingError, .variableOutOfBounds(offset: 0, length: 200))
        }
    }

    func testLoneLengthByteAtTheEndOfTheBlockIsRejected() throws {
        let packet: [UInt8] = [0, 1, 0, 0, 1]
        let channel = try decoderChannel()
        XCTAssertThrowsError(try channel.writeInbound(buffer(packet))) { error in
            XCTAssertEqual(error as? UWSGIDecodingError, .variableOutOfBounds(offset: 0, length: 2))
        }
    }

    func testMissingValueLengthIsRejected() throws {
        let packet: [UInt8] = [0, 3, 0, 0, 1, 0, 0x41]
        let channel = try decoderChannel()
        XCTAssertThrowsError(try channel.writeInbound(buffer(packet))) { error in
            XCTAssertEqual(error as? UWSGIDecodingError, .variableOutOfBounds(offset: 3, length: 2))
        }
    }

    func testEmptyKeyIsRejected() throws {
        let packet: [UInt8] = [0, 4, 0, 0, 0, 0, 0, 0]
        let channel = try decoderChannel()
        XCTAssertThrowsError(try channel.writeInbound(buffer(packet))) { error in
            XCTAssertEqual(error as? UWSGIDecodingError, .emptyKey(offset: 0))
        }
    }

    func testContentLengthMustBePlainDigits() throws {
        for bad in ["5abc", "-1", " 5", "5 ", "+5", "0x10", "1e3", "99999999999999999999"] {
            let channel = try decoderChannel()
            XCTAssertThrowsError(try channel.writeInbound(buffer(handMadePacket([("CONTENT_LENGTH", bad)], body: [1, 2, 3, 4, 5]))), bad) { error in
                XCTAssertEqual(error as? UWSGIDecodingError, .invalidContentLength(bad))
            }
            XCTAssertNil(try channel.readInbound(as: UWSGIRequestPart.self), bad)
        }
    }

    func testEmptyOrMissingContentLengthMeansNoBody() throws {
        for pairs in [[("CONTENT_LENGTH", "")], [("REQUEST_METHOD", "GET")]] {
            let channel = try decoderChannel()
            try channel.writeInbound(buffer(handMadePacket(pairs)))
            let result = try drainRequest(channel)
            XCTAssertEqual(result.heads.first?.contentLength, 0)
            XCTAssertEqual(result.ends, 1)
        }
    }

    func testPeerClosingInTheHeaderIsReported() throws {
        let channel = try decoderChannel()
        try channel.writeInbound(buffer([0, 10]))
        XCTAssertThrowsError(try channel.finish()) { error in
            XCTAssertEqual(error as? UWSGIDecodingError, .truncatedHead(received: 2))
        }
    }

    func testPeerClosingInTheVarsBlockIsReported() throws {
        let packet = handMadePacket(vars)
        let channel = try decoderChannel()
        try channel.writeInbound(buffer(Array(packet[..<20])))
        XCTAssertThrowsError(try channel.finish()) { error in
            XCTAssertEqual(error as? UWSGIDecodingError, .truncatedHead(received: 20))
        }
    }

    func testPeerClosingMidBodyIsReported() throws {
        let packet = handMadePacket(vars, body: body)
        let channel = try decoderChannel()
        try channel.writeInbound(buffer(Array(packet[..<(packet.count - 4)])))
        let partial = try drainRequest(channel)
        XCTAssertEqual(partial.heads.count, 1)
        XCTAssertEqual(partial.body, Array(body[..<7]))
        XCTAssertEqual(partial.ends, 0)
        XCTAssertThrowsError(try channel.finish()) { error in
            XCTAssertEqual(error as? UWSGIDecodingError, .truncatedBody(received: 7, expected: 11))
        }
    }

    func testConnectionClosedBeforeAnyByteIsNoError() throws {
        let channel = try decoderChannel()
        XCTAssertNoThrow(try channel.finish())
    }

    func testContentLengthParser() {
        XCTAssertEqual(parseUWSGIContentLength(""), 0)
        XCTAssertEqual(parseUWSGIContentLength("0"), 0)
        XCTAssertEqual(parseUWSGIContentLength("10485760"), 10_485_760)
        XCTAssertEqual(parseUWSGIContentLength("999999999999999999"), 999_999_999_999_999_999)
        XCTAssertNil(parseUWSGIContentLength("5abc"))
        XCTAssertNil(parseUWSGIContentLength("١٢"))  // non-ASCII digits
    }
}
