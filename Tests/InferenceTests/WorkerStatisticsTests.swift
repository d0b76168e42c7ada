@testable import Inference
import KernelCore
import NIOCore
import XCTest

/// Statistics of several worker processes, summed as one Triton server reports them.
final class WorkerStatisticsTests: XCTestCase {
    private func sample(runs: Int, batch: Int, seed: UInt64) -> ModelStatistics {
        var statistics = ModelStatistics()
        for run in 0..<runs {
            let timing = ComputeTiming(inputNanoseconds: seed + UInt64(run), inferNanoseconds: 1000 * seed, outputNanoseconds: 7)
            statistics.executionCount += 1
            statistics.batches[batch, default: BatchStatistics()].add(timing)
            statistics.success.add(5000 + seed)
            statistics.queue.add(300)
            statistics.computeInfer.add(1000 * seed)
            statistics.inferenceCount += UInt64(batch)
        }
        statistics.failure.add(42)
        statistics.lastInference = 1_764_000_000_000 + seed
        statistics.timeouts = seed
        return statistics
    }

    private func body(_ entries: [(String, String, ModelStatistics)]) -> [UInt8] {
        var writer = JSONWriter(buffer: ByteBuffer())
        writer.byte(UInt8(ascii: "["))
        for (index, entry) in entries.enumerated() {
            if index > 0 { writer.byte(UInt8(ascii: ",")) }
            entry.2.write(name: entry.0, version: entry.1, into: &writer)
        }
        writer.byte(UInt8(ascii: "]"))
        return Array(buffer: writer.buffer)
    }

    func testAnEntryReadsBackAsItWasWritten() throws {
        let statistics = sample(runs: 3, batch: 4, seed: 9)
        let parsed = try JSONReader.parse(body([("m", "1", statistics)]))
        XCTAssertEqual(ModelStatistics(json: try XCTUnwrap(parsed.arrayValue?.first)), statistics)
        XCTAssertNil(ModelStatistics(json: try JSONReader.parse(Array(#"{"name": "m"}"#.utf8))))
    }

    func testTheWorkersAnswersAreSummedPerVersion() {
        let first = sample(runs: 2, batch: 1, seed: 1), second = sample(runs: 3, batch: 4, seed: 2)
        let answers = [
            ProcessAnswer(source: .worker(1), pid: 10, body: body([("m", "1", first), ("n", "1", first)])),
            ProcessAnswer(source: .worker(2), pid: 20, body: body([("m", "1", second)])),
            ProcessAnswer(source: .worker(3), pid: 30, body: []),  // serves another repository
            ProcessAnswer(source: .worker(4), pid: 40, body: Array("not json".utf8)),
        ]
        let merged = WorkerStatistics.merge(answers)
        XCTAssertEqual(merged.map { "\($0.name)/\($0.version)" }, ["m/1", "n/1"])
        let m = merged[0].statistics
        XCTAssertEqual(m.executionCount, 5)
        XCTAssertEqual(m.inferenceCount, 2 + 12)
        XCTAssertEqual(m.success.count, 5)
        XCTAssertEqual(m.success.nanoseconds, 2 * 5001 + 3 * 5002)
        XCTAssertEqual(m.failure.count, 2)
        XCTAssertEqual(m.batches.keys.sorted(), [1, 4])
        XCTAssertEqual(m.batches[4]?.computeInfer.count, 3)
        XCTAssertEqual(m.lastInference, second.lastInference)
        XCTAssertEqual(m.timeouts, 3)
        XCTAssertEqual(merged[1].statistics, first)
    }
}
