import KernelCore
import XCTest
@testable import Status

final class HistogramCountsTests: XCTestCase {
    /// 10 observations: 2 at or below 0.01, 8 at or below 0.1, all 10 at or below 1.
    let histogram = HistogramCounts(buckets: [0.01: 2, 0.1: 8, 1: 10, .infinity: 10], sum: 2.5, count: 10)

    func testQuantileInterpolatesInsideTheBucketTheRankFallsIn() throws {
        // Rank 5 of 10 lies in (0.01, 0.1], which holds ranks 3...8: 3/6 of the way.
        XCTAssertEqual(try XCTUnwrap(histogram.quantile(0.5)), 0.01 + 0.09 * 3 / 6, accuracy: 1e-12)
        // Rank 9 of 10 in (0.1, 1], holding ranks 9...10: half way.
        XCTAssertEqual(try XCTUnwrap(histogram.quantile(0.9)), 0.1 + 0.9 * 1 / 2, accuracy: 1e-12)
        // The first bucket starts at 0: rank 1 is half of (0, 0.01].
        XCTAssertEqual(try XCTUnwrap(histogram.quantile(0.1)), 0.005, accuracy: 1e-12)
    }

    func testARankInTheInfiniteBucketGivesTheHighestFiniteBound() {
        let slow = HistogramCounts(buckets: [0.1: 1, 1: 2, .infinity: 10], sum: 50, count: 10)
        XCTAssertEqual(slow.quantile(0.99), 1)
        XCTAssertEqual(HistogramCounts(buckets: [.infinity: 3], sum: 3, count: 3).quantile(0.5), nil)
    }

    func testNothingObservedHasNoQuantileOrMean() {
        let empty = HistogramCounts(buckets: [0.1: 0, .infinity: 0], sum: 0, count: 0)
        XCTAssertNil(empty.quantile(0.5))
        XCTAssertNil(empty.mean)
        XCTAssertNil(HistogramCounts.empty.quantile(0.5))
        XCTAssertNil(histogram.quantile(1.5))
    }

    func testSinceIsTheHistogramOfWhatHappenedInBetween() {
        let later = HistogramCounts(buckets: [0.01: 3, 0.1: 12, 1: 15, .infinity: 16], sum: 9.5, count: 16)
        let between = later.since(histogram)
        XCTAssertEqual(between, HistogramCounts(buckets: [0.01: 1, 0.1: 4, 1: 5, .infinity: 6], sum: 7, count: 6))
        XCTAssertEqual(between.mean, 7.0 / 6)
    }

    func testAHistogramThatWentDownStartedAgainAndCountsWhole() {
        let restarted = HistogramCounts(buckets: [0.01: 1, 0.1: 1, 1: 1, .infinity: 1], sum: 0.005, count: 1)
        XCTAssertEqual(restarted.since(histogram), restarted)
    }

    func testAddSumsBucketsOfDifferentBounds() {
        var total = HistogramCounts(buckets: [0.1: 1, .infinity: 1], sum: 0.05, count: 1)
        total.add(HistogramCounts(buckets: [0.5: 2, .infinity: 2], sum: 0.6, count: 2))
        XCTAssertEqual(total, HistogramCounts(buckets: [0.1: 1, 0.5: 2, .infinity: 3], sum: 0.65, count: 3))
    }

    func testCounterIncreaseTreatsADropAsAReset() {
        XCTAssertEqual(counterIncrease(from: 10, to: 15), 5)
        XCTAssertEqual(counterIncrease(from: 10, to: 4), 4)
    }
}

