import KernelCore
import NIOCore

/// The request/response header of Triton's binary tensor extension: the length of the JSON part of the body.
public let inferenceHeaderContentLength = "Inference-Header-Content-Length"

/// An output the client asked for, and whether it wants it as binary data.
public struct RequestedOutput: Sendable, Equatable {
    public var name: String
    /// nil: as the request-level `binary_data_output` parameter says.
    public var binary: Bool?
    public init(name: String, binary: Bool? = nil) {
        self.name = name
        self.binary = binary
    }
}

/// An inference request, decoded and checked against the model: inputs are in the model's input order.
public struct DecodedInferenceRequest: Sendable {
    public var id: String?
    public var inputs: [Tensor]
    /// The outputs to return, in the order to return them.
    public var outputs: [RequestedOutput]
    /// Request-level `binary_data_output`.
    public var binaryOutputDefault: Bool
}

/// What a model accepts and returns, as the codec checks requests against it.
public struct ModelSignature: Sendable {
    public var name: String
    public var version: String
    public var inputs: [TensorSpec]
    public var outputs: [TensorSpec]
    /// 0 when the model does not batch: dimension 0 is then not limited by the kernel.
    public var maxBatchSize: Int

    public init(name: String, version: String, inputs: [TensorSpec], outputs: [TensorSpec], maxBatchSize: Int) {
        self.name = name
        self.version = version
        self.inputs = inputs
        self.outputs = outputs
        self.maxBatchSize = maxBatchSize
    }
}

