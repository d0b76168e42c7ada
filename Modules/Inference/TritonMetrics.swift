import KernelCore

/// Triton's per-model Prometheus metrics (`nv_inference_*`, with Triton's names, help texts and `model` and
/// `version` labels), so that dashboards, alerts and autoscalers written for Triton's `/metrics` read the kernel's.
///
/// They are read from each loaded version's statistics (`ModelStatistics`, what `/v2/models/stats` answers) when
/// `/metrics` is scraped, not recorded per request: this process answers the gathered query `metrics.inference`
/// with them, the metrics location adds them to its answer, and the samples of worker processes are summed as
/// every other metric's. As the statistics extension's, they count from the version's load: a reload or a new
/// load of a version starts them again (Prometheus' `rate` takes a counter reset in its stride).
enum TritonMetrics {
    /// The gathered query this process answers (a `metrics.` query, which the metrics location adds to its
    /// answer).
    static let query = "metrics.inference"

    /// One model version's figures.
    struct Version {
        var name: String
        var version: String
        var statistics: ModelStatistics
        /// Requests queued now, not yet running.
        var pending: Int
    }

    private static let counters: [(name: String, help: String, value: @Sendable (ModelStatistics) -> UInt64)] = [
        ("nv_inference_request_success", "Number of successful inference requests, all batch sizes", { $0.success.count }),
        ("nv_inference_count", "Number of inferences performed (does not include cached requests)", { $0.inferenceCount }),
        ("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)", { $0.executionCount }),
        ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds (includes cached requests)",
         { $0.success.nanoseconds / 1000 }),
        ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds (includes cached requests)",
         { $0.queue.nanoseconds / 1000 }),
        ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds (does not include cached requests)",
         { $0.computeInput.nanoseconds / 1000 }),
        ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds (does not include cached requests)",
         { $0.computeInfer.nanoseconds / 1000 }),
        ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds (does not include cached requests)",
         { $0.computeOutput.nanoseconds / 1000 }),
    ]

    /// Triton's failure reasons: `REJECTED` for a full queue and for a request whose queue timeout or deadline
    /// passed (Triton's "Request timeout expired" is one), `CANCELED` for a client that left, `BACKEND` for a
    /// failed run; nothing here is `OTHER`, which Triton reports all the same.
    private static func failures(_ statistics: ModelStatistics) -> [(reason: String, count: UInt64)] {
        var rejected = statistics.queueRejections
        rejected.saturatingAdd(statistics.timeouts)
        return [("REJECTED", rejected), ("CANCELED", statistics.cancellations), ("BACKEND", statistics.runFailures), ("OTHER", 0)]
    }

    /// The families for `versions`; none without a version loaded.
    static func families(_ versions: [Version]) -> [PrometheusFamily] {
        guard !versions.isEmpty else { return [] }
        func labels(_ version: Version) -> [String: String] { ["model": version.name, "version": version.version] }
        var families: [PrometheusFamily] = []
        families.append(PrometheusFamily(name: counters[0].name, type: "counter", help: counters[0].help, samples: versions.map {
            PrometheusSample(name: counters[0].name, labels: labels($0), value: Double(counters[0].value($0.statistics)))
        }))
        let failure = "nv_inference_request_failure"
        families.append(PrometheusFamily(name: failure, type: "counter", help: "Number of failed inference requests, all batch sizes",
                                         samples: versions.flatMap { version in
            failures(version.statistics).map {
                PrometheusSample(name: failure, labels: labels(version).merging(["reason": $0.reason]) { $1 }, value: Double($0.count))
            }
        }))
        for counter in counters.dropFirst() {
            families.append(PrometheusFamily(name: counter.name, type: "counter", help: counter.help, samples: versions.map {
                PrometheusSample(name: counter.name, labels: labels($0), value: Double(counter.value($0.statistics)))
            }))
        }
        let pending = "nv_inference_pending_request_count"
        families.append(PrometheusFamily(name: pending, type: "gauge", help: "Instantaneous number of pending requests awaiting execution per-model.",
                                         samples: versions.map {
            PrometheusSample(name: pending, labels: labels($0), value: Double($0.pending))
        }))
        return families
    }

    /// This process's answer to `query`: the families of `repository`'s loaded versions, in the text format.
    static func respond(repository: ModelRepository) -> [UInt8] {
        let versions = repository.loadedModels.map {
            Version(name: $0.signature.name, version: $0.signature.version, statistics: $0.scheduler.currentStatistics,
                    pending: $0.scheduler.pending)
        }
        return Array(PrometheusExposition.render(families(versions)).utf8)
    }
}
