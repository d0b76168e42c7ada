#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import COCRVisionAPI
import KernelCore
import NIOConcurrencyHelpers

/// The vision shim (libKernelOCRVision.so: OpenCV and Clipper behind Sources/COCRVisionAPI/COCRVision.h), opened with
/// dlopen once per process, and its functions.
///
/// OpenCV's imgcodecs brings about 135 shared libraries with it, so the kernel does not link the shim: only a
/// configuration with pipelines opens it (`InferenceModule.decode`, which makes a library that cannot be opened a
/// configuration error), as ONNX Runtime is opened (ONNXRuntimeAPI.swift). The first library opened stays for the
/// life of the process (two OpenCVs cannot share one), whatever a reloaded configuration names later. Its function
/// pointers are immutable after `init`, and the shim's functions are safe to call from any thread.
public final class OCRVisionLibrary: @unchecked Sendable {
    /// The library's file name, as SwiftPM builds it and `scripts/install.sh` installs it.
    public static let fileName = "libKernelOCRVision.so"

    /// The path the library was opened from.
    public let path: String

    let setThreads: OCRVisionFunctions.SetThreads
    let probe: OCRVisionFunctions.Probe
    let decode: OCRVisionFunctions.Decode
    let imageFree: OCRVisionFunctions.ImageFree
    let imageWidth: OCRVisionFunctions.ImageWidth
    let imageHeight: OCRVisionFunctions.ImageHeight
    let imageCopyPixels: OCRVisionFunctions.ImageCopyPixels
    let imageFromPixels: OCRVisionFunctions.ImageFromPixels
    let prepare: OCRVisionFunctions.Prepare
    let detInputSize: OCRVisionFunctions.DetInputSize
    let detPreprocess: OCRVisionFunctions.DetPreprocess
    let dbPostprocess: OCRVisionFunctions.DbPostprocess
    let crop: OCRVisionFunctions.Crop
    let rotated180: OCRVisionFunctions.Rotated180
    let resizeNormalize: OCRVisionFunctions.ResizeNormalize

    private static let opened = NIOLockedValueBox<OCRVisionLibrary?>(nil)

    /// The process's library: the one already opened, else the first of `candidates(...)` that opens.
    public static func open(configured: String?, environment: [String: String]) throws -> OCRVisionLibrary {
        try opened.withLockedValue { current in
            if let current { return current }
            let library = try OCRVisionLibrary(candidates: candidates(configured: configured, environment: environment,
                                                                      executableDirectory: executableDirectory()))
            current = library
            return library
        }
    }

    /// The process's library for a pipeline step: opened at configuration time, so a failure here is the kernel's
    /// (500), never the client's.
    static func forSteps() throws -> OCRVisionLibrary {
        do {
            return try open(configured: nil, environment: ProcessEnvironment.all())
        } catch {
            throw KernelHTTPError(500, "\(error)")
        }
    }

    /// Where to look, in order: `inference.vision_library` when configured, else `KERNEL_OCR_VISION_LIBRARY`, else
    /// next to the executable (the build directory), else `<executable's directory>/../lib/kernel/` (the install
    /// layout of scripts/install.sh).
    static func candidates(configured: String?, environment: [String: String], executableDirectory: String?) -> [String] {
        if let configured, !configured.isEmpty { return [configured] }
        if let fromEnvironment = environment["KERNEL_OCR_VISION_LIBRARY"], !fromEnvironment.isEmpty { return [fromEnvironment] }
        guard let directory = executableDirectory else { return [fileName] }
        return [directory + "/" + fileName, directory + "/../lib/kernel/" + fileName]
    }

