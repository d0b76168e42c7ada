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

    /// Bytes per element (BOOL is one byte, as in ONNX and Triton's binary format).
    public var byteWidth: Int {
        switch self {
        case .bool, .uint8, .int8: return 1
        case .uint16, .int16, .fp16: return 2
        case .uint32, .int32, .fp32: return 4
        case .uint64, .int64, .fp64: return 8
        }
    }

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

    public init(name: String, dataType: TensorDataType, shape: [Int64]) {
        self.name = name
        self.dataType = dataType
        self.shape = shape
    }

    /// Whether a concrete `shape` fits this declaration.
    public func accepts(_ shape: [Int64]) -> Bool {
        guard shape.count == self.shape.count else { return false }
        for (declared, given) in zip(self.shape, shape) where declared >= 0 && declared != given { return false }
        return true
    }

    /// `[-1, 64]`, as written in error messages.
    public var shapeText: String { "[" + shape.map(String.init).joined(separator: ",") + "]" }
}

/// A dense tensor: element type, concrete shape and the elements in row-major order, native byte order.
public struct Tensor: Sendable, Equatable {
    public var dataType: TensorDataType
    public var shape: [Int64]
    public var bytes: [UInt8]

    public init(dataType: TensorDataType, shape: [Int64], bytes: [UInt8]) {
        self.dataType = dataType
        self.shape = shape
        self.bytes = bytes
    }

    /// A tensor of `values` (FP32).
    public init(float32 values: [Float], shape: [Int64]) {
        self.init(dataType: .fp32, shape: shape, bytes: values.withUnsafeBytes { Array($0) })
    }

    /// The number of elements the shape describes, or nil when a dimension is negative or the product overflows
    /// (`TensorSize.elementCount`: 0 when any dimension is 0).
    public static func elementCount(_ shape: [Int64]) -> Int? { TensorSize.elementCount(shape) }

    /// The elements of `shape`, 0 when the shape is invalid (a tensor that holds its bytes has a valid shape).
    public var elementCount: Int { TensorSize.elementCount(shape) ?? 0 }

    /// Whether `bytes` holds exactly the elements `shape` describes.
    public var isConsistent: Bool { TensorSize.byteCount(shape, dataType) == bytes.count }

    /// The elements as FP32 values (tests and tools).
    public var float32Values: [Float] {
        precondition(dataType == .fp32)
        return bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    /// The rows along dimension 0 (1 for a scalar; a negative dimension, which no decoded tensor has, counts 0).
    public var rows: Int { shape.first.map { Int(max(0, $0)) } ?? 1 }

    /// Bytes of one row along dimension 0, or nil when the size overflows or a dimension is negative.
    public var rowByteCount: Int? { TensorSize.byteCount(Array(shape.dropFirst()), dataType) }
}
