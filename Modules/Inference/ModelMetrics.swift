import CoreMetrics

/// A model's Prometheus metrics, through swift-metrics (whatever backend the process bootstrapped; none in
/// tests): `kernel_model_queue_depth`, `kernel_model_batch_size`, `kernel_model_queue_duration_seconds`,
/// `kernel_model_compute_duration_seconds` and `kernel_model_failures_total`, each labelled `model` and `version`:
/// the versions of a model serve side by side, each with its own queue, so each has its own series (one gauge per
/// model would hold whichever version recorded last).
///
/// The handles are made once per scheduler, so the request path only records (an atomic store or a short lock in
/// the backend). A reload's scheduler of the same version gets the same series back: counters go on counting.
struct ModelMetrics: Sendable {
    /// Requests queued or running.
    let queueDepth: Gauge
    /// Rows of each model run.
    let batchSize: Recorder
    /// Time each request waited in the queue before its batch started.
    let queueDuration: Timer
    /// Time of each model run (one observation per run, whatever the number of requests in its batch).
    let computeDuration: Timer
    /// Requests that failed: runtime errors, timeouts, queue-full rejections.
    let failures: Counter

    /// `factory`: the process's (`MetricsSystem.factory`, what the kernel bootstrapped), or a test's.
    init(model: String, version: String, factory: any MetricsFactory) {
        let dimensions = [("model", model), ("version", version)]
        queueDepth = Gauge(label: "kernel_model_queue_depth", dimensions: dimensions, factory: factory)
        batchSize = Recorder(label: "kernel_model_batch_size", dimensions: dimensions, aggregate: true, factory: factory)
        queueDuration = Timer(label: "kernel_model_queue_duration_seconds", dimensions: dimensions, factory: factory)
        computeDuration = Timer(label: "kernel_model_compute_duration_seconds", dimensions: dimensions, factory: factory)
        failures = Counter(label: "kernel_model_failures_total", dimensions: dimensions, factory: factory)
        queueDepth.record(0)
    }
}
