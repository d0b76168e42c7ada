import KernelCore

/// The metric names the status page reads (the kernel's fixed `kernel_*` names).
enum StatusMetricNames {
    static let requests = "kernel_http_requests_total"
    static let requestDuration = "kernel_http_request_duration_seconds"
    static let peerUp = "kernel_upstream_peer_up"
    static let peerFailures = "kernel_upstream_peer_failures_total"
    static let modelQueueDepth = "kernel_model_queue_depth"
    static let modelBatchSize = "kernel_model_batch_size"
    static let modelQueueDuration = "kernel_model_queue_duration_seconds"
    static let modelComputeDuration = "kernel_model_compute_duration_seconds"
    static let modelFailures = "kernel_model_failures_total"
    static let residentMemory = "kernel_process_resident_memory_bytes"
}

/// What one model did, as cumulative counts.
public struct ModelCounters: Sendable, Equatable {
    /// Requests per batch run: `count` is the batches, `sum` the requests they held.
    public var batchSize = HistogramCounts.empty
    public var queueDuration = HistogramCounts.empty
    public var computeDuration = HistogramCounts.empty
    public var failures = 0.0

    public init() {}

    mutating func add(_ other: ModelCounters) {
        batchSize.add(other.batchSize)
        queueDuration.add(other.queueDuration)
        computeDuration.add(other.computeDuration)
        failures += other.failures
    }

    func since(_ earlier: ModelCounters) -> ModelCounters {
        var difference = ModelCounters()
        difference.batchSize = batchSize.since(earlier.batchSize)
        difference.queueDuration = queueDuration.since(earlier.queueDuration)
        difference.computeDuration = computeDuration.since(earlier.computeDuration)
        difference.failures = counterIncrease(from: earlier.failures, to: failures)
        return difference
    }
}

/// The cumulative counters of one process that the status page turns into rates and percentiles: its requests,
/// their latency histogram (all servers and locations together) and its models'.
///
/// Read from each process's own answer, before the answers are merged, so that a worker that was replaced (a new
/// pid, counters from zero) is told apart from one that kept counting.
public struct ProcessCounters: Sendable, Equatable {
    public var requests = 0.0
    public var requestDuration = HistogramCounts.empty
    public var models: [String: ModelCounters] = [:]

    public init() {}

    /// Reads the counters out of one process's metrics.
    public init(_ families: [PrometheusFamily]) {
        for family in families {
            for sample in family.samples { read(sample) }
        }
    }

    private mutating func read(_ sample: PrometheusSample) {
        let name = sample.name
        guard name.hasPrefix("kernel_") else { return }
        if name == StatusMetricNames.requests {
            requests += sample.value
        } else if let part = Self.histogramPart(name, of: StatusMetricNames.requestDuration) {
            Self.add(sample, part, to: &requestDuration)
        } else if name.hasPrefix("kernel_model_"), let model = sample.labels["model"] {
            if name == StatusMetricNames.modelFailures {
                models[model, default: ModelCounters()].failures += sample.value
            } else if let part = Self.histogramPart(name, of: StatusMetricNames.modelBatchSize) {
                Self.add(sample, part, to: &models[model, default: ModelCounters()].batchSize)
            } else if let part = Self.histogramPart(name, of: StatusMetricNames.modelQueueDuration) {
                Self.add(sample, part, to: &models[model, default: ModelCounters()].queueDuration)
            } else if let part = Self.histogramPart(name, of: StatusMetricNames.modelComputeDuration) {
                Self.add(sample, part, to: &models[model, default: ModelCounters()].computeDuration)
            }
        }
    }

    enum HistogramPart { case bucket, sum, count }

    /// Which series of histogram `family` the sample `name` is (`_bucket`, `_sum`, `_count`), if any.
    static func histogramPart(_ name: String, of family: String) -> HistogramPart? {
        guard name.hasPrefix(family) else { return nil }
        switch name.dropFirst(family.count) {
        case "_bucket": return .bucket
        case "_sum": return .sum
        case "_count": return .count
        default: return nil
        }
    }

    private static func add(_ sample: PrometheusSample, _ part: HistogramPart, to histogram: inout HistogramCounts) {
        switch part {
        case .bucket:
            guard let text = sample.labels["le"], let bound = upperBound(text) else { return }
            histogram.buckets[bound, default: 0] += sample.value
        case .sum: histogram.sum += sample.value
        case .count: histogram.count += sample.value
        }
    }

    /// A bucket's `le` label as a number (`+Inf` included).
    static func upperBound(_ text: String) -> Double? {
        if text == "+Inf" || text == "Inf" { return .infinity }
        guard let bound = Double(text), !bound.isNaN else { return nil }
        return bound
    }

    mutating func add(_ other: ProcessCounters) {
        requests += other.requests
        requestDuration.add(other.requestDuration)
        for (model, counters) in other.models { models[model, default: ModelCounters()].add(counters) }
    }

    /// What happened since `earlier`, a reading of the same process (each counter reset-safe on its own); with
    /// no earlier reading everything counted so far is new.
    public func since(_ earlier: ProcessCounters?) -> ProcessCounters {
        guard let earlier else { return self }
        var difference = ProcessCounters()
        difference.requests = counterIncrease(from: earlier.requests, to: requests)
        difference.requestDuration = requestDuration.since(earlier.requestDuration)
        for (model, counters) in models {
            difference.models[model] = counters.since(earlier.models[model] ?? ModelCounters())
        }
        return difference
    }
}
