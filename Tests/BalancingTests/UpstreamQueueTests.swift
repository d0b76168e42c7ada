@testable import Balancing
import KernelCore
import NIOCore
import NIOEmbedded
import XCTest

final class UpstreamQueueTests: XCTestCase {
    private func group(_ servers: [UpstreamServer], size: Int = 2, timeout: TimeAmount = .seconds(30),
                       clock: TestClock = TestClock()) -> BalancedGroup {
        BalancedGroup(name: "q", method: .roundRobin, servers: servers,
                      queue: UpstreamQueuePolicy(size: size, timeout: timeout), now: { clock.now })
    }

    /// The lease a future holds, once it has one (nil while it waits).
    private final class Result: @unchecked Sendable {
        var lease: PeerLease??
    }

    /// Whether the future answered, with no lease.
    private func answeredNil(_ result: Result) -> Bool {
        if case .some(.none) = result.lease { return true }
        return false
    }

    private func watch(_ future: EventLoopFuture<PeerLease?>) -> Result {
        let result = Result()
        future.whenSuccess { result.lease = .some($0) }
        return result
    }

    func testAWaiterIsServedWhenALeaseEnds() throws {
        let loop = EmbeddedEventLoop()
        let group = group(servers("127.0.0.1:1 max_conns=1"))
        let held = watch(group.lease(request(), excluding: [], on: loop))
        loop.run()
        XCTAssertEqual(port(held.lease!), 1)
        let waiting = watch(group.lease(request(), excluding: [], on: loop))
        loop.run()
        XCTAssertNil(waiting.lease, "waits: the only server is at max_conns")
        XCTAssertEqual(group.waiting, 1)
        held.lease!!.finish(outcome())
        loop.run()
        XCTAssertEqual(port(waiting.lease!), 1, "the freed slot goes to the waiter")
        XCTAssertEqual(group.waiting, 0)
        // The waiter's lease counts: max_conns still holds.
        XCTAssertNil(group.begin(request(), excluding: []))
        waiting.lease!!.finish(outcome())
        try loop.syncShutdownGracefully()
    }

    func testWaitersAreServedInOrderOnTheirOwnLoops() throws {
        let first = EmbeddedEventLoop(), second = EmbeddedEventLoop()
        let group = group(servers("127.0.0.1:1 max_conns=1"), size: 5)
        let held = group.begin(request(), excluding: [])!
        let a = watch(group.lease(request(uri: "/a"), excluding: [], on: second))
        let b = watch(group.lease(request(uri: "/b"), excluding: [], on: first))
        held.finish(outcome())
        first.run()
        second.run()
        XCTAssertNotNil(a.lease ?? nil, "the older waiter first")
        XCTAssertNil(b.lease ?? nil)
        a.lease!!.finish(outcome())
        first.run()
        XCTAssertNotNil(b.lease ?? nil)
        XCTAssertTrue(b.lease!!.peer == .tcp(host: "127.0.0.1", port: 1))
        b.lease!!.finish(outcome())
        try first.syncShutdownGracefully()
        try second.syncShutdownGracefully()
    }

    func testAWaitThatTimesOutAnswersNil() throws {
        let loop = EmbeddedEventLoop()
        let group = group(servers("127.0.0.1:1 max_conns=1"), timeout: .seconds(30))
        let held = group.begin(request(), excluding: [])!
        let waiting = watch(group.lease(request(), excluding: [], on: loop))
        loop.advanceTime(by: .seconds(29))
        XCTAssertNil(waiting.lease)
        loop.advanceTime(by: .seconds(2))
        XCTAssertTrue(answeredNil(waiting), "timed out: no peer")
        XCTAssertEqual(group.waiting, 0)
        // The slot that frees later is nobody's.
        held.finish(outcome())
        XCTAssertNotNil(group.begin(request(), excluding: []))
        try loop.syncShutdownGracefully()
    }

    func testAFullQueueAnswersNilAtOnce() throws {
        let loop = EmbeddedEventLoop()
        let group = group(servers("127.0.0.1:1 max_conns=1", "127.0.0.1:2 max_conns=1"), size: 2)
        let held = [group.begin(request(), excluding: [])!, group.begin(request(), excluding: [])!]
        let waiters = (0..<2).map { _ in watch(group.lease(request(), excluding: [], on: loop)) }
        let rejected = watch(group.lease(request(), excluding: [], on: loop))
        loop.run()
        XCTAssertTrue(answeredNil(rejected))
        XCTAssertTrue(waiters.allSatisfy { $0.lease == nil })
        for lease in held { lease.finish(outcome()) }
        XCTAssertTrue(waiters.allSatisfy { ($0.lease ?? nil) != nil })
        try loop.syncShutdownGracefully()
    }

    func testNothingWaitsWhenEveryServerIsDownOrFailed() throws {
        let loop = EmbeddedEventLoop()
        let group = group(servers("127.0.0.1:1 max_conns=1 down", "127.0.0.1:2 max_conns=1"))
        group.begin(request(), excluding: [])!.finish(outcome(failure: .error))
        let result = watch(group.lease(request(), excluding: [], on: loop))
        loop.run()
        XCTAssertTrue(answeredNil(result), "502 at once: no slot can free up")
        XCTAssertEqual(group.waiting, 0)
        try loop.syncShutdownGracefully()
    }

    func testABackupServesBeforeAnyoneWaits() throws {
        let loop = EmbeddedEventLoop()
        let group = group(servers("127.0.0.1:1 max_conns=1", "127.0.0.1:9 backup"))
        let held = group.begin(request(), excluding: [])!
        let spill = watch(group.lease(request(), excluding: [], on: loop))
        loop.run()
        XCTAssertEqual(port(spill.lease!), 9)
        held.finish(outcome())
        try loop.syncShutdownGracefully()
    }
}

