import KernelCore
/// A count and the nanoseconds spent, as Triton's statistics report durations.
///
/// Counters saturate at `UInt64.max` rather than trap: no counter may stop the process.
public struct DurationCounter: Sendable, Equatable {
    public var count: UInt64 = 0
    public var nanoseconds: UInt64 = 0

    public init() {}

    mutating func add(_ duration: UInt64) {
        count.saturatingAdd(1)
        nanoseconds.saturatingAdd(duration)
    }

    func write(_ name: StaticString, into writer: inout JSONWriter) {
        writer.byte(UInt8(ascii: "\""))
        writer.raw(name)
        writer.raw("\":{\"count\":")
        writer.integer(count)
        writer.raw(",\"ns\":")
        writer.integer(nanoseconds)
        writer.byte(UInt8(ascii: "}"))
    }
}

/// A model's counters, in the shape of Triton's statistics extension (`GET /v2/models/{name}/stats`).
public struct ModelStatistics: Sendable {
    /// Requests answered with outputs, and their time from arrival to completion.
    public var success = DurationCounter()
    /// Requests that failed (runtime errors, timeouts), and their time until then.
    public var failure = DurationCounter()
    /// Time requests spent queued before their batch started.
    public var queue = DurationCounter()
    /// Model runs, and the time spent in them, counted per request as Triton does.
    public var computeInfer = DurationCounter()
    /// Rows inferred (Triton's `inference_count`).
    public var inferenceCount: UInt64 = 0
    /// Model runs (Triton's `execution_count`).
    public var executionCount: UInt64 = 0
    /// Milliseconds since the epoch of the last run, 0 before the first.
    public var lastInference: UInt64 = 0
    /// Runs per batch size (rows), and their compute time.
    public var batches: [Int: DurationCounter] = [:]
    /// Requests answered 503 because the queue was full.
    public var queueRejections: UInt64 = 0
    /// Requests answered 504 because they did not start in time.
    public var timeouts: UInt64 = 0

    public init() {}

    mutating func record(batchSize: Int, requests: [InferenceJob], computeNanoseconds: UInt64, dequeued: UInt64,
                         finished: UInt64, succeeded: Bool) {
        executionCount.saturatingAdd(1)
        lastInference = KernelClock.wallClockMilliseconds()
        batches[batchSize, default: DurationCounter()].add(computeNanoseconds)
        for job in requests {
            queue.add(dequeued > job.enqueued ? dequeued - job.enqueued : 0)
            let elapsed = finished > job.enqueued ? finished - job.enqueued : 0
            if succeeded {
                success.add(elapsed)
                computeInfer.add(computeNanoseconds)
                inferenceCount.saturatingAdd(UInt64(clamping: job.rows))
            } else {
                failure.add(elapsed)
            }
        }
    }

    /// One entry of `model_stats`.
    func write(name: String, version: String, into writer: inout JSONWriter) {
        writer.raw("{\"name\":")
        writer.string(name)
        writer.raw(",\"version\":")
        writer.string(version)
        writer.raw(",\"last_inference\":")
        writer.integer(lastInference)
        writer.raw(",\"inference_count\":")
        writer.integer(inferenceCount)
        writer.raw(",\"execution_count\":")
        writer.integer(executionCount)
        writer.raw(",\"inference_stats\":{")
        success.write("success", into: &writer)
        writer.byte(UInt8(ascii: ","))
        failure.write("fail", into: &writer)
        writer.byte(UInt8(ascii: ","))
        queue.write("queue", into: &writer)
        writer.byte(UInt8(ascii: ","))
        computeInfer.write("compute_infer", into: &writer)
        writer.raw("},\"batch_stats\":[")
        for (index, size) in batches.keys.sorted().enumerated() {
            if index > 0 { writer.byte(UInt8(ascii: ",")) }
            writer.raw("{\"batch_size\":")
            writer.integer(size)
            writer.byte(UInt8(ascii: ","))
            batches[size]!.write("compute_infer", into: &writer)
            writer.byte(UInt8(ascii: "}"))
        }
        writer.raw("],\"queue_rejections\":")
        writer.integer(queueRejections)
        writer.raw(",\"timeouts\":")
        writer.integer(timeouts)
        writer.byte(UInt8(ascii: "}"))
    }
}

extension UInt64 {
    /// Adds `other`, staying at `UInt64.max` instead of overflowing.
    @inline(__always)
    mutating func saturatingAdd(_ other: UInt64) {
        let (sum, overflow) = addingReportingOverflow(other)
        self = overflow ? .max : sum
    }
}
