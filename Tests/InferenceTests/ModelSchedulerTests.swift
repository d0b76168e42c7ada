import Dispatch
import KernelCore
import Logging
import MetricsTestKit
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest
@testable import Inference

/// A model that doubles its input and sums each row, recording the batches it ran. While `gate` is closed, the
/// first run blocks, so tests can fill the queue deterministically.
final class RecordingRunner: ModelRunner, @unchecked Sendable {
    let batches = NIOLockedValueBox<[[Int64]]>([])
    let entered = DispatchSemaphore(value: 0)
    let gate = DispatchSemaphore(value: 0)
    private let blockFirst: Bool
    private let runs = NIOLockedValueBox(0)

    init(blockFirst: Bool) { self.blockFirst = blockFirst }

    func run(_ inputs: [Tensor]) throws -> [Tensor] {
        let index = runs.withLockedValue { value -> Int in value += 1; return value }
        batches.withLockedValue { $0.append(inputs[0].shape) }
        if blockFirst, index == 1 {
            entered.signal()
            gate.wait()
        }
        let values = inputs[0].float32Values
        let doubled = values.map { $0 * 2 }
        let width = Int(inputs[0].shape.dropFirst().reduce(1, *))
        let sums = stride(from: 0, to: values.count, by: max(width, 1)).map { values[$0..<min($0 + width, values.count)].reduce(0, +) }
        return [Tensor(float32: doubled, shape: inputs[0].shape), Tensor(float32: sums, shape: [inputs[0].shape[0], 1])]
    }
}

final class ModelSchedulerTests: XCTestCase {
    var group: MultiThreadedEventLoopGroup!

    override func setUp() { group = MultiThreadedEventLoopGroup(numberOfThreads: 1) }
    override func tearDown() { try? group.syncShutdownGracefully() }

    private func rows(_ count: Int, width: Int, start: Float) -> Tensor {
        Tensor(float32: (0..<(count * width)).map { start + Float($0) }, shape: [Int64(count), Int64(width)])
    }

    private func status(of future: EventLoopFuture<[Tensor]>) -> Int? {
        do {
            _ = try future.wait()
            return 200
        } catch let error as KernelHTTPError {
            return error.status
        } catch {
            return nil
        }
    }

    func testJoinsQueuedRequestsAndSplitsOutputsBack() throws {
        let runner = RecordingRunner(blockFirst: true)
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(maxBatchSize: 6, dynamicBatching: true),
                                       runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let loop = group.next()
        let first = scheduler.submit([rows(1, width: 3, start: 0)], on: loop).map(\.outputs)
        runner.entered.wait()
        let inputs = [rows(1, width: 3, start: 10), rows(2, width: 3, start: 20), rows(3, width: 3, start: 30)]
        let futures = inputs.map { scheduler.submit([$0], on: loop).map(\.outputs) }
        runner.gate.signal()
        XCTAssertEqual(try first.wait()[0].float32Values, [0, 2, 4])
        for (input, future) in zip(inputs, futures) {
            let outputs = try future.wait()
            XCTAssertEqual(outputs[0].shape, input.shape)
            XCTAssertEqual(outputs[0].float32Values, input.float32Values.map { $0 * 2 })
            XCTAssertEqual(outputs[1].shape, [input.shape[0], 1])
        }
        XCTAssertEqual(runner.batches.withLockedValue { $0 }, [[1, 3], [6, 3]])
        let statistics = scheduler.currentStatistics
        XCTAssertEqual(statistics.executionCount, 2)
        XCTAssertEqual(statistics.inferenceCount, 7)
        XCTAssertEqual(statistics.batches[6]?.computeInfer.count, 1)
        XCTAssertEqual(statistics.batches[1]?.computeInfer.count, 1)
    }

    func testRequestsSubmittedInOneEventLoopTickJoinOneBatch() throws {
        let runner = RecordingRunner(blockFirst: false)
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(maxBatchSize: 8, dynamicBatching: true),
                                       runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        // The instance thread is asleep before the burst (a bounded wait for it to get there).
        for _ in 0..<1000 where scheduler.waitingThreads == 0 { usleep(1000) }
        XCTAssertEqual(scheduler.waitingThreads, 1)
        let loop = group.next()
        // Four submissions in one task of the loop: the thread is woken once, after the task, and takes them all.
        let futures = try loop.submit {
            (0..<4).map { scheduler.submit([self.rows(1, width: 2, start: Float($0))], on: loop).map(\.outputs) }
        }.wait()
        for (index, future) in futures.enumerated() {
            XCTAssertEqual(try future.wait()[0].float32Values, [Float(index) * 2, Float(index) * 2 + 2])
        }
        XCTAssertEqual(runner.batches.withLockedValue { $0 }, [[4, 2]])
    }

