import KernelCore
import NIOCore

/// Reads an infer request body in one pass over its bytes, checking it against the model as it goes.
///
/// The JSON object is pulled member by member (`JSONReader.Cursor`); the small members (`id`, `parameters`, an
/// input's `name`, `datatype`, `shape`, `outputs`) are parsed as values, but tensor `data` is never built as a
/// tree: each element is converted from its text straight into the tensor's buffer, whose size the model's
/// signature and the input's shape fix before the first element is read. `data` written before its input's
/// `datatype` or `shape` (JSON members have no order) is checked in passing and decoded once they are known.
/// Binary inputs are slices of the body, not copies.
struct InferenceRequestDecoder {
    var cursor: JSONReader.Cursor
    let body: ByteBuffer
    let jsonLength: Int
    let model: ModelSignature
    /// The regions tensors may name (`shared_memory_region`); nil: none.
    let sharedMemory: SharedMemoryRegistry?
    /// The binary part not yet claimed: its offset in the body's readable bytes.
    var binaryOffset: Int

    var decoded: [Tensor?]
    /// The request's `id`, once read (Triton names it in some messages).
    var requestID: String?
    /// The regions inputs were read from.
    var inputRegions: [SharedMemoryUse] = []
    var inputCount = 0
    var sawInputs = false

    init(json: UnsafeBufferPointer<UInt8>, body: ByteBuffer, model: ModelSignature, sharedMemory: SharedMemoryRegistry? = nil) {
        cursor = JSONReader.Cursor(bytes: json, index: 0)
        self.body = body
        self.sharedMemory = sharedMemory
        jsonLength = json.count
        self.model = model
        binaryOffset = json.count
        decoded = [Tensor?](repeating: nil, count: model.inputs.count)
    }

    static func decode(body: ByteBuffer, jsonLength: Int, model: ModelSignature,
                       sharedMemory: SharedMemoryRegistry? = nil) throws -> DecodedInferenceRequest {
        try body.withUnsafeReadableBytes { raw in
            let json = UnsafeBufferPointer(start: raw.baseAddress?.assumingMemoryBound(to: UInt8.self), count: jsonLength)
            var decoder = InferenceRequestDecoder(json: json, body: body, model: model, sharedMemory: sharedMemory)
            do {
                return try decoder.request()
            } catch let error as JSONParseError {
                throw KernelHTTPError(400, "failed to parse the request JSON: \(error)")
            }
        }
    }

