import KernelCore
import NIOCore
import XCTest
@testable import Inference

/// BYTES, FP16 and BF16 tensors through the codec, Triton's rules where the protocol is silent, and tensors that
/// hold their bytes where they are.
final class BytesTensorTests: XCTestCase {
    let strings = ModelSignature(name: "strings", version: "1",
                                 inputs: [TensorSpec(name: "INPUT0", dataType: .bytes, shape: [-1, -1])],
                                 outputs: [TensorSpec(name: "OUTPUT0", dataType: .bytes, shape: [-1, -1])],
                                 maxBatchSize: 8)
    let halves = ModelSignature(name: "half", version: "1",
                                inputs: [TensorSpec(name: "x", dataType: .fp16, shape: [-1, 2]),
                                         TensorSpec(name: "b", dataType: .bf16, shape: [-1, 2])],
                                outputs: [TensorSpec(name: "y", dataType: .fp16, shape: [-1, 2])],
                                maxBatchSize: 0)

    private func decode(_ json: String, binary: [UInt8] = [], model: ModelSignature) throws -> DecodedInferenceRequest {
        var body = ByteBuffer(string: json)
        body.writeBytes(binary)
        var headers: HeaderFields = [:]
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

    private func serialise(_ elements: [[UInt8]]) -> [UInt8] {
        elements.flatMap { withUnsafeBytes(of: UInt32($0.count).littleEndian) { Array($0) } + $0 }
    }

    func testDecodesJSONStringsFlatAndNestedWithEscapes() throws {
        let expected: [[UInt8]] = [[], Array("héllo 漢字 😀".utf8), [0x61, 0, 0x62], Array("q\"\\/\n".utf8)]
        for data in [#"["", "héllo 漢字 😀", "a\u0000b", "q\"\\\/\n"]"#,
                     #"[["", "h\u00e9llo \u6f22\u5b57 \ud83d\ude00"], ["a\u0000b", "q\"\\/\n"]]"#] {
            let request = try decode(#"{"inputs": [{"name": "INPUT0", "shape": [2, 2], "datatype": "BYTES", "data": \#(data)}]}"#,
                                     model: strings)
            XCTAssertEqual(request.inputs[0].stringElements, expected)
            XCTAssertEqual(request.inputs[0].bytes, serialise(expected))
            XCTAssertTrue(request.inputs[0].isConsistent)
        }
    }

    func testDecodesBinaryStringsAsASliceOfTheBody() throws {
        let elements: [[UInt8]] = [[], [0xFF, 0xFE], [0], Array("abc".utf8)]
        let data = serialise(elements)
        let json = #"{"inputs": [{"name": "INPUT0", "shape": [2, 2], "datatype": "BYTES", "parameters": {"binary_data_size": \#(data.count)}}]}"#
        var body = ByteBuffer(string: json)
        body.writeBytes(data)
        let request = try InferenceCodec.decodeRequest(body: body, headers: [inferenceHeaderContentLength: String(json.utf8.count)],
                                                       model: strings)
        XCTAssertEqual(request.inputs[0].stringElements, elements)
        // No copy: the tensor's bytes are the body's.
        let bodyStart = body.withUnsafeReadableBytes { $0.baseAddress! }
        request.inputs[0].withUnsafeBytes { XCTAssertEqual($0.baseAddress, bodyStart + json.utf8.count) }
    }

    func testBinaryStringsMustHoldTheShapesElements() {
        func binary(_ data: [UInt8]) throws {
            _ = try decode(#"{"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "BYTES", "parameters": {"binary_data_size": \#(data.count)}}]}"#,
                           binary: data, model: strings)
        }
        assertStatus(400, "expected 2 string elements for inference input 'INPUT0' for model 'strings', got 1") {
            try binary(self.serialise([[1]]))
        }
        assertStatus(400, "unexpected number of string elements 3 for inference input 'INPUT0' for model 'strings', expecting 2") {
            try binary(self.serialise([[1], [2], [3]]))
        }
        assertStatus(400, "incomplete string length indicator for inference input 'INPUT0' for model 'strings', expecting 4 bytes but only 2 bytes available") {
            try binary(self.serialise([[1]]) + [1, 0])
        }
        assertStatus(400, "string element 1 of inference input 'INPUT0' for model 'strings' has length 9, more than the 1 bytes left") {
            try binary(self.serialise([[1]]) + [9, 0, 0, 0, 7])
        }
        assertStatus(400, "input 'INPUT0': element 1 (a number) is not a valid BYTES value") {
            _ = try self.decode(#"{"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "BYTES", "data": ["a", 1]}]}"#, model: self.strings)
        }
    }

    func testEncodesStringsAsJSONAndAsBinary() throws {
        let tensor = Tensor(strings: [[], [0x61, 0, 0x22, 0x5C, 0x0A], Array("é".utf8)], shape: [1, 3])
        let request = DecodedInferenceRequest(id: nil, inputs: [], outputs: [RequestedOutput(name: "OUTPUT0")],
                                              binaryOutputDefault: false)
        let json = try InferenceCodec.encodeResponse(model: strings, request: request, outputs: [tensor])
        guard case .buffer(let body) = json.body else { return XCTFail() }
        XCTAssertTrue(String(buffer: body).contains(#""datatype":"BYTES","shape":[1,3],"data":["","a\u0000\"\\\n","é"]"#),
                      String(buffer: body))
        var binaryRequest = request
        binaryRequest.binaryOutputDefault = true
        let binary = try InferenceCodec.encodeResponse(model: strings, request: binaryRequest, outputs: [tensor])
        guard case .buffer(var binaryBody) = binary.body else { return XCTFail() }
        let headerLength = try XCTUnwrap(Int(binary.headers[inferenceHeaderContentLength] ?? ""))
        let header = binaryBody.readString(length: headerLength)!
        XCTAssertTrue(header.contains(#""binary_data_size":\#(tensor.byteCount)"#), header)
        XCTAssertEqual(binaryBody.readBytes(length: binaryBody.readableBytes), tensor.bytes)
    }

    func testFP16AndBF16AreBinaryOnly() throws {
        assertStatus(400, "receiving FP16 data via JSON is not supported. Please use the binary data format for input x") {
            _ = try self.decode(#"{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP16", "data": [1, 2]}, {"name": "b", "shape": [1, 2], "datatype": "BF16", "parameters": {"binary_data_size": 4}}], "parameters": {"binary_data_output": true}}"#,
                                binary: [0, 0, 0, 0], model: self.halves)
        }
        assertStatus(400, "receiving BF16 data via JSON is not supported. Please use the binary data format for input b") {
            _ = try self.decode(#"{"inputs": [{"name": "b", "shape": [1, 2], "datatype": "BF16", "data": [1, 2]}]}"#, model: self.halves)
        }
        let binary: [UInt8] = [0x00, 0x3C, 0x00, 0xC0, 0xC0, 0x3F, 0x80, 0x7F]
        let header = #"{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP16", "parameters": {"binary_data_size": 4}}, {"name": "b", "shape": [1, 2], "datatype": "BF16", "parameters": {"binary_data_size": 4}}]"#
        let request = try decode(header + #", "parameters": {"binary_data_output": true}}"#, binary: binary, model: halves)
        XCTAssertEqual(request.inputs.map(\.bytes), [Array(binary[0..<4]), Array(binary[4..<8])])
        // An FP16 output as JSON: refused before the run, as Triton refuses to write it.
        assertStatus(400, "sending FP16 data via JSON is not supported. Please use the binary data format for output y") {
            _ = try self.decode(header + "}", binary: binary, model: self.halves)
        }
        let output = Tensor(dataType: .fp16, shape: [1, 2], bytes: [0, 0x3C, 0, 0x40])
        let asJSON = DecodedInferenceRequest(id: nil, inputs: [], outputs: [RequestedOutput(name: "y")], binaryOutputDefault: false)
        assertStatus(400, "sending FP16 data via JSON is not supported") {
            _ = try InferenceCodec.encodeResponse(model: self.halves, request: asJSON, outputs: [output])
        }
    }

    func testTrailingBinaryBytesAreTritonsMessage() {
        assertStatus(400, "unexpected additional input data for model 'strings': the request has 3 binary bytes that no input claims") {
            _ = try self.decode(#"{"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 5}}]}"#,
                                binary: self.serialise([[7]]) + [1, 2, 3], model: self.strings)
        }
    }

    func testDataBeforeItsShapeAndDatatypeDecodesTheSame() throws {
        let model = ModelSignature(name: "m", version: "1", inputs: [TensorSpec(name: "x", dataType: .int16, shape: [-1, 2])],
                                   outputs: [], maxBatchSize: 0)
        let ordered = try decode(#"{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT16", "data": [[1, -2], [32767, -32768]]}]}"#, model: model)
        let reordered = try decode(#"{"inputs": [{"data": [[1, -2], [32767, -32768]], "datatype": "INT16", "shape": [2, 2], "name": "x", "extra": {"a": [1, {"b": null}]}}]}"#, model: model)
        XCTAssertEqual(ordered.inputs, reordered.inputs)
        assertStatus(400, "input 'x': element 2 (a number) is not a valid INT16 value") {
            _ = try self.decode(#"{"inputs": [{"data": [1, 2, 32768, 4], "datatype": "INT16", "shape": [2, 2], "name": "x"}]}"#, model: model)
        }
        assertStatus(400, "the shape [2,2] needs 4, the data has 6") {
            _ = try self.decode(#"{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT16", "data": [1, 2, 3, [4, 5], "six"]}]}"#, model: model)
        }
    }

    func testDataNestingIsLimited() {
        let model = ModelSignature(name: "m", version: "1", inputs: [TensorSpec(name: "x", dataType: .fp32, shape: [-1])],
                                   outputs: [], maxBatchSize: 0)
        let deep = String(repeating: "[", count: 80) + "1" + String(repeating: "]", count: 80)
        assertStatus(400, "failed to parse the request JSON: nesting deeper than 64") {
            _ = try self.decode(#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": \#(deep)}]}"#, model: model)
        }
    }

    func testBatchesOfStringsJoinAndSplitByRows() throws {
        let a = Tensor(strings: [[1], [], [2, 2]], shape: [1, 3])
        let b = Tensor(strings: [[3, 3, 3], [4], [0], [], [5], [6, 0, 6]], shape: [2, 3])
        let joined = BatchAssembly.join([[a], [b]])
        XCTAssertEqual(joined[0].shape, [3, 3])
        XCTAssertEqual(joined[0].stringElements, a.stringElements + b.stringElements)
        let split = try BatchAssembly.split(joined, rows: [1, 2])
        XCTAssertEqual(split[0][0], a)
        XCTAssertEqual(split[1][0], b)
        // A split output that does not hold its rows' elements is the model's fault (500).
        let short = Tensor(dataType: .bytes, shape: [3, 3], bytes: Array(joined[0].bytes.dropLast()))
        XCTAssertThrowsError(try BatchAssembly.split([short], rows: [1, 2])) { error in
            XCTAssertEqual((error as? KernelHTTPError)?.status, 500)
        }
    }

    func testSplitRowsAreViewsOfTheOutput() throws {
        let output = Tensor(float32: (0..<12).map(Float.init), shape: [3, 4])
        let split = try BatchAssembly.split([output], rows: [1, 2])
        XCTAssertEqual(split[0][0].float32Values, [0, 1, 2, 3])
        XCTAssertEqual(split[1][0].float32Values, (4..<12).map(Float.init))
        let base = output.withUnsafeBytes { $0.baseAddress! }
        split[1][0].withUnsafeBytes { XCTAssertEqual($0.baseAddress, base + 16) }
    }

    func testTensorMemoryIsReleasedWithTheLastTensor() throws {
        final class Flag: @unchecked Sendable { var released = false }
        let flag = Flag()
        let storage = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        defer { storage.deallocate() }
        storage.storeBytes(of: UInt64(0x0102_0304_0506_0708), as: UInt64.self)
        var row: Tensor?
        do {
            let memory = TensorMemory(base: UnsafeRawPointer(storage), count: 8) { flag.released = true }
            let tensor = Tensor(dataType: .uint8, shape: [2, 4], memory: memory)
            row = try BatchAssembly.split([tensor], rows: [1, 1])[1][0]
        }
        XCTAssertFalse(flag.released)
        XCTAssertEqual(row?.bytes, [4, 3, 2, 1])
        var response = ByteBuffer()
        row?.write(to: &response)
        XCTAssertEqual(response.readableBytesView.map { $0 }, [4, 3, 2, 1])
        row = nil
        XCTAssertTrue(flag.released)
    }
}