    func testTheCallbackFormCompletesOnTheRequestsEventLoop() throws {
        let runner = RecordingRunner(blockFirst: false)
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(maxBatchSize: 4, dynamicBatching: true),
                                       runners: [runner], logger: Logger(label: "test"))
        let loop = group.next()
        let answered = loop.makePromise(of: [Float].self)
        scheduler.submit([rows(2, width: 2, start: 1)], on: loop) { outcome in
            XCTAssertTrue(loop.inEventLoop)
            answered.completeWith(outcome.map { $0.outputs[0].float32Values })
        }
        XCTAssertEqual(try answered.futureResult.wait(), [2, 4, 6, 8])
        // A failure takes the same way, with the same status as the future's.
        scheduler.stop()
        let refused = loop.makePromise(of: [Float].self)
        scheduler.submit([rows(1, width: 2, start: 0)], on: loop) { outcome in
            XCTAssertTrue(loop.inEventLoop)
            refused.completeWith(outcome.map { $0.outputs[0].float32Values })
        }
        XCTAssertThrowsError(try refused.futureResult.wait()) { error in
            XCTAssertEqual((error as? KernelHTTPError)?.status, 503)
        }
    }

    func testDoesNotJoinRequestsWhoseOtherDimensionsDiffer() throws {
        let runner = RecordingRunner(blockFirst: true)
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(maxBatchSize: 8, dynamicBatching: true),
                                       runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let loop = group.next()
        let first = scheduler.submit([rows(1, width: 3, start: 0)], on: loop).map(\.outputs)
        runner.entered.wait()
        let a1 = scheduler.submit([rows(1, width: 3, start: 1)], on: loop).map(\.outputs)
        let b = scheduler.submit([rows(1, width: 2, start: 2)], on: loop).map(\.outputs)
        let a2 = scheduler.submit([rows(1, width: 3, start: 3)], on: loop).map(\.outputs)
        runner.gate.signal()
        for future in [first, a1, b, a2] { _ = try future.wait() }
        XCTAssertEqual(try b.wait()[0].float32Values, [4, 6])
        XCTAssertEqual(runner.batches.withLockedValue { $0 }, [[1, 3], [2, 3], [1, 2]])
    }

    func testNeverExceedsMaxBatchSizeAndPrefersPreferredSizes() throws {
        let runner = RecordingRunner(blockFirst: true)
        let policy = SchedulingPolicy(maxBatchSize: 8, dynamicBatching: true, preferredBatchSizes: [2, 4])
        let scheduler = ModelScheduler(modelName: "m", policy: policy, runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let loop = group.next()
        let first = scheduler.submit([rows(1, width: 1, start: 0)], on: loop).map(\.outputs)
        runner.entered.wait()
        let futures = (0..<5).map { scheduler.submit([rows(1, width: 1, start: Float($0))], on: loop).map(\.outputs) }
        runner.gate.signal()
        _ = try first.wait()
        for future in futures { _ = try future.wait() }
        // Five queued rows: the largest preferred size (4) goes first, then the one left.
        XCTAssertEqual(runner.batches.withLockedValue { $0.map { $0[0] } }, [1, 4, 1])
    }

    func testWithoutDynamicBatchingEveryRequestRunsAlone() throws {
        let runner = RecordingRunner(blockFirst: true)
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(maxBatchSize: 8, dynamicBatching: false),
                                       runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let loop = group.next()
        let first = scheduler.submit([rows(1, width: 2, start: 0)], on: loop).map(\.outputs)
        runner.entered.wait()
        let others = (0..<3).map { scheduler.submit([rows(1, width: 2, start: Float($0))], on: loop).map(\.outputs) }
        runner.gate.signal()
        for future in [first] + others { _ = try future.wait() }
        XCTAssertEqual(runner.batches.withLockedValue { $0.map { $0[0] } }, [1, 1, 1, 1])
    }

    func testFullQueueIsRejectedWith503AtOnce() throws {
        let runner = RecordingRunner(blockFirst: true)
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(maxBatchSize: 8, dynamicBatching: true, maxQueue: 2),
                                       runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let loop = group.next()
        let first = scheduler.submit([rows(1, width: 2, start: 0)], on: loop).map(\.outputs)
        runner.entered.wait()
        let queued = (0..<2).map { scheduler.submit([rows(1, width: 2, start: Float($0))], on: loop).map(\.outputs) }
        let rejected = scheduler.submit([rows(1, width: 2, start: 9)], on: loop).map(\.outputs)
        XCTAssertEqual(status(of: rejected), 503)
        XCTAssertEqual(scheduler.currentStatistics.queueRejections, 1)
        runner.gate.signal()
        for future in [first] + queued { XCTAssertEqual(status(of: future), 200) }
    }

    func testMetricsFollowTheQueueTheRunsAndTheFailures() throws {
        let metrics = TestMetrics()
        let runner = RecordingRunner(blockFirst: true)
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(maxBatchSize: 8, dynamicBatching: true, maxQueue: 2),
                                       runners: [runner], logger: Logger(label: "test"), metricsFactory: metrics)
        defer { scheduler.stop() }
        let dimensions = [("model", "m"), ("version", "1")]
        let depth = try metrics.expectGauge("kernel_model_queue_depth", dimensions)
        XCTAssertEqual(depth.lastValue, 0, "the series exists before the first request")
        let loop = group.next()
        let first = scheduler.submit([rows(1, width: 2, start: 0)], on: loop).map(\.outputs)
        runner.entered.wait()
        let queued = (0..<2).map { scheduler.submit([rows(1, width: 2, start: Float($0))], on: loop).map(\.outputs) }
        XCTAssertEqual(depth.lastValue, 3, "one running, two queued")
        XCTAssertEqual(status(of: scheduler.submit([rows(1, width: 2, start: 9)], on: loop).map(\.outputs)), 503)
        XCTAssertEqual(try metrics.expectCounter("kernel_model_failures_total", dimensions).totalValue, 1, "a queue-full rejection")
        runner.gate.signal()
        for future in [first] + queued { XCTAssertEqual(status(of: future), 200) }
        // The first run took the lone request, the second the two that queued meanwhile.
        XCTAssertEqual(try metrics.expectRecorder("kernel_model_batch_size", dimensions).values, [1, 2])
        XCTAssertEqual(try metrics.expectTimer("kernel_model_compute_duration_seconds", dimensions).values.count, 2)
        XCTAssertEqual(try metrics.expectTimer("kernel_model_queue_duration_seconds", dimensions).values.count, 3)
        XCTAssertEqual(depth.lastValue, 0)
        XCTAssertEqual(try metrics.expectCounter("kernel_model_failures_total", dimensions).totalValue, 1)

        final class FailingRunner: ModelRunner, @unchecked Sendable {
            func run(_ inputs: [Tensor]) throws -> [Tensor] { throw ONNXRuntimeError("boom") }
        }
        let failing = ModelScheduler(modelName: "f", policy: SchedulingPolicy(), runners: [FailingRunner()],
                                     logger: Logger(label: "test"), metricsFactory: metrics)
        defer { failing.stop() }
        XCTAssertEqual(status(of: failing.submit([rows(1, width: 2, start: 0)], on: loop).map(\.outputs)), 500)
        XCTAssertEqual(try metrics.expectCounter("kernel_model_failures_total", [("model", "f"), ("version", "1")]).totalValue, 1, "a runtime error")
    }

    func testEachVersionOfAModelHasItsOwnSeries() throws {
        let metrics = TestMetrics()
        let runner = RecordingRunner(blockFirst: true)
        let busy = ModelScheduler(modelName: "m", modelVersion: "1", policy: SchedulingPolicy(), runners: [runner],
                                  logger: Logger(label: "test"), metricsFactory: metrics)
        defer { busy.stop() }
        let idle = ModelScheduler(modelName: "m", modelVersion: "2", policy: SchedulingPolicy(),
                                  runners: [RecordingRunner(blockFirst: false)], logger: Logger(label: "test"),
                                  metricsFactory: metrics)
        defer { idle.stop() }
        let loop = group.next()
        let first = busy.submit([rows(1, width: 2, start: 0)], on: loop).map(\.outputs)
        runner.entered.wait()
        let second = busy.submit([rows(1, width: 2, start: 1)], on: loop).map(\.outputs)
        XCTAssertEqual(status(of: idle.submit([rows(1, width: 2, start: 2)], on: loop).map(\.outputs)), 200)
        // Version 2 answering does not overwrite version 1's depth: each version's gauge is its own series.
        XCTAssertEqual(try metrics.expectGauge("kernel_model_queue_depth", [("model", "m"), ("version", "1")]).lastValue, 2)
        XCTAssertEqual(try metrics.expectGauge("kernel_model_queue_depth", [("model", "m"), ("version", "2")]).lastValue, 0)
        runner.gate.signal()
        for future in [first, second] { XCTAssertEqual(status(of: future), 200) }
        XCTAssertEqual(try metrics.expectRecorder("kernel_model_batch_size", [("model", "m"), ("version", "1")]).values, [1, 1])
        XCTAssertEqual(try metrics.expectRecorder("kernel_model_batch_size", [("model", "m"), ("version", "2")]).values, [1])
    }

    func testDepthCountsQueuedAndRunningRequestsButNotAnAnsweredOne() throws {
        let runner = RecordingRunner(blockFirst: true)
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(maxBatchSize: 0, dynamicBatching: false),
                                       runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let loop = group.next()
        XCTAssertEqual(scheduler.depth, 0)
        let running = scheduler.submit([rows(1, width: 2, start: 0)], on: loop).map(\.outputs)
        runner.entered.wait()
        let queued = (0..<2).map { scheduler.submit([rows(1, width: 2, start: Float($0))], on: loop).map(\.outputs) }
        XCTAssertEqual(scheduler.depth, 3, "one running, two queued")
        // What a response reports is read when its result arrives: its own request no longer counts.
        let seen = running.map { _ in scheduler.depth }
        runner.gate.signal()
        XCTAssertLessThanOrEqual(try seen.wait(), 2)
        for future in queued { XCTAssertEqual(status(of: future), 200) }
        XCTAssertEqual(scheduler.depth, 0)
    }

    func testRequestNotStartedBeforeItsTimeoutGets504AndNeverRuns() throws {
        let runner = RecordingRunner(blockFirst: true)
        let policy = SchedulingPolicy(maxBatchSize: 8, dynamicBatching: true, timeoutNanoseconds: 20_000_000)
        let scheduler = ModelScheduler(modelName: "m", policy: policy, runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let loop = group.next()
        let first = scheduler.submit([rows(1, width: 2, start: 0)], on: loop).map(\.outputs)
        runner.entered.wait()
        let late = scheduler.submit([rows(1, width: 2, start: 5)], on: loop).map(\.outputs)
        XCTAssertEqual(status(of: late), 504)
        runner.gate.signal()
        XCTAssertEqual(status(of: first), 200)  // started before its deadline: it completes
        scheduler.stop()
        XCTAssertEqual(runner.batches.withLockedValue { $0.count }, 1)
        XCTAssertEqual(scheduler.currentStatistics.timeouts, 1)
    }

    func testRunnerErrorsFailEveryRequestOfTheBatch() throws {
        final class FailingRunner: ModelRunner, @unchecked Sendable {
            func run(_ inputs: [Tensor]) throws -> [Tensor] { throw ONNXRuntimeError("boom") }
        }
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(), runners: [FailingRunner()],
                                       logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let future = scheduler.submit([rows(1, width: 2, start: 0)], on: group.next()).map(\.outputs)
        XCTAssertThrowsError(try future.wait()) { error in
            XCTAssertEqual((error as? KernelHTTPError)?.status, 500)
            XCTAssertTrue((error as? KernelHTTPError)?.message.contains("boom") ?? false)
        }
    }

    func testSplitRejectsOutputsThatAreNotBatchAligned() {
        XCTAssertThrowsError(try BatchAssembly.split([Tensor(float32: [1, 2], shape: [2])], rows: [1, 2]))
        let joined = BatchAssembly.join([[rows(1, width: 2, start: 0)], [rows(2, width: 2, start: 10)]])
        XCTAssertEqual(joined[0].shape, [3, 2])
        XCTAssertEqual(joined[0].float32Values, [0, 1, 10, 11, 12, 13])
    }

    func testAModelWithoutBatchDimensionCountsEachRequestOnce() throws {
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(), runners: [RecordingRunner(blockFirst: false)],
                                       logger: Logger(label: "test"))
        defer { scheduler.stop() }
        _ = try scheduler.submit([rows(5, width: 2, start: 0)], on: group.next()).wait()
        let empty = Tensor(dataType: .fp32, shape: [1 << 62, 0], bytes: [])
        for _ in 0..<4 { _ = try scheduler.submit([empty], on: group.next()).wait() }
        let statistics = scheduler.currentStatistics
        XCTAssertEqual(statistics.inferenceCount, 5)
        XCTAssertEqual(statistics.executionCount, 5)
        XCTAssertEqual(statistics.batches.keys.sorted(), [1])
    }
}
