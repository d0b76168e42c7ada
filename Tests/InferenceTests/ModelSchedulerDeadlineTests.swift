import KernelCore
import Logging
import NIOCore
import NIOPosix
import XCTest
@testable import Inference

/// A request's forwarded deadline in the model queue: dropped with 504 and never run once its client gave up.
final class ModelSchedulerDeadlineTests: XCTestCase {
    var group: MultiThreadedEventLoopGroup!

    override func setUp() { group = MultiThreadedEventLoopGroup(numberOfThreads: 1) }
    override func tearDown() { try? group.syncShutdownGracefully() }

    private func rows(_ start: Float) -> Tensor { Tensor(float32: [start, start + 1], shape: [1, 2]) }

    private func failure<T>(of future: EventLoopFuture<T>) -> KernelHTTPError? {
        do {
            _ = try future.wait()
            return nil
        } catch {
            return error as? KernelHTTPError
        }
    }

    func testAQueuedRequestPastItsDeadlineIsDroppedAndNeverRun() throws {
        let runner = RecordingRunner(blockFirst: true)
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(maxBatchSize: 8, dynamicBatching: true),
                                       runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let loop = group.next()
        let first = scheduler.submit([rows(0)], options: SubmitOptions(deadline: nil), on: loop).map(\.outputs)
        runner.entered.wait()
        let late = scheduler.submit([rows(5)], options: SubmitOptions(deadline: .now() + .milliseconds(20)), on: loop).map(\.outputs)
        let patient = scheduler.submit([rows(9)], options: SubmitOptions(deadline: .now() + .seconds(60)), on: loop).map(\.outputs)
        let dropped = try XCTUnwrap(failure(of: late))
        XCTAssertEqual(dropped.status, 504)
        XCTAssertTrue(dropped.message.contains("dropped from the queue: its deadline passed"), dropped.message)
        runner.gate.signal()
        XCTAssertNil(failure(of: first))
        XCTAssertNil(failure(of: patient), "a deadline not reached changes nothing")
        scheduler.stop()
        XCTAssertEqual(runner.batches.withLockedValue { $0 }, [[1, 2], [1, 2]], "the dropped request never ran")
        XCTAssertEqual(scheduler.currentStatistics.timeouts, 1)
    }

    func testADeadlineAlreadyPassedIsNeverQueued() throws {
        let runner = RecordingRunner(blockFirst: false)
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(), runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let error = try XCTUnwrap(failure(of: scheduler.submit([rows(0)], options: SubmitOptions(deadline: .now() - .milliseconds(1)), on: group.next())))
        XCTAssertEqual(error.status, 504)
        XCTAssertEqual(runner.batches.withLockedValue { $0.count }, 0)
    }

    func testTheEarlierOfTheModelsTimeoutAndTheDeadlineApplies() {
        let now = NIODeadline.uptimeNanoseconds(10_000_000_000)
        XCTAssertNil(QueueExpiry.earliest(timeoutNanoseconds: 0, deadline: nil, now: now))
        XCTAssertEqual(QueueExpiry.earliest(timeoutNanoseconds: 50_000_000, deadline: nil, now: now), .timeout(at: now + .milliseconds(50)))
        XCTAssertEqual(QueueExpiry.earliest(timeoutNanoseconds: 0, deadline: now + .seconds(1), now: now), .clientDeadline(at: now + .seconds(1)))
        XCTAssertEqual(QueueExpiry.earliest(timeoutNanoseconds: 50_000_000, deadline: now + .seconds(1), now: now), .timeout(at: now + .milliseconds(50)))
        XCTAssertEqual(QueueExpiry.earliest(timeoutNanoseconds: 5_000_000_000, deadline: now + .seconds(1), now: now), .clientDeadline(at: now + .seconds(1)))
        let timeout = QueueExpiry.timeout(at: now).error(modelName: "m", policy: SchedulingPolicy(timeoutNanoseconds: 20_000_000))
        XCTAssertEqual(timeout.message, "inference request for model 'm' timed out after 0.02s in the queue")
    }
}
