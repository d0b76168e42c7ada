#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How a session is created.
public struct SessionOptions: Sendable {
    public var intraOpThreads: Int
    public var interOpThreads: Int
    /// Arena, memory-pattern and graph-optimisation settings (`cpu_mem_arena`, ...).
    public var memory: SessionMemoryOptions
    /// Whether the session allocates from the environment's registered CPU arena (`session.use_env_allocators`),
    /// registered by `ONNXRuntime.sessionOptions(for:)` for `arena_extend_strategy: same_as_requested`.
    public var useEnvironmentAllocators: Bool
    public init(intraOpThreads: Int = 1, interOpThreads: Int = 1, memory: SessionMemoryOptions = SessionMemoryOptions(),
                useEnvironmentAllocators: Bool = false) {
        self.intraOpThreads = intraOpThreads
        self.interOpThreads = interOpThreads
        self.memory = memory
        self.useEnvironmentAllocators = useEnvironmentAllocators
    }
}

/// One ONNX Runtime inference session of a model file, with the model's input and output declarations.
public final class ONNXSession: ModelRunner, @unchecked Sendable {
    public let runtime: ONNXRuntime
    public let path: String
    public let inputs: [TensorSpec]
    public let outputs: [TensorSpec]
    /// The `OrtSession*`; released in `deinit`. ORT allows `Run` from any thread.
    private let session: OpaquePointer
    /// NUL-terminated names kept for the session's life, as `Run` wants them.
    private let inputNames: [UnsafeMutablePointer<CChar>]
    private let outputNames: [UnsafeMutablePointer<CChar>]

    /// Loads `path`; the error carries ORT's message (`Load model from X failed: ...`).
    public init(runtime: ONNXRuntime, path: String, options: SessionOptions) throws {
        let api = runtime.api
        self.runtime = runtime
        self.path = path
        var sessionOptions: OpaquePointer?
        try api.check(api.createSessionOptions(&sessionOptions))
        defer { api.releaseSessionOptions(sessionOptions) }
        try api.check(api.setIntraOpNumThreads(sessionOptions, Int32(clamping: options.intraOpThreads)))
        try api.check(api.setInterOpNumThreads(sessionOptions, Int32(clamping: options.interOpThreads)))
        try api.check(api.setGraphOptimizationLevel(sessionOptions, options.memory.graphOptimizationLevel.rawValue))
        try api.check(options.memory.cpuMemoryArena ? api.enableCpuMemArena(sessionOptions) : api.disableCpuMemArena(sessionOptions))
        try api.check(options.memory.memoryPattern ? api.enableMemPattern(sessionOptions) : api.disableMemPattern(sessionOptions))
        if options.useEnvironmentAllocators {
            try api.check(api.addSessionConfigEntry(sessionOptions, "session.use_env_allocators", "1"))
        }
        var created: OpaquePointer?
        try api.check(api.createSession(runtime.environment, path, sessionOptions, &created))
        guard let session = created else { throw ONNXRuntimeError("ONNX Runtime returned no session for \(path)") }
        do {
            let inputs = try ONNXSession.specs(api: api, session: session, input: true)
            let outputs = try ONNXSession.specs(api: api, session: session, input: false)
            self.inputs = inputs
            self.outputs = outputs
        } catch {
            api.releaseSession(session)
            throw error
        }
        self.session = session
        inputNames = inputs.map { strdup($0.name)! }
        outputNames = outputs.map { strdup($0.name)! }
    }

    deinit {
        runtime.api.releaseSession(session)
        for name in inputNames { free(name) }
        for name in outputNames { free(name) }
    }