/// Reads Open Inference Protocol requests (JSON, and Triton's binary tensor extension) and writes responses.
///
/// Every problem with a request is a `KernelHTTPError` with status 400 and a message in Triton's words.
public enum InferenceCodec {
    /// Decodes and validates an infer request body.
    public static func decodeRequest(body: ByteBuffer?, headers: HeaderFields, model: ModelSignature) throws -> DecodedInferenceRequest {
        let body = body ?? ByteBuffer()
        var jsonLength = body.readableBytes
        if let text = headers[inferenceHeaderContentLength] {
            guard let length = Int(text), length >= 0 else {
                throw KernelHTTPError(400, "invalid \(inferenceHeaderContentLength) header \"\(text)\"")
            }
            guard length <= body.readableBytes else {
                throw KernelHTTPError(400, "\(inferenceHeaderContentLength) \(length) is larger than the request body (\(body.readableBytes) bytes)")
            }
            jsonLength = length
        }
        guard jsonLength > 0 else { throw KernelHTTPError(400, "the request body is empty: expected a JSON inference request") }
        let document: JSONValue
        do {
            document = try JSONReader.parse(body.getSlice(at: body.readerIndex, length: jsonLength)!)
        } catch let error as JSONParseError {
            throw KernelHTTPError(400, "failed to parse the request JSON: \(error)")
        }
        guard document.isObject else { throw KernelHTTPError(400, "the inference request must be a JSON object") }
        var binary = body.getSlice(at: body.readerIndex + jsonLength, length: body.readableBytes - jsonLength)!

        var id: String?
        if let value = document["id"] {
            guard let text = value.stringValue else { throw KernelHTTPError(400, "\"id\" must be a string, found \(value.kindName)") }
            id = text
        }
        var binaryOutputDefault = false
        if let parameters = document["parameters"] {
            guard parameters.isObject else { throw KernelHTTPError(400, "\"parameters\" must be an object") }
            if let flag = parameters["binary_data_output"] {
                guard let value = flag.boolValue else { throw KernelHTTPError(400, "\"binary_data_output\" must be a boolean") }
                binaryOutputDefault = value
            }
        }

        guard let inputItems = document["inputs"]?.arrayValue else {
            throw KernelHTTPError(400, "the inference request has no \"inputs\" array")
        }
        var decoded = [Tensor?](repeating: nil, count: model.inputs.count)
        for item in inputItems {
            guard item.isObject else { throw KernelHTTPError(400, "each of \"inputs\" must be an object") }
            guard let name = item["name"]?.stringValue else { throw KernelHTTPError(400, "an input has no \"name\" string") }
            guard let position = model.inputs.firstIndex(where: { $0.name == name }) else {
                throw KernelHTTPError(400, "unexpected inference input '\(name)' for model '\(model.name)'")
            }
            guard decoded[position] == nil else {
                throw KernelHTTPError(400, "input '\(name)' is given more than once")
            }
            let spec = model.inputs[position]
            guard let typeName = item["datatype"]?.stringValue else {
                throw KernelHTTPError(400, "input '\(name)' has no \"datatype\" string")
            }
            guard let dataType = TensorDataType(rawValue: typeName) else {
                throw KernelHTTPError(400, "input '\(name)' has an unsupported datatype '\(typeName)'")
            }
            guard dataType == spec.dataType else {
                throw KernelHTTPError(400, "inference input '\(name)' data-type is '\(typeName)', but model '\(model.name)' expects '\(spec.dataType.rawValue)'")
            }
            guard let shapeItems = item["shape"]?.arrayValue else {
                throw KernelHTTPError(400, "input '\(name)' has no \"shape\" array")
            }
            var shape: [Int64] = []
            shape.reserveCapacity(shapeItems.count)
            for dimension in shapeItems {
                guard case .number(let number) = dimension, let value = number.int64, value >= 0 else {
                    throw KernelHTTPError(400, "input '\(name)' has an invalid shape: dimensions must be non-negative integers")
                }
                shape.append(value)
            }
            guard spec.accepts(shape) else {
                throw KernelHTTPError(400, "unexpected shape for input '\(name)' for model '\(model.name)'. Expected \(spec.shapeText), got \(shapeText(shape))")
            }
            if model.maxBatchSize > 0, let rows = shape.first, rows > Int64(model.maxBatchSize) {
                throw KernelHTTPError(400, "inference request batch-size must be <= \(model.maxBatchSize) for '\(model.name)'")
            }
            guard let count = Tensor.elementCount(shape), count <= Int.max / 8 else {
                throw KernelHTTPError(400, "input '\(name)' has a shape too large: \(shapeText(shape))")
            }
            let byteCount = count * dataType.byteWidth
            let parameters = item["parameters"]
            if let sizeValue = parameters?["binary_data_size"] {
                guard case .number(let number) = sizeValue, let size = number.int64, size >= 0 else {
                    throw KernelHTTPError(400, "input '\(name)': binary_data_size must be a non-negative integer")
                }
                guard item["data"] == nil else {
                    throw KernelHTTPError(400, "input '\(name)' has both \"data\" and binary_data_size")
                }
                guard size == byteCount else {
                    throw KernelHTTPError(400, "input '\(name)': binary_data_size \(size) does not match the shape \(shapeText(shape)) of \(typeName) (\(byteCount) bytes)")
                }
                guard let bytes = binary.readBytes(length: byteCount) else {
                    throw KernelHTTPError(400, "input '\(name)': binary_data_size \(size) exceeds the \(binary.readableBytes) binary bytes left in the request")
                }
                decoded[position] = Tensor(dataType: dataType, shape: shape, bytes: bytes)
            } else {
                guard let data = item["data"] else { throw KernelHTTPError(400, "input '\(name)' has no \"data\"") }
                // Each JSON element takes at least two bytes of the document: a larger shape cannot be matched by
                // its data, and must not make us allocate for it.
                guard count <= jsonLength / 2 + 1 else {
                    throw KernelHTTPError(400, "unexpected number of elements for input '\(name)': the shape \(shapeText(shape)) needs \(count), more than the request's \(jsonLength) bytes of JSON can hold")
                }
                let bytes = try decodeData(data, dataType: dataType, count: count, name: name, shape: shape)
                decoded[position] = Tensor(dataType: dataType, shape: shape, bytes: bytes)
            }
        }
        if binary.readableBytes > 0 {
            throw KernelHTTPError(400, "the request has \(binary.readableBytes) binary bytes that no input claims")
        }
        var inputs: [Tensor] = []
        inputs.reserveCapacity(decoded.count)
        for (index, tensor) in decoded.enumerated() {
            guard let tensor else {
                let missing = model.inputs[index].name
                throw KernelHTTPError(400, "expected \(model.inputs.count) inputs but got \(inputItems.count) inputs for model '\(model.name)': missing input '\(missing)'")
            }
            inputs.append(tensor)
        }
        if model.maxBatchSize > 0, inputs.count > 1 {
            let rows = inputs[0].shape.first
            guard inputs.allSatisfy({ $0.shape.first == rows }) else {
                throw KernelHTTPError(400, "all inputs of model '\(model.name)' must have the same batch size (dimension 0)")
            }
        }

        var outputs: [RequestedOutput] = []
        if let outputItems = document["outputs"] {
            guard let items = outputItems.arrayValue else { throw KernelHTTPError(400, "\"outputs\" must be an array") }
            for item in items {
                guard let name = item["name"]?.stringValue else { throw KernelHTTPError(400, "a requested output has no \"name\" string") }
                guard model.outputs.contains(where: { $0.name == name }) else {
                    throw KernelHTTPError(400, "unexpected inference output '\(name)' for model '\(model.name)'")
                }
                var binaryFlag: Bool?
                if let flag = item["parameters"]?["binary_data"] {
                    guard let value = flag.boolValue else { throw KernelHTTPError(400, "output '\(name)': binary_data must be a boolean") }
                    binaryFlag = value
                }
                outputs.append(RequestedOutput(name: name, binary: binaryFlag))
            }
        }
        if outputs.isEmpty { outputs = model.outputs.map { RequestedOutput(name: $0.name) } }
        return DecodedInferenceRequest(id: id, inputs: inputs, outputs: outputs, binaryOutputDefault: binaryOutputDefault)
    }

