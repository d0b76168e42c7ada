import COCRVisionAPI
import KernelCore

/// A decoded 8-bit BGR image held by the vision shim (an OpenCV matrix), freed with the object.
///
/// Used by one pipeline step at a time (steps run one after another for a request), so it needs no lock.
public final class OCRImage: @unchecked Sendable {
    let pointer: OpaquePointer
    /// The library that made the image, which frees it.
    let vision: OCRVisionLibrary

    init(_ pointer: OpaquePointer, _ vision: OCRVisionLibrary) {
        self.pointer = pointer
        self.vision = vision
    }

    deinit { vision.imageFree(pointer) }

    public var width: Int { Int(vision.imageWidth(pointer)) }
    public var height: Int { Int(vision.imageHeight(pointer)) }

    /// An image from BGR pixels, row-major (tests and tools).
    public convenience init?(bgr pixels: [UInt8], width: Int, height: Int, vision: OCRVisionLibrary) {
        guard width > 0, height > 0, pixels.count == width * height * 3,
              let made = pixels.withUnsafeBufferPointer({ vision.imageFromPixels($0.baseAddress, Int32(width), Int32(height)) })
        else { return nil }
        self.init(made, vision)
    }

    /// The BGR pixels, row-major.
    public var bgrPixels: [UInt8] {
        [UInt8](unsafeUninitializedCapacity: width * height * 3) { buffer, count in
            vision.imageCopyPixels(pointer, buffer.baseAddress)
            count = buffer.count
        }
    }
}

/// An image format and size read from its header bytes, without decoding.
public struct ImageHeader: Sendable, Equatable {
    public enum Format: String, Sendable { case jpeg, png, bmp, webp }
    public var format: Format
    public var width: Int64
    public var height: Int64
}

/// The vision shim's answers as the HTTP errors a client gets.
enum OCRVisionError {
    static func check(_ status: cocr_status, maxPixels: Int64, header: ImageHeader?) throws {
        switch status {
        case COCR_OK: return
        case COCR_NOT_AN_IMAGE:
            throw KernelHTTPError(400, "the body is not an image in a supported format (JPEG, PNG, BMP, WebP)")
        case COCR_EMPTY_IMAGE:
            throw KernelHTTPError(400, "the image has no pixels (width or height 0)")
        case COCR_TOO_MANY_PIXELS:
            let size = header.map { "\($0.width)x\($0.height)" } ?? "its size"
            throw KernelHTTPError(413, "the image is too large: \(size) pixels is more than max_pixels \(maxPixels)")
        case COCR_CORRUPT:
            throw KernelHTTPError(400, "the image cannot be decoded: its data is truncated or corrupt")
        default:
            throw KernelHTTPError(500, "the image could not be processed")
        }
    }
}

/// The vision shim's decoding steps, typed for Swift.
public enum OCRVision {
    /// Format and size from the header, nil when the bytes are not a supported image or the header is cut short.
    public static func probe(_ bytes: UnsafeRawBufferPointer, vision: OCRVisionLibrary) -> ImageHeader? {
        var format = COCR_FORMAT_UNKNOWN
        var width: Int64 = 0
        var height: Int64 = 0
        let status = vision.probe(bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count, &format, &width, &height)
        guard status == COCR_OK else { return nil }
        let named: ImageHeader.Format
        switch format {
        case COCR_FORMAT_JPEG: named = .jpeg
        case COCR_FORMAT_PNG: named = .png
        case COCR_FORMAT_BMP: named = .bmp
        case COCR_FORMAT_WEBP: named = .webp
        default: return nil
        }
        return ImageHeader(format: named, width: width, height: height)
    }

    /// Decodes after checking the header's size against `maxPixels` (413 before any pixel is allocated).
    public static func decode(_ bytes: UnsafeRawBufferPointer, maxPixels: Int64, vision: OCRVisionLibrary) throws -> OCRImage {
        guard !bytes.isEmpty else { throw KernelHTTPError(400, "the request has no image: the body is empty") }
        var image: OpaquePointer?
        let status = vision.decode(bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count, maxPixels, &image)
        try OCRVisionError.check(status, maxPixels: maxPixels, header: status == COCR_TOO_MANY_PIXELS ? probe(bytes, vision: vision) : nil)
        guard let image else { throw KernelHTTPError(500, "the image could not be decoded") }
        return OCRImage(image, vision)
    }
}
