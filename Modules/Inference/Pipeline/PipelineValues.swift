import KernelCore
import NIOCore

/// What a step makes and later steps read.
public enum PipelineValue: Sendable {
    case upload(ImageUpload)
    case image(PipelineImage)
    case tensors(TensorGroups)
    case boxes([OCRText.Quad])
    case crops([OCRImage])
    case texts([RecognizedText])
    case lines([OCRLine])
}

/// An image and how it relates to the uploaded one (rapidocr's op_record), to map boxes back.
public struct PipelineImage: Sendable {
    public var image: OCRImage
    /// The uploaded image's size.
    public var rawWidth: Int
    public var rawHeight: Int
    /// Uploaded pixels per pixel of `image` (rapidocr's ratio_w, ratio_h) and the rows added on top.
    public var ratioWidth = 1.0
    public var ratioHeight = 1.0
    public var padTop = 0
}

/// Model inputs (or outputs) as separate requests to the model's scheduler, each a batch of rows; `items` names the
/// item (crop, or 0 for the whole image) each row stands for, so results find their way back.
public struct TensorGroups: Sendable {
    public var groups: [[Tensor]]
    public var items: [[Int]]
    /// How many items there are (a crop list's length).
    public var itemCount: Int

    public init(groups: [[Tensor]], items: [[Int]], itemCount: Int) {
        self.groups = groups
        self.items = items
        self.itemCount = itemCount
    }
}

/// A recognised text and its score.
public struct RecognizedText: Sendable, Equatable {
    public var text: String
    public var score: Double
}

/// A line of the answer: its box on the uploaded image, its text and score.
public struct OCRLine: Sendable {
    public var box: OCRText.Quad
    public var text: String
    public var score: Double
}

/// Floats written into tensor bytes and read back (FP32 tensors are little-endian floats in memory).
enum FloatTensor {
    /// A tensor of `shape` whose floats `fill` writes.
    static func make(shape: [Int], _ fill: (UnsafeMutablePointer<Float>) throws -> Void) throws -> Tensor {
        let count = shape.reduce(1, *)
        var failure: Error?
        let bytes = [UInt8](unsafeUninitializedCapacity: count * 4) { buffer, initialized in
            UnsafeMutableRawPointer(buffer.baseAddress!).withMemoryRebound(to: Float.self, capacity: count) { floats in
                do { try fill(floats) } catch { failure = error }
            }
            initialized = count * 4
        }
        if let failure { throw failure }
        return Tensor(dataType: .fp32, shape: shape.map(Int64.init), bytes: bytes)
    }

    /// Calls `body` with the tensor's floats; 500 when it is not FP32 or its bytes do not fill its shape.
    static func read<T>(_ tensor: Tensor, _ body: (UnsafeBufferPointer<Float>) throws -> T) throws -> T {
        guard tensor.dataType == .fp32, tensor.bytes.count == tensor.elementCount * 4 else {
            throw KernelHTTPError(500, "a model step answered \(tensor.dataType.rawValue) \(InferenceCodec.shapeText(tensor.shape)), not the FP32 tensor expected")
        }
        return try tensor.bytes.withUnsafeBytes { raw in try raw.withMemoryRebound(to: Float.self) { try body($0) } }
    }
}