    mutating func request() throws -> DecodedInferenceRequest {
        cursor.skipSpace()
        guard cursor.index < cursor.bytes.count, cursor.bytes[cursor.index] == UInt8(ascii: "{") else {
            // Not an object: a parse error, if any, is what the client hears of first.
            _ = try cursor.value(depth: 0)
            cursor.skipSpace()
            guard cursor.index == cursor.bytes.count else { throw cursor.error("unexpected data after the JSON value") }
            throw KernelHTTPError(400, "the inference request must be a JSON object")
        }
        var id: String?
        var binaryOutputDefault = false
        var priority: Int?
        var outputItems: JSONValue?
        try members(depth: 1) { decoder, key in
            switch key {
            case "id":
                let value = try decoder.cursor.value(depth: 1)
                guard let text = value.stringValue else { throw KernelHTTPError(400, "\"id\" must be a string, found \(value.kindName)") }
                id = text
                decoder.requestID = text
            case "parameters":
                let parameters = try decoder.cursor.value(depth: 1)
                guard parameters.isObject else { throw KernelHTTPError(400, "\"parameters\" must be an object") }
                if let flag = parameters["binary_data_output"] {
                    guard let value = flag.boolValue else { throw KernelHTTPError(400, "\"binary_data_output\" must be a boolean") }
                    binaryOutputDefault = value
                }
                if let level = parameters["priority"] { priority = try RequestPriority.parameter(level) }
                try Self.checkRequestParameters(parameters)
            case "inputs":
                try decoder.inputs()
            case "outputs":
                outputItems = try decoder.cursor.value(depth: 1)
            default:
                try decoder.cursor.skipValue(depth: 1)
            }
        }
        cursor.skipSpace()
        guard cursor.index == cursor.bytes.count else { throw cursor.error("unexpected data after the JSON value") }
        guard sawInputs else { throw KernelHTTPError(400, "the inference request has no \"inputs\" array") }

        let left = body.readableBytes - binaryOffset
        if left > 0 {
            throw KernelHTTPError(400, "unexpected additional input data for model '\(model.name)': the request has \(left) binary bytes that no input claims")
        }
        var inputs: [Tensor] = []
        inputs.reserveCapacity(decoded.count)
        for tensor in decoded {
            guard let tensor else {
                // Triton's words: what came, and every input that did not.
                let given = model.inputs.indices.filter { decoded[$0] != nil }.map { "'\(model.inputs[$0].name)'" }
                let missing = model.inputs.indices.filter { decoded[$0] == nil }.map { "'\(model.inputs[$0].name)'" }
                throw KernelHTTPError(400, "expected \(model.inputs.count) inputs but got \(inputCount) inputs for model '\(model.name)'. Got input(s) [\(given.joined(separator: ","))], but missing required input(s) [\(missing.joined(separator: ","))]. Please provide all required input(s).")
            }
            inputs.append(tensor)
        }
        if model.maxBatchSize > 0, inputs.count > 1 {
            let rows = inputs[0].shape.first
            if let other = inputs.indices.first(where: { inputs[$0].shape.first != rows }) {
                // Triton's words (the core's request normalisation), naming the first input that differs.
                throw KernelHTTPError(400, "input '\(model.inputs[other].name)' batch size does not match other inputs for '\(model.name)'")
            }
        }
        let outputs = try requestedOutputs(outputItems, binaryOutputDefault: binaryOutputDefault)
        try checkOutputRegions(outputs, rows: model.maxBatchSize > 0 ? inputs.first?.shape.first : nil)
        return DecodedInferenceRequest(id: id, inputs: inputs, outputs: outputs, binaryOutputDefault: binaryOutputDefault,
                                       priority: priority, inputRegions: inputRegions)
    }

    /// Triton's checks of the request's other `parameters` (its HTTP server's `ParseJsonTritonParams`): the
    /// sequence and timeout parameters have their types (the kernel serves no sequence batcher, and a request's
    /// `timeout` overrides nothing while `allow_timeout_override` is false, as the configuration reports), names
    /// starting `triton_` are reserved, and any other parameter is a string, a boolean or a number.
    static func checkRequestParameters(_ parameters: JSONValue) throws {
        guard case .object(let members) = parameters else { return }
        for (key, value) in members {
            switch key {
            case "priority", "binary_data_output":
                continue  // read above
            case "timeout":
                guard case .number(let number) = value, number.uint64 != nil else {
                    throw KernelHTTPError(400, "Unable to parse 'timeout': attempt to access JSON non-unsigned-integer as unsigned-integer")
                }
            case "sequence_id":
                if case .string = value { continue }
                guard case .number(let number) = value, number.uint64 != nil else {
                    throw KernelHTTPError(400, "Unable to parse 'sequence_id': attempt to access JSON non-string as string")
                }
            case "sequence_start", "sequence_end":
                guard value.boolValue != nil else {
                    throw KernelHTTPError(400, "Unable to parse '\(key)': attempt to access JSON non-boolean as boolean")
                }
            case let name where name.hasPrefix("triton_"):
                throw KernelHTTPError(400, "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified.")
            default:
                switch value {
                case .string, .bool, .number: continue
                default:
                    throw KernelHTTPError(400, "parameter '\(key)' has invalid type. It should be either 'int', 'bool', or 'string'.")
                }
            }
        }
    }

