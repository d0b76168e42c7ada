import Foundation
import NIOCore
import KernelConfig
import XCTest
@testable import HTTP

/// Inputs that `Fuzz/Sources/HTTPRequestFuzz` found (base64 of the fuzz input: two split-control bytes, then what
/// the client sent). Each once gave a different answer when the same bytes arrived in other reads; the head
/// scanner must answer the same whole and fed one byte more at a time, with the limits the fuzz target uses.
final class HTTPFuzzFindingsTests: XCTestCase {
    private let maxLine = 256
    private let maxHead = 1024

    /// The scanner's outcome over `payload` at once, and over every prefix of it in turn (stopping at the first
    /// answer), as a slow client's reads would give it.
    private func outcomes(_ payload: [UInt8], maxLine: Int? = nil) -> (whole: HTTPHeadScanner.Outcome, byByte: HTTPHeadScanner.Outcome) {
        let maxLine = maxLine ?? self.maxLine
        var whole = HTTPHeadScanner(maxLineLength: maxLine, maxHeadLength: maxHead)
        let wholeOutcome = payload.withUnsafeBytes { whole.scan($0) }
        var split = HTTPHeadScanner(maxLineLength: maxLine, maxHeadLength: maxHead)
        var splitOutcome = HTTPHeadScanner.Outcome.needMore
        for end in 1...payload.count where splitOutcome == .needMore {
            splitOutcome = payload.withUnsafeBytes { split.scan(UnsafeRawBufferPointer(rebasing: $0[0..<end])) }
        }
        return (wholeOutcome, splitOutcome)
    }

    private func payload(_ base64: String) -> [UInt8] {
        Array(Data(base64Encoded: base64)!.dropFirst(2))
    }

    /// A finding whose bytes hold a CR that is no line ending: such a head is a 400 at that CR's next byte,
    /// whole or cut (checked here), so the limits it once probed are probed with each such CR made an `x`.
    private func withoutBareCarriageReturns(_ bytes: [UInt8], refusedAs error: HTTPRequestError, maxLine: Int? = nil,
                                            file: StaticString = #filePath, line: UInt = #line) -> [UInt8] {
        let (whole, byByte) = outcomes(bytes, maxLine: maxLine)
        XCTAssertEqual(whole, .failure(error), file: file, line: line)
        XCTAssertEqual(byByte, whole, file: file, line: line)
        var cleaned = bytes
        for index in cleaned.indices where cleaned[index] == 13 && (index + 1 == cleaned.count || cleaned[index + 1] != 10) {
            cleaned[index] = UInt8(ascii: "x")
        }
        return cleaned
    }

    /// A request line longer than the limit whose method has a byte no method has: 400 (not 414), however cut.
    func testLongRequestLineWithAnInvalidMethodIs400HoweverCut() {
        let bytes = payload(
            "QUFBQUFB1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU" +
            "1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NRBQUFBUVFRUVFRUVFRUVFfUS4u09M0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0" +
            "NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0" +
            "NDQ0NDQ0NDQ0NDQ0NDTT09PTLi4uLi4uLlFaR0VUIC8lAAAK")
        let (whole, byByte) = outcomes(bytes)
        XCTAssertEqual(whole, .failure(.invalidRequestLine))
        XCTAssertEqual(byByte, whole)
    }

