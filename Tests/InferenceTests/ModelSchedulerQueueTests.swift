import Dispatch
import Foundation
import KernelConfig
import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest
@testable import Inference

/// A model that returns its input, recording the first value of each request's rows per batch, and reporting a
/// fixed compute timing. While `gate` is closed, the first batch blocks, so tests can fill the queues.
final class TimedRunner: ModelRunner, @unchecked Sendable {
    /// Per batch, the first value of each request in it.
    let batches = NIOLockedValueBox<[[Float]]>([])
    let entered = DispatchSemaphore(value: 0)
    let gate = DispatchSemaphore(value: 0)
    let timing = ComputeTiming(inputNanoseconds: 1_000, inferNanoseconds: 20_000, outputNanoseconds: 300)
    private let blockFirst: Bool
    private let runs = NIOLockedValueBox(0)

    init(blockFirst: Bool) { self.blockFirst = blockFirst }

    func run(_ inputs: [Tensor]) throws -> [Tensor] { inputs }

    func runBatch(_ requests: [[Tensor]], rows: [Int]) throws -> BatchRun {
        let index = runs.withLockedValue { value -> Int in value += 1; return value }
        batches.withLockedValue { $0.append(requests.map { $0[0].float32Values[0] }) }
        if blockFirst, index == 1 {
            entered.signal()
            gate.wait()
        }
        return BatchRun(outputs: requests, timing: timing)
    }
}

/// The model queue's protections: priority levels, clients that leave, a full queue's answer, and where a
/// request's time went (the statistics, `Server-Timing`, the access-log variables).
final class ModelSchedulerQueueTests: XCTestCase {
    var group: MultiThreadedEventLoopGroup!

    override func setUp() { group = MultiThreadedEventLoopGroup(numberOfThreads: 1) }
    override func tearDown() { try? group.syncShutdownGracefully() }

    private func row(_ value: Float) -> Tensor { Tensor(float32: [value, value], shape: [1, 2]) }

    private func failure<T>(of future: EventLoopFuture<T>) -> KernelHTTPError? {
        do {
            _ = try future.wait()
            return nil
        } catch {
            return error as? KernelHTTPError
        }
    }

    // MARK: - Priority levels

