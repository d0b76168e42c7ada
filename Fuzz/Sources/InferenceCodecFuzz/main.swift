import FuzzSupport
import KernelCore
import NIOCore
@testable import Inference

/// SwiftPM links an executable target with its `main` renamed to `<target>_main`; this is it, handing control to
/// libFuzzer (whose own `main` is then not linked).
@_cdecl("InferenceCodecFuzz_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv) { data, size in fuzzInferenceCodec(data, size) }
}

/// The signatures requests are decoded against: the two models `scripts/models/make_models.py` makes (as ONNX
/// Runtime reports them, with the `max_batch_size` the shipped and test configurations give them), the model of
/// the codec's unit tests, and one single-input model per element type so that every conversion is reached.
private let models: [ModelSignature] = [
    ModelSignature(name: "demo", version: "1",
                   inputs: [TensorSpec(name: "input", dataType: .fp32, shape: [-1, 64])],
                   outputs: [TensorSpec(name: "output", dataType: .fp32, shape: [-1, 10])], maxBatchSize: 32),
    ModelSignature(name: "ppocr_cls", version: "1",
                   inputs: [TensorSpec(name: "x", dataType: .fp32, shape: [-1, 3, -1, -1])],
                   outputs: [TensorSpec(name: "save_infer_model/scale_0.tmp_1", dataType: .fp32, shape: [-1, 2])],
                   maxBatchSize: 8),
    ModelSignature(name: "codec", version: "1",
                   inputs: [TensorSpec(name: "input", dataType: .fp32, shape: [-1, 4]),
                            TensorSpec(name: "mask", dataType: .bool, shape: [-1, 2])],
                   outputs: [TensorSpec(name: "output", dataType: .fp32, shape: [-1, 2]),
                             TensorSpec(name: "label", dataType: .int64, shape: [-1])], maxBatchSize: 8),
] + TensorDataType.allCases.map { type in
    ModelSignature(name: "t", version: "1", inputs: [TensorSpec(name: "x", dataType: type, shape: [-1, -1])],
                   outputs: [TensorSpec(name: "y", dataType: type, shape: [-1, 3])], maxBatchSize: 8)
}

/// libFuzzer's entry point. Three control bytes, then the request body:
/// - byte 0 picks the model;
/// - byte 1: bit 0 sends `Inference-Header-Content-Length` with the value of byte 2 times 4 plus the low bits
///   of byte 1 (so that it can fall inside, at the end of or beyond the body), bit 1 sends it as text that is no
///   number, bit 2 asks for the echoed tensors in binary.
///
/// A request the decoder accepts must match the model (input types, shapes, batch size, byte counts, output
/// names). Then it is answered twice: with made-up outputs of the model's shapes (filled from the request's
/// bytes, so NaN and infinities occur), whose JSON must parse and whose binary part must be as announced; and
/// with its own inputs as outputs, whose JSON data or binary bytes must decode back to exactly the inputs.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzInferenceCodec(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let all = UnsafeBufferPointer(start: start, count: count)
    let control = Array(all.prefix(3)) + [UInt8](repeating: 0, count: max(0, 3 - count))
    let payload = UnsafeBufferPointer(rebasing: all[min(3, count)...])
    let model = models[Int(control[0]) % models.count]
    var headers: HeaderFields = [:]
    if control[1] & 1 == 1 { headers.add(inferenceHeaderContentLength, String(Int(control[2]) * 4 + Int(control[1] >> 6))) }
    if control[1] & 2 == 2 { headers.add(inferenceHeaderContentLength, "4x") }
    var body = ByteBuffer()
    body.writeBytes(payload)
    let request: DecodedInferenceRequest
    do {
        request = try InferenceCodec.decodeRequest(body: body, headers: headers, model: model)
    } catch let error as KernelHTTPError {
        check(error.status == 400, "status \(error.status) for a bad request")
        return 0
    } catch {
        check(false, "an error that is no KernelHTTPError: \(error)")
        return 0
    }
    checkMatches(request, model)
    answerWithModelOutputs(request, model, filler: payload)
    // FP16, BF16 and BYTES are echoed as binary data: the first two have no JSON form, and the JSON reader below
    // reads numbers back only.
    let binaryOnly = model.inputs.contains { !$0.dataType.hasJSONForm || !$0.dataType.hasFixedWidth }
    answerWithInputs(request, model, binary: binaryOnly || control[1] & 4 == 4)
    return 0
}

