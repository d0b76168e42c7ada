#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOConcurrencyHelpers

/// An error reported by ONNX Runtime (its own message) or met while loading the library.
public struct ONNXRuntimeError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The few ONNX Runtime C API functions the kernel calls, taken from the `OrtApi` table.
///
/// No C header is used: each function type is declared here with `@convention(c)` and loaded from its slot in the
/// table. Slot numbers follow the order of `struct OrtApi` in the upstream `onnxruntime_c_api.h`; the table only
/// grows at its end, so a slot learnt for one API version stays valid in every later library. The highest slot
/// required is 164 (`CreateArenaCfgV2`, API version 8, ONNX Runtime 1.8), which is therefore the version asked for:
/// an older library answers `GetApi` with nothing, and the kernel says it is too old, instead of reading past its
/// table. The string element buffer (slot 252, API version 15) is taken only from a library that provides version 15.
struct ORTFunctions: Sendable {
    typealias Status = OpaquePointer?
    typealias GetErrorMessage = @convention(c) (OpaquePointer?) -> UnsafePointer<CChar>?
    typealias CreateEnv = @convention(c) (Int32, UnsafePointer<CChar>?, UnsafeMutablePointer<OpaquePointer?>?) -> Status
    typealias CreateSession = @convention(c) (OpaquePointer?, UnsafePointer<CChar>?, OpaquePointer?,
                                              UnsafeMutablePointer<OpaquePointer?>?) -> Status
    typealias Run = @convention(c) (OpaquePointer?, OpaquePointer?, UnsafePointer<UnsafePointer<CChar>?>?,
                                    UnsafePointer<OpaquePointer?>?, Int, UnsafePointer<UnsafePointer<CChar>?>?, Int,
                                    UnsafeMutablePointer<OpaquePointer?>?) -> Status
    typealias CreateSessionOptions = @convention(c) (UnsafeMutablePointer<OpaquePointer?>?) -> Status
    typealias SetGraphOptimizationLevel = @convention(c) (OpaquePointer?, Int32) -> Status
    typealias SetThreadCount = @convention(c) (OpaquePointer?, Int32) -> Status
    typealias SessionGetCount = @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int>?) -> Status
    typealias SessionGetTypeInfo = @convention(c) (OpaquePointer?, Int, UnsafeMutablePointer<OpaquePointer?>?) -> Status
    typealias SessionGetName = @convention(c) (OpaquePointer?, Int, OpaquePointer?,
                                               UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Status
    typealias CreateTensorWithData = @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int, UnsafePointer<Int64>?,
                                                     Int, Int32, UnsafeMutablePointer<OpaquePointer?>?) -> Status
    typealias GetTensorMutableData = @convention(c) (OpaquePointer?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Status
    typealias CastTypeInfoToTensorInfo = @convention(c) (OpaquePointer?, UnsafeMutablePointer<OpaquePointer?>?) -> Status
    typealias GetTensorElementType = @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int32>?) -> Status
    typealias GetDimensionsCount = @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int>?) -> Status
    typealias GetDimensions = @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int64>?, Int) -> Status
    typealias GetTensorTypeAndShape = @convention(c) (OpaquePointer?, UnsafeMutablePointer<OpaquePointer?>?) -> Status
    typealias CreateCpuMemoryInfo = @convention(c) (Int32, Int32, UnsafeMutablePointer<OpaquePointer?>?) -> Status
    typealias AllocatorFree = @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Status
    typealias GetAllocatorWithDefaultOptions = @convention(c) (UnsafeMutablePointer<OpaquePointer?>?) -> Status
    typealias Release = @convention(c) (OpaquePointer?) -> Void
    // String tensors (BYTES).
    typealias CreateTensor = @convention(c) (OpaquePointer?, UnsafePointer<Int64>?, Int, Int32,
                                             UnsafeMutablePointer<OpaquePointer?>?) -> Status
    typealias FillStringTensor = @convention(c) (OpaquePointer?, UnsafePointer<UnsafePointer<CChar>?>?, Int) -> Status
    typealias GetStringTensorDataLength = @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int>?) -> Status
    typealias GetStringTensorContent = @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int,
                                                       UnsafeMutablePointer<Int>?, Int) -> Status
    typealias GetResizedStringTensorElementBuffer = @convention(c) (OpaquePointer?, Int, Int,
                                                                    UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Status

    /// Version of the `OrtApi` table asked from `GetApi`.
    static let apiVersion: UInt32 = 8

    let getErrorMessage: GetErrorMessage          // 2
    let createEnv: CreateEnv                      // 3
    let createSession: CreateSession              // 7
    let run: Run                                  // 9
    let createSessionOptions: CreateSessionOptions // 10
    let setGraphOptimizationLevel: SetGraphOptimizationLevel // 23
    let setIntraOpNumThreads: SetThreadCount      // 24
    let setInterOpNumThreads: SetThreadCount      // 25
    let sessionGetInputCount: SessionGetCount     // 30
    let sessionGetOutputCount: SessionGetCount    // 31
    let sessionGetInputTypeInfo: SessionGetTypeInfo  // 33
    let sessionGetOutputTypeInfo: SessionGetTypeInfo // 34
    let sessionGetInputName: SessionGetName       // 36
    let sessionGetOutputName: SessionGetName      // 37
    let createTensorWithDataAsOrtValue: CreateTensorWithData // 49
    let getTensorMutableData: GetTensorMutableData // 51
    let castTypeInfoToTensorInfo: CastTypeInfoToTensorInfo // 55
    let getTensorElementType: GetTensorElementType // 60
    let getDimensionsCount: GetDimensionsCount    // 61
    let getDimensions: GetDimensions              // 62
    let getTensorTypeAndShape: GetTensorTypeAndShape // 65
    let createCpuMemoryInfo: CreateCpuMemoryInfo  // 69
    let allocatorFree: AllocatorFree              // 76
    let getAllocatorWithDefaultOptions: GetAllocatorWithDefaultOptions // 78
    let releaseEnv: Release                       // 92
    let releaseStatus: Release                    // 93
    let releaseMemoryInfo: Release                // 94
    let releaseSession: Release                   // 95
    let releaseValue: Release                     // 96
    let releaseTypeInfo: Release                  // 98
    let releaseTensorTypeAndShapeInfo: Release    // 99
    let releaseSessionOptions: Release            // 100
    // Model metadata (slots 111, 116, 118; see ORTMetadataFunctions below): what pipelines read from a model file,
    // such as the character list of a recognition model.
    let metadata: ORTMetadataFunctions

    // Memory and graph options of a session (`cpu_mem_arena`, `memory_pattern`, `arena_extend_strategy`): the arena
    // switches of OrtSessionOptions, session config entries, and a CPU arena with its own growth strategy registered
    // on the environment (CreateArenaCfgV2 is the newest, ORT 1.8).
    typealias SessionOptionsSwitch = @convention(c) (OpaquePointer?) -> Status
    typealias AddSessionConfigEntry = @convention(c) (OpaquePointer?, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Status
    typealias CreateAndRegisterAllocator = @convention(c) (OpaquePointer?, OpaquePointer?, OpaquePointer?) -> Status
    typealias CreateArenaCfgV2 = @convention(c) (UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<Int>?, Int,
                                                 UnsafeMutablePointer<OpaquePointer?>?) -> Status
    let enableMemPattern: SessionOptionsSwitch    // 16
    let disableMemPattern: SessionOptionsSwitch   // 17
    let enableCpuMemArena: SessionOptionsSwitch   // 18
    let disableCpuMemArena: SessionOptionsSwitch  // 19
    let addSessionConfigEntry: AddSessionConfigEntry // 130
    let createAndRegisterAllocator: CreateAndRegisterAllocator // 144
    let releaseArenaCfg: Release                  // 157
    let createArenaCfgV2: CreateArenaCfgV2        // 164
    // Run options, for the CPU arena's shrinkage at the end of each run (`arena_shrinkage`).
    typealias CreateRunOptions = @convention(c) (UnsafeMutablePointer<OpaquePointer?>?) -> Status
    typealias AddRunConfigEntry = @convention(c) (OpaquePointer?, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Status
    let createRunOptions: CreateRunOptions        // 39
    let releaseRunOptions: Release                // 97
    let addRunConfigEntry: AddRunConfigEntry      // 165

    // String tensors (BYTES): creating them with ORT's allocator, filling and reading them.
    let createTensorAsOrtValue: CreateTensor      // 48
    let fillStringTensor: FillStringTensor        // 52 (NUL-terminated elements: the fallback before API 15)
    let getStringTensorDataLength: GetStringTensorDataLength // 53
    let getStringTensorContent: GetStringTensorContent       // 54
    /// 252, since API version 15 (ORT 1.15): an element of any bytes, NULs included. nil in older libraries.
    let getResizedStringTensorElementBuffer: GetResizedStringTensorElementBuffer?
    /// The API version that has `getResizedStringTensorElementBuffer`.
    static let stringElementBufferVersion: UInt32 = 15

    /// `table`: the `OrtApi` for `apiVersion`; `version15`: the table when the library provides API version 15 too.
    init(table: UnsafePointer<UnsafeRawPointer?>, version15: UnsafePointer<UnsafeRawPointer?>? = nil) throws {
        func slot<F>(_ index: Int, _ type: F.Type) throws -> F {
            guard let pointer = table[index] else {
                throw ONNXRuntimeError("the ONNX Runtime API table has no function at slot \(index)")
            }
            return unsafeBitCast(pointer, to: type)
        }
        getErrorMessage = try slot(2, GetErrorMessage.self)
        createEnv = try slot(3, CreateEnv.self)
        createSession = try slot(7, CreateSession.self)
        run = try slot(9, Run.self)
        createSessionOptions = try slot(10, CreateSessionOptions.self)
        setGraphOptimizationLevel = try slot(23, SetGraphOptimizationLevel.self)
        setIntraOpNumThreads = try slot(24, SetThreadCount.self)
        setInterOpNumThreads = try slot(25, SetThreadCount.self)
        sessionGetInputCount = try slot(30, SessionGetCount.self)
        sessionGetOutputCount = try slot(31, SessionGetCount.self)
        sessionGetInputTypeInfo = try slot(33, SessionGetTypeInfo.self)
        sessionGetOutputTypeInfo = try slot(34, SessionGetTypeInfo.self)
        sessionGetInputName = try slot(36, SessionGetName.self)
        sessionGetOutputName = try slot(37, SessionGetName.self)
        createTensorWithDataAsOrtValue = try slot(49, CreateTensorWithData.self)
        getTensorMutableData = try slot(51, GetTensorMutableData.self)
        castTypeInfoToTensorInfo = try slot(55, CastTypeInfoToTensorInfo.self)
        getTensorElementType = try slot(60, GetTensorElementType.self)
        getDimensionsCount = try slot(61, GetDimensionsCount.self)
        getDimensions = try slot(62, GetDimensions.self)
        getTensorTypeAndShape = try slot(65, GetTensorTypeAndShape.self)
        createCpuMemoryInfo = try slot(69, CreateCpuMemoryInfo.self)
        allocatorFree = try slot(76, AllocatorFree.self)
        getAllocatorWithDefaultOptions = try slot(78, GetAllocatorWithDefaultOptions.self)
        releaseEnv = try slot(92, Release.self)
        releaseStatus = try slot(93, Release.self)
        releaseMemoryInfo = try slot(94, Release.self)
        releaseSession = try slot(95, Release.self)
        releaseValue = try slot(96, Release.self)
        releaseTypeInfo = try slot(98, Release.self)
        releaseTensorTypeAndShapeInfo = try slot(99, Release.self)
        releaseSessionOptions = try slot(100, Release.self)
        // Memory and graph options (see their declarations).
        enableMemPattern = try slot(16, SessionOptionsSwitch.self)
        disableMemPattern = try slot(17, SessionOptionsSwitch.self)
        enableCpuMemArena = try slot(18, SessionOptionsSwitch.self)
        disableCpuMemArena = try slot(19, SessionOptionsSwitch.self)
        addSessionConfigEntry = try slot(130, AddSessionConfigEntry.self)
        createAndRegisterAllocator = try slot(144, CreateAndRegisterAllocator.self)
        releaseArenaCfg = try slot(157, Release.self)
        createArenaCfgV2 = try slot(164, CreateArenaCfgV2.self)
        createRunOptions = try slot(39, CreateRunOptions.self)
        releaseRunOptions = try slot(97, Release.self)
        addRunConfigEntry = try slot(165, AddRunConfigEntry.self)
        createTensorAsOrtValue = try slot(48, CreateTensor.self)
        fillStringTensor = try slot(52, FillStringTensor.self)
        getStringTensorDataLength = try slot(53, GetStringTensorDataLength.self)
        getStringTensorContent = try slot(54, GetStringTensorContent.self)
        getResizedStringTensorElementBuffer = version15?[252].map {
            unsafeBitCast($0, to: GetResizedStringTensorElementBuffer.self)
        }
        metadata = ORTMetadataFunctions(sessionGetModelMetadata: try slot(111, ORTMetadataFunctions.SessionGetModelMetadata.self),
                                        lookupCustomMetadataMap: try slot(116, ORTMetadataFunctions.LookupCustomMetadataMap.self),
                                        releaseModelMetadata: try slot(118, Release.self))
    }

    /// Turns a returned `OrtStatus*` into a thrown error carrying ORT's message, releasing the status.
    @inline(__always)
    func check(_ status: OpaquePointer?, _ what: @autoclosure () -> String = "") throws {
        guard let status else { return }
        let text = getErrorMessage(status).map { String(cString: $0) } ?? "unknown error"
        releaseStatus(status)
        let context = what()
        throw ONNXRuntimeError(context.isEmpty ? text : "\(context): \(text)")
    }
}

// MARK: - Model metadata (pipelines)

/// `OrtApi` functions that read a model's metadata (`custom_metadata_map` in ONNX Runtime's Python API).
///
/// `SessionGetModelMetadata` (111), `ModelMetadataLookupCustomMetadataMap` (116) and `ReleaseModelMetadata` (118)
/// came with API version 2 (ONNX Runtime 1.3); `GetApi(1)` answers the library's whole table, which holds them.
struct ORTMetadataFunctions: Sendable {
    typealias SessionGetModelMetadata = @convention(c) (OpaquePointer?, UnsafeMutablePointer<OpaquePointer?>?) -> OpaquePointer?
    typealias LookupCustomMetadataMap = @convention(c) (OpaquePointer?, OpaquePointer?, UnsafePointer<CChar>?,
                                                        UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> OpaquePointer?
    let sessionGetModelMetadata: SessionGetModelMetadata // 111
    let lookupCustomMetadataMap: LookupCustomMetadataMap // 116
    let releaseModelMetadata: ORTFunctions.Release       // 118
}

/// The ONNX Runtime shared library, opened once per process, and its environment.
///
/// The library is opened with `dlopen(RTLD_NOW | RTLD_LOCAL)` from the path found by `ONNXRuntime.locate`. ORT keeps
/// one environment per process; the kernel creates it with the library and releases it when the last model service
/// that uses it is gone.
public final class ONNXRuntime: @unchecked Sendable {
    /// The path the library was opened from.
    public let libraryPath: String
    /// ORT's own version string (`1.31.1`).
    public let version: String
    let api: ORTFunctions
    /// The process-wide `OrtEnv*`; immutable after `init`, used concurrently as ORT allows.
    let environment: OpaquePointer
    /// CPU memory description for tensors that wrap kernel-owned buffers.
    let cpuMemoryInfo: OpaquePointer
    private let handle: UnsafeMutableRawPointer

    private static let shared = NIOLockedValueBox<[String: WeakRuntime]>([:])

    private struct WeakRuntime { weak var runtime: ONNXRuntime? }

    /// The runtime for the library at `path`, opened on first use and shared while anyone holds it.
    public static func open(path: String) throws -> ONNXRuntime {
        try shared.withLockedValue { cache in
            if let existing = cache[path]?.runtime { return existing }
            let runtime = try ONNXRuntime(path: path)
            cache[path] = WeakRuntime(runtime: runtime)
            return runtime
        }
    }

    private init(path: String) throws {
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            let reason = dlerror().map { String(cString: $0) } ?? "unknown error"
            throw ONNXRuntimeError("cannot load the ONNX Runtime library \(path): \(reason); " + ONNXRuntime.installHint)
        }
        guard let symbol = dlsym(handle, "OrtGetApiBase") else {
            dlclose(handle)
            throw ONNXRuntimeError("\(path) is not an ONNX Runtime library (no OrtGetApiBase); " + ONNXRuntime.installHint)
        }
        typealias GetApiBase = @convention(c) () -> UnsafePointer<UnsafeRawPointer?>?
        typealias GetApi = @convention(c) (UInt32) -> UnsafePointer<UnsafeRawPointer?>?
        typealias GetVersionString = @convention(c) () -> UnsafePointer<CChar>?
        // struct OrtApiBase { const OrtApi* (*GetApi)(uint32_t); const char* (*GetVersionString)(void); }
        guard let base = unsafeBitCast(symbol, to: GetApiBase.self)(), let getApiPointer = base[0],
              let versionPointer = base[1] else {
            dlclose(handle)
            throw ONNXRuntimeError("\(path): OrtGetApiBase returned nothing; " + ONNXRuntime.installHint)
        }
        let versionText = unsafeBitCast(versionPointer, to: GetVersionString.self)().map { String(cString: $0) } ?? "unknown"
        guard let table = unsafeBitCast(getApiPointer, to: GetApi.self)(ORTFunctions.apiVersion) else {
            dlclose(handle)
            throw ONNXRuntimeError("the ONNX Runtime library \(path) (version \(versionText)) is too old: it does not "
                                   + "provide API version \(ORTFunctions.apiVersion); " + ONNXRuntime.installHint)
        }
        let api: ORTFunctions
        // A table for a later version is the same table, grown: asked for only to learn whether the slot exists.
        let version15 = unsafeBitCast(getApiPointer, to: GetApi.self)(ORTFunctions.stringElementBufferVersion)
        do { api = try ORTFunctions(table: table, version15: version15) } catch {
            dlclose(handle)
            throw error
        }
        var environment: OpaquePointer?
        do {
            // Logging level 3 = ORT_LOGGING_LEVEL_ERROR: ORT's warnings would otherwise go to stderr unformatted.
            try api.check(api.createEnv(3, "kernel", &environment), "creating the ONNX Runtime environment")
        } catch {
            dlclose(handle)
            throw error
        }
        var memoryInfo: OpaquePointer?
        do {
            // OrtDeviceAllocator (0), OrtMemTypeDefault (0).
            try api.check(api.createCpuMemoryInfo(0, 0, &memoryInfo), "creating the CPU memory info")
        } catch {
            api.releaseEnv(environment)
            dlclose(handle)
            throw error
        }
        self.handle = handle
        self.api = api
        self.environment = environment!
        self.cpuMemoryInfo = memoryInfo!
        self.libraryPath = path
        self.version = versionText
    }

    deinit {
        api.releaseMemoryInfo(cpuMemoryInfo)
        api.releaseEnv(environment)
        // The library stays mapped: ORT's own thread pools may still be unwinding, and re-opening is cheap.
    }

    /// What to tell an operator whose machine has no usable ONNX Runtime.
    public static let installHint =
        "install it with `pip install onnxruntime`, or set inference.runtime_library (or KERNEL_ONNXRUNTIME_LIBRARY) "
        + "to the path of libonnxruntime.so"

    /// Finds the library: the configured path, then `KERNEL_ONNXRUNTIME_LIBRARY`, then the usual system and Python
    /// site-packages places (the `onnxruntime` wheel ships `onnxruntime/capi/libonnxruntime.so.1.*`).
    public static func locate(configured: String?, environment: [String: String]) throws -> String {
        if let configured {
            guard access(configured, R_OK) == 0 else {
                throw ONNXRuntimeError("inference.runtime_library \(configured) cannot be read; " + installHint)
            }
            return configured
        }
        if let fromEnvironment = environment["KERNEL_ONNXRUNTIME_LIBRARY"], !fromEnvironment.isEmpty {
            guard access(fromEnvironment, R_OK) == 0 else {
                throw ONNXRuntimeError("KERNEL_ONNXRUNTIME_LIBRARY=\(fromEnvironment) cannot be read; " + installHint)
            }
            return fromEnvironment
        }
        let home = environment["HOME"] ?? "/root"
        let patterns = [
            "/usr/lib/libonnxruntime.so*", "/usr/lib/*-linux-gnu/libonnxruntime.so*",
            "/usr/local/lib/libonnxruntime.so*",
            "/usr/local/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1*",
            "/usr/local/lib/python3*/dist-packages/onnxruntime/capi/libonnxruntime.so.1*",
            "/usr/lib/python3/dist-packages/onnxruntime/capi/libonnxruntime.so.1*",
            "/usr/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1*",
            "\(home)/.local/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1*",
            "\(home)/.pyenv/versions/*/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1*",
            "/root/.pyenv/versions/*/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1*",
            "/opt/conda/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1*",
        ]
        for pattern in patterns {
            if let found = globFiles(pattern).last { return found }
        }
        throw ONNXRuntimeError("the ONNX Runtime library (libonnxruntime.so) was not found; " + installHint)
    }

    private static func globFiles(_ pattern: String) -> [String] {
        var result = glob_t()
        defer { globfree(&result) }
        guard glob(pattern, 0, nil, &result) == 0 else { return [] }
        var paths: [String] = []
        for index in 0..<Int(result.gl_pathc) {
            if let path = result.gl_pathv[index] { paths.append(String(cString: path)) }
        }
        return paths.sorted()
    }
}