    /// The directory of the running executable (/proc/self/exe), nil when it cannot be read.
    static func executableDirectory() -> String? {
        #if os(Linux)
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else { return nil }
        let path = String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        #else
        guard let path = CommandLine.arguments.first, path.contains("/") else { return nil }
        #endif
        guard let slash = path.lastIndex(of: "/") else { return nil }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// Opens the first of `candidates` that loads (`open` keeps one per process; tests try others directly).
    init(candidates: [String]) throws {
        var failures: [String] = []
        var opened: (String, UnsafeMutableRawPointer)?
        for candidate in candidates {
            if let handle = dlopen(candidate, RTLD_NOW | RTLD_LOCAL) {
                opened = (candidate, handle)
                break
            }
            failures.append("\(candidate): " + (dlerror().map { String(cString: $0) } ?? "unknown error"))
        }
        guard let (path, handle) = opened else {
            throw OCRVisionLibraryError("cannot open the OCR vision library \(OCRVisionLibrary.fileName) that pipelines "
                + "need (set inference.vision_library or KERNEL_OCR_VISION_LIBRARY); tried "
                + failures.joined(separator: "; "))
        }
        var missing: [String] = []
        func symbol<F>(_ name: String, as type: F.Type) -> F? {
            guard let pointer = dlsym(handle, name) else { missing.append(name); return nil }
            return unsafeBitCast(pointer, to: type)
        }
        let setThreads = symbol("cocr_set_threads", as: OCRVisionFunctions.SetThreads.self)
        let probe = symbol("cocr_probe", as: OCRVisionFunctions.Probe.self)
        let decode = symbol("cocr_decode", as: OCRVisionFunctions.Decode.self)
        let imageFree = symbol("cocr_image_free", as: OCRVisionFunctions.ImageFree.self)
        let imageWidth = symbol("cocr_image_width", as: OCRVisionFunctions.ImageWidth.self)
        let imageHeight = symbol("cocr_image_height", as: OCRVisionFunctions.ImageHeight.self)
        let imageCopyPixels = symbol("cocr_image_copy_pixels", as: OCRVisionFunctions.ImageCopyPixels.self)
        let imageFromPixels = symbol("cocr_image_from_pixels", as: OCRVisionFunctions.ImageFromPixels.self)
        let prepare = symbol("cocr_prepare", as: OCRVisionFunctions.Prepare.self)
        let detInputSize = symbol("cocr_det_input_size", as: OCRVisionFunctions.DetInputSize.self)
        let detPreprocess = symbol("cocr_det_preprocess", as: OCRVisionFunctions.DetPreprocess.self)
        let dbPostprocess = symbol("cocr_db_postprocess", as: OCRVisionFunctions.DbPostprocess.self)
        let crop = symbol("cocr_crop", as: OCRVisionFunctions.Crop.self)
        let rotated180 = symbol("cocr_rotated180", as: OCRVisionFunctions.Rotated180.self)
        let resizeNormalize = symbol("cocr_resize_normalize", as: OCRVisionFunctions.ResizeNormalize.self)
        guard missing.isEmpty, let setThreads, let probe, let decode, let imageFree, let imageWidth, let imageHeight,
              let imageCopyPixels, let imageFromPixels, let prepare, let detInputSize, let detPreprocess,
              let dbPostprocess, let crop, let rotated180, let resizeNormalize else {
            dlclose(handle)
            throw OCRVisionLibraryError("\(path) is not the OCR vision library (no \(missing.joined(separator: ", ")))")
        }
        self.path = path
        self.setThreads = setThreads
        self.probe = probe
        self.decode = decode
        self.imageFree = imageFree
        self.imageWidth = imageWidth
        self.imageHeight = imageHeight
        self.imageCopyPixels = imageCopyPixels
        self.imageFromPixels = imageFromPixels
        self.prepare = prepare
        self.detInputSize = detInputSize
        self.detPreprocess = detPreprocess
        self.dbPostprocess = dbPostprocess
        self.crop = crop
        self.rotated180 = rotated180
        self.resizeNormalize = resizeNormalize
        // OpenCV's own parallel loops stay on the calling thread: the pipeline's thread pool is the parallelism.
        setThreads(1)
    }
}

/// The shim's functions as Swift sees them (the header's `cocr_image *` is an OpaquePointer).
enum OCRVisionFunctions {
    typealias Image = OpaquePointer
    typealias SetThreads = @convention(c) (Int32) -> Void
    typealias Probe = @convention(c) (UnsafePointer<UInt8>?, Int, UnsafeMutablePointer<cocr_format>?, UnsafeMutablePointer<Int64>?, UnsafeMutablePointer<Int64>?) -> cocr_status
    typealias Decode = @convention(c) (UnsafePointer<UInt8>?, Int, Int64, UnsafeMutablePointer<Image?>?) -> cocr_status
    typealias ImageFree = @convention(c) (Image?) -> Void
    typealias ImageWidth = @convention(c) (Image?) -> Int32
    typealias ImageHeight = @convention(c) (Image?) -> Int32
    typealias ImageCopyPixels = @convention(c) (Image?, UnsafeMutablePointer<UInt8>?) -> Void
    typealias ImageFromPixels = @convention(c) (UnsafePointer<UInt8>?, Int32, Int32) -> Image?
    typealias Prepare = @convention(c) (Image?, Int32, Int32, Int32, Double, Int64, UnsafeMutablePointer<Image?>?, UnsafeMutablePointer<cocr_geometry>?) -> cocr_status
    typealias DetInputSize = @convention(c) (Int32, Int32, Int32, Int32, UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<Int32>?) -> Int32
    typealias DetPreprocess = @convention(c) (Image?, Int32, Int32, UnsafePointer<Double>?, UnsafePointer<Double>?, UnsafeMutablePointer<Float>?) -> cocr_status
    typealias DbPostprocess = @convention(c) (UnsafePointer<Float>?, Int32, Int32, Int32, Int32, UnsafePointer<cocr_db_params>?, UnsafeMutablePointer<Float>?, Int32) -> Int32
    typealias Crop = @convention(c) (Image?, UnsafePointer<Float>?) -> Image?
    typealias Rotated180 = @convention(c) (Image?) -> Image?
    typealias ResizeNormalize = @convention(c) (Image?, Int32, Int32, UnsafeMutablePointer<Float>?) -> cocr_status
}

/// The vision library could not be opened: the paths tried and dlerror()'s words.
public struct OCRVisionLibraryError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
