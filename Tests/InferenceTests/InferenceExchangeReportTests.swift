import XCTest
@testable import Inference

final class InferenceExchangeReportTests: XCTestCase {
    func testServerTimingNamesEveryPhaseInMillisecondsRoundedToTheMicrosecond() {
        let timing = InferenceTiming(queueNanoseconds: 120_499, batchSize: 4,
                                     compute: ComputeTiming(inputNanoseconds: 9_500, inferNanoseconds: 1_250_000,
                                                            outputNanoseconds: 0))
        let report = InferenceExchangeReport(timing: timing, decodeNanoseconds: 12_345_678_901, encodeNanoseconds: 999_999)
        XCTAssertEqual(report.serverTiming,
                       "queue;dur=0.120, batch;desc=\"4\", compute_input;dur=0.010, compute_infer;dur=1.250, "
                       + "compute_output;dur=0.000, decode;dur=12345.679, encode;dur=1.000")
        XCTAssertEqual(report.computeNanoseconds, 1_259_500)
    }

    func testTheLargestValuesKeepEveryDigit() {
        let timing = InferenceTiming(queueNanoseconds: UInt64.max, batchSize: Int.max,
                                     compute: ComputeTiming(inputNanoseconds: 1_000, inferNanoseconds: 10_000_000, outputNanoseconds: 500))
        let text = InferenceExchangeReport(timing: timing, decodeNanoseconds: 0, encodeNanoseconds: 0).serverTiming
        XCTAssertTrue(text.hasPrefix("queue;dur=18446744073709.552, batch;desc=\"9223372036854775807\", compute_input;dur=0.001, compute_infer;dur=10.000, compute_output;dur=0.001,"), text)
        XCTAssertEqual(InferenceExchangeReport.seconds(1_500_000), "0.002")
    }
}
