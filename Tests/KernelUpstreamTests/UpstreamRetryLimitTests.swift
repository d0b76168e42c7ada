import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest
@testable import KernelUpstream

/// `*_next_upstream_tries`, `*_next_upstream_timeout`, and the answer when no peer is live.
final class UpstreamRetryLimitTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private var peers: [FakePeer] = []
    private let messages = NIOLockedValueBox<[String]>([])

    override func setUp() {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    override func tearDown() {
        for peer in peers { peer.close() }
        try? group.syncShutdownGracefully()
    }

    private var log: [String] { messages.withLockedValue { $0 } }

    private func proxy(_ upstreams: any UpstreamGroup, tries: Int = 0, timeout: TimeAmount = .zero,
                       readTimeout: TimeAmount = .seconds(5)) throws -> KernelResponse {
        var configuration = UpstreamConfiguration(group: upstreams, connectTimeout: .seconds(5), readTimeout: readTimeout)
        configuration.nextUpstreamTries = tries
        configuration.nextUpstreamTimeout = timeout
        let engine = UpstreamEngine(configuration: configuration, protocol: FakeProtocol())
        let logger = Logger(label: "test") { _ in RecordingLogHandler(messages: self.messages) }
        let context = RequestContext(eventLoop: group.next(), logger: logger, route: RouteInfo(serverName: "edge"))
        return try engine.proxy(makeRequest(), context: context).wait()
    }

    /// A peer that reads the request and never answers.
    private func hangingPeer() throws -> FakePeer {
        let peer = try FakePeer(group: group) { _, _ in }
        peers.append(peer)
        return peer
    }

    func testTriesLimitTheAttempts() throws {
        let dead = try (0..<3).map { _ in try closedPort(group: group) }
        let upstreams = RecordingGroup(dead)
        let response = try proxy(upstreams, tries: 2)
        XCTAssertEqual(response.status, 502)
        XCTAssertEqual(upstreams.finished.count, 2)
        XCTAssertEqual(response.upstream?.attempts.map(\.address), dead.prefix(2).map(\.description))
    }

    func testNoTriesLimitTriesEveryPeerOnce() throws {
        let dead = try (0..<3).map { _ in try closedPort(group: group) }
        let upstreams = RecordingGroup(dead)
        let response = try proxy(upstreams, tries: 0)
        XCTAssertEqual(response.status, 502)
        XCTAssertEqual(upstreams.finished.count, 3)
    }

    func testTriesAboveThePeersAreThePeers() throws {
        let dead = try (0..<2).map { _ in try closedPort(group: group) }
        let upstreams = RecordingGroup(dead)
        _ = try proxy(upstreams, tries: 5)
        XCTAssertEqual(upstreams.finished.count, 2)
    }

    func testTheNextUpstreamTimeoutStopsTryingOtherPeers() throws {
        // Each peer times out after 0.5s; once 0.75s have passed since the first attempt, no other is tried:
        // the second attempt starts (0.5s < 0.75s), the third does not (1s).
        let hanging = try (0..<3).map { _ in try hangingPeer() }
        let upstreams = RecordingGroup(hanging.map(\.address))
        let response = try proxy(upstreams, timeout: .milliseconds(750), readTimeout: .milliseconds(500))
        XCTAssertEqual(response.status, 504)
        XCTAssertEqual(upstreams.finished.count, 2)
        XCTAssertEqual(hanging[2].connections, 0)
    }

    func testWithoutANextUpstreamTimeoutEveryPeerIsTried() throws {
        let hanging = try (0..<3).map { _ in try hangingPeer() }
        let upstreams = RecordingGroup(hanging.map(\.address))
        let response = try proxy(upstreams, readTimeout: .milliseconds(100))
        XCTAssertEqual(response.status, 504)
        XCTAssertEqual(upstreams.finished.count, 3)
    }

    func testNoLivePeerIs502AtOnceNamingTheGroup() throws {
        let upstreams = RecordingGroup([])
        let response = try proxy(upstreams)
        XCTAssertEqual(response.status, 502)
        XCTAssertEqual(try collectBody(response.body), #"{"error":"no live upstreams in upstream \"backend\""}"#)
        XCTAssertTrue(log.contains { $0.contains(#"no live upstreams while connecting to upstream, client: 127.0.0.5, server: edge, request: "GET /work?a=1 HTTP/1.1", upstream: "fake://backend", host: "edge""#) }, "\(log)")
    }
}
