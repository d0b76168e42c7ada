import KernelCore
import NIOCore
import XCTest
@testable import Inference

/// Compressed infer bodies, as Triton takes and gives them.
final class InferenceBodyEncodingTests: XCTestCase {
    private func status(_ body: () throws -> Any) -> Int? {
        do { _ = try body() } catch let error as KernelHTTPError { return error.status } catch { return nil }
        return nil
    }

    func testRequestEncodings() throws {
        XCTAssertEqual(try InferenceBodyEncoding.ofRequest([:]), .identity)
        XCTAssertEqual(try InferenceBodyEncoding.ofRequest(["Content-Encoding": "gzip"]), .gzip)
        XCTAssertEqual(try InferenceBodyEncoding.ofRequest(["Content-Encoding": " Deflate "]), .deflate)
        XCTAssertEqual(try InferenceBodyEncoding.ofRequest(["Content-Encoding": "identity"]), .identity)
        XCTAssertThrowsError(try InferenceBodyEncoding.ofRequest(["Content-Encoding": "br"])) { error in
            let refusal = error as? KernelHTTPError
            XCTAssertEqual(refusal?.status, 415)
            XCTAssertEqual(refusal?.headers["Accept-Encoding"], "gzip, deflate")
        }
    }

    func testResponseEncodingIsTheFirstWithTheHighestWeight() {
        XCTAssertEqual(InferenceBodyEncoding.forResponse(acceptEncoding: nil), .identity)
        XCTAssertEqual(InferenceBodyEncoding.forResponse(acceptEncoding: "gzip"), .gzip)
        XCTAssertEqual(InferenceBodyEncoding.forResponse(acceptEncoding: "gzip, deflate"), .gzip)
        XCTAssertEqual(InferenceBodyEncoding.forResponse(acceptEncoding: "deflate, gzip"), .deflate)
        XCTAssertEqual(InferenceBodyEncoding.forResponse(acceptEncoding: "gzip;q=0.5, deflate;q=0.8"), .deflate)
        XCTAssertEqual(InferenceBodyEncoding.forResponse(acceptEncoding: "br, gzip;q=0"), .identity)
        XCTAssertEqual(InferenceBodyEncoding.forResponse(acceptEncoding: "identity, gzip;q=0.9"), .identity)
        XCTAssertEqual(InferenceBodyEncoding.forResponse(acceptEncoding: "gzip;q=x, deflate"), .deflate, "a malformed weight is skipped")
        XCTAssertEqual(InferenceBodyEncoding.forResponse(acceptEncoding: "*"), .identity)
    }

    func testWhatIsCompressedExpandsBackUnderTheLimit() throws {
        let text = String(repeating: "{\"inputs\": [1, 2, 3]} ", count: 2000)
        let body = ByteBuffer(string: text)
        for encoding in [InferenceBodyEncoding.gzip, .deflate] {
            let compressed = try XCTUnwrap(encoding.compress(body))
            XCTAssertLessThan(compressed.readableBytes, body.readableBytes / 10)
            XCTAssertEqual(Array(compressed.readableBytesView.prefix(2)), encoding == .gzip ? [0x1F, 0x8B] : [0x78, 0x9C])
            XCTAssertEqual(try encoding.expand(compressed, limit: .unbounded), body)
            XCTAssertEqual(try encoding.expand(compressed, limit: .init(bytes: body.readableBytes, setting: "client_max_body_size")), body, "exactly at the limit")
            XCTAssertEqual(status { try encoding.expand(compressed, limit: .init(bytes: body.readableBytes - 1, setting: "client_max_body_size")) }, 413)
            // Truncated, corrupted, and followed by other bytes: each a 400.
            XCTAssertEqual(status { try encoding.expand(compressed.getSlice(at: 0, length: compressed.readableBytes - 9)!, limit: .unbounded) }, 400)
            var corrupted = compressed
            corrupted.setInteger(UInt8(0xFF), at: compressed.readableBytes / 2)
            corrupted.setInteger(UInt8(0x00), at: compressed.readableBytes / 2 + 1)
            XCTAssertEqual(status { try encoding.expand(corrupted, limit: .unbounded) }, 400)
            var trailing = compressed
            trailing.writeString("tail")
            XCTAssertEqual(status { try encoding.expand(trailing, limit: .unbounded) }, 400)
        }
        XCTAssertEqual(status { try InferenceBodyEncoding.gzip.expand(ByteBuffer(string: "not gzip at all"), limit: .unbounded) }, 400)
        XCTAssertEqual(status { try InferenceBodyEncoding.gzip.expand(ByteBuffer(), limit: .unbounded) }, 400, "an empty body is no gzip")
    }

    func testABombIsRefusedAtTheLimitNotAfterExpandingIt() throws {
        // 64 MiB of zeros compress to about 64 KiB; the limit stops the expansion at 1 MiB.
        let zeros = ByteBuffer(repeating: 0, count: 64 << 20)
        let bomb = try XCTUnwrap(InferenceBodyEncoding.gzip.compress(zeros))
        XCTAssertLessThan(bomb.readableBytes, 1 << 20)
        XCTAssertEqual(status { try InferenceBodyEncoding.gzip.expand(bomb, limit: .init(bytes: 1 << 20, setting: "client_max_body_size")) }, 413)
    }
}

private extension InferenceBodyEncoding.ExpansionLimit {
    static let unbounded = Self(bytes: Int(UInt32.max), setting: "no limit")
}
