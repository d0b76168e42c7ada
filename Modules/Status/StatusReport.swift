import KernelCore

/// One process's answer to the gathered `metrics` query, parsed.
public struct ProcessMetrics: Sendable {
    public var source: ProcessAnswer.Source
    public var pid: Int32
    public var families: [PrometheusFamily]
    /// Its counters, read out of `families`.
    public var counters: ProcessCounters

    public init(source: ProcessAnswer.Source, pid: Int32, families: [PrometheusFamily]) {
        self.source = source
        self.pid = pid
        self.families = families
        counters = ProcessCounters(families)
    }

    /// Parses an answer's Prometheus text.
    public init(_ answer: ProcessAnswer) {
        self.init(source: answer.source, pid: answer.pid,
                  families: PrometheusExposition.parse(String(decoding: answer.body, as: UTF8.self)))
    }
}

/// The status endpoint's JSON document, made from the history and the latest reading of every process.
///
/// ```
/// {"sequence": 42, "time": 1764612000.5, "interval_seconds": 1, "history_seconds": 300, "processes": 3,
///  "summary": {"window_seconds": 10, "requests_total": 1234, "requests_per_second": 3.2,
///              "latency_seconds": {"p50": 0.0011, "p90": 0.004, "p99": 0.009}},
///  "series": {"time": [...], "requests_per_second": [...], "latency_p50_seconds": [...],
///             "latency_p90_seconds": [...], "latency_p99_seconds": [...]},
///  "workers": [{"pool": "main", "number": 1, "pid": 4242, "state": "serving", "requests": 600, "respawns": 0,
///               "rss_bytes": 31457280, "spawned_at": 1764611000.1}],
///  "upstreams": [{"upstream": "app", "peer": "10.0.0.2:9000", "state": "up", "up": 2, "reporting": 2,
///                 "failures": 0}],
///  "models": [{"model": "demo", "queue_depth": 0, "window_seconds": 60, "requests_per_second": 1.5,
///              "batches_per_second": 0.5, "batch_size": {"mean": 3, "p50": 2.5, "p90": 3.8},
///              "queue_latency_seconds": {"p50": .., "p99": ..}, "compute_latency_seconds": {"p50": .., "p99": ..},
///              "failures": 0}]}
/// ```
/// Rates and percentiles are over the window named beside them; a percentile of a window without requests is
/// null, as is a series entry of a second without requests.
public struct StatusReport: Sendable {
    /// The headline numbers' window (requests/s and latency percentiles).
    public static let summaryWindow = 10.0
    /// The model table's window: batches are rarer than requests, so it looks further back.
    public static let modelWindow = 60.0

    public var sequence: Int
    public var time: Double
    public var intervalSeconds: Double
    public var history: StatusHistory
    public var processes: [ProcessMetrics]
    public var workers: [WorkerProcessInfo]

    public init(sequence: Int, time: Double, intervalSeconds: Double, history: StatusHistory,
                processes: [ProcessMetrics], workers: [WorkerProcessInfo]) {
        self.sequence = sequence
        self.time = time
        self.intervalSeconds = intervalSeconds
        self.history = history
        self.processes = processes
        self.workers = workers
    }

    /// The document, rendered.
    public var json: String { document.rendered }

    var document: StatusJSON {
        let merged = PrometheusExposition.merge(processes.map(\.families))
        return .object([
            ("sequence", .integer(sequence)),
            ("time", .number(time)),
            ("interval_seconds", .number(intervalSeconds)),
            ("history_seconds", .number(Double(history.capacity) * intervalSeconds)),
            ("processes", .integer(processes.count)),
            ("summary", summary(merged)),
            ("series", series),
            ("workers", .array(workerRows)),
            ("upstreams", .array(upstreamRows(merged))),
            ("models", .array(modelRows(merged))),
        ])
    }