private func checkMatches(_ request: DecodedInferenceRequest, _ model: ModelSignature) {
    check(request.inputs.count == model.inputs.count, "\(request.inputs.count) inputs for \(model.inputs.count)")
    for (tensor, spec) in zip(request.inputs, model.inputs) {
        check(tensor.dataType == spec.dataType, "input type \(tensor.dataType) for \(spec.dataType)")
        check(spec.accepts(tensor.shape), "shape \(tensor.shape) accepted for \(spec.shape)")
        check(tensor.isConsistent, "\(tensor.byteCount) bytes for shape \(tensor.shape) of \(tensor.dataType)")
        if model.maxBatchSize > 0 { check(tensor.rows <= model.maxBatchSize, "batch \(tensor.rows) over \(model.maxBatchSize)") }
    }
    check(!request.outputs.isEmpty, "no outputs to return")
    for output in request.outputs {
        check(model.outputs.contains { $0.name == output.name }, "unknown output \(output.name) accepted")
    }
}

/// Outputs as the model would return them for the request's batch, their elements cut from `filler`.
private func answerWithModelOutputs(_ request: DecodedInferenceRequest, _ model: ModelSignature, filler: UnsafeBufferPointer<UInt8>) {
    let rows = Int64(request.inputs.first?.rows ?? 1)
    let outputs = model.outputs.map { spec -> Tensor in
        let shape = spec.shape.enumerated().map { index, dimension in dimension >= 0 ? dimension : (index == 0 ? rows : 1) }
        let byteCount = Tensor.elementCount(shape)! * spec.dataType.byteWidth
        var bytes = [UInt8](repeating: 0, count: byteCount)
        // BYTES elements stay empty strings (zero lengths): filler bytes would not be Triton's serialisation.
        if !filler.isEmpty, spec.dataType.hasFixedWidth { for i in 0..<byteCount { bytes[i] = filler[i % filler.count] } }
        return Tensor(dataType: spec.dataType, shape: shape, bytes: bytes)
    }
    let response: KernelResponse
    do {
        response = try InferenceCodec.encodeResponse(model: model, request: request, outputs: outputs)
    } catch {
        // Inputs of at most a few KiB make small responses: an accepted request must be answered.
        check(false, "the response to an accepted request failed: \(error)")
        return
    }
    let items = parseResponse(response, binaryExpected: request.outputs.map { $0.binary ?? request.binaryOutputDefault })
    check(items.count == request.outputs.count, "\(items.count) outputs written for \(request.outputs.count) requested")
}

/// The request's inputs returned as outputs (a model that echoes): each must read back as it was decoded.
private func answerWithInputs(_ request: DecodedInferenceRequest, _ model: ModelSignature, binary: Bool) {
    let echo = ModelSignature(name: model.name, version: model.version, inputs: model.inputs, outputs: model.inputs,
                              maxBatchSize: model.maxBatchSize)
    let wanted = DecodedInferenceRequest(id: request.id, inputs: request.inputs,
                                         outputs: model.inputs.map { RequestedOutput(name: $0.name, binary: binary) },
                                         binaryOutputDefault: false)
    let response: KernelResponse
    do {
        response = try InferenceCodec.encodeResponse(model: echo, request: wanted, outputs: request.inputs)
    } catch {
        check(false, "the echo of an accepted request failed: \(error)")
        return
    }
    let items = parseResponse(response, binaryExpected: wanted.outputs.map { _ in binary })
    check(items.count == request.inputs.count, "\(items.count) outputs written for \(request.inputs.count) inputs")
    for (item, tensor) in zip(items, request.inputs) {
        check(item.shape == tensor.shape, "shape \(item.shape) written for \(tensor.shape)")
        let bytes: [UInt8]
        if let binaryBytes = item.binary {
            bytes = binaryBytes
        } else {
            do {
                bytes = try InferenceCodec.decodeData(item.data!, dataType: tensor.dataType, count: tensor.elementCount,
                                                      name: "x", shape: tensor.shape)
            } catch {
                check(false, "written data does not decode as \(tensor.dataType) \(tensor.shape): \(error)")
                return
            }
        }
        check(canonical(bytes, tensor.dataType) == canonical(tensor.bytes, tensor.dataType),
              "\(tensor.dataType) \(binary ? "binary" : "JSON") data reads back as \(bytes.prefix(64)), not \(tensor.bytes.prefix(64))")
    }
}