    private static func specs(api: ORTFunctions, session: OpaquePointer, input: Bool) throws -> [TensorSpec] {
        var count = 0
        try api.check(input ? api.sessionGetInputCount(session, &count) : api.sessionGetOutputCount(session, &count))
        var allocator: OpaquePointer?
        try api.check(api.getAllocatorWithDefaultOptions(&allocator))
        var specs: [TensorSpec] = []
        for index in 0..<count {
            var namePointer: UnsafeMutablePointer<CChar>?
            try api.check(input ? api.sessionGetInputName(session, index, allocator, &namePointer)
                                : api.sessionGetOutputName(session, index, allocator, &namePointer))
            let name = namePointer.map { String(cString: $0) } ?? ""
            if let namePointer { try api.check(api.allocatorFree(allocator, namePointer)) }

            var typeInfo: OpaquePointer?
            try api.check(input ? api.sessionGetInputTypeInfo(session, index, &typeInfo)
                                : api.sessionGetOutputTypeInfo(session, index, &typeInfo))
            defer { api.releaseTypeInfo(typeInfo) }
            var tensorInfo: OpaquePointer?  // owned by typeInfo
            try api.check(api.castTypeInfoToTensorInfo(typeInfo, &tensorInfo))
            guard let tensorInfo else {
                throw ONNXRuntimeError("\(input ? "input" : "output") \"\(name)\" is not a tensor; only tensors are served")
            }
            var elementType: Int32 = 0
            try api.check(api.getTensorElementType(tensorInfo, &elementType))
            guard let dataType = TensorDataType(onnxElementType: elementType) else {
                throw ONNXRuntimeError("\(input ? "input" : "output") \"\(name)\" has ONNX element type \(elementType), "
                                       + "which the inference protocol cannot carry")
            }
            var rank = 0
            try api.check(api.getDimensionsCount(tensorInfo, &rank))
            var shape = [Int64](repeating: 0, count: rank)
            try api.check(shape.withUnsafeMutableBufferPointer { api.getDimensions(tensorInfo, $0.baseAddress, rank) })
            // Symbolic dimensions come back as -1 (or 0 in some exporters): both mean "any size".
            specs.append(TensorSpec(name: name, dataType: dataType, shape: shape.map { $0 > 0 ? $0 : -1 }))
        }
        return specs
    }

    /// Runs the model once. Input tensors wrap the given buffers without copying; outputs are copied out of ORT.
    public func run(_ inputs: [Tensor]) throws -> [Tensor] {
        let api = runtime.api
        precondition(inputs.count == self.inputs.count)
        var values = [OpaquePointer?](repeating: nil, count: inputs.count)
        defer { for value in values { api.releaseValue(value) } }
        var outputValues = [OpaquePointer?](repeating: nil, count: outputs.count)
        defer { for value in outputValues { api.releaseValue(value) } }
        try withBufferPointers(inputs, index: 0, pointers: []) { pointers in
            for (index, tensor) in inputs.enumerated() {
                try api.check(tensor.shape.withUnsafeBufferPointer { shape in
                    // ORT takes a mutable pointer but never writes into an input tensor.
                    api.createTensorWithDataAsOrtValue(runtime.cpuMemoryInfo,
                                                       UnsafeMutableRawPointer(mutating: pointers[index]),
                                                       tensor.bytes.count,
                                                       shape.baseAddress, shape.count, tensor.dataType.onnxElementType,
                                                       &values[index])
                }, "input \"\(self.inputs[index].name)\"")
            }
            let inputNamePointers = inputNames.map { UnsafePointer<CChar>($0) as UnsafePointer<CChar>? }
            let outputNamePointers = outputNames.map { UnsafePointer<CChar>($0) as UnsafePointer<CChar>? }
            try api.check(api.run(session, nil, inputNamePointers, values, values.count,
                                  outputNamePointers, outputNamePointers.count, &outputValues))
        }
        var results: [Tensor] = []
        results.reserveCapacity(outputs.count)
        for (index, value) in outputValues.enumerated() {
            var info: OpaquePointer?
            try api.check(api.getTensorTypeAndShape(value, &info))
            defer { api.releaseTensorTypeAndShapeInfo(info) }
            var rank = 0
            try api.check(api.getDimensionsCount(info, &rank))
            var shape = [Int64](repeating: 0, count: rank)
            try api.check(shape.withUnsafeMutableBufferPointer { api.getDimensions(info, $0.baseAddress, rank) })
            let dataType = outputs[index].dataType
            guard let byteCount = TensorSize.byteCount(shape, dataType) else {
                throw ONNXRuntimeError("output \"\(outputs[index].name)\" has an invalid shape \(shape)")
            }
            var data: UnsafeMutableRawPointer?
            try api.check(api.getTensorMutableData(value, &data))
            let bytes = byteCount == 0 || data == nil
                ? [UInt8]() : Array(UnsafeRawBufferPointer(start: data, count: byteCount))
            results.append(Tensor(dataType: dataType, shape: shape, bytes: bytes))
        }
        return results
    }

    /// Gives `body` a stable pointer to the bytes of every tensor at once (nested `withUnsafeBytes`).
    /// An empty tensor gets a pointer to a static byte: ORT rejects a null data pointer even for zero bytes.
    private func withBufferPointers(_ tensors: [Tensor], index: Int, pointers: [UnsafeRawPointer],
                                    _ body: ([UnsafeRawPointer]) throws -> Void) throws {
        if index == tensors.count { return try body(pointers) }
        try tensors[index].bytes.withUnsafeBytes { raw in
            let pointer = raw.baseAddress ?? UnsafeRawPointer(ONNXSession.emptyTensorByte)
            try withBufferPointers(tensors, index: index + 1, pointers: pointers + [pointer], body)
        }
    }

    nonisolated(unsafe) private static let emptyTensorByte = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
}
