import KernelCore

/// Runs a model: inputs in the model's input order, outputs in its output order.
///
/// The scheduler calls it from one dedicated thread per instance, never concurrently on one runner.
public protocol ModelRunner: AnyObject, Sendable {
    /// One run of the model on `inputs`.
    func run(_ inputs: [Tensor]) throws -> [Tensor]

    /// One run for the requests of a batch: each request's inputs (stacked along dimension 0 when there are
    /// several), `rows` the rows each contributes. Answers each request's outputs, and where the time went.
    /// The default joins, runs and splits with `BatchAssembly`; a runner that can place the rows without copies
    /// does its own.
    func runBatch(_ requests: [[Tensor]], rows: [Int]) throws -> BatchRun
}

/// Where a batch's compute time went, in Triton's three phases.
public struct ComputeTiming: Sendable, Equatable {
    /// Preparing the inputs: joining the requests' rows and handing them to the runtime.
    public var inputNanoseconds: UInt64 = 0
    /// The model's run itself.
    public var inferNanoseconds: UInt64 = 0
    /// Taking the outputs from the runtime and splitting them back to the requests.
    public var outputNanoseconds: UInt64 = 0

    public init(inputNanoseconds: UInt64 = 0, inferNanoseconds: UInt64 = 0, outputNanoseconds: UInt64 = 0) {
        self.inputNanoseconds = inputNanoseconds
        self.inferNanoseconds = inferNanoseconds
        self.outputNanoseconds = outputNanoseconds
    }
}

/// The result of `ModelRunner.runBatch`: the outputs of each request of the batch, in its order.
public struct BatchRun: Sendable {
    public var outputs: [[Tensor]]
    public var timing: ComputeTiming

    public init(outputs: [[Tensor]], timing: ComputeTiming) {
        self.outputs = outputs
        self.timing = timing
    }
}

extension ModelRunner {
    public func runBatch(_ requests: [[Tensor]], rows: [Int]) throws -> BatchRun {
        let start = KernelClock.monotonicNanoseconds()
        if requests.count == 1 {
            let outputs = try run(requests[0])
            let end = KernelClock.monotonicNanoseconds()
            return BatchRun(outputs: [outputs], timing: ComputeTiming(inferNanoseconds: end &- start))
        }
        let joined = BatchAssembly.join(requests)
        let joinedAt = KernelClock.monotonicNanoseconds()
        let outputs = try run(joined)
        let ranAt = KernelClock.monotonicNanoseconds()
        let split = try BatchAssembly.split(outputs, rows: rows)
        let end = KernelClock.monotonicNanoseconds()
        return BatchRun(outputs: split, timing: ComputeTiming(inputNanoseconds: joinedAt &- start,
                                                              inferNanoseconds: ranAt &- joinedAt,
                                                              outputNanoseconds: end &- ranAt))
    }
}