/// One output as a response carries it.
private struct WrittenOutput {
    var shape: [Int64]
    var data: JSONValue?
    var binary: [UInt8]?
}

/// Checks a response's framing and JSON and returns its outputs (binary parts cut from the tail).
private func parseResponse(_ response: KernelResponse, binaryExpected: [Bool]) -> [WrittenOutput] {
    check(response.status == 200, "status \(response.status)")
    guard case .buffer(let body) = response.body else {
        check(false, "an infer response that is no buffer")
        return []
    }
    var jsonLength = body.readableBytes
    if let text = response.headers[inferenceHeaderContentLength] {
        guard let length = Int(text), length >= 0, length <= body.readableBytes else {
            check(false, "\(inferenceHeaderContentLength) \(text) for a body of \(body.readableBytes) bytes")
            return []
        }
        jsonLength = length
    }
    let document: JSONValue
    do {
        document = try JSONReader.parse(body.getSlice(at: body.readerIndex, length: jsonLength)!)
    } catch {
        check(false, "response JSON does not parse: \(error): \(String(buffer: body.getSlice(at: body.readerIndex, length: min(jsonLength, 2000))!))")
        return []
    }
    guard let items = document["outputs"]?.arrayValue else {
        check(false, "response without an outputs array")
        return []
    }
    var binary = body.getSlice(at: body.readerIndex + jsonLength, length: body.readableBytes - jsonLength)!
    var outputs: [WrittenOutput] = []
    for (index, item) in items.enumerated() {
        let shape = item["shape"]?.arrayValue?.compactMap { value -> Int64? in
            if case .number(let number) = value { return number.int64 }
            return nil
        } ?? []
        var output = WrittenOutput(shape: shape)
        if let size = item["parameters"]?["binary_data_size"] {
            guard case .number(let number) = size, let length = number.int64, let bytes = binary.readBytes(length: Int(length)) else {
                check(false, "binary_data_size \(size) beyond the binary part")
                return []
            }
            output.binary = bytes
        } else {
            output.data = item["data"]
            check(output.data != nil, "output without data or binary_data_size")
        }
        if index < binaryExpected.count {
            check((output.binary != nil) == binaryExpected[index], "output \(index) binary \(output.binary != nil), asked \(binaryExpected[index])")
        }
        outputs.append(output)
    }
    check(binary.readableBytes == 0, "\(binary.readableBytes) binary bytes that no output claims")
    return outputs
}

/// The bytes with every NaN made the same and every boolean 0 or 1: what JSON can carry of them.
private func canonical(_ bytes: [UInt8], _ type: TensorDataType) -> [UInt8] {
    var result = bytes
    result.withUnsafeMutableBytes { raw in
        switch type {
        case .bool:
            for i in 0..<raw.count where raw[i] != 0 { raw[i] = 1 }
        case .fp16:
            for i in stride(from: 0, to: raw.count, by: 2) where Float16(bitPattern: raw.loadUnaligned(fromByteOffset: i, as: UInt16.self)).isNaN {
                raw.storeBytes(of: Float16.nan.bitPattern, toByteOffset: i, as: UInt16.self)
            }
        case .fp32:
            for i in stride(from: 0, to: raw.count, by: 4) where raw.loadUnaligned(fromByteOffset: i, as: Float.self).isNaN {
                raw.storeBytes(of: Float.nan.bitPattern, toByteOffset: i, as: UInt32.self)
            }
        case .fp64:
            for i in stride(from: 0, to: raw.count, by: 8) where raw.loadUnaligned(fromByteOffset: i, as: Double.self).isNaN {
                raw.storeBytes(of: Double.nan.bitPattern, toByteOffset: i, as: UInt64.self)
            }
        default:
            break
        }
    }
    return result
}
