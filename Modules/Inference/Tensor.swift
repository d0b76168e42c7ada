import NIOCore

/// A tensor element type, named as the Open Inference Protocol names it (`FP32`, `INT64`, ...).
public enum TensorDataType: String, Sendable, CaseIterable {
    case bool = "BOOL"
    case uint8 = "UINT8"
    case uint16 = "UINT16"
    case uint32 = "UINT32"
    case uint64 = "UINT64"
    case int8 = "INT8"
    case int16 = "INT16"
    case int32 = "INT32"
    case int64 = "INT64"
    case fp16 = "FP16"
    case fp32 = "FP32"
    case fp64 = "FP64"
    /// bfloat16: the upper half of an FP32 (ONNX element type 16). Binary data only, as in Triton.
    case bf16 = "BF16"
    /// Strings of bytes (ONNX `string`), each element held as Triton serialises it: a 4-byte little-endian length,
    /// then that many bytes.
    case bytes = "BYTES"

    /// Bytes per element (BOOL is one byte, as in ONNX and Triton's binary format). For BYTES, the least an element
    /// takes: its 4-byte length (an empty string), so that sizes computed from a shape are lower bounds.
    public var byteWidth: Int {
        switch self {
        case .bool, .uint8, .int8: return 1
        case .uint16, .int16, .fp16, .bf16: return 2
        case .uint32, .int32, .fp32, .bytes: return 4
        case .uint64, .int64, .fp64: return 8
        }
    }

    /// Whether every element takes `byteWidth` bytes (all but BYTES).
    public var hasFixedWidth: Bool { self != .bytes }

    /// Whether the JSON form of the protocol can carry the elements: Triton refuses FP16 and BF16 as JSON `data`.
    public var hasJSONForm: Bool { self != .fp16 && self != .bf16 }

    /// The `ONNXTensorElementDataType` value.
    var onnxElementType: Int32 {
        switch self {
        case .fp32: return 1
        case .uint8: return 2
        case .int8: return 3
        case .uint16: return 4
        case .int16: return 5
        case .int32: return 6
        case .int64: return 7
        case .bool: return 9
        case .fp16: return 10
        case .fp64: return 11
        case .uint32: return 12
        case .uint64: return 13
        case .bytes: return 8
        case .bf16: return 16
        }
    }

    /// The type of an `ONNXTensorElementDataType`, or nil for those the protocol cannot carry (strings, complex).
    init?(onnxElementType: Int32) {
        guard let found = TensorDataType.allCases.first(where: { $0.onnxElementType == onnxElementType }) else {
            return nil
        }
        self = found
    }
}

/// A model input or output as the model declares it: `-1` marks a dimension of any size.
public struct TensorSpec: Sendable, Equatable {
    public var name: String
    public var dataType: TensorDataType
    public var shape: [Int64]
    /// Set when the configuration serves the tensor with another shape than the model's (`reshape`): `shape` is
    /// then the served one, and a request's shape must also map onto the model's.
    public var reshape: TensorReshape? = nil

    public init(name: String, dataType: TensorDataType, shape: [Int64]) {
        self.name = name
        self.dataType = dataType
        self.shape = shape
    }

    /// Whether a concrete `shape` fits this declaration.
    public func accepts(_ shape: [Int64]) -> Bool {
        guard shape.count == self.shape.count else { return false }
        for (declared, given) in zip(self.shape, shape) where declared >= 0 && declared != given { return false }
        if let reshape, reshape.toModel(shape) == nil { return false }
        return true
    }

    /// `[-1, 64]`, as written in error messages.
    public var shapeText: String { "[" + shape.map(String.init).joined(separator: ",") + "]" }
}

/// A tensor: element type, concrete shape and the elements in row-major order, native byte order (BYTES: Triton's
/// serialisation, see `TensorDataType.bytes`).
///
/// The elements are held without copying where they already are: a slice of the request body (binary inputs), the
/// buffer the JSON decoder wrote, or ONNX Runtime's own output memory (`TensorMemory`). Slicing rows (`rowSlice`) is
/// a view too; `bytes` is a copy, for tests and tools.
public struct Tensor: Sendable, Equatable {
    public var dataType: TensorDataType
    public var shape: [Int64]
    var storage: Storage

    /// Where the elements are.
    enum Storage: Sendable {
        /// The readable bytes of a buffer.
        case buffer(ByteBuffer)
        /// `count` bytes at `offset` of memory another owner keeps alive.
        case memory(TensorMemory, offset: Int, count: Int)
    }

    public init(dataType: TensorDataType, shape: [Int64], bytes: [UInt8]) {
        self.init(dataType: dataType, shape: shape, buffer: ByteBuffer(bytes: bytes))
    }

    /// A tensor whose elements are the readable bytes of `buffer` (a slice of a request body is not copied).
    public init(dataType: TensorDataType, shape: [Int64], buffer: ByteBuffer) {
        self.dataType = dataType
        self.shape = shape
        self.storage = .buffer(buffer)
    }

    init(dataType: TensorDataType, shape: [Int64], memory: TensorMemory, offset: Int = 0, count: Int? = nil) {
        self.dataType = dataType
        self.shape = shape
        self.storage = .memory(memory, offset: offset, count: count ?? memory.count)
    }

