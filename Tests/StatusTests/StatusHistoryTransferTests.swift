import Foundation
import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import XCTest
@testable import Status

/// A point of `requests` requests (half of them fast), with a model when asked.
func point(_ time: Double, requests: Double, model: Bool = false) -> StatusPoint {
    var increase = ProcessCounters()
    increase.requests = requests
    increase.requestDuration = HistogramCounts(buckets: [0.005: requests / 2, 0.1: requests, .infinity: requests],
                                               sum: requests * 0.01, count: requests)
    if model {
        var demo = ModelCounters()
        demo.batchSize = HistogramCounts(buckets: [1: 1, 4: 3, .infinity: 3], sum: 7, count: 3)
        demo.computeDuration = HistogramCounts(buckets: [0.001: 3, .infinity: 3], sum: 0.0012, count: 3)
        demo.failures = 1
        increase.models["demo model"] = demo
    }
    return StatusPoint(time: time, seconds: 1, increase: increase)
}

final class StatusHistoryTransferTests: XCTestCase {
    func testPointsGoAcrossWhole() {
        let points = [point(1000.25, requests: 12, model: true), point(1001.25, requests: 0), point(1002.5, requests: 3.5)]
        XCTAssertEqual(StatusHistoryTransfer.decode(StatusHistoryTransfer.encode(points)), points)
        XCTAssertEqual(StatusHistoryTransfer.decode([]), [])
    }

    func testAnAnswerThatDoesNotParseWholeIsRefused() {
        for text in ["point 1 1 2\n", "point 1 0 2 0/0/\n", "model 0/0/ 0/0/ 0/0/ 0 demo\n", "point 1 1 2 0/0/x=1\n",
                     "point 1 1 2 0/0/\nmodel 0/0/ 0/0/ 0/0/ 0 \n", "hello\n"] {
            XCTAssertNil(StatusHistoryTransfer.decode(Array(text.utf8)), text)
        }
    }

    func testAdoptedPointsComeBeforeOwnOnesWithinTheHistorysLength() {
        var history = StatusHistory(capacity: 5)
        history.record([1: ProcessCounters()], monotonic: 0, wall: 1000)
        history.record([1: ProcessCounters()], monotonic: 1, wall: 1001)
        // From another process: one too old, three before this history's first point, one after it.
        let earlier = [990, 997, 998, 999.5, 1001.5].map { point($0, requests: 1) }
        XCTAssertEqual(history.adopt(earlier, now: 1001, interval: 1), 3)
        XCTAssertEqual(history.points.map(\.time), [997, 998, 999.5, 1001])
        // The ring's capacity holds: the oldest adopted points give way.
        var full = StatusHistory(capacity: 2)
        XCTAssertEqual(full.adopt(earlier, now: 1002, interval: 3), 2)
        XCTAssertEqual(full.points.map(\.time), [999.5, 1001.5])
    }
}

/// A process group of this process and one sibling that has kept a history.
final class SiblingSupervision: ProcessSupervision {
    let sibling: [UInt8]
    let queries: ProcessQueryRegistry
    init(sibling: [UInt8], queries: ProcessQueryRegistry) {
        self.sibling = sibling
        self.queries = queries
    }
    var workerNumber: Int { 2 }
    var isSupervised: Bool { true }
    func requestReplacement(reason: String) {}
    func gather(_ query: String, timeout: TimeAmount) async -> [ProcessAnswer] {
        var answers: [ProcessAnswer] = []
        if let own = await queries.answer(query) { answers.append(ProcessAnswer(source: .worker(2), pid: getpid(), body: own)) }
        if query == StatusHistoryTransfer.query { answers.append(ProcessAnswer(source: .worker(1), pid: 1, body: sibling)) }
        return answers
    }
    func workers() async -> [WorkerProcessInfo] { [] }
    func share(_ command: String, key: String, memory: SharedCommandMemory, timeout: TimeAmount) async -> [ProcessAnswer] { [] }
    func replaySharedCommands() async {}
}