    /// The members of the object whose `{` the cursor is past, at nesting `depth`: `visit` reads each one's value
    /// (the cursor is at it) the first time its name comes; a repeated member is skipped, so the first is the one
    /// read, as a lookup of the key would find it.
    mutating func members(depth: Int, _ visit: (inout InferenceRequestDecoder, String) throws -> Void) throws {
        cursor.index += 1
        cursor.skipSpace()
        if cursor.index < cursor.bytes.count, cursor.bytes[cursor.index] == UInt8(ascii: "}") {
            cursor.index += 1
            return
        }
        var seen = Members()
        repeat {
            let key = try memberName()
            if seen.first(key) { try visit(&self, key) } else { try cursor.skipValue(depth: depth) }
        } while try cursor.next(close: UInt8(ascii: "}"))
    }

    /// A member's name and its ':'.
    mutating func memberName() throws -> String {
        cursor.skipSpace()
        guard cursor.index < cursor.bytes.count, cursor.bytes[cursor.index] == UInt8(ascii: "\"") else {
            throw cursor.error("expected a member name")
        }
        let key = try cursor.string()
        try cursor.expect(UInt8(ascii: ":"), "expected ':'")
        return key
    }

    /// The `inputs` array, each input decoded as it is read.
    mutating func inputs() throws {
        cursor.skipSpace()
        guard cursor.index < cursor.bytes.count, cursor.bytes[cursor.index] == UInt8(ascii: "[") else {
            _ = try cursor.value(depth: 1)
            throw KernelHTTPError(400, "the inference request has no \"inputs\" array")
        }
        sawInputs = true
        cursor.index += 1
        cursor.skipSpace()
        if cursor.index < cursor.bytes.count, cursor.bytes[cursor.index] == UInt8(ascii: "]") { cursor.index += 1; return }
        repeat {
            inputCount += 1
            try input()
        } while try cursor.next(close: UInt8(ascii: "]"))
    }

    /// What an input object says about itself, gathered as its members come.
    struct InputHeader {
        var name: JSONValue?
        var datatype: JSONValue?
        var shape: Shape?
        var parameters: JSONValue?
        /// Where `data` starts in the document, when it came before the input could be checked.
        var deferredData: Int?
        var hasData = false
        /// The checked input, once name, datatype and shape are known and valid.
        var checked: CheckedInput?
    }

    /// An input checked against the model: where it goes and how large it is.
    struct CheckedInput {
        var name: String
        var position: Int
        var dataType: TensorDataType
        var shape: [Int64]
        var count: Int
        var byteCount: Int
    }

    mutating func input() throws {
        cursor.skipSpace()
        guard cursor.index < cursor.bytes.count, cursor.bytes[cursor.index] == UInt8(ascii: "{") else {
            _ = try cursor.value(depth: 2)
            throw KernelHTTPError(400, "each of \"inputs\" must be an object")
        }
        var header = InputHeader()
        try members(depth: 2) { decoder, key in
            switch key {
            case "name": header.name = try decoder.cursor.value(depth: 2)
            case "datatype": header.datatype = try decoder.cursor.value(depth: 2)
            case "shape": header.shape = try decoder.shape()
            case "parameters":
                let parameters = try decoder.cursor.value(depth: 2)
                guard parameters.isObject else { throw KernelHTTPError(400, "\"parameters\" of an input must be an object") }
                header.parameters = parameters
            case "data":
                header.hasData = true
                if header.name != nil, header.datatype != nil, header.shape != nil,
                   header.parameters?["binary_data_size"] == nil, header.parameters?["shared_memory_region"] == nil {
                    let checked = try decoder.check(header)
                    header.checked = checked
                    try decoder.decodeData(checked)
                } else {
                    header.deferredData = decoder.cursor.index
                    try decoder.cursor.skipValue(depth: 2)
                }
            default: try decoder.cursor.skipValue(depth: 2)
            }
        }
        // Exactly one of the three places a tensor's bytes can be, named as Triton names them.
        let binarySize = header.parameters?["binary_data_size"]
        let inRegion = header.parameters?["shared_memory_region"] != nil
        let placeCount = (header.hasData ? 1 : 0) + (binarySize != nil ? 1 : 0) + (inRegion ? 1 : 0)
        guard placeCount == 1 else {
            let places = [header.hasData ? "data" : nil, binarySize != nil ? "binary_data_size" : nil,
                          inRegion ? "shared_memory_region" : nil].compactMap { $0 }
            let found = places.isEmpty ? "no field is set" : "set " + places.map { "'\($0)'" }.joined(separator: " ")
            let name = header.name?.stringValue.map { " (input '\($0)')" } ?? ""
            throw KernelHTTPError(400, "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', 'shared_memory_region' in 'parameters'. But \(found)\(name)")
        }
        let region = try SharedMemoryTensor.from(header.parameters, registry: sharedMemory)
        let checked = try header.checked ?? check(header)
        if let sizeValue = binarySize {
            guard case .number(let number) = sizeValue, let size = number.int64, size >= 0 else {
                throw KernelHTTPError(400, "input '\(checked.name)': binary_data_size must be a non-negative integer")
            }
            try binaryInput(checked, size: size)
        } else if let region {
            try sharedMemoryInput(checked, region)
        } else if header.checked == nil {
            guard let start = header.deferredData else { throw KernelHTTPError(400, "input '\(checked.name)' has no \"data\"") }
            let end = cursor.index
            cursor.index = start
            try decodeData(checked)
            cursor.index = end
        }
    }

