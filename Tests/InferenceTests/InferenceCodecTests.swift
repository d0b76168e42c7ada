import KernelCore
import NIOCore
import XCTest
@testable import Inference

final class InferenceCodecTests: XCTestCase {
    let model = ModelSignature(
        name: "demo", version: "1",
        inputs: [TensorSpec(name: "input", dataType: .fp32, shape: [-1, 4]),
                 TensorSpec(name: "mask", dataType: .bool, shape: [-1, 2])],
        outputs: [TensorSpec(name: "output", dataType: .fp32, shape: [-1, 2]),
                  TensorSpec(name: "label", dataType: .int64, shape: [-1])],
        maxBatchSize: 8)

    private func decode(_ json: String, binary: [UInt8] = [], headers: HeaderFields = [:]) throws -> DecodedInferenceRequest {
        var body = ByteBuffer(string: json)
        body.writeBytes(binary)
        var headers = headers
        if !binary.isEmpty { headers.add(inferenceHeaderContentLength, String(json.utf8.count)) }
        return try InferenceCodec.decodeRequest(body: body, headers: headers, model: model)
    }

    private func assertStatus(_ expected: Int, _ fragment: String, _ body: () throws -> Void,
                              file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            guard let error = error as? KernelHTTPError else { return XCTFail("\(error)", file: file, line: line) }
            XCTAssertEqual(error.status, expected, error.message, file: file, line: line)
            XCTAssertTrue(error.message.contains(fragment), "\(error.message) lacks \(fragment)", file: file, line: line)
        }
    }

    private let validInputs = """
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [[0.1, 2, -3.5, 1e-3]]},
        {"name": "mask", "shape": [1, 2], "datatype": "BOOL", "data": [true, false]}
        """

    func testDecodesNestedAndFlatJSONDataInModelOrder() throws {
        let request = try decode("""
            {"id": "r1", "inputs": [
              {"name": "mask", "shape": [1, 2], "datatype": "BOOL", "data": [true, false]},
              {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [[0.1, 2, -3.5, 1e-3]]}],
             "outputs": [{"name": "label"}]}
            """)
        XCTAssertEqual(request.id, "r1")
        XCTAssertEqual(request.inputs[0].float32Values, [0.1, 2, -3.5, 1e-3])
        XCTAssertEqual(request.inputs[0].shape, [1, 4])
        XCTAssertEqual(request.inputs[1].bytes, [1, 0])
        XCTAssertEqual(request.outputs, [RequestedOutput(name: "label")])
    }

    func testDecodesBinaryTensors() throws {
        let floats: [Float] = [1.5, -2, 0.25, 1e-30, 7, 8, 9, 10]
        let floatBytes = floats.withUnsafeBytes { Array($0) }
        let request = try decode("""
            {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}},
                        {"name": "mask", "shape": [2, 2], "datatype": "BOOL", "parameters": {"binary_data_size": 4}}],
             "parameters": {"binary_data_output": true}}
            """, binary: floatBytes + [1, 0, 0, 1])
        XCTAssertEqual(request.inputs[0].float32Values, floats)
        XCTAssertEqual(request.inputs[1].bytes, [1, 0, 0, 1])
        XCTAssertTrue(request.binaryOutputDefault)
        XCTAssertEqual(request.outputs.map(\.name), ["output", "label"])
    }

    func testRejectsBadRequestsWithTritonMessages() {
        assertStatus(400, "failed to parse") { _ = try self.decode("{not json") }
        assertStatus(400, "no \"inputs\"") { _ = try self.decode("{}") }
        assertStatus(400, "unexpected inference input 'other'") {
            _ = try self.decode(#"{"inputs": [\#(self.validInputs), {"name": "other", "shape": [1], "datatype": "FP32", "data": [1]}]}"#)
        }
        assertStatus(400, "missing input 'mask'") {
            _ = try self.decode(#"{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#)
        }
        assertStatus(400, "data-type is 'FP64', but model 'demo' expects 'FP32'") {
            _ = try self.decode(#"{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}"#)
        }
        assertStatus(400, "unexpected shape for input 'input' for model 'demo'. Expected [-1,4], got [1,3]") {
            _ = try self.decode(#"{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}"#)
        }
        assertStatus(400, "unexpected number of elements for input 'input'") {
            _ = try self.decode(#"{"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#)
        }
        assertStatus(400, "more than the request's") {  // a huge shape is refused before anything is allocated
            let signature = ModelSignature(name: "big", version: "1", inputs: [TensorSpec(name: "x", dataType: .fp64, shape: [-1, -1])],
                                           outputs: [], maxBatchSize: 0)
            let body = ByteBuffer(string: #"{"inputs": [{"name": "x", "shape": [1000000, 1000], "datatype": "FP64", "data": [1]}]}"#)
            _ = try InferenceCodec.decodeRequest(body: body, headers: [:], model: signature)
        }
        assertStatus(400, "batch-size must be <= 8") {
            _ = try self.decode(#"{"inputs": [{"name": "input", "shape": [9, 4], "datatype": "FP32", "data": []}]}"#)
        }
        assertStatus(400, "not a valid BOOL") {
            _ = try self.decode(#"{"inputs": [{"name": "mask", "shape": [1, 2], "datatype": "BOOL", "data": [1, 0]}]}"#)
        }
        assertStatus(400, "binary_data_size 8 does not match") {
            _ = try self.decode(#"{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}"#,
                                binary: [UInt8](repeating: 0, count: 8))
        }
        assertStatus(400, "exceeds the 8 binary bytes") {
            _ = try self.decode(#"{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}"#,
                                binary: [UInt8](repeating: 0, count: 8))
        }
        assertStatus(400, "larger than the request body") {
            _ = try self.decode("{}", headers: [inferenceHeaderContentLength: "100"])
        }
        assertStatus(400, "unexpected inference output 'nope'") {
            _ = try self.decode(#"{"inputs": [\#(self.validInputs)], "outputs": [{"name": "nope"}]}"#)
        }
        assertStatus(400, "same batch size") {
            _ = try self.decode(#"{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}, {"name": "mask", "shape": [2, 2], "datatype": "BOOL", "data": [true, true, true, true]}]}"#)
        }
    }

    func testIntegerRangesPerDataType() throws {
        let signature = ModelSignature(name: "m", version: "1", inputs: [TensorSpec(name: "x", dataType: .int8, shape: [3])],
                                       outputs: [], maxBatchSize: 0)
        func decodeInt8(_ data: String) throws -> [UInt8] {
            let body = ByteBuffer(string: #"{"inputs": [{"name": "x", "shape": [3], "datatype": "INT8", "data": \#(data)}]}"#)
            return try InferenceCodec.decodeRequest(body: body, headers: [:], model: signature).inputs[0].bytes
        }
        XCTAssertEqual(try decodeInt8("[-128, 0, 127]"), [0x80, 0, 0x7F])
        assertStatus(400, "not a valid INT8") { _ = try decodeInt8("[128, 0, 0]") }
        assertStatus(400, "not a valid INT8") { _ = try decodeInt8("[1.5, 0, 0]") }
    }

    func testEncodesJSONResponseThatRoundTripsFloats() throws {
        let request = DecodedInferenceRequest(id: "abc", inputs: [], outputs: [RequestedOutput(name: "output"), RequestedOutput(name: "label")],
                                              binaryOutputDefault: false)
        let floats: [Float] = [0.1, -1e-7, 1.0 / 3.0, 42]
        let outputs = [Tensor(float32: floats, shape: [2, 2]),
                       Tensor(dataType: .int64, shape: [2], bytes: [Int64(-5), 7].withUnsafeBytes { Array($0) })]
        let response = InferenceCodec.encodeResponse(model: model, request: request, outputs: outputs)
        XCTAssertEqual(response.headers["Content-Type"], "application/json")
        guard case .buffer(let buffer) = response.body else { return XCTFail() }
        let document = try JSONReader.parse(buffer)
        XCTAssertEqual(document["model_name"]?.stringValue, "demo")
        XCTAssertEqual(document["model_version"]?.stringValue, "1")
        XCTAssertEqual(document["id"]?.stringValue, "abc")
        let first = try XCTUnwrap(document["outputs"]?.arrayValue?.first)
        XCTAssertEqual(first["datatype"]?.stringValue, "FP32")
        let data = try XCTUnwrap(first["data"]?.arrayValue)
        for (value, expected) in zip(data, floats) {
            guard case .number(let number) = value else { return XCTFail() }
            XCTAssertEqual(number.float.bitPattern, expected.bitPattern)
        }
        XCTAssertTrue(String(buffer: buffer).contains(#""data":[-5,7]"#))
    }

    func testEncodesBinaryOutputsAfterTheJSONHeader() throws {
        let request = DecodedInferenceRequest(id: nil, inputs: [], outputs: [RequestedOutput(name: "output", binary: true),
                                                                          RequestedOutput(name: "label", binary: false)],
                                              binaryOutputDefault: false)
        let floats: [Float] = [1, 2, 3, 4]
        let outputs = [Tensor(float32: floats, shape: [2, 2]),
                       Tensor(dataType: .int64, shape: [2], bytes: [Int64(1), 2].withUnsafeBytes { Array($0) })]
        let response = InferenceCodec.encodeResponse(model: model, request: request, outputs: outputs)
        let headerLength = try XCTUnwrap(Int(response.headers[inferenceHeaderContentLength] ?? ""))
        guard case .buffer(var buffer) = response.body else { return XCTFail() }
        let json = try JSONReader.parse(buffer.readSlice(length: headerLength)!)
        let first = try XCTUnwrap(json["outputs"]?.arrayValue?.first)
        XCTAssertNil(first["data"])
        guard case .number(let size)? = first["parameters"]?["binary_data_size"] else { return XCTFail() }
        XCTAssertEqual(size.int64, 16)
        XCTAssertEqual(buffer.readBytes(length: buffer.readableBytes), floats.withUnsafeBytes { Array($0) })
    }
}
