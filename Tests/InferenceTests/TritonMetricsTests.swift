@testable import Inference
import KernelCore
import XCTest

/// Triton's `nv_inference_*` families as read from a version's statistics.
final class TritonMetricsTests: XCTestCase {
    func testTheFamiliesCarryTritonsNamesLabelsAndUnits() throws {
        var statistics = ModelStatistics()
        statistics.success.count = 3
        statistics.success.nanoseconds = 9_999
        statistics.queue.nanoseconds = 2_000
        statistics.computeInfer.nanoseconds = 5_500
        statistics.inferenceCount = 7
        statistics.executionCount = 2
        statistics.queueRejections = 1
        statistics.timeouts = 2
        statistics.cancellations = 4
        statistics.runFailures = 5
        let families = TritonMetrics.families([.init(name: "demo", version: "1", statistics: statistics, pending: 6)])
        let text = PrometheusExposition.render(families)
        let parsed = PrometheusExposition.parse(text)
        XCTAssertEqual(Set(parsed.map(\.name)), ["nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                                            "nv_inference_exec_count", "nv_inference_request_duration_us",
                                            "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
                                            "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
                                            "nv_inference_pending_request_count"])
        func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
            parsed.first { $0.name == name }?.samples.first { $0.labels == ["model": "demo", "version": "1"].merging(labels) { $1 } }?.value
        }
        XCTAssertEqual(value("nv_inference_request_success"), 3)
        XCTAssertEqual(value("nv_inference_request_failure", ["reason": "REJECTED"]), 3)
        XCTAssertEqual(value("nv_inference_request_failure", ["reason": "CANCELED"]), 4)
        XCTAssertEqual(value("nv_inference_request_failure", ["reason": "BACKEND"]), 5)
        XCTAssertEqual(value("nv_inference_request_failure", ["reason": "OTHER"]), 0)
        XCTAssertEqual(value("nv_inference_count"), 7)
        XCTAssertEqual(value("nv_inference_exec_count"), 2)
        XCTAssertEqual(value("nv_inference_request_duration_us"), 9)
        XCTAssertEqual(value("nv_inference_queue_duration_us"), 2)
        XCTAssertEqual(value("nv_inference_compute_infer_duration_us"), 5)
        XCTAssertEqual(value("nv_inference_pending_request_count"), 6)
        XCTAssertEqual(parsed.first { $0.name == "nv_inference_pending_request_count" }?.type, "gauge")
        XCTAssertTrue(TritonMetrics.families([]).isEmpty)
    }

    func testRunFailuresTravelWithTheOtherCountsBetweenWorkerProcesses() throws {
        var statistics = ModelStatistics()
        statistics.runFailures = 3
        var writer = JSONWriter(buffer: .init())
        statistics.write(name: "m", version: "1", into: &writer)
        let read = try XCTUnwrap(ModelStatistics(json: try JSONReader.parse(writer.buffer)))
        var sum = read
        sum.add(read)
        XCTAssertEqual(sum.runFailures, 6)
    }
}
