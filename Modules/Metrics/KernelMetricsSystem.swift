import CoreMetrics
import NIOConcurrencyHelpers
import Prometheus

/// The process's metrics backend: one Prometheus registry behind swift-metrics.
///
/// Modules record through swift-metrics (`Counter`, `Gauge`, `Timer`, `Recorder` from CoreMetrics); `bootstrap`,
/// called once by the kernel's main before any configuration loads, points swift-metrics at this registry, so
/// those handles land here. The registry lives as long as the process: counters go on across reloads, as a
/// Prometheus counter should, and a process's answer to the `"metrics"` query is this registry's text.
public enum KernelMetricsSystem {
    /// The registry every metric of this process is in.
    public static let registry = PrometheusCollectorRegistry()

    private static let bootstrapped = NIOLockedValueBox(false)

    /// Bucket bounds, in seconds, of the latency histograms (requests, model queue and compute): from half a
    /// millisecond, for a small model's run, to ten seconds.
    public static let durationBuckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .microseconds(2500), .milliseconds(5), .milliseconds(10),
        .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .microseconds(2_500_000), .seconds(5), .seconds(10),
    ]

    /// Bucket bounds of `kernel_model_batch_size`: rows per run, powers of two.
    public static let batchSizeBuckets: [Double] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]

    /// Makes swift-metrics record into `registry`. Only the first call does anything (swift-metrics allows one
    /// bootstrap per process).
    public static func bootstrap() {
        let first = bootstrapped.withLockedValue { done -> Bool in
            defer { done = true }
            return !done
        }
        guard first else { return }
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = durationBuckets
        factory.valueHistogramBuckets["kernel_model_batch_size"] = batchSizeBuckets
        MetricsSystem.bootstrap(factory)
    }
}