/// Prometheus text of one process, as the metrics module writes it.
func exposition(requests: [(String, Int)], buckets: [(String, Int)], sum: Double, model: (batches: Int, requests: Int)? = nil,
                peerUp: Int = 1, failures: Int = 0, rss: Int = 31_457_280) -> String {
    var text = "# HELP kernel_http_requests_total Requests answered.\n# TYPE kernel_http_requests_total counter\n"
    for (status, count) in requests {
        text += "kernel_http_requests_total{server=\"\",location=\"/\",status=\"\(status)\"} \(count)\n"
    }
    text += "# HELP kernel_http_request_duration_seconds Request latency.\n# TYPE kernel_http_request_duration_seconds histogram\n"
    for (bound, count) in buckets {
        text += "kernel_http_request_duration_seconds_bucket{server=\"\",location=\"/\",le=\"\(bound)\"} \(count)\n"
    }
    let total = buckets.last?.1 ?? 0
    text += "kernel_http_request_duration_seconds_sum{server=\"\",location=\"/\"} \(sum)\n"
    text += "kernel_http_request_duration_seconds_count{server=\"\",location=\"/\"} \(total)\n"
    text += "# TYPE kernel_upstream_peer_up gauge\nkernel_upstream_peer_up{upstream=\"app\",peer=\"127.0.0.1:9001\"} \(peerUp)\n"
    text += "# TYPE kernel_upstream_peer_failures_total counter\nkernel_upstream_peer_failures_total{upstream=\"app\",peer=\"127.0.0.1:9001\"} \(failures)\n"
    text += "# TYPE kernel_process_resident_memory_bytes gauge\nkernel_process_resident_memory_bytes{worker=\"1\"} \(rss)\n"
    if let model {
        text += "# TYPE kernel_model_queue_depth gauge\nkernel_model_queue_depth{model=\"demo\"} 2\n"
        text += "# TYPE kernel_model_batch_size histogram\n"
        text += "kernel_model_batch_size_bucket{model=\"demo\",le=\"1\"} 0\n"
        text += "kernel_model_batch_size_bucket{model=\"demo\",le=\"4\"} \(model.batches)\n"
        text += "kernel_model_batch_size_bucket{model=\"demo\",le=\"+Inf\"} \(model.batches)\n"
        text += "kernel_model_batch_size_sum{model=\"demo\"} \(model.requests)\n"
        text += "kernel_model_batch_size_count{model=\"demo\"} \(model.batches)\n"
        text += "# TYPE kernel_model_failures_total counter\nkernel_model_failures_total{model=\"demo\"} 1\n"
    }
    return text
}

final class ProcessCountersTests: XCTestCase {
    func testReadsRequestsAndTheLatencyHistogramAcrossLabels() {
        let text = exposition(requests: [("200", 7), ("404", 3)], buckets: [("0.005", 4), ("0.01", 9), ("+Inf", 10)], sum: 0.08)
            + "kernel_http_request_duration_seconds_bucket{server=\"b\",location=\"/x\",le=\"0.01\"} 1\n"
            + "kernel_http_request_duration_seconds_bucket{server=\"b\",location=\"/x\",le=\"+Inf\"} 1\n"
        let counters = ProcessCounters(PrometheusExposition.parse(text))
        XCTAssertEqual(counters.requests, 10)
        XCTAssertEqual(counters.requestDuration.buckets, [0.005: 4, 0.01: 10, .infinity: 11])
        XCTAssertEqual(counters.requestDuration.sum, 0.08)
        XCTAssertTrue(counters.models.isEmpty)
    }

    func testReadsTheModelsHistogramsAndFailures() throws {
        let text = exposition(requests: [], buckets: [], sum: 0, model: (batches: 5, requests: 12))
        let demo = try XCTUnwrap(ProcessCounters(PrometheusExposition.parse(text)).models["demo"])
        XCTAssertEqual(demo.batchSize, HistogramCounts(buckets: [1: 0, 4: 5, .infinity: 5], sum: 12, count: 5))
        XCTAssertEqual(demo.failures, 1)
    }

    func testIgnoresOtherMetricsAndBadBounds() {
        let text = "go_threads 4\nkernel_http_request_duration_seconds_bucket{le=\"fast\"} 3\nkernel_http_requests_totals 5\n"
        XCTAssertEqual(ProcessCounters(PrometheusExposition.parse(text)), ProcessCounters())
    }
}

final class StatusHistoryTests: XCTestCase {
    func counters(_ requests: Double, fast: Double = 0) -> ProcessCounters {
        var counters = ProcessCounters()
        counters.requests = requests
        counters.requestDuration = HistogramCounts(buckets: [0.01: fast, .infinity: requests], sum: 0, count: requests)
        return counters
    }

    func testTheFirstReadingIsTheBaselineAndLaterOnesArePointsOfWhatHappened() throws {
        var history = StatusHistory(capacity: 10)
        XCTAssertFalse(history.record([1: counters(100), 2: counters(50)], monotonic: 10, wall: 1000))
        XCTAssertTrue(history.record([1: counters(110, fast: 10), 2: counters(55, fast: 5)], monotonic: 11, wall: 1001))
        XCTAssertTrue(history.record([1: counters(130, fast: 20), 2: counters(55, fast: 5)], monotonic: 13, wall: 1003))
        XCTAssertEqual(history.points.map(\.time), [1001, 1003])
        XCTAssertEqual(history.points.map(\.requestsPerSecond), [15, 10])
        // The first point's fast bucket rose by 15 of 15.
        XCTAssertEqual(history.points[0].increase.requestDuration.buckets[0.01], 15)
    }

