import CoreMetrics

/// A model's Prometheus metrics, through swift-metrics (whatever backend the process bootstrapped; none in
/// tests): `kernel_model_queue_depth`, `kernel_model_batch_size`, `kernel_model_queue_duration_seconds`,
/// `kernel_model_compute_duration_seconds` and `kernel_model_failures_total`, each labelled `model`.
///
/// The handles are made once per scheduler, so the request path only records (an atomic store or a short lock in
/// the backend). A reload's scheduler of the same model gets the same series back: counters go on counting.
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

    init(model: String) {
        let dimensions = [("model", model)]
        queueDepth = Gauge(label: "kernel_model_queue_depth", dimensions: dimensions)
        batchSize = Recorder(label: "kernel_model_batch_size", dimensions: dimensions, aggregate: true)
        queueDuration = Timer(label: "kernel_model_queue_duration_seconds", dimensions: dimensions)
        computeDuration = Timer(label: "kernel_model_compute_duration_seconds", dimensions: dimensions)
        failures = Counter(label: "kernel_model_failures_total", dimensions: dimensions)
        queueDepth.record(0)
    }
}