    /// The checks of an input's name, datatype and shape against the model, in the order Triton makes them.
    func check(_ header: InputHeader) throws -> CheckedInput {
        guard let name = header.name?.stringValue else { throw KernelHTTPError(400, "an input has no \"name\" string") }
        guard let position = model.inputs.firstIndex(where: { $0.name == name }) else {
            throw KernelHTTPError(400, "unexpected inference input '\(name)' for model '\(model.name)'")
        }
        guard decoded[position] == nil else {
            throw KernelHTTPError(400, "input '\(name)' already exists in request")
        }
        let spec = model.inputs[position]
        guard let typeName = header.datatype?.stringValue else {
            throw KernelHTTPError(400, "input '\(name)' has no \"datatype\" string")
        }
        guard let dataType = TensorDataType(rawValue: typeName) else {
            throw KernelHTTPError(400, "input '\(name)' has an unsupported datatype '\(typeName)'")
        }
        guard dataType == spec.dataType else {
            throw KernelHTTPError(400, "inference input '\(name)' data-type is '\(typeName)', but model '\(model.name)' expects '\(spec.dataType.rawValue)'")
        }
        let shape: [Int64]
        switch header.shape {
        case nil, .notAnArray:
            throw KernelHTTPError(400, "input '\(name)' has no \"shape\" array")
        case .invalid:
            throw KernelHTTPError(400, "input '\(name)' has an invalid shape: dimensions must be non-negative integers")
        case .dimensions(let dimensions):
            shape = dimensions
        }
        guard spec.accepts(shape) else {
            // Triton's words, with its note for a batching model.
            let note = model.maxBatchSize > 0 ? " NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be prepended to each input shape. If you want to specify the full shape including the batch dim in your input dims config, try setting max_batch_size to zero. See the model configuration docs for more info on max_batch_size." : ""
            throw KernelHTTPError(400, "unexpected shape for input '\(name)' for model '\(model.name)'. Expected \(spec.shapeText), got \(InferenceCodec.shapeText(shape)).\(note)")
        }
        if model.maxBatchSize > 0, let rows = shape.first, rows > Int64(model.maxBatchSize) {
            throw KernelHTTPError(400, "inference request batch-size must be <= \(model.maxBatchSize) for '\(model.name)'")
        }
        // Sizes are checked before anything is computed from them: the element count, the byte size, and the
        // extent (non-empty dimensions), so that `[0, 2^62]` cannot overflow a row size or a batch split later.
        // BYTES sizes are the least the elements take (4 bytes each).
        guard let count = TensorSize.elementCount(shape), let byteCount = TensorSize.byteCount(shape, dataType),
              let extent = TensorSize.extentByteCount(shape, dataType), extent <= TensorSize.bufferLimit else {
            throw KernelHTTPError(400, "input '\(name)' has a shape too large: \(InferenceCodec.shapeText(shape)) of \(typeName) spans more than \(TensorSize.bufferLimit) bytes (counting each empty dimension as 1)")
        }
        return CheckedInput(name: name, position: position, dataType: dataType, shape: shape, count: count, byteCount: byteCount)
    }