    func testAReplacedWorkerCountsFromZeroAndAGoneOneIsForgotten() {
        var history = StatusHistory(capacity: 10)
        history.record([1: counters(100), 2: counters(50)], monotonic: 0, wall: 0)
        // Worker 2 (pid 2) was replaced by pid 3, which answered 4 requests since it started.
        history.record([1: counters(101), 3: counters(4)], monotonic: 1, wall: 1)
        XCTAssertEqual(history.points.last?.increase.requests, 5)
        // A process whose counters went down (its metrics started again) counts whole, not negative.
        history.record([1: counters(2), 3: counters(6)], monotonic: 2, wall: 2)
        XCTAssertEqual(history.points.last?.increase.requests, 4)
    }

    func testAReadingNotLaterThanThePreviousIsIgnored() {
        var history = StatusHistory(capacity: 10)
        history.record([1: counters(1)], monotonic: 5, wall: 5)
        XCTAssertFalse(history.record([1: counters(2)], monotonic: 5, wall: 5))
        XCTAssertFalse(history.record([1: counters(2)], monotonic: 4, wall: 4))
        XCTAssertTrue(history.points.isEmpty)
    }

    func testTheRingKeepsTheNewestCapacityPoints() {
        var history = StatusHistory(capacity: 3)
        for second in 0...6 { history.record([1: counters(Double(second * 2))], monotonic: Double(second), wall: Double(second)) }
        XCTAssertEqual(history.points.map(\.time), [4, 5, 6])
    }

    func testAWindowSumsTheNewestPoints() {
        var history = StatusHistory(capacity: 100)
        for second in 0...20 {
            history.record([1: counters(Double(second * second))], monotonic: Double(second), wall: Double(second))
        }
        let window = history.window(seconds: 10)
        // Points 11...20: 400 - 100 requests in 10 s.
        XCTAssertEqual(window.increase.requests, 300)
        XCTAssertEqual(window.seconds, 10)
        XCTAssertEqual(StatusHistory(capacity: 1).window(seconds: 10).seconds, 0)
    }
}

final class StatusReportTests: XCTestCase {
    func process(_ pid: Int32, _ number: Int, _ text: String) -> ProcessMetrics {
        ProcessMetrics(source: .worker(number), pid: pid, families: PrometheusExposition.parse(text))
    }

    func report() -> String {
        let before = [process(11, 1, exposition(requests: [("200", 10)], buckets: [("0.01", 5), ("0.1", 10), ("+Inf", 10)],
                                               sum: 0.3, model: (batches: 2, requests: 4))),
                      process(12, 2, exposition(requests: [("200", 1)], buckets: [("0.01", 1), ("0.1", 1), ("+Inf", 1)],
                                               sum: 0.001, peerUp: 0, failures: 2))]
        let after = [process(11, 1, exposition(requests: [("200", 30)], buckets: [("0.01", 15), ("0.1", 30), ("+Inf", 30)],
                                              sum: 0.9, model: (batches: 6, requests: 16))),
                     process(12, 2, exposition(requests: [("200", 1), ("502", 4)], buckets: [("0.01", 1), ("0.1", 5), ("+Inf", 5)],
                                              sum: 0.2, peerUp: 0, failures: 3))]
        var history = StatusHistory(capacity: 300)
        history.record(Dictionary(uniqueKeysWithValues: before.map { ($0.pid, $0.counters) }), monotonic: 0, wall: 1000)
        history.record(Dictionary(uniqueKeysWithValues: after.map { ($0.pid, $0.counters) }), monotonic: 2, wall: 1002)
        let workers = [WorkerProcessInfo(number: 2, pid: 12, pool: "main", spawnedAt: 900, respawns: 1, state: "serving"),
                       WorkerProcessInfo(number: 1, pid: 11, pool: "main", spawnedAt: 800, respawns: 0, state: "serving"),
                       WorkerProcessInfo(number: 3, pid: 13, pool: "main", spawnedAt: 1001, respawns: 0, state: "starting")]
        return StatusReport(sequence: 7, time: 1002, intervalSeconds: 1, history: history, processes: after,
                            workers: workers).json
    }

