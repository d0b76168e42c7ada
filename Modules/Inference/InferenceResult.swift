import KernelCore
import NIOCore

/// How a request is queued: its deadline, its priority and whether its client is still there.
public struct SubmitOptions: Sendable {
    /// When its client stops waiting (an edge forwards it as `X-Kernel-Timeout-Ms`); nil: only the model's timeout.
    public var deadline: NIODeadline?
    /// Triton's priority level: 1 is the highest; 0 means the model's default level.
    public var priority: Int
    /// Cancelled when the client leaves: the request is then taken out of the queue before it runs.
    public var cancellation: RequestCancellation?

    public init(deadline: NIODeadline? = nil, priority: Int = 0, cancellation: RequestCancellation? = nil) {
        self.deadline = deadline
        self.priority = priority
        self.cancellation = cancellation
    }
}

/// Where one request's time went in the scheduler: what `Server-Timing` and the `$inference_*` variables report.
public struct InferenceTiming: Sendable, Equatable {
    /// From queued to the start of its batch.
    public var queueNanoseconds: UInt64
    /// Rows of the batch the request ran in (its own rows when it ran alone).
    public var batchSize: Int
    /// The batch's compute time, by phase.
    public var compute: ComputeTiming

    public init(queueNanoseconds: UInt64 = 0, batchSize: Int = 1, compute: ComputeTiming = ComputeTiming()) {
        self.queueNanoseconds = queueNanoseconds
        self.batchSize = batchSize
        self.compute = compute
    }
}

/// A request's outputs (model output order) and its timing.
public struct InferenceResult: Sendable {
    public var outputs: [Tensor]
    public var timing: InferenceTiming

    public init(outputs: [Tensor], timing: InferenceTiming) {
        self.outputs = outputs
        self.timing = timing
    }
}