    /// An input's `shape` member as read.
    enum Shape {
        case dimensions([Int64])
        /// An array with an item that is not an integer from 0 to 2^63-1.
        case invalid
        case notAnArray
    }

    /// Reads a `shape` value straight into its dimensions.
    mutating func shape() throws -> Shape {
        cursor.skipSpace()
        guard cursor.index < cursor.bytes.count, cursor.bytes[cursor.index] == UInt8(ascii: "[") else {
            try cursor.skipValue(depth: 2)
            return .notAnArray
        }
        cursor.index += 1
        var dimensions: [Int64] = []
        dimensions.reserveCapacity(4)
        var valid = true
        cursor.skipSpace()
        if cursor.index < cursor.bytes.count, cursor.bytes[cursor.index] == UInt8(ascii: "]") {
            cursor.index += 1
            return .dimensions(dimensions)
        }
        repeat {
            cursor.skipSpace()
            guard cursor.index < cursor.bytes.count else { throw cursor.error("unexpected end of JSON") }
            let byte = cursor.bytes[cursor.index]
            if valid, byte == UInt8(ascii: "-") || (byte &- 48) < 10, let value = try cursor.number().int64, value >= 0 {
                dimensions.append(value)
            } else {
                // Not a dimension: the rest is still read, so that a syntax error is reported as one.
                if cursor.index < cursor.bytes.count, cursor.bytes[cursor.index] != UInt8(ascii: ","),
                   cursor.bytes[cursor.index] != UInt8(ascii: "]") {
                    try cursor.skipValue(depth: 3)
                }
                valid = false
            }
        } while try cursor.next(close: UInt8(ascii: "]"))
        return valid ? .dimensions(dimensions) : .invalid
    }

    /// The members of an object already read (those the decoder knows): a repeated one is skipped.
    struct Members {
        private var bits: UInt8 = 0
        private static let names = ["id", "parameters", "inputs", "outputs", "name", "datatype", "shape", "data"]

        /// Whether `key` is met for the first time (always true for members the decoder does not read).
        mutating func first(_ key: String) -> Bool {
            guard let index = Members.names.firstIndex(of: key) else { return true }
            let bit = UInt8(1) << UInt8(index)
            defer { bits |= bit }
            return bits & bit == 0
        }
    }

    /// Takes the input's bytes from the binary part, as a slice of the body.
    mutating func binaryInput(_ input: CheckedInput, size: Int64) throws {
        let left = body.readableBytes - binaryOffset
        if input.dataType.hasFixedWidth {
            guard size == input.byteCount else {
                throw KernelHTTPError(400, "input '\(input.name)': binary_data_size \(size) does not match the shape \(InferenceCodec.shapeText(input.shape)) of \(input.dataType.rawValue) (\(input.byteCount) bytes)")
            }
        }
        guard size <= left else {
            throw KernelHTTPError(400, "input '\(input.name)': binary_data_size \(size) exceeds the \(left) binary bytes left in the request")
        }
        let slice = body.getSlice(at: body.readerIndex + binaryOffset, length: Int(size))!
        if !input.dataType.hasFixedWidth {
            let problem = slice.withUnsafeReadableBytes { BytesElements.validate($0, count: input.count) }
            if let problem { throw KernelHTTPError(400, problem.message(input: input.name, model: model.name)) }
        }
        binaryOffset += Int(size)
        decoded[input.position] = Tensor(dataType: input.dataType, shape: input.shape, buffer: slice)
    }