    func testTheSummaryIsTheTotalsAndTheRatesOfTheWindow() {
        let json = report()
        XCTAssertTrue(json.hasPrefix(#"{"sequence":7,"time":1002,"interval_seconds":1,"history_seconds":300,"processes":2,"#), json)
        // 35 requests in all; 24 in the 2 s since the baseline; p50 of the 24: rank 12 in (0.01, 0.1] (ranks 11...24).
        let p50 = 0.01 + (0.1 - 0.01) * (12.0 - 10) / 14
        XCTAssertTrue(json.contains(#""summary":{"window_seconds":10,"requests_total":35,"requests_per_second":12,"latency_seconds":{"p50":\#(p50),"#), json)
        // The series is rounded to a tenth of a microsecond.
        XCTAssertTrue(json.contains(#""series":{"time":[1002],"requests_per_second":[12],"latency_p50_seconds":[0.0228571],"#), json)
    }

    func testWorkersAreListedInOrderWithTheirOwnRequestsAndMemory() {
        let json = report()
        XCTAssertTrue(json.contains(#""workers":[{"pool":"main","number":1,"pid":11,"state":"serving","requests":30,"respawns":0,"rss_bytes":31457280,"spawned_at":800},{"pool":"main","number":2,"pid":12,"state":"serving","requests":5,"respawns":1,"rss_bytes":31457280,"spawned_at":900},{"pool":"main","number":3,"pid":13,"state":"starting","requests":null,"respawns":0,"rss_bytes":null,"spawned_at":1001}]"#), json)
    }

    func testAPeerDownInOneWorkerIsPartialWithTheFailuresOfAll() {
        XCTAssertTrue(report().contains(#""upstreams":[{"upstream":"app","peer":"127.0.0.1:9001","state":"partial","up":1,"reporting":2,"failures":3}]"#))
    }

    func testModelsShowQueueDepthAndTheBatchesOfTheWindow() {
        // 4 batches holding 12 requests in 2 s; all in the (1, 4] bucket.
        XCTAssertTrue(report().contains(#""models":[{"model":"demo","queue_depth":2,"window_seconds":60,"requests_per_second":6,"batches_per_second":2,"batch_size":{"mean":3,"p50":2.5,"p90":3.7"#), report())
        XCTAssertTrue(report().contains(#""queue_latency_seconds":{"p50":null,"p99":null},"compute_latency_seconds":{"p50":null,"p99":null},"failures":1}]"#))
    }

    func testNoProcessesGiveAnEmptyButWholeDocument() {
        let json = StatusReport(sequence: 1, time: 5, intervalSeconds: 1, history: StatusHistory(capacity: 300), processes: [],
                                workers: []).json
        XCTAssertEqual(json, #"{"sequence":1,"time":5,"interval_seconds":1,"history_seconds":300,"processes":0,"summary":{"window_seconds":10,"requests_total":0,"requests_per_second":0,"latency_seconds":{"p50":null,"p90":null,"p99":null}},"series":{"time":[],"requests_per_second":[],"latency_p50_seconds":[],"latency_p90_seconds":[],"latency_p99_seconds":[]},"workers":[],"upstreams":[],"models":[]}"#)
    }
}

final class StatusJSONTests: XCTestCase {
    func testNumbersAreJSONAndNonFiniteOnesNull() {
        XCTAssertEqual(StatusJSON.format(12), "12")
        XCTAssertEqual(StatusJSON.format(-3), "-3")
        XCTAssertEqual(StatusJSON.format(0.0125), "0.0125")
        XCTAssertEqual(StatusJSON.format(1e-5), "1e-05")
        XCTAssertEqual(StatusJSON.format(1e20), "1e+20")
        XCTAssertEqual(StatusJSON.number(Double.infinity), .null)
        XCTAssertEqual(StatusJSON.number(Double.nan), .null)
        XCTAssertEqual(StatusJSON.object([("a\"b", .array([.null, .bool(true), .string("x\ny")]))]).rendered,
                       #"{"a\"b":[null,true,"x\ny"]}"#)
    }
}

final class StatusHandlerTests: XCTestCase {
    func testTheQueryChoosesTheFormat() {
        XCTAssertEqual(try StatusHandler.format(ofQuery: "").get(), .page)
        XCTAssertEqual(try StatusHandler.format(ofQuery: "format=json").get(), .json)
        XCTAssertEqual(try StatusHandler.format(ofQuery: "x=1&format=json").get(), .json)
        XCTAssertEqual(try StatusHandler.format(ofQuery: "format=html").get(), .page)
        guard case .failure(let error) = StatusHandler.format(ofQuery: "format=xml") else { return XCTFail("xml accepted") }
        XCTAssertEqual(error.status, 400)
    }

    func testThePageLoadsNothingFromElsewhere() {
        let html = StatusPage.html
        // The one URL in it is the SVG namespace's name, which is never fetched.
        XCTAssertEqual(html.split(separator: "http://").count, html.split(separator: "http://www.w3.org/2000/svg\"").count)
        XCTAssertFalse(html.contains("https://"))
        XCTAssertFalse(html.contains("<script src"))
        XCTAssertTrue(StatusHandler.page.headers["Content-Security-Policy"]?.hasPrefix("default-src 'none'") ?? false)
    }
}
