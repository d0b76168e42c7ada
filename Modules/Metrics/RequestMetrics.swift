import KernelCore
import NIOConcurrencyHelpers
import Prometheus

/// Counts every finished exchange: `kernel_http_requests_total{server,location,status}`,
/// `kernel_http_request_duration_seconds{server,location}` and, for proxied requests that went on to another
/// peer, `kernel_upstream_retries_total{upstream}`.
///
/// A finish observer, so it sees what the access log sees, on the connection's event loop. Each series' handles
/// are looked up once and then kept: a request costs a dictionary lookup under a lock, an atomic increment and
/// the histogram's own short lock.
final class RequestMetrics: RequestFinishObserver {
    private struct SeriesKey: Hashable {
        var server: String
        var location: String
        var status: Int
    }

    private struct Series {
        let requests: Counter
        let duration: DurationHistogram
    }

    private let registry: PrometheusCollectorRegistry
    private let series = NIOLockedValueBox<[SeriesKey: Series]>([:])
    private let retries = NIOLockedValueBox<[String: Counter]>([:])

    init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    private static var requestsDescriptor: MetricNameDescriptor { descriptor("kernel_http_requests", unit: "total") }
    private static var durationDescriptor: MetricNameDescriptor { descriptor("kernel_http_request_duration", unit: "seconds") }
    private static var retriesDescriptor: MetricNameDescriptor { descriptor("kernel_upstream_retries", unit: "total") }

    private static func descriptor(_ name: String, unit: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: unit, helpText: KernelMetricFamilies.all["\(name)_\(unit)"]?.help ?? "")
    }

    func exchangeFinished(_ exchange: FinishedExchange) {
        let key = SeriesKey(server: exchange.route.serverName, location: exchange.route.location, status: exchange.status)
        let handles = series.withLockedValue { cache -> Series in
            if let found = cache[key] { return found }
            let made = Series(
                requests: registry.makeCounter(descriptor: Self.requestsDescriptor,
                                               labels: [("server", key.server), ("location", key.location), ("status", String(key.status))]),
                duration: registry.makeDurationHistogram(descriptor: Self.durationDescriptor,
                                                         labels: [("server", key.server), ("location", key.location)],
                                                         buckets: KernelMetricsSystem.durationBuckets))
            cache[key] = made
            return made
        }
        handles.requests.increment()
        handles.duration.record(.nanoseconds(Int64(clamping: exchange.endNanoseconds &- exchange.startNanoseconds)))
        if let upstream = exchange.upstream, upstream.attempts.count > 1 {
            retryCounter(upstream.group).increment(by: Int64(upstream.attempts.count - 1))
        }
    }

    private func retryCounter(_ group: String) -> Counter {
        retries.withLockedValue { cache in
            if let found = cache[group] { return found }
            let made = registry.makeCounter(descriptor: Self.retriesDescriptor, labels: [("upstream", group)])
            cache[group] = made
            return made
        }
    }
}
