import Foundation
import KernelCore
import NIOCore
import XCTest
@testable import Inference

/// The request decoder against Python's `json` + numpy: `scripts/testing/random_oip_requests.py` writes random
/// requests (every datatype, shapes of rank 1 to 4, flat and nested `data`, JSON and binary) with the bytes Python
/// reads from each, and every one must decode to exactly those bytes. The file is read with Foundation's JSON
/// parser, not the kernel's.
final class InferenceDecoderRandomTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    private func generate(seed: Int, count: Int) throws -> [[String: Any]] {
        let output = FileManager.default.temporaryDirectory
            .appendingPathComponent("random-oip-\(ProcessInfo.processInfo.processIdentifier)-\(seed).jsonl")
        defer { try? FileManager.default.removeItem(at: output) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", InferenceDecoderRandomTests.root + "/scripts/testing/random_oip_requests.py",
                             "--seed", String(seed), "--count", String(count), output.path]
        try process.run()
        process.waitUntilExit()
        // numpy is installed by scripts/setup.sh: a generator that cannot run fails the test.
        XCTAssertEqual(process.terminationStatus, 0, "random_oip_requests.py failed")
        let text = try String(contentsOf: output, encoding: .utf8)
        return try text.split(separator: "\n").map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
    }

    func testRandomRequestsDecodeAsPythonReadsThem() throws {
        var checked = 0
        for seed in [1, 2, 3] {
            for (index, item) in try generate(seed: seed, count: 300).enumerated() {
                let spec = try XCTUnwrap(item["spec"] as? [String: Any])
                let dataType = try XCTUnwrap(TensorDataType(rawValue: try XCTUnwrap(spec["datatype"] as? String)))
                let shape = try XCTUnwrap(spec["shape"] as? [Int]).map(Int64.init)
                let model = ModelSignature(name: "m", version: "1",
                                           inputs: [TensorSpec(name: "x", dataType: dataType, shape: shape)],
                                           outputs: [],
                                           maxBatchSize: 0)
                let body = ByteBuffer(bytes: try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(item["body"] as? String))))
                var headers: HeaderFields = [:]
                if let length = item["header_length"] as? Int { headers.add(inferenceHeaderContentLength, String(length)) }
                let context = "seed \(seed) case \(index): \(String(buffer: body).prefix(300))"
                if let fragment = item["expected_error"] as? String {
                    XCTAssertThrowsError(try InferenceCodec.decodeRequest(body: body, headers: headers, model: model), context) { error in
                        XCTAssertEqual((error as? KernelHTTPError)?.status, 400, context)
                        XCTAssertTrue("\(error)".contains(fragment), "\(error): \(context)")
                    }
                    continue
                }
                let expected = [UInt8](try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(item["expected"] as? String))))
                let decoded = try InferenceCodec.decodeRequest(body: body, headers: headers, model: model)
                XCTAssertEqual(decoded.inputs.count, 1, context)
                XCTAssertEqual(decoded.inputs[0].dataType, dataType, context)
                XCTAssertEqual(decoded.inputs[0].bytes, expected, context)
                XCTAssertTrue(decoded.inputs[0].isConsistent, context)
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 800)
    }
}
