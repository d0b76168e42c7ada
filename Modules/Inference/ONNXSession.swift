#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KernelCore
import NIOCore

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

    /// The session config entries (`AddSessionConfigEntry`) these options set, in order; ONNX Runtime's defaults
    /// are left unset.
    public var configEntries: [(key: String, value: String)] {
        var entries: [(key: String, value: String)] = []
        if useEnvironmentAllocators { entries.append(("session.use_env_allocators", "1")) }
        if !memory.threadSpinning {
            entries.append(("session.intra_op.allow_spinning", "0"))
            entries.append(("session.inter_op.allow_spinning", "0"))
        }
        return entries
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
    /// The names as `Run` takes them, made once.
    private let inputNamePointers: [UnsafePointer<CChar>?]
    private let outputNamePointers: [UnsafePointer<CChar>?]
    /// The `OrtRunOptions*` every run passes (nil: ONNX Runtime's defaults); released in `deinit`.
    private let runOptions: OpaquePointer?

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
        for entry in options.configEntries {
            try api.check(api.addSessionConfigEntry(sessionOptions, entry.key, entry.value))
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
        if options.memory.arenaShrinkage {
            // At the end of each run the CPU arena gives back what no tensor holds: a session whose input sizes
            // vary keeps what its current runs need, not what its largest run once took.
            var created: OpaquePointer?
            do {
                try api.check(api.createRunOptions(&created), "creating the run options")
                try api.check(api.addRunConfigEntry(created, "memory.enable_memory_arena_shrinkage", "cpu:0"),
                              "enabling the CPU arena's shrinkage")
            } catch {
                api.releaseRunOptions(created)
                api.releaseSession(session)
                throw error
            }
            runOptions = created
        } else {
            runOptions = nil
        }
        self.session = session
        inputNames = inputs.map { strdup($0.name)! }
        outputNames = outputs.map { strdup($0.name)! }
        inputNamePointers = inputNames.map { UnsafePointer($0) }
        outputNamePointers = outputNames.map { UnsafePointer($0) }
    }

    deinit {
        if let runOptions { runtime.api.releaseRunOptions(runOptions) }
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

    /// Runs the model once. Input tensors wrap the given buffers without copying (BYTES inputs are copied once into
    /// ORT's string tensor); outputs are ORT's own memory, kept alive by the tensors (BYTES outputs are copied once
    /// into Triton's serialisation).
    public func run(_ inputs: [Tensor]) throws -> [Tensor] {
        var timing = ComputeTiming()
        return try execute(inputs, timing: &timing)
    }

    /// One run for a batch: the requests' rows joined once into one buffer per input (a lone request's tensors are
    /// used as they are), the outputs split back as views of ORT's output memory. The timing's phases are the
    /// joining and tensor creation (input), ORT's `Run` (infer), and taking and splitting the outputs (output).
    public func runBatch(_ requests: [[Tensor]], rows: [Int]) throws -> BatchRun {
        let start = KernelClock.monotonicNanoseconds()
        let inputs = BatchAssembly.join(requests)
        let joinedAt = KernelClock.monotonicNanoseconds()
        var timing = ComputeTiming()
        let outputs = try execute(inputs, timing: &timing)
        let ranAt = KernelClock.monotonicNanoseconds()
        let split = requests.count == 1 ? [outputs] : try BatchAssembly.split(outputs, rows: rows)
        let end = KernelClock.monotonicNanoseconds()
        timing.inputNanoseconds &+= joinedAt &- start
        timing.outputNanoseconds &+= end &- ranAt
        return BatchRun(outputs: split, timing: timing)
    }

    /// Creates the input values, runs, and takes the outputs; `timing` gets the three phases.
    private func execute(_ inputs: [Tensor], timing: inout ComputeTiming) throws -> [Tensor] {
        let api = runtime.api
        precondition(inputs.count == self.inputs.count)
        let start = KernelClock.monotonicNanoseconds()
        var values = [OpaquePointer?](repeating: nil, count: inputs.count)
        defer { for value in values { api.releaseValue(value) } }
        var outputValues = [OpaquePointer?](repeating: nil, count: outputs.count)
        defer { for value in outputValues { api.releaseValue(value) } }
        var createdAt = start
        var ranAt = start
        try withBufferPointers(inputs, index: 0, pointers: []) { pointers in
            for (index, tensor) in inputs.enumerated() {
                if tensor.dataType == .bytes {
                    values[index] = try makeStringTensor(tensor, name: self.inputs[index].name)
                    continue
                }
                try api.check(tensor.shape.withUnsafeBufferPointer { shape in
                    // ORT takes a mutable pointer but never writes into an input tensor.
                    api.createTensorWithDataAsOrtValue(runtime.cpuMemoryInfo,
                                                       UnsafeMutableRawPointer(mutating: pointers[index]),
                                                       tensor.byteCount,
                                                       shape.baseAddress, shape.count, tensor.dataType.onnxElementType,
                                                       &values[index])
                }, "input \"\(self.inputs[index].name)\"")
            }
            createdAt = KernelClock.monotonicNanoseconds()
            try inputNamePointers.withUnsafeBufferPointer { inputNames in
                try outputNamePointers.withUnsafeBufferPointer { outputNames in
                    try api.check(api.run(session, runOptions, inputNames.baseAddress, values, values.count,
                                          outputNames.baseAddress, outputNames.count, &outputValues))
                }
            }
            ranAt = KernelClock.monotonicNanoseconds()
        }
        var results: [Tensor] = []
        results.reserveCapacity(outputs.count)
        for index in outputValues.indices {
            let value = outputValues[index]
            var info: OpaquePointer?
            try api.check(api.getTensorTypeAndShape(value, &info))
            defer { api.releaseTensorTypeAndShapeInfo(info) }
            var rank = 0
            try api.check(api.getDimensionsCount(info, &rank))
            var shape = [Int64](repeating: 0, count: rank)
            try api.check(shape.withUnsafeMutableBufferPointer { api.getDimensions(info, $0.baseAddress, rank) })
            let dataType = outputs[index].dataType
            if dataType == .bytes {
                results.append(try readStringTensor(value, shape: shape, name: outputs[index].name))
                continue
            }
            guard let byteCount = TensorSize.byteCount(shape, dataType) else {
                throw ONNXRuntimeError("output \"\(outputs[index].name)\" has an invalid shape \(shape)")
            }
            var data: UnsafeMutableRawPointer?
            try api.check(api.getTensorMutableData(value, &data))
            guard byteCount > 0, let data else {
                results.append(Tensor(dataType: dataType, shape: shape, buffer: ByteBuffer()))
                continue
            }
            // The output's memory stays ORT's: the tensor (and the rows split from it) releases the value when the
            // last of them is gone, after the response was written from it.
            let owned = OwnedValue(value: value, releaseValue: api.releaseValue)
            outputValues[index] = nil
            let memory = TensorMemory(base: UnsafeRawPointer(data), count: byteCount) { owned.release() }
            results.append(Tensor(dataType: dataType, shape: shape, memory: memory))
        }
        let end = KernelClock.monotonicNanoseconds()
        timing.inputNanoseconds &+= createdAt &- start
        timing.inferNanoseconds &+= ranAt &- createdAt
        timing.outputNanoseconds &+= end &- ranAt
        return results
    }

    /// An `OrtValue` handed to another thread to be released there.
    private struct OwnedValue: @unchecked Sendable {
        let value: OpaquePointer?
        let releaseValue: ORTFunctions.Release
        func release() { releaseValue(value) }
    }

    /// An ORT string tensor holding the elements of a BYTES tensor (copied once, NULs and all).
    private func makeStringTensor(_ tensor: Tensor, name: String) throws -> OpaquePointer? {
        let api = runtime.api
        var allocator: OpaquePointer?
        try api.check(api.getAllocatorWithDefaultOptions(&allocator))
        var value: OpaquePointer?
        try api.check(tensor.shape.withUnsafeBufferPointer { shape in
            api.createTensorAsOrtValue(allocator, shape.baseAddress, shape.count, TensorDataType.bytes.onnxElementType, &value)
        }, "input \"\(name)\"")
        do {
            try tensor.withUnsafeBytes { raw in
                let ranges = BytesElements.ranges(raw)
                guard ranges.count == tensor.elementCount else {
                    throw ONNXRuntimeError("input \"\(name)\" holds \(ranges.count) strings for shape \(tensor.shape)")
                }
                if let elementBuffer = api.getResizedStringTensorElementBuffer {
                    for (index, range) in ranges.enumerated() {
                        var destination: UnsafeMutablePointer<CChar>?
                        try api.check(elementBuffer(value, index, range.count, &destination), "input \"\(name)\"")
                        if let destination, !range.isEmpty {
                            UnsafeMutableRawPointer(destination).copyMemory(from: raw.baseAddress! + range.lowerBound,
                                                                            byteCount: range.count)
                        }
                    }
                    return
                }
                // Before API 15 elements are C strings: one with a NUL byte cannot be given whole.
                var copies: [UnsafeMutablePointer<CChar>] = []
                defer { for copy in copies { free(copy) } }
                for range in ranges {
                    let element = raw[range]
                    guard !element.contains(0) else {
                        throw KernelHTTPError(400, "input '\(name)' has a string with a NUL byte, which ONNX Runtime "
                                              + "\(runtime.version) cannot take (it needs 1.15 or later)")
                    }
                    let copy = malloc(range.count + 1)!.assumingMemoryBound(to: CChar.self)
                    if !range.isEmpty {
                        UnsafeMutableRawPointer(copy).copyMemory(from: raw.baseAddress! + range.lowerBound, byteCount: range.count)
                    }
                    copy[range.count] = 0
                    copies.append(copy)
                }
                let pointers = copies.map { UnsafePointer<CChar>($0) as UnsafePointer<CChar>? }
                try api.check(api.fillStringTensor(value, pointers, pointers.count), "input \"\(name)\"")
            }
        } catch {
            api.releaseValue(value)
            throw error
        }
        return value
    }

    /// The elements of an ORT string tensor in Triton's serialisation: ORT writes the contents once into the
    /// buffer's tail, and each element is moved down into place behind its length (the moves never overlap a
    /// later element's source).
    private func readStringTensor(_ value: OpaquePointer?, shape: [Int64], name: String) throws -> Tensor {
        let api = runtime.api
        guard let count = TensorSize.elementCount(shape) else {
            throw ONNXRuntimeError("output \"\(name)\" has an invalid shape \(shape)")
        }
        var buffer = ByteBuffer()
        if count > 0 {
            var dataLength = 0
            try api.check(api.getStringTensorDataLength(value, &dataLength), "output \"\(name)\"")
            guard let prefixes = TensorSize.product(count, 4), let total = TensorSize.sum(prefixes, dataLength),
                  total <= TensorSize.bufferLimit else {
                throw ONNXRuntimeError("output \"\(name)\" holds more string bytes than one response can carry")
            }
            var offsets = [Int](repeating: 0, count: count)
            buffer = ByteBufferAllocator().buffer(capacity: total)
            try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: total) { raw in
                let base = raw.baseAddress!
                try api.check(offsets.withUnsafeMutableBufferPointer {
                    api.getStringTensorContent(value, base + prefixes, dataLength, $0.baseAddress, count)
                }, "output \"\(name)\"")
                for index in 0..<count {
                    let source = offsets[index]
                    let end = index + 1 < count ? offsets[index + 1] : dataLength
                    let length = end - source
                    let destination = 4 * (index + 1) + source
                    raw.storeBytes(of: UInt32(truncatingIfNeeded: length).littleEndian, toByteOffset: destination - 4, as: UInt32.self)
                    if length > 0 { (base + destination).copyMemory(from: base + prefixes + source, byteCount: length) }
                }
                return total
            }
        }
        return Tensor(dataType: .bytes, shape: shape, buffer: buffer)
    }

    /// Gives `body` a stable pointer to the bytes of every tensor at once (nested `withUnsafeBytes`).
    /// An empty tensor gets a pointer to a static byte: ORT rejects a null data pointer even for zero bytes.
    private func withBufferPointers(_ tensors: [Tensor], index: Int, pointers: [UnsafeRawPointer],
                                    _ body: ([UnsafeRawPointer]) throws -> Void) throws {
        if index == tensors.count { return try body(pointers) }
        try tensors[index].withUnsafeBytes { raw in
            let pointer = raw.baseAddress ?? UnsafeRawPointer(ONNXSession.emptyTensorByte)
            try withBufferPointers(tensors, index: index + 1, pointers: pointers + [pointer], body)
        }
    }

    nonisolated(unsafe) private static let emptyTensorByte = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
}