    func testHigherLevelsAreBatchedFirstAndLowerLevelsFillTheBatch() throws {
        let runner = TimedRunner(blockFirst: true)
        let policy = SchedulingPolicy(maxBatchSize: 2, dynamicBatching: true, priorityLevels: 3, defaultPriorityLevel: 2)
        let scheduler = ModelScheduler(modelName: "m", policy: policy, runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let loop = group.next()
        let first = scheduler.submit([row(0)], on: loop)
        runner.entered.wait()
        // Arrival order: low, default, high, high, low.
        let priorities = [3, 0, 1, 1, 3]
        let futures = priorities.enumerated().map { index, priority in
            scheduler.submit([row(Float(index + 1))], options: SubmitOptions(priority: priority), on: loop)
        }
        runner.gate.signal()
        _ = try first.wait()
        for future in futures { _ = try future.wait() }
        // The two highest first; then the default level's request, joined by the oldest low one; then the other.
        XCTAssertEqual(runner.batches.withLockedValue { $0 }, [[0], [3, 4], [2, 1], [5]])
    }

    func testAPriorityOfZeroOrAboveTheLevelsTakesTheDefaultLevel() {
        let policy = SchedulingPolicy(maxBatchSize: 4, dynamicBatching: true, priorityLevels: 3, defaultPriorityLevel: 2)
        XCTAssertEqual(policy.queueIndex(priority: 0), 1)
        XCTAssertEqual(policy.queueIndex(priority: 1), 0)
        XCTAssertEqual(policy.queueIndex(priority: 3), 2)
        XCTAssertEqual(policy.queueIndex(priority: 4), 1, "Triton runs a level past priority_levels at the default")
        XCTAssertEqual(policy.queueIndex(priority: Int.max), 1)
        let single = SchedulingPolicy(maxBatchSize: 4, dynamicBatching: true)
        XCTAssertEqual(single.queueIndex(priority: 7), 0, "without priority_levels there is one queue")
        XCTAssertEqual(SchedulingPolicy(priorityLevels: 2, defaultPriorityLevel: 9).defaultPriorityLevel, 2)
    }

    func testEachLevelHasItsOwnMaxQueue() throws {
        let runner = TimedRunner(blockFirst: true)
        let policy = SchedulingPolicy(maxBatchSize: 1, dynamicBatching: true, maxQueue: 1, priorityLevels: 2,
                                      defaultPriorityLevel: 2)
        let scheduler = ModelScheduler(modelName: "m", policy: policy, runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let loop = group.next()
        let first = scheduler.submit([row(0)], on: loop)
        runner.entered.wait()
        let low = scheduler.submit([row(1)], on: loop)
        let lowRejected = scheduler.submit([row(2)], on: loop)
        let high = scheduler.submit([row(3)], options: SubmitOptions(priority: 1), on: loop)
        XCTAssertEqual(failure(of: lowRejected)?.status, 503)
        runner.gate.signal()
        for future in [first, low, high] { XCTAssertNil(failure(of: future)) }
        XCTAssertEqual(runner.batches.withLockedValue { $0 }, [[0], [3], [1]])
    }

    // MARK: - Clients that leave

    func testACancelledQueuedRequestIsDroppedAndNeverRuns() throws {
        let runner = TimedRunner(blockFirst: true)
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(maxBatchSize: 8, dynamicBatching: true),
                                       runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let loop = group.next()
        let first = scheduler.submit([row(0)], on: loop)
        runner.entered.wait()
        let cancellation = RequestCancellation()
        let leaving = scheduler.submit([row(5)], options: SubmitOptions(cancellation: cancellation), on: loop)
        let staying = scheduler.submit([row(9)], options: SubmitOptions(cancellation: RequestCancellation()), on: loop)
        XCTAssertEqual(scheduler.depth, 3)
        cancellation.cancel("client prematurely closed connection")
        let dropped = try XCTUnwrap(failure(of: leaving))
        XCTAssertEqual(dropped.status, 499)
        XCTAssertEqual(scheduler.depth, 2)
        runner.gate.signal()
        XCTAssertNil(failure(of: first))
        XCTAssertNil(failure(of: staying))
        scheduler.stop()
        XCTAssertEqual(runner.batches.withLockedValue { $0 }, [[0], [9]], "the cancelled request never ran")
        let statistics = scheduler.currentStatistics
        XCTAssertEqual(statistics.executionCount, 2)
        XCTAssertEqual(statistics.cancellations, 1)
        XCTAssertEqual(statistics.failure.count, 1)
        XCTAssertEqual(statistics.success.count, 2)
    }

    func testARequestCancelledBeforeItIsQueuedNeverRuns() throws {
        let runner = TimedRunner(blockFirst: false)
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(), runners: [runner],
                                       logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let cancellation = RequestCancellation()
        cancellation.cancel("gone")
        // The instance may take it before the callback: it then runs once, else it is dropped; never both.
        let outcome = failure(of: scheduler.submit([row(1)], options: SubmitOptions(cancellation: cancellation), on: group.next()))
        scheduler.stop()
        let ran = runner.batches.withLockedValue { $0.count }
        XCTAssertEqual(outcome == nil ? 1 : 0, ran)
        if let outcome { XCTAssertEqual(outcome.status, 499) }
    }

    func testCancellingAStartedRequestChangesNothing() throws {
        let runner = TimedRunner(blockFirst: true)
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(), runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let cancellation = RequestCancellation()
        let running = scheduler.submit([row(1)], options: SubmitOptions(cancellation: cancellation), on: group.next())
        runner.entered.wait()
        cancellation.cancel("gone")
        runner.gate.signal()
        XCTAssertNil(failure(of: running))
        XCTAssertEqual(scheduler.currentStatistics.cancellations, 0)
    }

    // MARK: - A full queue

    func testAFullQueueAnswersItsConfiguredStatusWithRetryAfter() throws {
        for status in [503, 429] {
            let runner = TimedRunner(blockFirst: true)
            let policy = SchedulingPolicy(maxQueue: 1, queueFullStatus: status)
            let scheduler = ModelScheduler(modelName: "m", policy: policy, runners: [runner], logger: Logger(label: "test"))
            let loop = group.next()
            let first = scheduler.submit([row(0)], on: loop)
            runner.entered.wait()
            let queued = scheduler.submit([row(1)], on: loop)
            let rejected = try XCTUnwrap(failure(of: scheduler.submit([row(2)], on: loop)))
            XCTAssertEqual(rejected.status, status)
            XCTAssertEqual(rejected.message, "Exceeds maximum queue size: inference request for model 'm' rejected: the queue is full (max_queue 1)")
            let retryAfter = try XCTUnwrap(rejected.headers["Retry-After"].flatMap { Int($0) })
            XCTAssertGreaterThanOrEqual(retryAfter, 1)
            runner.gate.signal()
            XCTAssertNil(failure(of: first))
            XCTAssertNil(failure(of: queued))
            scheduler.stop()
            XCTAssertEqual(scheduler.currentStatistics.queueRejections, 1)
        }
    }

    func testRetryAfterCountsOnlyTheRequestsThatRunFirst() throws {
        let runner = TimedRunner(blockFirst: true)
        let policy = SchedulingPolicy(maxBatchSize: 1, dynamicBatching: true, maxQueue: 2, priorityLevels: 2,
                                      defaultPriorityLevel: 2)
        let scheduler = ModelScheduler(modelName: "m", policy: policy, runners: [runner], logger: Logger(label: "test"))
        let loop = group.next()
        let first = scheduler.submit([row(0)], options: SubmitOptions(priority: 1), on: loop)
        runner.entered.wait()
        let queued = [1, 1, 2, 2].map { scheduler.submit([row(1)], options: SubmitOptions(priority: $0), on: loop) }
        // A level-1 request waits for level 1's queue only; a level-2 one for both levels.
        XCTAssertEqual(scheduler.requestsAhead(ofLevel: 0), 2)
        XCTAssertEqual(scheduler.requestsAhead(ofLevel: 1), 4)
        runner.gate.signal()
        for future in [first] + queued { XCTAssertNil(failure(of: future)) }
        scheduler.stop()
    }

    func testRetryAfterFollowsTheRecentPaceOfRuns() {
        var runs = RecentRuns()
        XCTAssertEqual(runs.secondsToDrain(queued: 100, instances: 1), 1, "at least one second before any run")
        runs.add(nanoseconds: 500_000_000, requests: 2)
        // 10 queued requests, 2 per run of 0.5 s: 2.5 s, rounded up.
        XCTAssertEqual(runs.secondsToDrain(queued: 10, instances: 1), 3)
        XCTAssertEqual(runs.secondsToDrain(queued: 10, instances: 5), 1)
        XCTAssertEqual(runs.secondsToDrain(queued: 0, instances: 1), 1)
        runs.add(nanoseconds: 1_000_000_000_000, requests: 1)
        XCTAssertEqual(runs.secondsToDrain(queued: 1_000_000, instances: 1), 3600, "capped at an hour")
    }

    // MARK: - Where the time went

    func testTheRunnersTimingReachesTheResultAndTheStatistics() throws {
        let runner = TimedRunner(blockFirst: true)
        let scheduler = ModelScheduler(modelName: "m", policy: SchedulingPolicy(maxBatchSize: 8, dynamicBatching: true),
                                       runners: [runner], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let loop = group.next()
        let first = scheduler.submit([row(0)], on: loop)
        runner.entered.wait()
        let joined = [scheduler.submit([row(1)], on: loop), scheduler.submit([row(2)], on: loop)]
        runner.gate.signal()
        let alone = try first.wait().timing
        XCTAssertEqual(alone.batchSize, 1)
        XCTAssertEqual(alone.compute, runner.timing)
        for future in joined {
            let timing = try future.wait().timing
            XCTAssertEqual(timing.batchSize, 2, "the rows of the batch it joined")
            XCTAssertEqual(timing.compute, runner.timing)
            XCTAssertGreaterThan(timing.queueNanoseconds, 0, "they waited for the first batch")
        }
        scheduler.stop()
        let statistics = scheduler.currentStatistics
        XCTAssertEqual(statistics.success.count, 3)
        XCTAssertEqual(statistics.queue.count, 3)
        XCTAssertEqual(statistics.computeInput.count, 3)
        XCTAssertEqual(statistics.computeInput.nanoseconds, 3 * 1_000, "each request counts its batch's phase, as Triton")
        XCTAssertEqual(statistics.computeInfer.nanoseconds, 3 * 20_000)
        XCTAssertEqual(statistics.computeOutput.nanoseconds, 3 * 300)
        XCTAssertEqual(statistics.batches[2]?.computeInfer.count, 1, "batch_stats count runs")
        XCTAssertEqual(statistics.batches[2]?.computeInput.nanoseconds, 1_000)
        XCTAssertEqual(statistics.batches[1]?.computeOutput.nanoseconds, 300)
        // Queue and compute fit in each request's whole time.
        XCTAssertLessThanOrEqual(statistics.queue.nanoseconds + statistics.computeInput.nanoseconds
                                 + statistics.computeInfer.nanoseconds + statistics.computeOutput.nanoseconds,
                                 statistics.success.nanoseconds + 3 * 21_300)
    }

    func testTheStatisticsHaveTritonsShape() throws {
        var statistics = ModelStatistics()
        let loop = group.next()
        let job = InferenceJob(inputs: [row(1)], promise: loop.makePromise(of: InferenceResult.self), enqueued: 10,
                               batchDimension: true)
        statistics.record(batchSize: 1, requests: [job], timing: ComputeTiming(inputNanoseconds: 1, inferNanoseconds: 2, outputNanoseconds: 3),
                          dequeued: 15, finished: 40, succeeded: true)
        job.complete(.success(InferenceResult(outputs: [], timing: InferenceTiming())))
        var writer = JSONWriter(buffer: ByteBufferAllocator().buffer(capacity: 512))
        statistics.write(name: "m", version: "1", into: &writer)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(writer.buffer.readableBytesView)) as? [String: Any])
        XCTAssertEqual(Set(object.keys), ["name", "version", "last_inference", "inference_count", "execution_count",
                                          "inference_stats", "response_stats", "batch_stats", "memory_usage",
                                          "queue_rejections", "timeouts", "cancellations", "run_failures"])
        let inference = try XCTUnwrap(object["inference_stats"] as? [String: [String: Int]])
        XCTAssertEqual(Set(inference.keys), ["success", "fail", "queue", "compute_input", "compute_infer",
                                             "compute_output", "cache_hit", "cache_miss"])
        XCTAssertEqual(inference["success"], ["count": 1, "ns": 30])
        XCTAssertEqual(inference["queue"], ["count": 1, "ns": 5])
        XCTAssertEqual(inference["compute_input"], ["count": 1, "ns": 1])
        XCTAssertEqual(inference["compute_infer"], ["count": 1, "ns": 2])
        XCTAssertEqual(inference["compute_output"], ["count": 1, "ns": 3])
        XCTAssertEqual(inference["cache_miss"], ["count": 0, "ns": 0])
        let batches = try XCTUnwrap(object["batch_stats"] as? [[String: Any]])
        XCTAssertEqual(batches.count, 1)
        XCTAssertEqual(batches[0]["batch_size"] as? Int, 1)
        XCTAssertEqual(batches[0]["compute_output"] as? [String: Int], ["count": 1, "ns": 3])
        XCTAssertEqual((object["memory_usage"] as? [Any])?.count, 0)
    }

    func testServerTimingAndTheAccessLogVariables() throws {
        let report = InferenceExchangeReport(
            timing: InferenceTiming(queueNanoseconds: 120_400, batchSize: 4,
                                    compute: ComputeTiming(inputNanoseconds: 9_600, inferNanoseconds: 1_250_000, outputNanoseconds: 8_000)),
            decodeNanoseconds: 30_000, encodeNanoseconds: 2_500_600)
        XCTAssertEqual(report.serverTiming,
                       "queue;dur=0.120, batch;desc=\"4\", compute_input;dur=0.010, compute_infer;dur=1.250, compute_output;dur=0.008, decode;dur=0.030, encode;dur=2.501")
        XCTAssertEqual(report.computeNanoseconds, 1_267_600)
        var response = KernelResponse(status: 200)
        report.attach(to: &response)
        XCTAssertEqual(response.headers["Server-Timing"], report.serverTiming)

        var registry = VariableRegistry.standard
        InferenceVariables.register(into: &registry)
        let request = makeRequest("{}")
        var finished = FinishedExchange(request: request, route: RouteInfo(), status: 200, bodyBytesSent: 0, bytesSent: 0,
                                        startNanoseconds: 0, endNanoseconds: 1, upstream: nil, handlerReport: report)
        func value(_ name: String) -> String? { registry.getter(for: name)?(VariableContext(finished: finished)) }
        XCTAssertEqual(value("inference_queue_time"), "0.000")
        XCTAssertEqual(value("inference_compute_time"), "0.001")
        XCTAssertEqual(value("inference_encode_time"), "0.003")
        XCTAssertEqual(value("inference_decode_time"), "0.000")
        XCTAssertEqual(value("inference_batch_size"), "4")
        XCTAssertEqual(InferenceExchangeReport.seconds(12_345_678_900), "12.346")
        finished.handlerReport = nil
        XCTAssertNil(value("inference_queue_time"), "not found without a model's answer: `-` in a log line")
    }

    // MARK: - A request's priority

    private func request(_ body: String, headers: [(String, String)] = []) -> KernelRequest {
        makeRequest(body, headers: headers)
    }

    /// The level of `body`, decoded as the handler does: the codec reads `parameters.priority`, the header wins.
    private func priority(_ body: String, headers: [(String, String)] = []) throws -> Int {
        let model = ModelSignature(name: "m", version: "1", inputs: [], outputs: [], maxBatchSize: 0)
        let request = request(body, headers: headers)
        let decoded = try InferenceCodec.decodeRequest(body: request.body, headers: request.headers, model: model)
        return try RequestPriority.of(request, parameter: decoded.priority)
    }

    func testThePriorityComesFromTheHeaderOrTheRequestParameters() throws {
        XCTAssertEqual(try priority(#"{"inputs": []}"#), 0)
        XCTAssertEqual(try priority(#"{"parameters": {"priority": 2}, "inputs": []}"#), 2)
        XCTAssertEqual(try priority(#"{"inputs": [], "parameters": {"priority": 0}}"#), 0)
        XCTAssertEqual(try priority(#"{"id": "priority", "inputs": []}"#), 0, "only parameters.priority counts")
        XCTAssertEqual(try priority(#"{"parameters": {"priority": 2}, "inputs": []}"#, headers: [("X-Kernel-Priority", "1")]), 1,
                       "the header, which an edge may set, wins")
        for (body, message) in [(#"{"parameters": {"priority": -1}, "inputs": []}"#, "invalid value for 'priority', expected value >= 0."),
                                (#"{"parameters": {"priority": "high"}, "inputs": []}"#, "invalid value type for 'priority' parameter, expected an unsigned integer"),
                                (#"{"parameters": {"priority": 1.5}, "inputs": []}"#, "invalid value type for 'priority' parameter, expected an unsigned integer"),
                                (#"{"parameters": {"priority": 99999999999999999999999}, "inputs": []}"#, "invalid value type for 'priority' parameter, expected an unsigned integer")] {
            XCTAssertThrowsError(try priority(body)) { error in
                XCTAssertEqual((error as? KernelHTTPError)?.status, 400)
                XCTAssertEqual((error as? KernelHTTPError)?.message, message)
            }
        }
        XCTAssertThrowsError(try priority(#"{"inputs": []}"#, headers: [("X-Kernel-Priority", "-2")])) { error in
            XCTAssertEqual((error as? KernelHTTPError)?.status, 400)
        }
    }

    func testARepeatedPriorityHeaderMustAgree() throws {
        XCTAssertEqual(try priority(#"{"inputs": []}"#, headers: [("X-Kernel-Priority", "2"), ("x-kernel-priority", "2")]), 2)
        XCTAssertThrowsError(try priority(#"{"inputs": []}"#, headers: [("X-Kernel-Priority", "2"), ("X-Kernel-Priority", "1")])) { error in
            XCTAssertEqual((error as? KernelHTTPError)?.status, 400)
            XCTAssertEqual((error as? KernelHTTPError)?.message,
                           "invalid X-Kernel-Priority header: it appears 2 times with different values")
        }
    }

    // MARK: - Configuration

    private func decodeModel(_ text: String) throws -> ModelConfiguration {
        let root = try YAMLParser().parse(text, file: "k.yaml")
        return try ModelConfiguration.decodeFromTest(ConfigValue(node: root, path: ""))
    }

    func testPriorityLevelsAndTheFullQueueStatusAreConfigured() throws {
        let model = try decodeModel("""
            {name: m, path: /m.onnx, max_batch_size: 8, queue_full_status: 429,
             dynamic_batching: {priority_levels: 3, default_priority_level: 2}}
            """)
        XCTAssertEqual(model.policy.priorityLevels, 3)
        XCTAssertEqual(model.policy.defaultPriorityLevel, 2)
        XCTAssertEqual(model.policy.queueFullStatus, 429)
        let plain = try decodeModel("{name: m, path: /m.onnx}")
        XCTAssertEqual(plain.policy.queueFullStatus, 503)
        XCTAssertEqual(plain.policy.priorityLevels, 0)
        XCTAssertThrowsError(try decodeModel("{name: m, path: /m.onnx, queue_full_status: 500}"))
        XCTAssertThrowsError(try decodeModel("""
            {name: m, path: /m.onnx, max_batch_size: 8, dynamic_batching: {priority_levels: 2, default_priority_level: 3}}
            """)) { error in
            XCTAssertTrue("\(error)".contains("default_priority_level must be in range [1, 2]"), "\(error)")
        }
        XCTAssertThrowsError(try decodeModel("""
            {name: m, path: /m.onnx, max_batch_size: 8, dynamic_batching: {priority_levels: 2}}
            """), "with levels, the default level must be set, as Triton requires")
    }
}

private func makeRequest(_ body: String, headers: [(String, String)] = []) -> KernelRequest {
    var fields = HeaderFields()
    for (name, value) in headers { fields.add(name, value) }
    return KernelRequest(method: "POST", uri: "/v2/models/m/infer", path: "/v2/models/m/infer", query: "",
                         version: .http1_1, headers: fields, body: ByteBuffer(string: body),
                         connection: ConnectionInfo(protocolName: "http", listener: "test", remoteAddress: nil, localAddress: nil))
}

extension ModelConfiguration {
    static func decodeFromTest(_ value: ConfigValue) throws -> ModelConfiguration {
        try InferenceConfiguration.decodeModel(value) { $0 }
    }
}