final class StatusSamplerTests: XCTestCase {
    let logger = Logger(label: "test")

    /// Waits (bounded) until the sampler's report holds at least `count` points of the series.
    func waitForPoints(_ sampler: StatusSampler, atLeast count: Int) async throws -> String {
        for _ in 0..<100 {
            let json = await sampler.reportJSON()
            if let range = json.range(of: #""requests_per_second":["#) {
                let series = json[range.upperBound...].prefix { $0 != "]" }
                if series.split(separator: ",").count >= count { return json }
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        XCTFail("the sampler's history never reached \(count) points")
        return ""
    }

    func testANewWorkerTakesOverTheLongestHistoryOfTheOthers() async throws {
        let queries = ProcessQueryRegistry()
        let now = Double(Int(Date().timeIntervalSince1970))
        let earlier = (1...4).map { point(now - Double(10 - $0), requests: Double($0)) }
        let sampler = StatusSampler(supervision: SiblingSupervision(sibling: StatusHistoryTransfer.encode(earlier), queries: queries),
                                    queries: queries, logger: logger, history: .minutes(5))
        try await sampler.start()
        let json = try await waitForPoints(sampler, atLeast: 4)
        await sampler.stop()
        XCTAssertTrue(json.contains(#""requests_per_second":[1,2,3,4"#), json)
    }

    func testANewConfigurationTakesOverTheHistoryOfThePreviousInTheSameProcess() async throws {
        let queries = ProcessQueryRegistry()
        let supervision = StandaloneSupervision(queries: queries, logger: logger)
        queries.register("metrics") { Array("kernel_http_requests_total{status=\"200\"} 5\n".utf8) }
        let previous = StatusSampler(supervision: supervision, queries: queries, logger: logger, history: .minutes(5))
        try await previous.start()
        await previous.stop()
        for _ in 0..<3 { await previous.sample() }
        let next = StatusSampler(supervision: supervision, queries: queries, logger: logger, history: .minutes(5))
        try await next.start()
        // The previous configuration's two points, then this one's own.
        _ = try await waitForPoints(next, atLeast: 2)
        await next.stop()
        let handed = StatusHistoryTransfer.decode(await queries.answer(StatusHistoryTransfer.query) ?? [])
        XCTAssertGreaterThanOrEqual(handed?.count ?? 0, 2, "the new configuration answers for the process now")
    }

    func testASamplerThatStopsWhileNewestGivesTheAnswerBackToTheOneItReplaced() async throws {
        let queries = ProcessQueryRegistry()
        let supervision = StandaloneSupervision(queries: queries, logger: logger)
        queries.register("metrics") { Array("kernel_http_requests_total{status=\"200\"} 5\n".utf8) }
        let running = StatusSampler(supervision: supervision, queries: queries, logger: logger, history: .minutes(5))
        try await running.start()
        _ = try await waitForPoints(running, atLeast: 1)
        func answered() async -> Int { StatusHistoryTransfer.decode(await queries.answer(StatusHistoryTransfer.query) ?? [])?.count ?? -1 }
        // A reload whose configuration fails to start: its sampler started, then stopped while the newest.
        let failed = StatusSampler(supervision: supervision, queries: queries, logger: logger, history: .minutes(5),
                                   interval: .seconds(3600))
        try await failed.start()
        await failed.stop()
        let restored = await queries.answer(StatusHistoryTransfer.ownerQuery)
        XCTAssertEqual(restored, running.ownerToken, "the running configuration answers again")
        let points = await answered()
        XCTAssertGreaterThanOrEqual(points, 1)
        // A successful reload: the retired sampler stopping leaves the newest answering.
        let next = StatusSampler(supervision: supervision, queries: queries, logger: logger, history: .minutes(5),
                                 interval: .seconds(3600))
        try await next.start()
        await running.stop()
        await next.sample()
        let owner = await queries.answer(StatusHistoryTransfer.ownerQuery)
        XCTAssertEqual(owner, next.ownerToken, "the newest sampler still answers")
        await next.stop()
    }
}