    private func summary(_ merged: [PrometheusFamily]) -> StatusJSON {
        let window = history.window(seconds: Self.summaryWindow)
        let latency = window.increase.requestDuration
        return .object([
            ("window_seconds", .number(Self.summaryWindow)),
            ("requests_total", .number(Self.total(merged, StatusMetricNames.requests))),
            ("requests_per_second", .number(window.seconds > 0 ? window.increase.requests / window.seconds : 0)),
            ("latency_seconds", Self.percentiles(latency, [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)])),
        ])
    }

    /// The charts' points, rounded to what a chart can show (a millisecond of time, a thousandth of a request per
    /// second, a tenth of a microsecond), which keeps the document the page reads every second small.
    private var series: StatusJSON {
        let points = history.points
        func rounded(_ value: Double?, _ scale: Double) -> StatusJSON {
            .number(value.map { ($0 * scale).rounded() / scale })
        }
        func latency(_ q: Double) -> StatusJSON {
            .array(points.map { rounded($0.increase.requestDuration.quantile(q), 1e7) })
        }
        return .object([
            ("time", .array(points.map { rounded($0.time, 1e3) })),
            ("requests_per_second", .array(points.map { rounded($0.requestsPerSecond, 1e3) })),
            ("latency_p50_seconds", latency(0.5)),
            ("latency_p90_seconds", latency(0.9)),
            ("latency_p99_seconds", latency(0.99)),
        ])
    }

    private var workerRows: [StatusJSON] {
        let byPid = Dictionary(processes.map { ($0.pid, $0) }, uniquingKeysWith: { first, _ in first })
        return workers.sorted { ($0.pool, $0.number) < ($1.pool, $1.number) }.map { worker in
            let answer = byPid[worker.pid]
            let memory = answer.map { Self.total($0.families, StatusMetricNames.residentMemory) }
            return .object([
                ("pool", .string(worker.pool)),
                ("number", .integer(worker.number)),
                ("pid", .number(Double(worker.pid))),
                ("state", .string(worker.state)),
                // null when the worker did not answer in time.
                ("requests", .number(answer?.counters.requests)),
                ("respawns", .integer(worker.respawns)),
                ("rss_bytes", memory.flatMap { $0 > 0 ? .number($0) : nil } ?? .null),
                ("spawned_at", .number(worker.spawnedAt)),
            ])
        }
    }

    private struct PeerKey: Hashable, Comparable {
        var upstream: String
        var peer: String
        static func < (a: PeerKey, b: PeerKey) -> Bool { (a.upstream, a.peer) < (b.upstream, b.peer) }
    }

    /// Each peer's state as the processes see it: every process (or every worker label in one answer) that
    /// reports the peer votes up or down, so one worker's failed health check shows as `partial`.
    private func upstreamRows(_ merged: [PrometheusFamily]) -> [StatusJSON] {
        var votes: [PeerKey: (up: Int, reporting: Int)] = [:]
        for process in processes {
            for sample in Self.samples(process.families, StatusMetricNames.peerUp) {
                guard let key = Self.peerKey(sample) else { continue }
                votes[key, default: (0, 0)].reporting += 1
                if sample.value > 0 { votes[key, default: (0, 0)].up += 1 }
            }
        }
        var failures: [PeerKey: Double] = [:]
        for sample in Self.samples(merged, StatusMetricNames.peerFailures) {
            guard let key = Self.peerKey(sample) else { continue }
            failures[key, default: 0] += sample.value
        }
        let keys = Set(votes.keys).union(failures.keys).sorted()
        return keys.map { key in
            let vote = votes[key] ?? (0, 0)
            let state = vote.reporting == 0 ? "unknown" : vote.up == vote.reporting ? "up" : vote.up == 0 ? "down" : "partial"
            return .object([
                ("upstream", .string(key.upstream)),
                ("peer", .string(key.peer)),
                ("state", .string(state)),
                ("up", .integer(vote.up)),
                ("reporting", .integer(vote.reporting)),
                ("failures", .number(failures[key] ?? 0)),
            ])
        }
    }

    private func modelRows(_ merged: [PrometheusFamily]) -> [StatusJSON] {
        let window = history.window(seconds: Self.modelWindow)
        var depth: [String: Double] = [:]
        for sample in Self.samples(merged, StatusMetricNames.modelQueueDepth) {
            guard let model = sample.labels["model"] else { continue }
            depth[model, default: 0] += sample.value
        }
        var failures: [String: Double] = [:]
        for sample in Self.samples(merged, StatusMetricNames.modelFailures) {
            guard let model = sample.labels["model"] else { continue }
            failures[model, default: 0] += sample.value
        }
        var names = Set(depth.keys).union(failures.keys).union(window.increase.models.keys)
        for process in processes { names.formUnion(process.counters.models.keys) }
        return names.sorted().map { model in
            let recent = window.increase.models[model] ?? ModelCounters()
            let seconds = window.seconds
            return .object([
                ("model", .string(model)),
                ("queue_depth", .number(depth[model] ?? 0)),
                ("window_seconds", .number(Self.modelWindow)),
                ("requests_per_second", .number(seconds > 0 ? recent.batchSize.sum / seconds : 0)),
                ("batches_per_second", .number(seconds > 0 ? recent.batchSize.count / seconds : 0)),
                ("batch_size", .object([("mean", .number(recent.batchSize.mean)),
                                        ("p50", .number(recent.batchSize.quantile(0.5))),
                                        ("p90", .number(recent.batchSize.quantile(0.9)))])),
                ("queue_latency_seconds", Self.percentiles(recent.queueDuration, [("p50", 0.5), ("p99", 0.99)])),
                ("compute_latency_seconds", Self.percentiles(recent.computeDuration, [("p50", 0.5), ("p99", 0.99)])),
                ("failures", .number(failures[model] ?? 0)),
            ])
        }
    }

    private static func percentiles(_ histogram: HistogramCounts, _ quantiles: [(String, Double)]) -> StatusJSON {
        .object(quantiles.map { ($0.0, .number(histogram.quantile($0.1))) })
    }

    private static func peerKey(_ sample: PrometheusSample) -> PeerKey? {
        guard let upstream = sample.labels["upstream"], let peer = sample.labels["peer"] else { return nil }
        return PeerKey(upstream: upstream, peer: peer)
    }

    /// The samples named `name` in any family (a parser may file a sample under its family or alone).
    static func samples(_ families: [PrometheusFamily], _ name: String) -> [PrometheusSample] {
        families.flatMap { $0.samples.filter { $0.name == name } }
    }

    /// The sum of every sample named `name`, over all its labels.
    static func total(_ families: [PrometheusFamily], _ name: String) -> Double {
        samples(families, name).reduce(0) { $0 + $1.value }
    }
}
