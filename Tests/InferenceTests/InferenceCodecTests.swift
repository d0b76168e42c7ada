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
        assertStatus(400, "expected 2 inputs but got 1 inputs for model 'demo'. Got input(s) ['input'], but missing required input(s) ['mask']. Please provide all required input(s).") {
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
            let body = ByteBuffer(string: #"{"inputs": [{"name": "x", "shape": [100000, 1000], "datatype": "FP64", "data": [1]}]}"#)
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
        assertStatus(400, "batch size does not match other inputs for") {
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
        let response = try InferenceCodec.encodeResponse(model: model, request: request, outputs: outputs)
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

    func testClassificationIsEachRowsLargestElementsAsTritonWritesThem() throws {
        let request = try decode(#"{"inputs": [\#(validInputs)], "outputs": [{"name": "output", "parameters": {"classification": 2}}, {"name": "label", "parameters": {"classification": 5}}]}"#)
        XCTAssertEqual(request.outputs, [RequestedOutput(name: "output", classCount: 2), RequestedOutput(name: "label", classCount: 5)])
        // Equal values keep their index order; a row's elements are ranked within the row.
        let outputs = [Tensor(float32: [0.25, 0.25, -1, 3.5], shape: [2, 2]),
                       Tensor(dataType: .int64, shape: [3], bytes: [Int64(-5), 7, 7].withUnsafeBytes { Array($0) })]
        let response = try InferenceCodec.encodeResponse(model: model, request: request, outputs: outputs)
        guard case .buffer(let buffer) = response.body else { return XCTFail() }
        let written = try XCTUnwrap(JSONReader.parse(buffer)["outputs"]?.arrayValue)
        XCTAssertEqual(written[0]["datatype"]?.stringValue, "BYTES")
        XCTAssertTrue(String(buffer: buffer).contains(#""shape":[2,2]"#), String(buffer: buffer))
        XCTAssertEqual(written[0]["data"]?.arrayValue?.compactMap(\.stringValue), ["0.250000:0", "0.250000:1", "3.500000:1", "-1.000000:0"])
        // The batch dimension of a batching model's output is its rows: [3] is three rows of one element.
        XCTAssertEqual(written[1]["data"]?.arrayValue?.compactMap(\.stringValue), ["-5:0", "7:0", "7:0"])
        XCTAssertTrue(String(buffer: buffer).contains(#""shape":[3,1]"#), String(buffer: buffer))
        // NaN ranks below every number, NaNs among themselves in index order.
        let nan = OutputClassification.classify(Tensor(float32: [.nan, 1, .nan, -.infinity], shape: [1, 4]), count: 4, batched: true)
        XCTAssertEqual(nan.stringElements.map { String(decoding: $0, as: UTF8.self) }, ["1.000000:1", "-inf:3", "nan:0", "nan:2"])
        assertStatus(400, "classification must be a non-negative integer") {
            _ = try self.decode(#"{"inputs": [\#(self.validInputs)], "outputs": [{"name": "output", "parameters": {"classification": -1}}]}"#)
        }
    }

    func testEncodesBinaryOutputsAfterTheJSONHeader() throws {
        let request = DecodedInferenceRequest(id: nil, inputs: [], outputs: [RequestedOutput(name: "output", binary: true),
                                                                          RequestedOutput(name: "label", binary: false)],
                                              binaryOutputDefault: false)
        let floats: [Float] = [1, 2, 3, 4]
        let outputs = [Tensor(float32: floats, shape: [2, 2]),
                       Tensor(dataType: .int64, shape: [2], bytes: [Int64(1), 2].withUnsafeBytes { Array($0) })]
        let response = try InferenceCodec.encodeResponse(model: model, request: request, outputs: outputs)
        let headerLength = try XCTUnwrap(Int(response.headers[inferenceHeaderContentLength] ?? ""))
        guard case .buffer(var buffer) = response.body else { return XCTFail() }
        let json = try JSONReader.parse(buffer.readSlice(length: headerLength)!)
        let first = try XCTUnwrap(json["outputs"]?.arrayValue?.first)
        XCTAssertNil(first["data"])
        guard case .number(let size)? = first["parameters"]?["binary_data_size"] else { return XCTFail() }
        XCTAssertEqual(size.int64, 16)
        XCTAssertEqual(buffer.readBytes(length: buffer.readableBytes), floats.withUnsafeBytes { Array($0) })
    }

    // MARK: - Sizes from request input

    /// A model with free dimensions everywhere, so that only the size checks stand between a shape and the codec.
    private let free = ModelSignature(
        name: "free", version: "1",
        inputs: [TensorSpec(name: "x", dataType: .fp32, shape: [-1, -1])],
        outputs: [TensorSpec(name: "y", dataType: .fp32, shape: [-1, -1])], maxBatchSize: 0)

    private func decodeFree(_ json: String, binary: [UInt8] = [], headers: HeaderFields = [:]) throws -> DecodedInferenceRequest {
        var body = ByteBuffer(string: json)
        body.writeBytes(binary)
        var headers = headers
        if !binary.isEmpty { headers.add(inferenceHeaderContentLength, String(json.utf8.count)) }
        return try InferenceCodec.decodeRequest(body: body, headers: headers, model: free)
    }

    func testRepeatedRequestedOutputIsRefusedAsTritonDoes() {
        let outputs = String(repeating: #"{"name": "output"},"#, count: 1000) + #"{"name": "output"}"#
        assertStatus(400, "output 'output' already exists in request") {
            _ = try self.decode(#"{"inputs": [\#(self.validInputs)], "outputs": [\#(outputs)]}"#)
        }
        // Also when the repeats differ in their parameters.
        assertStatus(400, "output 'label' already exists in request") {
            _ = try self.decode(#"{"inputs": [\#(self.validInputs)], "outputs": [{"name": "label"}, {"name": "output"}, {"name": "label", "parameters": {"binary_data": true}}]}"#)
        }
        assertStatus(400, "input 'input' already exists in request") {
            _ = try self.decode(#"{"inputs": [\#(self.validInputs), {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#)
        }
    }

    func testParametersThatAreNoObjectAreRefusedAtEitherLevel() {
        for parameters in ["5", "\"x\"", "[]", "null"] {
            assertStatus(400, "\"parameters\" must be an object") {
                _ = try self.decode(#"{"inputs": [\#(self.validInputs)], "parameters": \#(parameters)}"#)
            }
            assertStatus(400, "\"parameters\" of an input must be an object") {
                _ = try self.decode(#"{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": \#(parameters), "data": [1, 2, 3, 4]}]}"#)
            }
        }
    }

    func testRequestParametersFollowTritonsTypes() throws {
        // Accepted: what Triton's HTTP server reads (timeout and sequence ids unsigned, flags boolean) and any
        // other parameter that is a string, a boolean or a number.
        _ = try decode(#"{"inputs": [\#(validInputs)], "parameters": {"timeout": 5000, "sequence_id": "s1", "sequence_start": true, "custom": "x", "n": 2.5, "flag": false}}"#)
        _ = try decode(#"{"inputs": [\#(validInputs)], "parameters": {"sequence_id": 7, "sequence_end": false}}"#)
        let refused: [(String, String)] = [
            (#"{"timeout": -5}"#, "Unable to parse 'timeout'"),
            (#"{"timeout": "5"}"#, "Unable to parse 'timeout'"),
            (#"{"timeout": 1.5}"#, "Unable to parse 'timeout'"),
            (#"{"sequence_id": -1}"#, "Unable to parse 'sequence_id'"),
            (#"{"sequence_start": 1}"#, "Unable to parse 'sequence_start'"),
            (#"{"triton_enable_empty_final_response": true}"#, "parameter keys starting with 'triton_' are reserved"),
            (#"{"custom": [1]}"#, "parameter 'custom' has invalid type. It should be either 'int', 'bool', or 'string'."),
            (#"{"custom": {"a": 1}}"#, "parameter 'custom' has invalid type"),
            (#"{"custom": null}"#, "parameter 'custom' has invalid type"),
        ]
        for (parameters, message) in refused {
            assertStatus(400, message) {
                _ = try self.decode(#"{"inputs": [\#(self.validInputs)], "parameters": \#(parameters)}"#)
            }
        }
    }

    func testShapesWhoseSizesOverflowAreRefused() {
        let cases: [(shape: String, fragment: String)] = [
            ("[0, 4611686018427387904]", "shape too large: [0,4611686018427387904] of FP32"),
            ("[4611686018427387904, 0]", "shape too large"),
            ("[1099511627776, 1099511627776]", "shape too large: [1099511627776,1099511627776]"),
            ("[9223372036854775807, 0]", "shape too large"),
            ("[2147483648, 2]", "shape too large"),  // 2^32 elements fit an Int, their 16 GiB do not fit a body
            ("[0, 1073741824]", "shape too large"),     // exactly 4 GiB per row: one byte over what a body holds
            ("[-1, 4]", "invalid shape"),
            ("[1, -4]", "invalid shape"),
            ("[0, -1]", "invalid shape"),
            ("[1, 9223372036854775808]", "invalid shape"),  // 2^63: not an Int64
            ("[1, 1e3]", "invalid shape"),
            ("[1, 2.0]", "invalid shape"),
        ]
        for (shape, fragment) in cases {
            assertStatus(400, fragment) {
                _ = try self.decodeFree(#"{"inputs": [{"name": "x", "shape": \#(shape), "datatype": "FP32", "data": []}]}"#)
            }
            assertStatus(400, fragment) {
                _ = try self.decodeFree(#"{"inputs": [{"name": "x", "shape": \#(shape), "datatype": "FP32", "parameters": {"binary_data_size": 0}}]}"#)
            }
        }
    }

    func testEmptyTensorsWithBoundedRowsDecode() throws {
        let json = try decodeFree(#"{"inputs": [{"name": "x", "shape": [0, 1048576], "datatype": "FP32", "data": []}]}"#)
        XCTAssertEqual(json.inputs[0].shape, [0, 1_048_576])
        XCTAssertEqual(json.inputs[0].bytes, [])
        let binary = try decodeFree(#"{"inputs": [{"name": "x", "shape": [3, 0], "datatype": "FP32", "parameters": {"binary_data_size": 0}}]}"#)
        XCTAssertEqual(binary.inputs[0].shape, [3, 0])
    }

    func testBinarySizesThatDisagreeWithTheBodyAreRefused() {
        let header = #"{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": SIZE}}]}"#
        func withSize(_ size: String) -> String { header.replacingOccurrences(of: "SIZE", with: size) }
        let eight = [UInt8](repeating: 0, count: 8)
        assertStatus(400, "binary_data_size must be a non-negative integer") { _ = try self.decodeFree(withSize("-8"), binary: eight) }
        assertStatus(400, "binary_data_size must be a non-negative integer") { _ = try self.decodeFree(withSize("1e30"), binary: eight) }
        assertStatus(400, "binary_data_size must be a non-negative integer") {
            _ = try self.decodeFree(withSize("18446744073709551616"), binary: eight)
        }
        assertStatus(400, "binary_data_size 9223372036854775807 does not match") {
            _ = try self.decodeFree(withSize("9223372036854775807"), binary: eight)
        }
        assertStatus(400, "binary_data_size 4 does not match the shape [1,2] of FP32 (8 bytes)") {
            _ = try self.decodeFree(withSize("4"), binary: eight)
        }
        assertStatus(400, "exceeds the 4 binary bytes left") { _ = try self.decodeFree(withSize("8"), binary: [0, 0, 0, 0]) }
        assertStatus(400, "binary bytes that no input claims") { _ = try self.decodeFree(withSize("8"), binary: eight + [0]) }
    }

    func testInferenceHeaderContentLengthMustBePlainDigitsWithinTheBody() {
        let json = #"{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}"#
        for bad in ["-1", "+5", " 5", "5 ", "0x10", "abc", "", "99999999999999999999999"] {
            assertStatus(400, "invalid \(inferenceHeaderContentLength) header") {
                _ = try self.decodeFree(json, headers: [inferenceHeaderContentLength: bad])
            }
        }
        assertStatus(400, "larger than the request body") {
            _ = try self.decodeFree(json, headers: [inferenceHeaderContentLength: "9223372036854775807"])
        }
        assertStatus(400, "the request body is empty") {
            _ = try self.decodeFree(json, headers: [inferenceHeaderContentLength: "0"])
        }
        XCTAssertNoThrow(try decodeFree(json, headers: [inferenceHeaderContentLength: "000\(json.utf8.count)"]))
    }

    func testJSONDataIsCountedBeforeTheTensorIsAllocated() {
        // A document large enough to hold the shape's elements, with four: refused from the count of the parsed data.
        let body = #"{"inputs": [{"name": "x", "shape": [100000, 1], "datatype": "FP32", "data": [[1], [2], [3], [4]]}], "padding": "PAD"}"#
            .replacingOccurrences(of: "PAD", with: String(repeating: " ", count: 300_000))
        assertStatus(400, "the shape [100000,1] needs 100000, the data has 4") { _ = try self.decodeFree(body) }
        assertStatus(400, "needs 6, the data has 7") {
            _ = try self.decodeFree(#"{"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6, 7]]}]}"#)
        }
        assertStatus(400, "needs 6, the data has 5") {
            _ = try self.decodeFree(#"{"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5], []]}]}"#)
        }
    }

    private func encodingStatus(_ body: () throws -> KernelResponse) -> (Int, String)? {
        do {
            _ = try body()
            return nil
        } catch let error as KernelHTTPError {
            return (error.status, error.message)
        } catch {
            return (0, "\(error)")
        }
    }

    func testEncodingWritesEachOutputOnceAndRefusesRepeats() throws {
        let outputs = [Tensor(float32: [1, 2], shape: [1, 2]), Tensor(dataType: .int64, shape: [1], bytes: [UInt8](repeating: 0, count: 8))]
        let repeated = DecodedInferenceRequest(id: nil, inputs: [], outputs: Array(repeating: RequestedOutput(name: "output", binary: true), count: 3),
                                               binaryOutputDefault: false)
        let status = encodingStatus { try InferenceCodec.encodeResponse(model: model, request: repeated, outputs: outputs) }
        XCTAssertEqual(status?.0, 400)
        XCTAssertEqual(status?.1, "output 'output' already exists in request")

        let unknown = DecodedInferenceRequest(id: nil, inputs: [], outputs: [RequestedOutput(name: "nope")], binaryOutputDefault: false)
        XCTAssertEqual(encodingStatus { try InferenceCodec.encodeResponse(model: model, request: unknown, outputs: outputs) }?.0, 400)
        // A runner that gave fewer outputs, or an output whose bytes do not match its shape: 500, not a trap.
        let both = DecodedInferenceRequest(id: nil, inputs: [], outputs: [RequestedOutput(name: "label")], binaryOutputDefault: false)
        XCTAssertEqual(encodingStatus { try InferenceCodec.encodeResponse(model: model, request: both, outputs: [outputs[0]]) }?.0, 500)
        let short = [outputs[0], Tensor(dataType: .int64, shape: [4], bytes: [1])]
        XCTAssertEqual(encodingStatus { try InferenceCodec.encodeResponse(model: model, request: both, outputs: short) }?.0, 500)
    }

    func testResponsesLargerThanTheLimitAre500() throws {
        let tensor = Tensor(float32: (0..<1000).map { Float($0) / 7 }, shape: [500, 2])
        let outputs = [tensor, Tensor(dataType: .int64, shape: [0], bytes: [])]
        for binary in [false, true] {
            let request = DecodedInferenceRequest(id: "an id", inputs: [], outputs: [RequestedOutput(name: "output"), RequestedOutput(name: "label")],
                                                  binaryOutputDefault: binary)
            let full = try InferenceCodec.encodeResponse(model: model, request: request, outputs: outputs)
            guard case .buffer(let buffer) = full.body else { return XCTFail() }
            let size = buffer.readableBytes
            // Exactly at the limit: written; one byte below: refused with a message, nothing trapped.
            let exact = try InferenceCodec.encodeResponse(model: model, request: request, outputs: outputs, limit: size)
            guard case .buffer(let exactBuffer) = exact.body else { return XCTFail() }
            XCTAssertEqual(exactBuffer, buffer)
            for limit in [size - 1, size / 2, 4000, 100, 10, 0, -1] {
                let status = encodingStatus { try InferenceCodec.encodeResponse(model: model, request: request, outputs: outputs, limit: limit) }
                XCTAssertEqual(status?.0, 500, "binary \(binary), limit \(limit)")
                if binary, limit < 4000 {
                    XCTAssertTrue(status?.1.contains("binary outputs, more than the") ?? false, status?.1 ?? "")
                } else if !binary {
                    XCTAssertTrue(status?.1.contains("request the outputs as binary data") ?? false, status?.1 ?? "")
                }
            }
        }
        // The JSON text of 1000 floats is larger than their 4000 binary bytes: the same outputs fit as binary.
        let json = DecodedInferenceRequest(id: nil, inputs: [], outputs: [RequestedOutput(name: "output")], binaryOutputDefault: false)
        XCTAssertEqual(encodingStatus { try InferenceCodec.encodeResponse(model: model, request: json, outputs: outputs, limit: 4200) }?.0, 500)
        let binary = DecodedInferenceRequest(id: nil, inputs: [], outputs: [RequestedOutput(name: "output")], binaryOutputDefault: true)
        XCTAssertNoThrow(try InferenceCodec.encodeResponse(model: model, request: binary, outputs: outputs, limit: 4200))
    }

    func testALongIdIsBoundedToo() {
        let request = DecodedInferenceRequest(id: String(repeating: "\"", count: 1000), inputs: [], outputs: [RequestedOutput(name: "label")],
                                              binaryOutputDefault: false)
        let outputs = [Tensor(float32: [], shape: [0, 2]), Tensor(dataType: .int64, shape: [0], bytes: [])]
        XCTAssertEqual(encodingStatus { try InferenceCodec.encodeResponse(model: model, request: request, outputs: outputs, limit: 1500) }?.0, 500)
        XCTAssertNil(encodingStatus { try InferenceCodec.encodeResponse(model: model, request: request, outputs: outputs, limit: 10_000) })
    }
}