    /// Reads the input's bytes from the shared memory region its parameters name. As in Triton, a fixed-width
    /// tensor's `shared_memory_byte_size` is exactly its size, and BYTES elements must fill it.
    mutating func sharedMemoryInput(_ input: CheckedInput, _ part: SharedMemoryTensor) throws {
        if input.dataType.hasFixedWidth {
            guard part.byteSize == input.byteCount else {
                throw KernelHTTPError(400, "[request id: \(requestID.map { $0.isEmpty ? "<id_unknown>" : $0 } ?? "<id_unknown>")] input byte size mismatch for input '\(input.name)' for model '\(model.name)'. Expected \(input.byteCount), got \(part.byteSize)")
            }
        } else if part.byteSize > TensorSize.bufferLimit {
            throw KernelHTTPError(400, "input '\(input.name)': shared_memory_byte_size \(part.byteSize) is more than the \(TensorSize.bufferLimit) bytes a tensor can hold")
        }
        let bytes = try part.region.read(offset: part.offset, count: part.byteSize)
        if !input.dataType.hasFixedWidth {
            let problem = bytes.withUnsafeReadableBytes { BytesElements.validate($0, count: input.count) }
            if let problem { throw KernelHTTPError(400, problem.message(input: input.name, model: model.name)) }
        }
        decoded[input.position] = Tensor(dataType: input.dataType, shape: input.shape, buffer: bytes)
        inputRegions.append(part.use)
    }

