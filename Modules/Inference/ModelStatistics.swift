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

    /// Adds another process's counter of the same thing.
    mutating func add(_ other: DurationCounter) {
        count.saturatingAdd(other.count)
        nanoseconds.saturatingAdd(other.nanoseconds)
    }

    /// Reads `{"count": N, "ns": N}` as `write` writes it; nil for anything else.
    init?(json: JSONValue?) {
        guard case .number(let count)? = json?["count"], case .number(let nanoseconds)? = json?["ns"],
              let count = count.uint64, let nanoseconds = nanoseconds.uint64 else { return nil }
        self.count = count
        self.nanoseconds = nanoseconds
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

/// One batch size's runs in `batch_stats`: each phase counted once per run, with the run's time.
public struct BatchStatistics: Sendable, Equatable {
    public var computeInput = DurationCounter()
    public var computeInfer = DurationCounter()
    public var computeOutput = DurationCounter()

    public init() {}

    mutating func add(_ timing: ComputeTiming) {
        computeInput.add(timing.inputNanoseconds)
        computeInfer.add(timing.inferNanoseconds)
        computeOutput.add(timing.outputNanoseconds)
    }

    mutating func add(_ other: BatchStatistics) {
        computeInput.add(other.computeInput)
        computeInfer.add(other.computeInfer)
        computeOutput.add(other.computeOutput)
    }
}

/// A model's counters, in the shape of Triton's statistics extension (`GET /v2/models/{name}/stats`).
///
/// As Triton counts them: `success`, `queue` and the three compute phases once per request that succeeded (a
/// request's compute phases are those of the batch it ran in), `fail` once per request that did not, and
/// `batch_stats` once per model run. `cache_hit` and `cache_miss` stay 0: the kernel has no response cache.
public struct ModelStatistics: Sendable, Equatable {
    /// Requests answered with outputs, and their time from being queued to completion.
    public var success = DurationCounter()
    /// Requests that failed (runtime errors, timeouts, cancellations), and their time until then.
    public var failure = DurationCounter()
    /// Time requests that succeeded spent queued before their batch started.
    public var queue = DurationCounter()
    /// The batch's input preparation, per request that succeeded.
    public var computeInput = DurationCounter()
    /// The batch's model run, per request that succeeded.
    public var computeInfer = DurationCounter()
    /// The batch's output handling, per request that succeeded.
    public var computeOutput = DurationCounter()
    /// Rows inferred (Triton's `inference_count`).
    public var inferenceCount: UInt64 = 0
    /// Model runs (Triton's `execution_count`).
    public var executionCount: UInt64 = 0
    /// Milliseconds since the epoch of the last run, 0 before the first.
    public var lastInference: UInt64 = 0
    /// Runs per batch size (rows), and their compute phases.
    public var batches: [Int: BatchStatistics] = [:]
    /// Requests answered 503 (or 429) because their queue was full.
    public var queueRejections: UInt64 = 0
    /// Requests answered 504 because they did not start in time.
    public var timeouts: UInt64 = 0
    /// Requests dropped from the queue because their client left.
    public var cancellations: UInt64 = 0
    /// Requests whose batch failed to run (ONNX Runtime's error).
    public var runFailures: UInt64 = 0

    public init() {}

    mutating func record(batchSize: Int, requests: [InferenceJob], timing: ComputeTiming, dequeued: UInt64,
                         finished: UInt64, succeeded: Bool) {
        executionCount.saturatingAdd(1)
        lastInference = KernelClock.wallClockMilliseconds()
        batches[batchSize, default: BatchStatistics()].add(timing)
        for job in requests {
            let elapsed = finished > job.enqueued ? finished - job.enqueued : 0
            if succeeded {
                success.add(elapsed)
                queue.add(dequeued > job.enqueued ? dequeued - job.enqueued : 0)
                computeInput.add(timing.inputNanoseconds)
                computeInfer.add(timing.inferNanoseconds)
                computeOutput.add(timing.outputNanoseconds)
                inferenceCount.saturatingAdd(UInt64(clamping: job.rows))
            } else {
                failure.add(elapsed)
                runFailures.saturatingAdd(1)
            }
        }
    }

    /// Adds another worker process's statistics of the same model version: every count summed, the later
    /// `last_inference`.
    mutating func add(_ other: ModelStatistics) {
        success.add(other.success)
        failure.add(other.failure)
        queue.add(other.queue)
        computeInput.add(other.computeInput)
        computeInfer.add(other.computeInfer)
        computeOutput.add(other.computeOutput)
        inferenceCount.saturatingAdd(other.inferenceCount)
        executionCount.saturatingAdd(other.executionCount)
        lastInference = max(lastInference, other.lastInference)
        for (size, batch) in other.batches { batches[size, default: BatchStatistics()].add(batch) }
        queueRejections.saturatingAdd(other.queueRejections)
        timeouts.saturatingAdd(other.timeouts)
        cancellations.saturatingAdd(other.cancellations)
        runFailures.saturatingAdd(other.runFailures)
    }

    /// Reads an entry of `model_stats` as `write` writes it (another worker process's answer); nil when it is not
    /// one.
    init?(json entry: JSONValue) {
        func count(_ key: String) -> UInt64? {
            guard case .number(let number)? = entry[key] else { return nil }
            return number.uint64
        }
        let phases = entry["inference_stats"]
        guard let success = DurationCounter(json: phases?["success"]), let failure = DurationCounter(json: phases?["fail"]),
              let queue = DurationCounter(json: phases?["queue"]),
              let computeInput = DurationCounter(json: phases?["compute_input"]),
              let computeInfer = DurationCounter(json: phases?["compute_infer"]),
              let computeOutput = DurationCounter(json: phases?["compute_output"]),
              let inferenceCount = count("inference_count"), let executionCount = count("execution_count"),
              let lastInference = count("last_inference"), let batchList = entry["batch_stats"]?.arrayValue else { return nil }
        self.success = success
        self.failure = failure
        self.queue = queue
        self.computeInput = computeInput
        self.computeInfer = computeInfer
        self.computeOutput = computeOutput
        self.inferenceCount = inferenceCount
        self.executionCount = executionCount
        self.lastInference = lastInference
        for item in batchList {
            guard case .number(let size)? = item["batch_size"], let rows = size.int64,
                  let input = DurationCounter(json: item["compute_input"]),
                  let infer = DurationCounter(json: item["compute_infer"]),
                  let output = DurationCounter(json: item["compute_output"]) else { return nil }
            var batch = BatchStatistics()
            batch.computeInput = input
            batch.computeInfer = infer
            batch.computeOutput = output
            batches[Int(rows)] = batch
        }
        queueRejections = count("queue_rejections") ?? 0
        timeouts = count("timeouts") ?? 0
        cancellations = count("cancellations") ?? 0
        runFailures = count("run_failures") ?? 0
    }

    /// One entry of `model_stats`: Triton's members in Triton's order, then the kernel's four counters (Triton
    /// clients read the JSON into a mapping, so extra members are harmless).
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
        computeInput.write("compute_input", into: &writer)
        writer.byte(UInt8(ascii: ","))
        computeInfer.write("compute_infer", into: &writer)
        writer.byte(UInt8(ascii: ","))
        computeOutput.write("compute_output", into: &writer)
        writer.byte(UInt8(ascii: ","))
        DurationCounter().write("cache_hit", into: &writer)
        writer.byte(UInt8(ascii: ","))
        DurationCounter().write("cache_miss", into: &writer)
        writer.raw("},\"response_stats\":{},\"batch_stats\":[")
        for (index, size) in batches.keys.sorted().enumerated() {
            let batch = batches[size]!
            if index > 0 { writer.byte(UInt8(ascii: ",")) }
            writer.raw("{\"batch_size\":")
            writer.integer(size)
            writer.byte(UInt8(ascii: ","))
            batch.computeInput.write("compute_input", into: &writer)
            writer.byte(UInt8(ascii: ","))
            batch.computeInfer.write("compute_infer", into: &writer)
            writer.byte(UInt8(ascii: ","))
            batch.computeOutput.write("compute_output", into: &writer)
            writer.byte(UInt8(ascii: "}"))
        }
        writer.raw("],\"memory_usage\":[],\"queue_rejections\":")
        writer.integer(queueRejections)
        writer.raw(",\"timeouts\":")
        writer.integer(timeouts)
        writer.raw(",\"cancellations\":")
        writer.integer(cancellations)
        writer.raw(",\"run_failures\":")
        writer.integer(runFailures)
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