    /// A tensor of `values` (FP32).
    public init(float32 values: [Float], shape: [Int64]) {
        self.init(dataType: .fp32, shape: shape, bytes: values.withUnsafeBytes { Array($0) })
    }

    /// A BYTES tensor of `elements`, serialised as Triton does.
    public init(strings elements: [[UInt8]], shape: [Int64]) {
        var buffer = ByteBuffer()
        for element in elements {
            buffer.writeInteger(UInt32(element.count), endianness: .little)
            buffer.writeBytes(element)
        }
        self.init(dataType: .bytes, shape: shape, buffer: buffer)
    }

    /// A copy of the elements' bytes (tests and tools; the serving path reads them in place).
    public var bytes: [UInt8] {
        get { withUnsafeBytes { Array($0) } }
        set { storage = .buffer(ByteBuffer(bytes: newValue)) }
    }

    /// The number of bytes the elements take.
    public var byteCount: Int {
        switch storage {
        case .buffer(let buffer): return buffer.readableBytes
        case .memory(_, _, let count): return count
        }
    }

    /// Calls `body` with the elements' bytes, where they are.
    public func withUnsafeBytes<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) rethrows -> Result {
        switch storage {
        case .buffer(let buffer):
            return try buffer.withUnsafeReadableBytes(body)
        case .memory(let memory, let offset, let count):
            return try withExtendedLifetime(memory) {
                try body(UnsafeRawBufferPointer(start: count == 0 ? nil : memory.base + offset, count: count))
            }
        }
    }

    /// Appends the elements' bytes to `buffer` (one copy, from where they are).
    public func write(to buffer: inout ByteBuffer) {
        switch storage {
        case .buffer(let source): buffer.writeImmutableBuffer(source)
        case .memory: withUnsafeBytes { _ = buffer.writeBytes($0) }
        }
    }

    /// `count` bytes from `offset` as a tensor of `shape`, without copying.
    func slice(byteOffset offset: Int, count: Int, shape: [Int64]) -> Tensor {
        var result = self
        result.shape = shape
        switch storage {
        case .buffer(let buffer):
            result.storage = .buffer(buffer.getSlice(at: buffer.readerIndex + offset, length: count)!)
        case .memory(let memory, let start, _):
            result.storage = .memory(memory, offset: start + offset, count: count)
        }
        return result
    }

    public static func == (a: Tensor, b: Tensor) -> Bool {
        guard a.dataType == b.dataType, a.shape == b.shape, a.byteCount == b.byteCount else { return false }
        return a.withUnsafeBytes { x in b.withUnsafeBytes { y in x.elementsEqual(y) } }
    }

    /// The number of elements the shape describes, or nil when a dimension is negative or the product overflows
    /// (`TensorSize.elementCount`: 0 when any dimension is 0).
    public static func elementCount(_ shape: [Int64]) -> Int? { TensorSize.elementCount(shape) }

    /// The elements of `shape`, 0 when the shape is invalid (a tensor that holds its bytes has a valid shape).
    public var elementCount: Int { TensorSize.elementCount(shape) ?? 0 }

    /// Whether the bytes hold exactly the elements `shape` describes (BYTES: that many well-formed elements).
    public var isConsistent: Bool {
        guard dataType.hasFixedWidth else {
            guard let count = TensorSize.elementCount(shape) else { return false }
            return withUnsafeBytes { BytesElements.validate($0, count: count) == nil }
        }
        return TensorSize.byteCount(shape, dataType) == byteCount
    }

    /// The elements as FP32 values (tests and tools).
    public var float32Values: [Float] {
        precondition(dataType == .fp32)
        return withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    /// The elements of a BYTES tensor (tests and tools).
    public var stringElements: [[UInt8]] {
        precondition(dataType == .bytes)
        return withUnsafeBytes { raw in BytesElements.ranges(raw).map { Array(raw[$0]) } }
    }

    /// The rows along dimension 0 (1 for a scalar; a negative dimension, which no decoded tensor has, counts 0).
    public var rows: Int { shape.first.map { Int(max(0, $0)) } ?? 1 }

    /// Bytes of one row along dimension 0, or nil when the size overflows or a dimension is negative, or the
    /// elements have no fixed width (BYTES rows are found by walking the elements: `BytesElements`).
    public var rowByteCount: Int? {
        guard dataType.hasFixedWidth else { return nil }
        return TensorSize.byteCount(Array(shape.dropFirst()), dataType)
    }
}

/// Memory that holds a tensor's elements for as long as any tensor refers to it: an ONNX Runtime output, released
/// with the last tensor (rows of one batch's output share it).
final class TensorMemory: @unchecked Sendable {
    let base: UnsafeRawPointer
    let count: Int
    private let release: @Sendable () -> Void

    /// `release` runs once, when the last tensor that refers to the memory is gone (on whatever thread that is).
    init(base: UnsafeRawPointer, count: Int, release: @escaping @Sendable () -> Void) {
        self.base = base
        self.count = count
        self.release = release
    }

    deinit { release() }
}