    /// Decodes the `data` value at the cursor into the input's buffer.
    mutating func decodeData(_ input: CheckedInput) throws {
        guard input.dataType.hasJSONForm else {
            throw KernelHTTPError(400, "receiving \(input.dataType.rawValue) data via JSON is not supported. Please use the binary data format for input \(input.name)")
        }
        // Each JSON element takes at least two bytes of the document: a larger shape cannot be matched by its data,
        // and must not make us allocate for it.
        guard input.count <= jsonLength / 2 + 1 else {
            throw KernelHTTPError(400, "unexpected number of elements for input '\(input.name)': the shape \(InferenceCodec.shapeText(input.shape)) needs \(input.count), more than the request's \(jsonLength) bytes of JSON can hold")
        }
        var writer = ElementWriter(input: input)
        var buffer: ByteBuffer
        if input.dataType == .bytes {
            // Elements of any length: the buffer grows as strings come, from a guess of their size.
            writer.strings = ByteBufferAllocator().buffer(capacity: min(jsonLength, TensorSize.product(input.count, 8) ?? jsonLength))
            try elements(&writer, depth: 2)
            buffer = writer.strings
        } else {
            buffer = ByteBufferAllocator().buffer(capacity: input.byteCount)
            if input.byteCount > 0 {
                try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: input.byteCount) { raw in
                    writer.raw = raw
                    try elements(&writer, depth: 2)
                    return input.byteCount
                }
            } else {
                try elements(&writer, depth: 2)
            }
        }
        guard writer.written == input.count else {
            throw KernelHTTPError(400, "unexpected number of elements for input '\(input.name)': the shape \(InferenceCodec.shapeText(input.shape)) needs \(input.count), the data has \(writer.written)")
        }
        decoded[input.position] = Tensor(dataType: input.dataType, shape: input.shape, buffer: buffer)
    }

    /// Where decoded elements go: a fixed-width input's preallocated bytes, or a BYTES input's growing buffer.
    struct ElementWriter {
        let input: CheckedInput
        /// A BYTES input's serialisation.
        var strings = ByteBuffer()
        /// A fixed-width input's bytes (`input.byteCount`).
        var raw = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        /// Elements seen so far (past `input.count`, only counted).
        var written = 0
        init(input: CheckedInput) { self.input = input }
    }

    /// The elements of the value at the cursor, flat or nested arrays in row-major order, or one element.
    mutating func elements(_ writer: inout ElementWriter, depth: Int) throws {
        guard depth < JSONReader.maximumDepth else { throw cursor.error("nesting deeper than \(JSONReader.maximumDepth)") }
        cursor.skipSpace()
        guard cursor.index < cursor.bytes.count else { throw cursor.error("unexpected end of JSON") }
        guard cursor.bytes[cursor.index] == UInt8(ascii: "[") else { return try element(&writer, depth: depth) }
        cursor.index += 1
        cursor.skipSpace()
        if cursor.index < cursor.bytes.count, cursor.bytes[cursor.index] == UInt8(ascii: "]") { cursor.index += 1; return }
        let fp32 = writer.input.dataType == .fp32
        while true {
            cursor.skipSpace()
            guard cursor.index < cursor.bytes.count else { throw cursor.error("unexpected end of JSON") }
            let byte = cursor.bytes[cursor.index]
            if byte == UInt8(ascii: "[") {
                try elements(&writer, depth: depth + 1)
            } else if fp32, writer.written < writer.input.count, byte == UInt8(ascii: "-") || (byte &- 48) < 10 {
                // The common case, kept tight: FP32 numbers straight into place.
                let value = try cursor.float32()
                writer.raw.storeBytes(of: value, toByteOffset: writer.written &* 4, as: Float.self)
                writer.written += 1
            } else {
                try element(&writer, depth: depth + 1)
            }
            cursor.skipSpace()
            guard cursor.index < cursor.bytes.count else { throw cursor.error("unexpected end of JSON") }
            let separator = cursor.bytes[cursor.index]
            cursor.index += 1
            if separator == UInt8(ascii: ",") { continue }
            if separator == UInt8(ascii: "]") { return }
            cursor.index -= 1
            throw cursor.error("expected ',' or ']'")
        }
    }

    /// One element (not an array) at the cursor.
    mutating func element(_ writer: inout ElementWriter, depth: Int) throws {
        let input = writer.input
        let index = writer.written
        guard index < input.count else {
            // More elements than the shape: counted (not stored) so that the message says how many there are.
            try cursor.skipValue(depth: depth)
            writer.written += 1
            return
        }
        let byte = cursor.bytes[cursor.index]
        func bad(_ kind: String) -> KernelHTTPError {
            KernelHTTPError(400, "input '\(input.name)': element \(index) (\(kind)) is not a valid \(input.dataType.rawValue) value")
        }
        func kind(_ byte: UInt8) -> String {
            switch byte {
            case UInt8(ascii: "\""): return "a string"
            case UInt8(ascii: "{"): return "an object"
            case UInt8(ascii: "t"), UInt8(ascii: "f"): return "a boolean"
            case UInt8(ascii: "n"): return "null"
            default: return "a number"
            }
        }
        switch input.dataType {
        case .bytes:
            guard byte == UInt8(ascii: "\"") else { throw bad(kind(byte)) }
            switch try cursor.stringContent() {
            case .source(let range):
                writer.strings.writeInteger(UInt32(range.count), endianness: .little)
                writer.strings.writeBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(cursor.bytes)[range]))
            case .decoded(let bytes):
                writer.strings.writeInteger(UInt32(bytes.count), endianness: .little)
                writer.strings.writeBytes(bytes)
            }
        case .bool:
            if byte == UInt8(ascii: "t") { try cursor.literal("true"); writer.raw[index] = 1 }
            else if byte == UInt8(ascii: "f") { try cursor.literal("false"); writer.raw[index] = 0 }
            else { throw bad(kind(byte)) }
        default:
            guard kind(byte) == "a number" else { throw bad(kind(byte)) }
            let number = try cursor.number()
            guard InferenceCodec.store(number, as: input.dataType, into: writer.raw, at: index) else { throw bad("a number") }
        }
        writer.written += 1
    }

    /// Refuses, before the model runs, an output region smaller than an output whose size the model fixes (every
    /// dimension known, the batch dimension from the request's rows): Triton's words and status for it, which
    /// Triton gives once the run has wasted its time. Outputs of free dimensions are checked when written.
    func checkOutputRegions(_ outputs: [RequestedOutput], rows: Int64?) throws {
        for output in outputs {
            guard let region = output.sharedMemory, let spec = model.outputs.first(where: { $0.name == output.name }),
                  spec.dataType.hasFixedWidth else { continue }
            var shape = spec.shape
            if let rows, let first = shape.first, first < 0 { shape[0] = rows }
            guard shape.allSatisfy({ $0 >= 0 }), let bytes = TensorSize.byteCount(shape, spec.dataType), bytes > region.byteSize else { continue }
            throw KernelHTTPError(500, "shared memory size specified with the request for output '\(output.name)' (\(region.byteSize) bytes) should be at least \(bytes) bytes to hold the results")
        }
    }

    /// The requested outputs: each a model output, named once. Outputs that would go as JSON must have a JSON form.
    func requestedOutputs(_ outputItems: JSONValue?, binaryOutputDefault: Bool) throws -> [RequestedOutput] {
        var outputs: [RequestedOutput] = []
        if let outputItems {
            guard let items = outputItems.arrayValue else { throw KernelHTTPError(400, "\"outputs\" must be an array") }
            for item in items {
                guard let name = item["name"]?.stringValue else { throw KernelHTTPError(400, "a requested output has no \"name\" string") }
                guard model.outputs.contains(where: { $0.name == name }) else {
                    throw KernelHTTPError(400, "unexpected inference output '\(name)' for model '\(model.name)'")
                }
                // Each output is written once: a repeated name would repeat the tensor in the response (as Triton,
                // refused). `outputs` holds distinct model outputs only, so this scan is bounded by the model.
                guard !outputs.contains(where: { $0.name == name }) else {
                    throw KernelHTTPError(400, "output '\(name)' already exists in request")
                }
                var binaryFlag: Bool?
                if let flag = item["parameters"]?["binary_data"] {
                    guard let value = flag.boolValue else { throw KernelHTTPError(400, "output '\(name)': binary_data must be a boolean") }
                    binaryFlag = value
                }
                // An output written into a region is answered with its name, datatype and shape only.
                if item["parameters"]?["shared_memory_region"] != nil {
                    guard item["parameters"]?["classification"] == nil else {
                        throw KernelHTTPError(400, "Output can't set both 'shared_memory_region' and 'classification'")
                    }
                    guard binaryFlag != true else {
                        throw KernelHTTPError(400, "Output can't set both 'shared_memory_region' and 'binary_data'")
                    }
                }
                let region = try SharedMemoryTensor.from(item["parameters"], registry: sharedMemory)
                var classCount = 0
                if let count = item["parameters"]?["classification"] {
                    guard case .number(let number) = count, let value = number.int64, value >= 0 else {
                        throw KernelHTTPError(400, "output '\(name)': classification must be a non-negative integer")
                    }
                    // More classes than any output has elements is all of them.
                    classCount = Int(min(value, Int64(Int32.max)))
                    if classCount > 0, let spec = model.outputs.first(where: { $0.name == name }),
                       !OutputClassification.supports(spec.dataType) {
                        throw KernelHTTPError(400, "class result not available for output '\(name)' due to unsupported type '\(spec.dataType.rawValue)'")
                    }
                }
                outputs.append(RequestedOutput(name: name, binary: binaryFlag, classCount: classCount, sharedMemory: region))
            }
        }
        if outputs.isEmpty { outputs = model.outputs.map { RequestedOutput(name: $0.name) } }
        // As Triton, FP16 and BF16 go as binary data only; refused before the model runs rather than after.
        for output in outputs where !(output.binary ?? binaryOutputDefault) && output.classCount == 0 && output.sharedMemory == nil {
            if let spec = model.outputs.first(where: { $0.name == output.name }), !spec.dataType.hasJSONForm {
                throw KernelHTTPError(400, "sending \(spec.dataType.rawValue) data via JSON is not supported. Please use the binary data format for output \(output.name)")
            }
        }
        return outputs
    }
}