    /// A header line exactly at the limit whose CR and LF arrive apart is not too long. (Its 256 bytes and CRLF
    /// are the limit of a buffer of 258: the line ending counts, as in nginx.)
    func testHeaderLineAtTheLimitIsNotTooLongWhenItsCRArrivesAlone() {
        let limit = maxLine + 2
        let bytes = withoutBareCarriageReturns(payload(
            "AAdQT1NUIC9UcmVhY25zZmVyLUVKbm9zdGhvIEhUVFAvMS4xDQr////////////ExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMQN" +
            "Cv///////////8TExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExIEAAADExMTExMTExMTEAgICAgICAgICAgICAgICAgICAgICAgIC" +
            "AhICAgICAgJvgQAAAMTExMTExMTExMQCAgICAgICAgICAgICAgICAgICAgICAgICEgICAgICAm9kaW5nOiBDaHVua2VkDQICAgICAgICAgICAgIC" +
            "AgICU2V0AgICAgICAgICAgICAgICAgICAgICAsTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTExHQtTGVubmc6IGNo" +
            "dW5rZWQNCg0K"), refusedAs: .invalidHeaderLine, maxLine: limit)
        let (whole, byByte) = outcomes(bytes, maxLine: limit)
        guard case .complete(let start, let end) = whole else { return XCTFail("\(whole)") }
        // One byte less of room, and the same line is too long, whole or cut.
        let (tight, tightByByte) = outcomes(bytes, maxLine: limit - 1)
        XCTAssertEqual(tight, .failure(.headerLineTooLong))
        XCTAssertEqual(tightByByte, tight)
        XCTAssertEqual(byByte, whole)
        let parsed = bytes.withUnsafeBytes { HTTPRequestHeadParser.parse(UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
        guard case .failure(let error) = parsed else { return XCTFail("parsed \(parsed)") }
        XCTAssertEqual(error, .invalidHeaderLine)
    }

    /// A long header line that starts near the end of the head's room: the head's limit is reached first, whole
    /// or cut.
    func testLongHeaderLineNearTheEndOfTheHeadIsHeadTooLargeHoweverCut() {
        let bytes = withoutBareCarriageReturns(payload(
            "A1pHR0VUIC9oZWxsbyBIVFRQLzEuMg0KSG9zdDogdGVzdA0KDSdFVCAvaGVsbG8gSFRUUC8xRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZG" +
            "RkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkYuMg0KSG9z/3QHAFBPU1QgL2hvIEhUVFAvMS4xDQpIb3N0OiB0ZXN0" +
            "DQpFeHBnY3Q6IDFlbnRpbnUgdGVzQ2hhcmFjdGV0DQpFeP9nY3Q6IDF0ZWVudC1MZW5ndHRlc3QNClRyYW5zZmVyLUVuY29kaW5naDpFeHANCkVj" +
            "Onh0Z3AgMWVVbmVudC1MZW5ndHRlZW50LUxlbmd0dGVzdA0AAADfbnNmZXItRW5jb2RpbnQ6IHRlc3QNCkV4cGdjdDogMf9vZW50aW51IHRlc0No" +
            "YXJhY3RldA0KRXhwZ2N0IG4tY3RSYW5naW51IHRlc3QNCkV4cGdjdDogyJpudGludUV4cA0KRWM6eHRncCAxZXN0YW5zdDogdGVzdA0KRXhwZ2N0" +
            "OiAx/29lbnRpbnUgdGVzQ2hhcmFjdGV0DQpFeHBnY3Q6IDFldGVuZEZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZG" +
            "LjINCkhvc/90BwBQT1NUIC9obyBIVFRQLzEuMQ0KSG9zdDogdGVzdA0KRXhwZ2N0OiAxZW50aW51IHRlc0NoYXJhY3RldA0KRXj/Z2N0OiAxdGVl" +
            "bnQtTGVuZ3R0ZXN0DQpUcmFuc2Zlci1FbmNvZGluZ2g6RXhwDQpFYzp4dGdwIDFlVW5lbnQtTGVuZ3R0ZWVudC1MZW5ndHRlc3QNAAAA325zZmVy" +
            "LUVuY29kaW50OiB0ZXN0DQpFeHBnY3Q6IDH/b2VudGludSB0ZXNDaGFyYWN0ZXQNCkV4cGdjdCBuLWN0UmFuZ2ludSB0ZXN0DQpFeHBnY3Q6IMia" +
            "bnRpbnVFeHANCkVjOnh0Z3AgMWVzdGFuc3Q6IHRlc3QNCkV4cGdjdDogMf9vZW50aW51IHRlc0NoYXJhY3RldA0KRXhwZ2N0OiAxZXRlbmQtTGVu" +
            "Z/////////////////////////////////////////////////////////8AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" +
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA////" +
            "////////////////////////////////////////////////////////////////////////LUxlbmf/////////////////////////////////" +
            "////////////////////////AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" +
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAP//////////////////////////////////////" +
            "//////////////////////////////////////90dGVzdA0KVHJhbnRlc3NmZXItRW5jb2RpbnQ6IHRlc3QNCkV4cGdjdDogMP9vZW50aW51IHRl" +
            "c0NoYXJhY3RldA0KRXhwZ2N0OiAxZf8/bnQtTGVuZ3R0ZXN0DQpUcmFuc2Zlci1FbmNvZGluZ2g6RXhwDQpFeHBnY3Q6IDFlbmZlcpJFbmNveHB0" +
            "Om8xMDAgbi1jdGludSB0ZQAAAN9FeHCinIvF3zdlkXRpUE9TVCAvZWNobyBIVFRQLzEuMQ0KSG9zdDogdGVzdA0KVHJhbnNmZW518vLy8vLy8kV4" +
            "cA0KRWM6dUV4cA0KRWM6eHRncCAxZW50aW51IHQNClRyYW5zZmVyLUVuY29kaW5naDpFeHANCkV4cGdjdDogMmVuZmVykkVuY29kaW5naDpFeHB0" +
            "Om8xMDAgbi1jdGtudSB0ZQAAAN9FeCpwopyLxd83ZZF0aW51RXhwDQpFYzp4dGdwIDFlbnRpbnUgbnUgdGVzdA0KZ2N0OiAxZXRMbmUtdGVuZ3R0" +
            "ZXN0YW4="), refusedAs: .invalidHeaderLine)
        let (whole, byByte) = outcomes(bytes)
        XCTAssertEqual(whole, .failure(.headTooLarge))
        XCTAssertEqual(byByte, whole)
    }

    /// A head that ends in an unfinished header line past both limits: the head's limit, reached first, decides
    /// (not the read that happened to pass both at once).
    func testUnfinishedLineAcrossBothLimitsIsHeadTooLargeHoweverCut() {
        let bytes = withoutBareCarriageReturns(payload(
            "A1pQT1NUIC9lY2hvIEhUVFAvMS4xDQpIb3N0OiB0IGNob2VudGludA0KVHJhbnNmZXItRW5jb2RpbmdoOkV4cA0KRWM6eHRncCAxZVVuZW50LUxl" +
            "bmd0dGVzdA0KVHJhbnNmZXItRW5jb2RpbmdoOkV4cA0KRWM6eHRncCAwZVVuc2FmdXRCc2UNCkV4cGdjdDogMmV0ZW50LUxlbmd0dGVzbnQtTGVu" +
            "Z3R0ZXN0DQpUcmFuc2Zlci1FbmNvZGluZ2g6RXhwDUB8fHx8R2N0OiAwZW5mZXKSRW5jb2RpbmdoOkV4cGdjdDpvMTAwIG4gaW50Y3UtdGVzdA0K" +
            "RXhwZ2N0OiDImm50aW51RXhwDQpFYzp4dGdwIDFlbnRpbnUgdGVzdA0KRXhwZ2N0OiAxZXRlbnQtTGVuZ3R0ZXN0YW5zdDogdGVzdA0KRXhwZ2N0" +
            "OiAyZW50aW51IHRlc0NoYXJhY09TVCAvaG8gSFRUUC8xLjENIApIb3M6dHRlc3QNCkV4cGdjdHQtTGVuZy1MZW5ndHRlc3QNClRyYW5zZmVyLUVu" +
            "Y29kaW5naDpkaW5naDpFeHBnY3Q6bzEwMCBuLWN0aW51IHRlc3QNCkV4cGdjdDogyJpudGludUV4cA0KRWM6eHRncCAxZXRuaW51IHRlc3QNCkV4" +
            "cGdjdDogMWV0ZW50LUxlbmd0dGVzdGFuc3Q6IHRlc3QNCkV4cGdjdDogMWVudGludSB0ZXNDaGFyYWN0AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" +
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" +
            "AAAAAAAAAAAAAAAAAGWmdA0KRXhwZ2N0OiAxZXRlbnQtTGVuZ3R0ZXMgdGVzdA0KRW54cGdjdDogc2FmZUJ1c3hwZ2N0OiAxZXR0ZXN0YW5zdDog" +
            "dGVzdA0KRXhwZ2N0OiAx/09TVCAvZWNUcmFlci1Fbm9zdGhvIEhUVFADWlQgLzEuMQ0KSHQ6IHRldA0KQ29ubnRldC1MZW5ndGg6IDMNClRyYW5z" +
            "ZmVyLUVub3N0OiB0ZXN0DQpDb250ZW50LWc6IGNodW5rZW5zZmVyLUVub3N0aG8gSFRUUC8xLjENCkh0OiBvZS8uKS90Yy8uLi8uKS9pbnNwZWN0" +
            "Ly4vY3QveC94Ly4veS8uLi8uKS9pbnNwZWN0Ly4veS8uLhguKS90Y3AvLi9TdG4vIEhUVFAvAAAAeS8uLi8uKS90Yy8uLi8uKS9pbnNwZWN0Ly4v" +
            "Y3QveC94Ly4veS8uLi8uKS9pbnNwZWN0Ly4veS8uLhguKS90Y3BlL2lzbng9eT0lMTkuL3kvLi4vLikvaW4uKXkvLi4vLikvaW5zcGJjdC94L3gv" +
            "Li95Ly4uLy8uL3kvLi4vLikvaW5zcGVjdC8uL3kvLi4YLikvdGNwZS9pc254PXk9JTE5Li95Ly4uLy4pL2luLil5Ly4AdGludSB0ZXN0DXNwYmN0" +
            "L3gveC8uL3kvLi4vLik="), refusedAs: .invalidHeaderLine)
        let (whole, byByte) = outcomes(bytes)
        XCTAssertEqual(whole, .failure(.headTooLarge))
        XCTAssertEqual(byByte, whole)
    }

    /// A HEAD whose request line is too long: 414 without a body, whether the line was refused before it ended
    /// (its method known, its version not yet) or whole.
    func testTooLongHeadRequestLineGets414WithoutBodyHoweverCut() throws {
        let bytes = payload(
            "A1pIRUFEIC9oZWxsYmN0L3gveC8uL3kvLi4vLikvaW5zcGVjdC8uL3kvLi5pbnNwYmN0L3gveC8uL3kvLi4vLi95Ly4uLy4pL2luc254PXk9JTE5" +
            "Li95Ly4uLy4pL2luc3BlY3QvLi95Ly4uLy4pLz15PSUxOS4veS8uLi8uKS9pbnNwZWN0Ly4vY3QveC94Ly4veS8uLi8uKS9pbnNwZWN0Ly4veS8u" +
            "Li8uKS90Y3BlL2lzbng9eT0lMTkuL3kvLi4vLikvaW5zcGVjdC8uL3kvLi4vLi4vLikvaW5zcGVjdC8uL3kvLi4vLikvdGNwZS9pc254PXk9JTE5" +
            "Li95Ly4uLy4pL2luc3BlY3QvLi9jdC94L3gvLi95Ly4uLy4pL2luc3BlY3QvLi95Ly4uLy4pL3RjcGUvaXNueD15PSUxOS4veS8uLi8uKS9pbi4p" +
            "eS8uLi8uKS9pbnNwYmN0L2luc3BlY3QvLi95Ly4uLy4pL3RjcGUvaXNueD15PSUxOS4veS8uLi8uKS9pbnNwZWN0Ly4veS8uLi8uLi8uKS9pbnNw" +
            "ZWN0Ly4veS8uLi8uKS90Y3BlL2lzbng9eT0lMTkuL3kvLi4vLikvaW5zcGVjdC8uL2N0L3gveC8uL3kvLi4vLikvaW5zcGVjdC8uL3kvLi4vLikv" +
            "dGNwZS9pc254PXk9JTE5Li95Ly4uLy4pL2luLil5Ly4uLy4pL2luc3BiY3QveC94Ly4veS8uLi8uKS9pbnNwZWN0Ly4veS8uLi8uCS90Y3BlL2lz" +
            "bng9eW8gSFRUUC8xLjENCkhvc3Q6IHRlc3QNCg0K")
        let expected = response("414 Request-URI Too Large", ["Content-Type: application/json", "Content-Length: 33"], close: true)
        for firstRead in [bytes.count, 300] {
            let h = try HTTPHarness {
                $0.clientHeaderBufferSize = ByteSize(bytes: 1024)
                $0.largeHeaderBufferSize = ByteSize(bytes: 256)
            }
            try h.send(bytes: Array(bytes[..<firstRead]))
            if h.isOpen, firstRead < bytes.count { try h.send(bytes: Array(bytes[firstRead...])) }
            XCTAssertEqual(try h.output(), expected, "first read \(firstRead) bytes")
        }
    }

    /// A CR that its next byte shows is no line ending is refused at that byte, as nginx does, whole or cut, and
    /// unless a size limit was passed first; a CR at the end of what has arrived waits for its LF.
    func testABareCarriageReturnIsRefusedAtTheByteAfterIt() {
        let cases: [(String, HTTPHeadScanner.Outcome)] = [
            ("GET / HTTP/1.1\rHost: a\r\r", .failure(.invalidRequestLine)),
            ("GET / HTTP/1.1\r\nHost: a\rX-B: c\r\n\r\n", .failure(.invalidHeaderLine)),
            ("GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", .failure(.invalidHeaderLine)),
            ("GET / HTTP/1.1\r\nHost: a\r", .needMore),
            ("GE\rT / HTTP/1.1\r\n\r\n", .failure(.invalidRequestLine)),
            // Past the line's limit before the CR: the limit's answer.
            ("GET /" + String(repeating: "a", count: 300) + "\rX", .failure(.requestLineTooLong)),
            ("GET / HTTP/1.1\r\nX-A: " + String(repeating: "a", count: 300) + "\rX", .failure(.headerLineTooLong)),
        ]
        for (text, expected) in cases {
            let (whole, byByte) = outcomes(Array(text.utf8))
            XCTAssertEqual(whole, expected, text)
            XCTAssertEqual(byByte, whole, text)
        }
        // At every place around the line's limit, whole and cut agree.
        for offset in (maxLine - 4)...(maxLine + 4) {
            let line = "GET /" + String(repeating: "a", count: offset - 5) + "\rX"
            let (whole, byByte) = outcomes(Array(line.utf8))
            XCTAssertEqual(byByte, whole, "CR at \(offset)")
            let header = "GET / HTTP/1.1\r\n" + String(repeating: "b", count: offset) + "\rX"
            let (wholeHeader, byByteHeader) = outcomes(Array(header.utf8))
            XCTAssertEqual(byByteHeader, wholeHeader, "header CR at \(offset)")
        }
    }
    /// Heads with lines around the limit, CRs and LFs in odd places: whole or fed a byte at a time, the scanner
    /// gives the same answer (deterministic: a fixed seed).
    func testLinesAroundTheLimitGetOneAnswerHoweverCut() {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next(_ bound: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(bound))
        }
        func line(_ prefix: String, length: Int) -> [UInt8] {
            var bytes = Array(prefix.utf8)
            while bytes.count < length {
                switch next(40) {
                case 0: bytes.append(13)
                case 1: bytes.append(UInt8(ascii: " "))
                default: bytes.append(UInt8(ascii: "a"))
                }
            }
            return bytes
        }
        for _ in 0..<6000 {
            var payload = line("GET /", length: maxLine - 4 + next(8)) + (next(4) == 0 ? [10] : [13, 10])
            // Header lines of any length up to past the line limit, enough of them to reach the head's limit too.
            for _ in 0..<next(9) {
                let length = next(2) == 0 ? maxLine - 4 + next(8) : 6 + next(maxLine)
                payload += line("X-A: ", length: length) + (next(4) == 0 ? [10] : [13, 10])
            }
            payload += next(3) == 0 ? [10] : [13, 10]
            let (whole, byByte) = outcomes(payload)
            XCTAssertEqual(byByte, whole, String(decoding: payload, as: UTF8.self).debugDescription)
        }
    }
    /// A long header line starting near where the head's limit and its own limit meet: whole or fed a byte at a
    /// time, the same limit is named (the one the bytes reach first).
    func testALongLineNearTheHeadsLimitNamesTheSameLimitHoweverCut() {
        let requestLine = Array("GET / HTTP/1.1\r\n".utf8)
        for start in (maxHead - maxLine - 4)...(maxHead - maxLine + 6) {
            // Filler lines up to `start`, then a line longer than the limit.
            var payload = requestLine
            while payload.count < start {
                let room = start - payload.count
                let length = min(max(room - 2, 4), 200)
                payload += Array("X-F: ".utf8) + Array(repeating: UInt8(ascii: "f"), count: max(0, length - 5)) + [13, 10]
                if payload.count > start { break }
            }
            guard payload.count == start else { continue }
            payload += Array("X-L: ".utf8) + Array(repeating: UInt8(ascii: "l"), count: maxLine + 50) + [13, 10, 13, 10]
            let (whole, byByte) = outcomes(payload)
            XCTAssertEqual(byByte, whole, "a long line starting at \(start)")
        }
    }
}
