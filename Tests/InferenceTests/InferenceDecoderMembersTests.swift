import KernelCore
import NIOCore
import XCTest
@testable import Inference

/// The request decoder's reading of an object's members, for the request and for each input: repeated members
/// (the first is the one read, as a lookup of the key finds it, and a later one is skipped however malformed
/// inside), members in any order (`data` before the header that says how to read it), empty objects, and the
/// syntax errors a member list can have. Each case's outcome is spelt out, so any change to how members are read
/// shows.
final class InferenceDecoderMembersTests: XCTestCase {
    private let model = ModelSignature(name: "m", version: "1",
                                       inputs: [TensorSpec(name: "x", dataType: .int32, shape: [-1, 2]),
                                                TensorSpec(name: "z", dataType: .int32, shape: [-1, 2])],
                                       outputs: [TensorSpec(name: "y", dataType: .int32, shape: [-1, 2])],
                                       maxBatchSize: 0)

    /// `id`, priority, binary default, each input's name and values, the outputs; or the error's status and text.
    private func outcome(_ text: String) -> String {
        do {
            let request = try InferenceCodec.decodeRequest(body: ByteBuffer(string: text), headers: [:], model: model)
            let inputs = request.inputs.map { tensor -> String in
                let values = stride(from: 0, to: tensor.bytes.count, by: 4).map { offset in
                    tensor.bytes[offset..<offset + 4].reversed().reduce(Int32(0)) { $0 << 8 | Int32($1) }
                }
                return "\(tensor.shape)\(values)"
            }
            return "id=\(request.id ?? "-") priority=\(request.priority.map(String.init) ?? "-") binary=\(request.binaryOutputDefault) "
                + "inputs=\(inputs.joined(separator: ",")) outputs=\(request.outputs.map { "\($0.name):\($0.binary)" })"
        } catch let error as KernelHTTPError {
            return "\(error.status): \(error.message)"
        } catch {
            return "other error: \(error)"
        }
    }

    private let x = #"{"name": "x", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]}"#
    private let z = #"{"name": "z", "datatype": "INT32", "shape": [1, 2], "data": [5, 6]}"#

    func testRepeatedMembersTheFirstIsRead() {
        XCTAssertEqual(outcome(#"{"id": "a", "id": "b", "inputs": [\#(x), \#(z)]}"#),
                       "id=a priority=- binary=false inputs=[1, 2][1, 2],[1, 2][5, 6] outputs=[\"y:nil\"]")
        XCTAssertEqual(outcome(#"{"inputs": [\#(x), \#(z)], "inputs": [{"name": "x"}], "id": 3, "id": "late"}"#),
                       #"400: "id" must be a string, found a number"#)
        XCTAssertEqual(outcome(#"{"id": "a", "id": [1, {"deep": [}], "inputs": [\#(x), \#(z)]}"#).prefix(4), "400:",
                       "a repeated member is skipped, but its syntax still counts")
        XCTAssertEqual(outcome(#"{"parameters": {"priority": 2}, "parameters": {"priority": "x"}, "inputs": [\#(x), \#(z)]}"#),
                       "id=- priority=2 binary=false inputs=[1, 2][1, 2],[1, 2][5, 6] outputs=[\"y:nil\"]")
        XCTAssertEqual(outcome(#"{"inputs": [\#(x), \#(z)], "outputs": [{"name": "y", "parameters": {"binary_data": true}}], "outputs": 7}"#),
                       #"id=- priority=- binary=false inputs=[1, 2][1, 2],[1, 2][5, 6] outputs=["y:Optional(true)"]"#)
        // In an input: the first name, datatype, shape, data and parameters.
        XCTAssertEqual(outcome(#"{"inputs": [{"name": "x", "name": "z", "datatype": "INT32", "datatype": "FP64", "shape": [1, 2], "shape": [2, 2], "data": [1, 2], "data": [9, 9, 9, 9]}, \#(z)]}"#),
                       "id=- priority=- binary=false inputs=[1, 2][1, 2],[1, 2][5, 6] outputs=[\"y:nil\"]")
        XCTAssertEqual(outcome(#"{"inputs": [{"data": [3, 4], "data": "junk", "shape": [1, 2], "datatype": "INT32", "name": "x"}, \#(z)]}"#),
                       "id=- priority=- binary=false inputs=[1, 2][3, 4],[1, 2][5, 6] outputs=[\"y:nil\"]", "data before its header")
        XCTAssertEqual(outcome(#"{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 2], "parameters": {}, "parameters": 5, "data": [7, 8]}, \#(z)]}"#),
                       "id=- priority=- binary=false inputs=[1, 2][7, 8],[1, 2][5, 6] outputs=[\"y:nil\"]")
    }

    func testEmptyObjectsAndMalformedMemberLists() {
        let cases: [String] = [
            "{}", "{ }", #"{"inputs": [{}]}"#, #"{"inputs": [{ }, \#(z)]}"#, "{,}", #"{"id": "a",}"#, #"{"id"}"#,
            #"{"id" "a"}"#, #"{"id": "a" "inputs": []}"#, #"{"inputs": [\#(x), \#(z)]"#, #"{"inputs": [{"name": "x",}]}"#,
            #"{"inputs": [{"name": "x"]}"#, #"{"inputs": [{"name": "x" "datatype": "INT32"}]}"#, #"{"inputs": [{1: 2}]}"#,
            #"{"inputs": [\#(x), \#(z)]} tail"#, #"{"inputs": [\#(x), \#(z)]}}"#, #"{"inputs": [{"name": "x", "data": [1, 2}]}"#,
            #"{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 2], "data": [1, 2], "data": [1, }]}"#, "{\"id\": \"a\"",
        ]
        let outcomes = cases.map(outcome)
        for (text, result) in zip(cases, outcomes) {
            XCTAssertTrue(result.hasPrefix("400: "), "\(text): \(result)")
        }
        XCTAssertEqual(outcomes.joined(separator: "\n"), InferenceDecoderMembersTests.malformedOutcomes)
    }

    /// What each case of `testEmptyObjectsAndMalformedMemberLists` answers, in order.
    static let malformedOutcomes = """
        400: the inference request has no "inputs" array
        400: the inference request has no "inputs" array
        400: Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', 'shared_memory_region' in 'parameters'. But no field is set
        400: Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', 'shared_memory_region' in 'parameters'. But no field is set
        400: failed to parse the request JSON: expected a member name at byte 1
        400: failed to parse the request JSON: expected a member name at byte 11
        400: failed to parse the request JSON: expected ':' at byte 5
        400: failed to parse the request JSON: expected ':' at byte 6
        400: failed to parse the request JSON: expected ',' or '}' at byte 11
        400: failed to parse the request JSON: unexpected end of JSON at byte 149
        400: failed to parse the request JSON: expected a member name at byte 25
        400: failed to parse the request JSON: expected ',' or '}' at byte 24
        400: failed to parse the request JSON: expected ',' or '}' at byte 25
        400: failed to parse the request JSON: expected a member name at byte 13
        400: failed to parse the request JSON: unexpected data after the JSON value at byte 151
        400: failed to parse the request JSON: unexpected data after the JSON value at byte 150
        400: failed to parse the request JSON: expected ',' or ']' at byte 39
        400: failed to parse the request JSON: invalid number at byte 92
        400: failed to parse the request JSON: unexpected end of JSON at byte 10
        """
}
