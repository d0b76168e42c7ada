import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest
@testable import KernelUpstream

/// The engine's request deadline: 504 at once, no further peer, no failure counted against the peer.
final class UpstreamDeadlineTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private var peers: [FakePeer] = []
    private let messages = NIOLockedValueBox<[String]>([])

    override func setUp() { group = MultiThreadedEventLoopGroup(numberOfThreads: 1) }

    override func tearDown() {
        for peer in peers { peer.close() }
        try? group.syncShutdownGracefully()
    }

    private var log: [String] { messages.withLockedValue { $0 } }

    private func silentPeer() throws -> FakePeer {
        let peer = try FakePeer(group: group, reads: true) { _, _ in }
        peers.append(peer)
        return peer
    }

    private func proxy(_ upstreams: any UpstreamGroup, deadline: NIODeadline?, readTimeout: TimeAmount = .seconds(30),
                       nextUpstream: NextUpstreamConditions = .default) throws -> KernelResponse {
        let engine = UpstreamEngine(configuration: UpstreamConfiguration(group: upstreams, readTimeout: readTimeout,
                                                                         nextUpstream: nextUpstream),
                                    protocol: FakeProtocol())
        let logger = Logger(label: "test") { _ in RecordingLogHandler(messages: self.messages) }
        let context = RequestContext(eventLoop: group.next(), logger: logger, route: RouteInfo(serverName: "edge"))
        return try engine.proxy(makeRequest(), context: context, deadline: deadline).wait()
    }

    func testTheDeadlineIs504AndTriesNoOtherPeer() throws {
        let first = try silentPeer()
        let second = try silentPeer()
        let finished = expectation(description: "lease finished")
        let upstreams = RecordingGroup([first.address, second.address]) { _ in finished.fulfill() }
        // The read timeout (30 s) and next_upstream timeout would go on to the second peer; the deadline does not.
        let response = try proxy(upstreams, deadline: .now() + .milliseconds(200),
                                 nextUpstream: [.error, .timeout, .nonIdempotent])
        XCTAssertEqual(response.status, 504)
        XCTAssertEqual(try collectBody(response.body), "{\"error\":\"gateway timeout\"}")
        wait(for: [finished], timeout: 10)
        XCTAssertEqual(upstreams.leases, 1)
        XCTAssertEqual(second.connections, 0)
        let outcome = try XCTUnwrap(upstreams.finished.first?.1)
        XCTAssertNil(outcome.failure, "the limit was the request's: the peer is not marked failed")
        XCTAssertTrue(outcome.clientClosed)
        XCTAssertEqual(response.upstream?.attempts.map(\.status), [504])
        XCTAssertTrue(log.contains { $0.contains("upstream timed out (request deadline reached) while waiting for upstream, client: 127.0.0.5") && $0.contains("upstream: \"fake://\(first.address)\"") }, "\(log)")
        XCTAssertEqual(log.filter { $0.contains("timed out") }.count, 1, "one line: \(log)")
    }

    func testADeadlineAlreadyPassedIsAnsweredWithoutWaitingForThePeer() throws {
        let peer = try silentPeer()
        let upstreams = RecordingGroup([peer.address])
        let response = try proxy(upstreams, deadline: .now() - .seconds(1))
        XCTAssertEqual(response.status, 504)
    }

    func testAnAnswerBeforeTheDeadlineIsPassedOn() throws {
        let peer = try FakePeer(group: group, answer: ["200 len:2\n\nok"])
        peers.append(peer)
        let upstreams = RecordingGroup([peer.address])
        let response = try proxy(upstreams, deadline: .now() + .seconds(30))
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(try collectBody(response.body), "ok")
        XCTAssertNil(upstreams.finished.first?.1.failure)
        XCTAssertFalse(log.contains { $0.contains("deadline") }, "\(log)")
    }

    func testTheReadTimeoutBeforeTheDeadlineStillCounts() throws {
        let peer = try silentPeer()
        let upstreams = RecordingGroup([peer.address])
        let response = try proxy(upstreams, deadline: .now() + .seconds(30), readTimeout: .milliseconds(100))
        XCTAssertEqual(response.status, 504)
        XCTAssertEqual(upstreams.finished.map(\.1.failure), [.timeout])
    }
}
