import KernelCore
import NIOCore

/// The request/response header of Triton's binary tensor extension: the length of the JSON part of the body.
public let inferenceHeaderContentLength = "Inference-Header-Content-Length"

/// An output the client asked for, and whether it wants it as binary data.
public struct RequestedOutput: Sendable, Equatable {
    public var name: String
    /// nil: as the request-level `binary_data_output` parameter says.
    public var binary: Bool?
    /// The output's `classification` parameter: its largest elements as `value:index` strings instead of the
    /// tensor (`OutputClassification`); 0 for the tensor itself.
    public var classCount: Int
    /// Where the output is written instead of the response (`shared_memory_region`): the answer then gives its
    /// name, datatype and shape only.
    public var sharedMemory: SharedMemoryTensor?
    public init(name: String, binary: Bool? = nil, classCount: Int = 0, sharedMemory: SharedMemoryTensor? = nil) {
        self.name = name
        self.binary = binary
        self.classCount = classCount
        self.sharedMemory = sharedMemory
    }
}

/// One output as a response carries it: in the JSON, after it as binary data, or written into a shared memory
/// region (named only). A nominal type rather than a tuple, so that its arrays need no type metadata made at run
/// time on every response.
struct ResponseOutput {
    var name: String
    var tensor: Tensor
    var binary: Bool
    var inRegion: Bool
}

/// An inference request, decoded and checked against the model: inputs are in the model's input order.
public struct DecodedInferenceRequest: Sendable {
    public var id: String?
    public var inputs: [Tensor]
    /// The outputs to return, in the order to return them.
    public var outputs: [RequestedOutput]
    /// Request-level `binary_data_output`.
    public var binaryOutputDefault: Bool
    /// `parameters.priority` (Triton's priority level), nil when the request names none.
    public var priority: Int? = nil
    /// The shared memory regions its inputs were read from, held until the request is answered (outputs hold
    /// theirs in `outputs`).
    var inputRegions: [SharedMemoryUse] = []
}

/// What a model accepts and returns, as the codec checks requests against it.
public struct ModelSignature: Sendable {
    public var name: String
    public var version: String
    public var inputs: [TensorSpec]
    public var outputs: [TensorSpec]
    /// 0 when the model does not batch: dimension 0 is then not limited by the kernel.
    public var maxBatchSize: Int
    /// The labels of outputs that have a `label_filename`, by output name: classification answers carry them.
    public var labels: [String: [String]] = [:]

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
    /// `sharedMemory`: the regions tensors may name (Triton's system shared memory extension); nil for none.
    public static func decodeRequest(body: ByteBuffer?, headers: HeaderFields, model: ModelSignature,
                                     sharedMemory: SharedMemoryRegistry? = nil) throws -> DecodedInferenceRequest {
        let body = body ?? ByteBuffer()
        var jsonLength = body.readableBytes
        if let text = headers[inferenceHeaderContentLength] {
            // The body's framing: the header twice with different lengths is no length at all (as a repeated
            // Content-Length is not), rather than whichever came first.
            for field in headers.fields where field.name.equalsCaseInsensitive(inferenceHeaderContentLength) && field.value != text {
                throw KernelHTTPError(400, "invalid \(inferenceHeaderContentLength) header: it appears more than once with different values (\"\(text)\", \"\(field.value)\")")
            }
            // Plain decimal digits only (no sign, no space): the JSON part's length, at most the body's.
            guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                  let length = Int(text) else {
                throw KernelHTTPError(400, "invalid \(inferenceHeaderContentLength) header \"\(text)\"")
            }
            guard length <= body.readableBytes else {
                throw KernelHTTPError(400, "\(inferenceHeaderContentLength) \(length) is larger than the request body (\(body.readableBytes) bytes)")
            }
            jsonLength = length
        }
        guard jsonLength > 0 else { throw KernelHTTPError(400, "the request body is empty: expected a JSON inference request") }
        return try InferenceRequestDecoder.decode(body: body, jsonLength: jsonLength, model: model, sharedMemory: sharedMemory)
    }

    static func shapeText(_ shape: [Int64]) -> String { "[" + shape.map(String.init).joined(separator: ",") + "]" }

    /// The leaves of `data` (flat or nested arrays): the elements it gives. Each leaf is a parsed value, so the sum
    /// is bounded by the document's size.
    static func elementCount(of data: JSONValue) -> Int {
        switch data {
        case .numbers(let numbers): return numbers.count
        case .array(let items): return items.reduce(0) { $0 &+ elementCount(of: $1) }
        default: return 1
        }
    }

