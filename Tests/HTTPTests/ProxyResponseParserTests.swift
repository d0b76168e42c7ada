import Foundation
import KernelCore
import KernelUpstream
import NIOCore
import NIOEmbedded
import XCTest
@testable import HTTP

/// The `proxy_pass` response parser and chunked decoder on valid and hostile upstream answers.
final class ProxyResponseParserTests: XCTestCase {
    private func parse(_ text: String, maxHeadSize: Int = 4096, upgrade: Bool = false,
                       head: Bool = false) throws -> (UpstreamResponseHead?, ByteBuffer) {
        var parser = ProxyResponseParser(maxHeadSize: maxHeadSize, upgradeRequested: upgrade, isHeadRequest: head)
        var buffer = ByteBuffer(string: text)
        let parsed = try parser.parseHead(&buffer)
        return (parsed, buffer)
    }

    private func error(_ text: String, maxHeadSize: Int = 4096) -> ProxyResponseError? {
        do {
            _ = try parse(text, maxHeadSize: maxHeadSize)
            return nil
        } catch {
            return error as? ProxyResponseError
        }
    }

    func testAValidHeadAndItsFraming() throws {
        let (head, rest) = try parse("HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-Odd.Name!: v \r\n\r\nhello")
        let parsed = try XCTUnwrap(head)
        XCTAssertEqual(parsed.status, 201)
        XCTAssertEqual(parsed.reason, "Created")
        XCTAssertEqual(parsed.headers["x-odd.name!"], "v")
        XCTAssertTrue(parsed.reusable)
        guard case .length(5) = parsed.framing else { return XCTFail("\(parsed.framing)") }
        XCTAssertEqual(String(buffer: rest), "hello")

        let (chunked, _) = try parse("HTTP/1.1 200 OK\nTransfer-Encoding: Chunked\n\n")
        guard case .decoded = try XCTUnwrap(chunked).framing else { return XCTFail("chunked") }
        XCTAssertTrue(chunked!.reusable)

        let (untilClose, _) = try parse("HTTP/1.1 200\r\n\r\n")
        guard case .untilClose = try XCTUnwrap(untilClose).framing else { return XCTFail("until close") }
        XCTAssertFalse(untilClose!.reusable)
        XCTAssertNil(untilClose!.reason)

        XCTAssertFalse(try XCTUnwrap(parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").0).reusable, "HTTP/1.0 closes")
        XCTAssertFalse(try XCTUnwrap(parse("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n").0).reusable)
        let noContent = try XCTUnwrap(parse("HTTP/1.1 204 No Content\r\n\r\n").0)
        XCTAssertTrue(noContent.reusable)
        guard case .none = noContent.framing else { return XCTFail("204") }
        let forHead = try XCTUnwrap(parse("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", head: true).0)
        guard case .none = forHead.framing else { return XCTFail("HEAD") }
        XCTAssertTrue(forHead.reusable)
    }

    func testFieldsTheUpstreamsConnectionListsAreNotPassedOn() throws {
        let (head, _) = try parse("HTTP/1.1 200 OK\r\nConnection: X-Hop, keep-alive\r\nX-Hop: 1\r\nX-Name: caf\u{E9}\r\n"
                                  + "Connection: content-length\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n")
        let parsed = try XCTUnwrap(head)
        XCTAssertNil(parsed.headers["X-Hop"])
        XCTAssertEqual(parsed.headers["X-Kept"], "2")
        XCTAssertEqual(parsed.headers["Content-Length"], "0", "framing is not the hop's to remove")
        XCTAssertEqual(parsed.headers["X-Name"], "caf\u{E9}")
        XCTAssertTrue(parsed.reusable)
    }

    func testAHeadInPiecesIsParsedOnceWhole() throws {
        var parser = ProxyResponseParser(maxHeadSize: 4096)
        var buffer = ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-")
        XCTAssertNil(try parser.parseHead(&buffer))
        XCTAssertEqual(buffer.readerIndex, 0, "nothing is consumed before the head is whole")
        buffer.writeString("Length: 2\r\n\r")
        XCTAssertNil(try parser.parseHead(&buffer))
        buffer.writeString("\nok")
        XCTAssertEqual(try parser.parseHead(&buffer)?.status, 200)
        XCTAssertEqual(String(buffer: buffer), "ok")
    }

    func testInterimHeadsAreSkippedAndA101OnlyAnswersAnUpgrade() throws {
        let (head, rest) = try parse("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        XCTAssertEqual(head?.status, 200)
        XCTAssertNil(head?.headers["Link"])
        XCTAssertEqual(String(buffer: rest), "x")
        let switched = try XCTUnwrap(parse("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", upgrade: true).0)
        XCTAssertEqual(switched.status, 101)
        XCTAssertFalse(switched.reusable)
        guard case .none = switched.framing else { return XCTFail("101 has no body") }
        XCTAssertEqual(error("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"), .unrequestedSwitch)
        XCTAssertEqual(error("HTTP/1.0 103 Early Hints\r\n\r\nHTTP/1.0 200 OK\r\n\r\n"), .earlyHintsInHTTP10)
        // An endless run of interim heads ends at the size limit.
        let endless = String(repeating: "HTTP/1.1 100 Continue\r\n\r\n", count: 200)
        XCTAssertEqual(error(endless, maxHeadSize: 1024), .headTooLarge)
    }

    /// `HTTPResponseFuzz` finding: a 101 to an upgrade skipped the framing checks of interim heads, so two
    /// `Content-Length` lines reached the client. The input as libFuzzer wrote it (split bytes, control byte with
    /// the upgrade bit, payload), fed whole and one byte more at a time.
    func testFuzzFindingA101IsCheckedAsAFinalHead() throws {
        let finding = Array(Data(base64Encoded: "AjMCSFRUUC8xLjEgMTAxIP//IEMNCkNvbnRlbnQtVHlwZTogdGVUUC8xLjEgMTAzIP//IEMNCkNvbm50LVR5cGU6IHRleHQvcGxhaW4NCkNvbnRlbnQtTGVuZ3RoOiA1DQpYLU11bHRpOiBhDQpYLU11bHRpOiBieHQvLXBsYWluDQpDb250ZW50LUxlbmd0aDogNQ0KWC1NdWx0aTogYQ0KWC1NdWx0aTogYg0KDQpoZVTLyoxtYAkJb2s=")!)
        let payload = Array(finding.dropFirst(3))
        for split in [payload.count] + Array(1..<payload.count) {
            var parser = ProxyResponseParser(maxHeadSize: 4096, upgradeRequested: true)
            var buffer = ByteBuffer(bytes: payload.prefix(split))
            XCTAssertThrowsError(try {
                _ = try parser.parseHead(&buffer)
                buffer.writeBytes(payload.dropFirst(split))
                _ = try parser.parseHead(&buffer)
            }()) { error in
                XCTAssertEqual(error as? ProxyResponseError, .duplicateHeader(line: "Content-Length: 5", previous: "Content-Length: 5"))
            }
        }
        XCTAssertThrowsError(try parse("HTTP/1.1 101 Switching Protocols\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", upgrade: true))
    }

    func testHostileHeadsAreInvalid() {
        let cases: [(String, ProxyResponseError)] = [
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
             .duplicateHeader(line: "Content-Length: 6", previous: "Content-Length: 5")),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
             .duplicateHeader(line: "Content-Length: 5", previous: "Content-Length: 5")),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", .lengthAndEncoding),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", .lengthAndEncoding),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", .unknownTransferEncoding("gzip, chunked")),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
             .duplicateHeader(line: "Transfer-Encoding: chunked", previous: "Transfer-Encoding: chunked")),
            ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", .invalidContentLength("Content-Length: -1")),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1,1\r\n\r\n", .invalidContentLength("Content-Length: 1,1")),
            ("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", .invalidContentLength("Content-Length: 99999999999999999999")),
            ("HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n", .invalidHeader(" folded")),
            ("HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n", .invalidHeader("X-A : 1")),
            ("HTTP/1.1 200 OK\r\nNo colon\r\n\r\n", .invalidHeader("No colon")),
            ("HTTP/1.1 200 OK\r\n: empty\r\n\r\n", .invalidHeader(": empty")),
            ("HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n", .invalidHeader("X-A: a\rb")),
            ("HTTP/1.1 200 OK\r\nX-A: a\u{0}b\r\n\r\n", .invalidHeader("X-A: a\u{0}b")),
            ("HTTP/1.1 200 OK\r\nX\u{c3}\u{a9}: v\r\n\r\n", .invalidHeader("X\u{c3}\u{a9}: v")),
            ("HTTP/2 200 OK\r\n\r\n", .invalidStatusLine("HTTP/2 200 OK")),
            ("HTTP/1.2 200 OK\r\n\r\n", .invalidStatusLine("HTTP/1.2 200 OK")),
            ("HTTP/1.1 20 OK\r\n\r\n", .invalidStatusLine("HTTP/1.1 20 OK")),
            ("HTTP/1.1 099 Low\r\n\r\n", .invalidStatusLine("HTTP/1.1 099 Low")),
            ("HTTP/1.1 600 High\r\n\r\n", .invalidStatusLine("HTTP/1.1 600 High")),
            ("HTTP/1.1 200OK\r\n\r\n", .invalidStatusLine("HTTP/1.1 200OK")),
            ("HTTP/1.1 200 O\u{1}K\r\n\r\n", .invalidStatusLine("HTTP/1.1 200 O\u{1}K")),
            ("hello world\r\n\r\n", .invalidStatusLine("hello world")),
            ("\r\n\r\n", .invalidStatusLine("")),
        ]
        for (text, expected) in cases {
            XCTAssertEqual(error(text), expected, text.debugDescription)
        }
        XCTAssertEqual(error("HTTP/1.1 200 OK\r\nX-Big: " + String(repeating: "a", count: 200) + "\r\n\r\n", maxHeadSize: 128), .headTooLarge)
        XCTAssertEqual(error("HTTP/1.1 200 OK\r\nX-Big: " + String(repeating: "a", count: 200), maxHeadSize: 128), .headTooLarge,
                       "refused before the head ends")
        XCTAssertEqual(ProxyResponseError.duplicateHeader(line: "Content-Length: 6", previous: "Content-Length: 5").description,
                       "upstream sent duplicate header line: \"Content-Length: 6\", previous value: \"Content-Length: 5\"")
        XCTAssertEqual(ProxyResponseError.invalidHeader("X: a\rb").description, "upstream sent invalid header: \"X: a\\x0Db\"")
    }

    // MARK: - Chunked bodies

    private func decode(_ pieces: [String], maxTrailerSize: Int = 4096) throws -> (body: String, ended: Bool) {
        var decoder = ProxyChunkedDecoder(maxTrailerSize: maxTrailerSize)
        var body = ""
        var buffer = ByteBuffer()
        for piece in pieces {
            buffer.writeString(piece)
            loop: while true {
                switch try decoder.decode(&buffer) {
                case .part(let part): body += String(buffer: part)
                case .needMoreData: break loop
                case .end: return (body, true)
                }
            }
        }
        return (body, false)
    }

    func testChunkedBodiesInAnyPieces() throws {
        let wire = "5\r\nhello\r\n6;ext=1\r\n world\r\nA\r\n0123456789\r\n0\r\nTrailer-A: x\r\n\r\n"
        XCTAssertEqual(try decode([wire]).body, "hello world0123456789")
        XCTAssertTrue(try decode([wire]).ended)
        // Byte by byte.
        let bytes = wire.map { String($0) }
        let split = try decode(bytes)
        XCTAssertEqual(split.body, "hello world0123456789")
        XCTAssertTrue(split.ended)
        XCTAssertFalse(try decode(["5\r\nhel"]).ended)
    }

    func testHostileChunking() {
        let cases: [(String, ProxyResponseError)] = [
            ("zz\r\nhello\r\n0\r\n\r\n", .invalidChunkedBody),
            ("\r\nhello\r\n0\r\n\r\n", .invalidChunkedBody),
            ("5\r\nhelloXX0\r\n\r\n", .invalidChunkedBody),
            ("5 x\r\nhello\r\n0\r\n\r\n", .invalidChunkedBody),
            ("-5\r\nhello\r\n0\r\n\r\n", .invalidChunkedBody),
            ("1000000000000000\r\n", .invalidChunkedBody),
            ("ffffffffffffffffff\r\n", .invalidChunkedBody),
            ("5\r\nhello\r\n0\r\nBad\u{1}Trailer\r\n\r\n", .invalidChunkedBody),
            ("0\r\nX: " + String(repeating: "t", count: 300) + "\r\n\r\n", .trailersTooLarge),
            (String(repeating: "0", count: 5000), .invalidChunkedBody),
        ]
        for (wire, expected) in cases {
            XCTAssertThrowsError(try decode([wire], maxTrailerSize: 256), wire.debugDescription) { error in
                XCTAssertEqual(error as? ProxyResponseError, expected, wire.debugDescription)
            }
        }
    }

    func testChunksBeforeABadOneGoOutThenTheError() throws {
        var decoder = ProxyChunkedDecoder(maxTrailerSize: 256)
        var buffer = ByteBuffer(string: "5\r\nhello\r\nzz\r\n")
        guard case .part(let part) = try decoder.decode(&buffer) else { return XCTFail("the good chunk first") }
        XCTAssertEqual(String(buffer: part), "hello")
        XCTAssertThrowsError(try decoder.decode(&buffer)) { XCTAssertEqual($0 as? ProxyResponseError, .invalidChunkedBody) }
        XCTAssertThrowsError(try decoder.decode(&buffer), "and it stays refused")
    }

    /// The parser in the engine's decoder on an EmbeddedChannel: a smuggled second answer after a chunked body is
    /// never read as one.
    func testInTheEngineDecoderNothingAfterTheBodyIsRead() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(
            UpstreamResponseDecoder(parser: ProxyResponseParser(maxHeadSize: 4096), isHeadRequest: false)))
        try channel.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"))
        var parts: [String] = []
        while let part = try channel.readInbound(as: UpstreamResponsePart.self) {
            switch part {
            case .head(let head): parts.append("head \(head.status)")
            case .body(let body): parts.append("body \(String(buffer: body))")
            case .end: parts.append("end")
            case .excess(let warning): parts.append(warning)
            }
        }
        XCTAssertEqual(parts, ["head 200", "body abc", "end", "upstream sent data after final chunk"])
        _ = try? channel.finish()
    }

    /// The last chunk in the same read as the payload before it, with nothing after (an upstream that keeps its
    /// connection open): the end is seen in that read, not when more bytes or the close arrive.
    func testTheEndInTheReadOfTheLastPayloadIsSeenAtOnce() throws {
        for reads in [["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
                      ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n"],
                      ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n", "3\r\nllo\r\n0\r\nX-T: 1\r\n\r\n"]] {
            let channel = EmbeddedChannel(handler: ByteToMessageHandler(
                UpstreamResponseDecoder(parser: ProxyResponseParser(maxHeadSize: 4096), isHeadRequest: false)))
            var parts: [String] = []
            for read in reads {
                try channel.writeInbound(ByteBuffer(string: read))
                while let part = try channel.readInbound(as: UpstreamResponsePart.self) {
                    switch part {
                    case .head(let head): parts.append("head \(head.status)")
                    case .body(let body): parts.append("body \(String(buffer: body))")
                    case .end: parts.append("end")
                    case .excess(let warning): parts.append(warning)
                    }
                }
            }
            XCTAssertEqual(parts.last, "end", "\(reads)")
            XCTAssertEqual(parts.filter { $0.hasPrefix("body") }.map { $0.dropFirst(5) }.joined(), "hello")
            _ = try? channel.finish()
        }
    }
}