    static func shapeText(_ shape: [Int64]) -> String { "[" + shape.map(String.init).joined(separator: ",") + "]" }

    /// Flattens `data` (flat or nested arrays) into `count` elements of `dataType`, native byte order.
    static func decodeData(_ data: JSONValue, dataType: TensorDataType, count: Int, name: String, shape: [Int64]) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count * dataType.byteWidth)
        var written = 0
        var bad: JSONValue?
        bytes.withUnsafeMutableBytes { raw in
            _ = flatten(data, dataType: dataType, count: count, into: raw, written: &written, bad: &bad)
        }
        if let bad {
            throw KernelHTTPError(400, "input '\(name)': element \(written) (\(bad.kindName)) is not a valid \(dataType.rawValue) value")
        }
        guard written == count else {
            let given = written > count ? "more than \(count)" : "\(written)"
            throw KernelHTTPError(400, "unexpected number of elements for input '\(name)': the shape \(shapeText(shape)) needs \(count), the data has \(given)")
        }
        return bytes
    }

    /// Stores the elements of `value` from `written` on; false stops at an invalid element (`bad`) or at one
    /// element beyond `count` (then `written` is `count + 1`).
    private static func flatten(_ value: JSONValue, dataType: TensorDataType, count: Int, into raw: UnsafeMutableRawBufferPointer,
                                written: inout Int, bad: inout JSONValue?) -> Bool {
        switch value {
        case .numbers(let numbers):
            guard numbers.count <= count - written else { written = count + 1; return false }
            if dataType == .fp32 {
                // The common case, kept tight: no per-element switch.
                let floats = raw.baseAddress!.assumingMemoryBound(to: Float.self)
                for number in numbers {
                    floats[written] = number.float
                    written += 1
                }
                return true
            }
            for number in numbers {
                guard storeElement(.number(number), dataType: dataType, into: raw, at: written) else {
                    bad = .number(number)
                    return false
                }
                written += 1
            }
            return true
        case .array(let items):
            for item in items where !flatten(item, dataType: dataType, count: count, into: raw, written: &written, bad: &bad) {
                return false
            }
            return true
        default:
            guard written < count else { written = count + 1; return false }
            guard storeElement(value, dataType: dataType, into: raw, at: written) else {
                bad = value
                return false
            }
            written += 1
            return true
        }
    }

    @inline(__always)
    static func storeElement(_ value: JSONValue, dataType: TensorDataType, into raw: UnsafeMutableRawBufferPointer, at index: Int) -> Bool {
        let offset = index * dataType.byteWidth
        if dataType == .bool {
            guard case .bool(let flag) = value else { return false }
            raw[offset] = flag ? 1 : 0
            return true
        }
        guard case .number(let number) = value else { return false }
        switch dataType {
        case .fp32: raw.storeBytes(of: number.float, toByteOffset: offset, as: Float.self)
        case .fp64: raw.storeBytes(of: number.double, toByteOffset: offset, as: Double.self)
        case .fp16: raw.storeBytes(of: Float16(number.double).bitPattern, toByteOffset: offset, as: UInt16.self)
        case .int8:
            guard let v = number.int64, let narrow = Int8(exactly: v) else { return false }
            raw.storeBytes(of: narrow, toByteOffset: offset, as: Int8.self)
        case .int16:
            guard let v = number.int64, let narrow = Int16(exactly: v) else { return false }
            raw.storeBytes(of: narrow, toByteOffset: offset, as: Int16.self)
        case .int32:
            guard let v = number.int64, let narrow = Int32(exactly: v) else { return false }
            raw.storeBytes(of: narrow, toByteOffset: offset, as: Int32.self)
        case .int64:
            guard let v = number.int64 else { return false }
            raw.storeBytes(of: v, toByteOffset: offset, as: Int64.self)
        case .uint8:
            guard let v = number.uint64, let narrow = UInt8(exactly: v) else { return false }
            raw.storeBytes(of: narrow, toByteOffset: offset, as: UInt8.self)
        case .uint16:
            guard let v = number.uint64, let narrow = UInt16(exactly: v) else { return false }
            raw.storeBytes(of: narrow, toByteOffset: offset, as: UInt16.self)
        case .uint32:
            guard let v = number.uint64, let narrow = UInt32(exactly: v) else { return false }
            raw.storeBytes(of: narrow, toByteOffset: offset, as: UInt32.self)
        case .uint64:
            guard let v = number.uint64 else { return false }
            raw.storeBytes(of: v, toByteOffset: offset, as: UInt64.self)
        case .bool:
            return false
        }
        return true
    }

    /// Writes an infer response: JSON, or JSON followed by the binary outputs (with `Inference-Header-Content-Length`).
    public static func encodeResponse(model: ModelSignature, request: DecodedInferenceRequest, outputs: [Tensor],
                                      allocator: ByteBufferAllocator = ByteBufferAllocator()) -> KernelResponse {
        var estimate = 128
        for tensor in outputs { estimate += 64 + tensor.elementCount * 12 }
        var writer = JSONWriter(buffer: allocator.buffer(capacity: estimate))
        var binaryParts: [Tensor] = []
        writer.raw("{\"model_name\":")
        writer.string(model.name)
        writer.raw(",\"model_version\":")
        writer.string(model.version)
        if let id = request.id {
            writer.raw(",\"id\":")
            writer.string(id)
        }
        writer.raw(",\"outputs\":[")
        for (index, wanted) in request.outputs.enumerated() {
            guard let position = model.outputs.firstIndex(where: { $0.name == wanted.name }) else { continue }
            let tensor = outputs[position]
            if index > 0 { writer.byte(UInt8(ascii: ",")) }
            writer.raw("{\"name\":")
            writer.string(wanted.name)
            writer.raw(",\"datatype\":\"")
            writer.buffer.writeString(tensor.dataType.rawValue)
            writer.raw("\",\"shape\":[")
            for (dimensionIndex, dimension) in tensor.shape.enumerated() {
                if dimensionIndex > 0 { writer.byte(UInt8(ascii: ",")) }
                writer.integer(dimension)
            }
            writer.byte(UInt8(ascii: "]"))
            if wanted.binary ?? request.binaryOutputDefault {
                writer.raw(",\"parameters\":{\"binary_data_size\":")
                writer.integer(tensor.bytes.count)
                writer.raw("}}")
                binaryParts.append(tensor)
            } else {
                writer.raw(",\"data\":")
                writeData(tensor, into: &writer)
                writer.byte(UInt8(ascii: "}"))
            }
        }
        writer.raw("]}")
        var buffer = writer.buffer
        var headers: HeaderFields = [:]
        if binaryParts.isEmpty {
            headers.add("Content-Type", "application/json")
        } else {
            headers.add(inferenceHeaderContentLength, String(buffer.readableBytes))
            headers.add("Content-Type", "application/octet-stream")
            for part in binaryParts { buffer.writeBytes(part.bytes) }
        }
        return KernelResponse(status: 200, headers: headers, body: .buffer(buffer))
    }

    /// The elements of `tensor` as a flat JSON array.
    static func writeData(_ tensor: Tensor, into writer: inout JSONWriter) {
        writer.byte(UInt8(ascii: "["))
        let count = tensor.elementCount
        tensor.bytes.withUnsafeBytes { raw in
            for index in 0..<count {
                if index > 0 { writer.byte(UInt8(ascii: ",")) }
                switch tensor.dataType {
                case .fp32: writer.float(raw.loadUnaligned(fromByteOffset: index * 4, as: Float.self))
                case .fp64: writer.double(raw.loadUnaligned(fromByteOffset: index * 8, as: Double.self))
                case .fp16:
                    let half = Float16(bitPattern: raw.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self))
                    if half.isFinite { writer.buffer.writeString(half.description) } else { writer.float(Float(half)) }
                case .bool: writer.raw(raw[index] != 0 ? "true" : "false")
                case .uint8: writer.integer(raw[index])
                case .int8: writer.integer(Int8(bitPattern: raw[index]))
                case .uint16: writer.integer(raw.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self))
                case .int16: writer.integer(raw.loadUnaligned(fromByteOffset: index * 2, as: Int16.self))
                case .uint32: writer.integer(raw.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self))
                case .int32: writer.integer(raw.loadUnaligned(fromByteOffset: index * 4, as: Int32.self))
                case .uint64: writer.integer(raw.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self))
                case .int64: writer.integer(raw.loadUnaligned(fromByteOffset: index * 8, as: Int64.self))
                }
            }
        }
        writer.byte(UInt8(ascii: "]"))
    }
}