    /// Flattens a parsed `data` value (flat or nested arrays) into `count` elements of `dataType`, native byte order.
    static func decodeData(_ data: JSONValue, dataType: TensorDataType, count: Int, name: String, shape: [Int64]) throws -> [UInt8] {
        guard let byteCount = TensorSize.product(count, dataType.byteWidth) else {
            throw KernelHTTPError(400, "input '\(name)' has a shape too large: \(shapeText(shape))")
        }
        var bytes = [UInt8](repeating: 0, count: byteCount)
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
        return store(number, as: dataType, into: raw, at: index)
    }

    /// Stores `number` as element `index` of `dataType` (one conversion from its decimal text); false when it is
    /// not a valid value of the type (not an integer, out of range) or the type has no numbers in JSON.
    @inline(__always)
    static func store(_ number: JSONNumber, as dataType: TensorDataType, into raw: UnsafeMutableRawBufferPointer, at index: Int) -> Bool {
        let offset = index &* dataType.byteWidth
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
        case .bool, .bf16, .bytes:
            return false
        }
        return true
    }

    /// The most bytes one JSON element takes, with its comma: `-2.2250738585072014e-308` (FP64) is 24.
    static let maximumElementText = 32

    /// Writes an infer response: JSON, or JSON followed by the binary outputs (with `Inference-Header-Content-Length`).
    ///
    /// The response is at most `limit` bytes (at most `TensorSize.bufferLimit`, what one `ByteBuffer` holds). Every
    /// size is known or bounded before it is written: the binary outputs' total before anything is written, the
    /// JSON text before each piece. A response that would be larger throws a `KernelHTTPError` 500 (with a hint to
    /// ask for binary outputs when only the JSON text is too large); a requested output named twice, or outputs that
    /// do not match the model, throw too (`decodeRequest` never gives such a request).
    public static func encodeResponse(model: ModelSignature, request: DecodedInferenceRequest, outputs: [Tensor],
                                      limit: Int = TensorSize.bufferLimit,
                                      allocator: ByteBufferAllocator = ByteBufferAllocator()) throws -> KernelResponse {
        let limit = min(max(0, limit), TensorSize.bufferLimit)
        // The outputs to write, each once, in the requested order.
        var parts: [ResponseOutput] = []
        parts.reserveCapacity(min(request.outputs.count, model.outputs.count))
        for wanted in request.outputs {
            guard let position = model.outputs.firstIndex(where: { $0.name == wanted.name }) else {
                throw KernelHTTPError(400, "unexpected inference output '\(wanted.name)' for model '\(model.name)'")
            }
            guard !parts.contains(where: { $0.name == wanted.name }) else {
                throw KernelHTTPError(400, "output '\(wanted.name)' already exists in request")
            }
            guard position < outputs.count, outputs[position].isConsistent else {
                let found = position < outputs.count
                    ? "shape \(shapeText(outputs[position].shape)) with \(outputs[position].byteCount) bytes" : "no tensor"
                throw KernelHTTPError(500, "inference failed for model '\(model.name)': output '\(wanted.name)' has \(found)")
            }
            var tensor = outputs[position]
            if let region = wanted.sharedMemory {
                // Written into the region now; the answer names it only.
                try region.write(tensor, output: wanted.name)
                parts.append(ResponseOutput(name: wanted.name, tensor: tensor, binary: false, inRegion: true))
                continue
            }
            let binary = wanted.binary ?? request.binaryOutputDefault
            if wanted.classCount > 0 {
                guard OutputClassification.supports(tensor.dataType) else {
                    throw KernelHTTPError(400, "class result not available for output '\(wanted.name)' due to unsupported type '\(tensor.dataType.rawValue)'")
                }
                tensor = OutputClassification.classify(tensor, count: wanted.classCount, batched: model.maxBatchSize > 0,
                                                       labels: model.labels[wanted.name])
            }
            guard binary || tensor.dataType.hasJSONForm else {
                throw KernelHTTPError(400, "sending \(tensor.dataType.rawValue) data via JSON is not supported. Please use the binary data format for output \(wanted.name)")
            }
            parts.append(ResponseOutput(name: wanted.name, tensor: tensor, binary: binary, inRegion: false))
        }
        guard let binaryBytes = TensorSize.total(parts.lazy.filter(\.binary).map(\.tensor.byteCount)),
              binaryBytes <= limit else {
            let total = parts.filter(\.binary).reduce(UInt64(0)) { $0 &+ UInt64($1.tensor.byteCount) }
            throw KernelHTTPError(500, "the response of model '\(model.name)' would hold \(total) bytes of binary outputs, more than the \(limit) bytes one response can hold")
        }
        // The JSON part may use what the binary outputs leave.
        var writer = BoundedJSONWriter(limit: limit - binaryBytes, modelName: model.name,
                                       hasJSONData: parts.contains(where: { !$0.binary && !$0.inRegion }))
        var estimate = 128 + model.name.utf8.count + model.version.utf8.count + (request.id?.utf8.count ?? 0)
        for part in parts {
            // JSON text: about 12 bytes a number; a string's bytes and quotes.
            let text = part.binary || part.inRegion ? 0 : part.tensor.dataType == .bytes ? part.tensor.byteCount
                : (TensorSize.product(part.tensor.elementCount, 12) ?? Int.max)
            estimate = TensorSize.sum(estimate, TensorSize.sum(96 + part.name.utf8.count + 21 * part.tensor.shape.count, text) ?? Int.max) ?? Int.max
        }
        // Room for the JSON (a guess, at most 16 MiB: a larger text grows the buffer) and the binary outputs.
        writer.json.buffer = allocator.buffer(capacity: min(min(estimate, writer.limit, 1 << 24) + binaryBytes, limit))
        try writer.reserve(64)
        writer.json.raw("{\"model_name\":")
        try writer.string(model.name)
        writer.json.raw(",\"model_version\":")
        try writer.string(model.version)
        if let id = request.id {
            try writer.reserve(8)
            writer.json.raw(",\"id\":")
            try writer.string(id)
        }
        try writer.reserve(16)
        writer.json.raw(",\"outputs\":[")
        for (index, part) in parts.enumerated() {
            let tensor = part.tensor
            try writer.reserve(48 + 21 * tensor.shape.count)
            if index > 0 { writer.json.byte(UInt8(ascii: ",")) }
            writer.json.raw("{\"name\":")
            try writer.string(part.name)
            try writer.reserve(48 + 21 * tensor.shape.count)
            writer.json.raw(",\"datatype\":\"")
            writer.json.buffer.writeString(tensor.dataType.rawValue)
            writer.json.raw("\",\"shape\":[")
            for (dimensionIndex, dimension) in tensor.shape.enumerated() {
                if dimensionIndex > 0 { writer.json.byte(UInt8(ascii: ",")) }
                writer.json.integer(dimension)
            }
            writer.json.byte(UInt8(ascii: "]"))
            if part.inRegion {
                writer.json.byte(UInt8(ascii: "}"))
            } else if part.binary {
                try writer.reserve(64)
                writer.json.raw(",\"parameters\":{\"binary_data_size\":")
                writer.json.integer(tensor.byteCount)
                writer.json.raw("}}")
            } else {
                try writer.reserve(16)
                writer.json.raw(",\"data\":")
                try writeData(tensor, into: &writer)
                writer.json.byte(UInt8(ascii: "}"))
            }
        }
        try writer.reserve(8)
        writer.json.raw("]}")
        try writer.check()
        var buffer = writer.json.buffer
        var headers: HeaderFields = [:]
        if !parts.contains(where: \.binary) {
            headers.add("Content-Type", "application/json")
        } else {
            headers.add(inferenceHeaderContentLength, String(buffer.readableBytes))
            headers.add("Content-Type", "application/octet-stream")
            // The one copy of each binary output: from where the runtime left it into the response.
            for part in parts where part.binary { part.tensor.write(to: &buffer) }
        }
        return KernelResponse(status: 200, headers: headers, body: .buffer(buffer))
    }

    /// A `JSONWriter` kept within `limit` bytes: callers `reserve` the most the next piece can take before writing
    /// it (so the buffer never reaches what a `ByteBuffer` cannot hold), and `check` the exact size when done.
    struct BoundedJSONWriter {
        var json = JSONWriter(buffer: ByteBuffer())
        let limit: Int
        let modelName: String
        /// Whether some output is written as JSON text: then asking for binary data is the way out.
        let hasJSONData: Bool

        init(limit: Int, modelName: String, hasJSONData: Bool) {
            self.limit = limit
            self.modelName = modelName
            self.hasJSONData = hasJSONData
        }

        private var tooLarge: KernelHTTPError {
            let hint = hasJSONData ? ": request the outputs as binary data (\"binary_data_output\": true)" : ""
            return KernelHTTPError(500, "the JSON part of the response of model '\(modelName)' would be more than the \(limit) bytes left for it\(hint)")
        }

        /// Throws a 500 when the text is already past `limit`, or when `count` more bytes would not fit a buffer.
        @inline(__always)
        func reserve(_ count: Int) throws {
            let written = json.buffer.writerIndex
            guard written <= limit, let end = TensorSize.sum(written, count), end <= TensorSize.bufferLimit else { throw tooLarge }
        }

        /// Throws a 500 when the text is past `limit`.
        func check() throws {
            guard json.buffer.writerIndex <= limit else { throw tooLarge }
        }

        /// A JSON string: escaped, it takes at most six bytes per byte of `text`, plus the quotes.
        mutating func string(_ text: String) throws {
            try reserve(TensorSize.product(text.utf8.count, 6).flatMap { TensorSize.sum($0, 2) } ?? Int.max)
            json.string(text)
        }
    }

    /// The elements of `tensor` as a flat JSON array, formatted straight from its bytes; room is checked before
    /// each element.
    static func writeData(_ tensor: Tensor, into bounded: inout BoundedJSONWriter) throws {
        bounded.json.byte(UInt8(ascii: "["))
        if tensor.dataType == .bytes {
            try writeStrings(tensor, into: &bounded)
            try bounded.reserve(1)
            bounded.json.byte(UInt8(ascii: "]"))
            return
        }
        let count = tensor.elementCount
        // Room for every element at once when the whole array surely fits; otherwise element by element.
        let end = TensorSize.product(count, maximumElementText).flatMap { TensorSize.sum(bounded.json.buffer.writerIndex, $0 + 1) }
        let checkEach = end.map { $0 > bounded.limit } ?? true
        if !checkEach, let end { try bounded.reserve(end - bounded.json.buffer.writerIndex) }
        try tensor.withUnsafeBytes { raw in
            for index in 0..<count {
                if checkEach { try bounded.reserve(maximumElementText) }
                if index > 0 { bounded.json.byte(UInt8(ascii: ",")) }
                switch tensor.dataType {
                case .fp32: bounded.json.float(raw.loadUnaligned(fromByteOffset: index * 4, as: Float.self))
                case .fp64: bounded.json.double(raw.loadUnaligned(fromByteOffset: index * 8, as: Double.self))
                case .fp16:
                    let half = Float16(bitPattern: raw.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self))
                    if half.isFinite { bounded.json.buffer.writeString(half.description) } else { bounded.json.float(Float(half)) }
                case .bf16:
                    let bits = UInt32(raw.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self)) << 16
                    bounded.json.float(Float(bitPattern: bits))
                case .bool: bounded.json.raw(raw[index] != 0 ? "true" : "false")
                case .uint8: bounded.json.integer(raw[index])
                case .int8: bounded.json.integer(Int8(bitPattern: raw[index]))
                case .uint16: bounded.json.integer(raw.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self))
                case .int16: bounded.json.integer(raw.loadUnaligned(fromByteOffset: index * 2, as: Int16.self))
                case .uint32: bounded.json.integer(raw.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self))
                case .int32: bounded.json.integer(raw.loadUnaligned(fromByteOffset: index * 4, as: Int32.self))
                case .uint64: bounded.json.integer(raw.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self))
                case .int64: bounded.json.integer(raw.loadUnaligned(fromByteOffset: index * 8, as: Int64.self))
                case .bytes: break
                }
            }
        }
        try bounded.reserve(1)
        bounded.json.byte(UInt8(ascii: "]"))
    }

    /// A BYTES tensor's elements as JSON strings, escaped byte by byte (as Triton writes them: the bytes as they are,
    /// with `"`, `\\` and control characters escaped; an embedded NUL is `\\u0000`).
    static func writeStrings(_ tensor: Tensor, into bounded: inout BoundedJSONWriter) throws {
        try tensor.withUnsafeBytes { raw in
            for (index, range) in BytesElements.ranges(raw).enumerated() {
                // An escaped byte takes at most six bytes; the quotes and comma three.
                try bounded.reserve(TensorSize.product(range.count, 6).flatMap { TensorSize.sum($0, 3) } ?? Int.max)
                if index > 0 { bounded.json.byte(UInt8(ascii: ",")) }
                JSONWriter.writeQuoted(bytes: UnsafeRawBufferPointer(rebasing: raw[range]), into: &bounded.json.buffer)
            }
        }
    }
}
