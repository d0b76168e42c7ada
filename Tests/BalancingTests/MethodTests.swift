@testable import Balancing
import KernelCore
import XCTest

final class MethodTests: XCTestCase {
    // MARK: random

    func testRandomDrawsByWeight() {
        // Total weight 4: draws 0 → :1, 1...2 → :2 (weight 2), 3 → :3, as nginx's ranges split it.
        let random = TestRandom([0, 1, 2, 3, 7])
        let group = BalancedGroup(name: "r", method: .random(two: false),
                                  servers: servers("127.0.0.1:1", "127.0.0.1:2 weight=2", "127.0.0.1:3"),
                                  random: { random.next() })
        let picks = (0..<5).map { _ -> Int in
            let lease = group.begin(request(), excluding: [])
            lease?.finish(outcome())
            return port(lease)
        }
        XCTAssertEqual(picks, [1, 2, 2, 3, 3])
    }

    func testRandomSpreadsByWeight() {
        let random = SeededRandom(seed: 7)
        let group = BalancedGroup(name: "r", method: .random(two: false),
                                  servers: servers("127.0.0.1:1 weight=3", "127.0.0.1:2"), random: { random.next() })
        var counts = [1: 0, 2: 0]
        for _ in 0..<4000 {
            let lease = group.begin(request(), excluding: [])
            counts[port(lease), default: 0] += 1
            lease?.finish(outcome())
        }
        XCTAssertEqual(Double(counts[1]!) / 4000, 0.75, accuracy: 0.03)
    }

    func testRandomDrawsAgainPastAnUnusablePeer() {
        let random = TestRandom([0, 0, 1])
        let group = BalancedGroup(name: "r", method: .random(two: false),
                                  servers: servers("127.0.0.1:1 down", "127.0.0.1:2"), random: { random.next() })
        XCTAssertEqual(port(group.begin(request(), excluding: [])), 2)
    }

    func testRandomTwoTakesTheLessLoadedOfTwo() {
        // Draws alternate :1, :2.
        let random = TestRandom([0, 1])
        let group = BalancedGroup(name: "r", method: .random(two: true),
                                  servers: servers("127.0.0.1:1", "127.0.0.1:2"), random: { random.next() })
        let first = group.begin(request(), excluding: [])!          // tie: the second drawn (:2)
        XCTAssertEqual(port(first), 2)
        // :2 has one in flight, :1 none: :1, whichever order they are drawn in.
        XCTAssertEqual(port(group.begin(request(), excluding: [])), 1)
        let reversed = TestRandom([1, 0])
        let other = BalancedGroup(name: "r", method: .random(two: true),
                                  servers: servers("127.0.0.1:1", "127.0.0.1:2"), random: { reversed.next() })
        let held = other.begin(request(), excluding: [])!           // tie: the second drawn (:1)
        XCTAssertEqual(port(held), 1)
        XCTAssertEqual(port(other.begin(request(), excluding: [])), 2)
        first.finish(outcome())
        held.finish(outcome())
    }

    func testRandomTwoBalancesLoadBetterThanRandom() {
        // Requests that never finish: random two keeps the counts within one of each other.
        let random = SeededRandom(seed: 3)
        let group = BalancedGroup(name: "r", method: .random(two: true),
                                  servers: servers("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"), random: { random.next() })
        var counts = [1: 0, 2: 0, 3: 0]
        var leases: [PeerLease] = []
        for _ in 0..<300 {
            let lease = group.begin(request(), excluding: [])!
            counts[port(lease), default: 0] += 1
            leases.append(lease)
        }
        XCTAssertLessThanOrEqual(counts.values.max()! - counts.values.min()!, 20)
        for lease in leases { lease.finish(outcome()) }
    }

    // MARK: least_time

    func testLeastTimeTriesNewPeersThenPrefersTheFaster() {
        let group = BalancedGroup(name: "t", method: .leastTime(.header, inflight: false),
                                  servers: servers("127.0.0.1:1", "127.0.0.1:2"))
        // No samples: both tried (round robin on the tie).
        let a = group.begin(request(), excluding: [])!, b = group.begin(request(), excluding: [])!
        XCTAssertEqual(Set([port(a), port(b)]), [1, 2])
        (port(a) == 1 ? a : b).finish(outcome(milliseconds: 500, header: 10))
        (port(a) == 1 ? b : a).finish(outcome(milliseconds: 5, header: 40))
        // By header time :1 is faster (10 ms against 40 ms): it takes requests until its load makes up for it.
        var picks: [Int] = []
        var held: [PeerLease] = []
        for _ in 0..<5 {
            let lease = group.begin(request(), excluding: [])!
            picks.append(port(lease))
            held.append(lease)
        }
        // 10×(n+1) against 40×1: :1 takes the first three (10, 20, 30 < 40); the fourth ties at 40 → round robin.
        XCTAssertEqual(Array(picks.prefix(3)), [1, 1, 1])
        XCTAssertTrue(picks.contains(2))
        for lease in held { lease.finish(outcome(milliseconds: 1, header: 10)) }
    }

    func testLeastTimeLastByteMeasuresTheWholeAnswer() {
        let group = BalancedGroup(name: "t", method: .leastTime(.lastByte, inflight: false),
                                  servers: servers("127.0.0.1:1", "127.0.0.1:2"))
        let a = group.begin(request(), excluding: [])!, b = group.begin(request(), excluding: [])!
        (port(a) == 1 ? a : b).finish(outcome(milliseconds: 500, header: 1))
        (port(a) == 1 ? b : a).finish(outcome(milliseconds: 5, header: 40))
        let next = group.begin(request(), excluding: [])
        XCTAssertEqual(port(next), 2)
        next?.finish(outcome(milliseconds: 5))
    }

    func testLeastTimeCountsWeight() {
        let group = BalancedGroup(name: "t", method: .leastTime(.header, inflight: false),
                                  servers: servers("127.0.0.1:1", "127.0.0.1:2 weight=4"))
        // :2 is twice as slow but has four times the weight: 20/4 < 10/1.
        group.begin(request(), excluding: [.tcp(host: "127.0.0.1", port: 2)])!.finish(outcome(header: 10))
        group.begin(request(), excluding: [.tcp(host: "127.0.0.1", port: 1)])!.finish(outcome(header: 20))
        XCTAssertEqual(port(group.begin(request(), excluding: [])), 2)
    }

    func testLeastTimeInflightAvoidsAPeerThatStoppedAnswering() {
        let clock = TestClock()
        let group = BalancedGroup(name: "t", method: .leastTime(.header, inflight: true),
                                  servers: servers("127.0.0.1:1", "127.0.0.1:2"), now: { clock.now })
        let a = group.begin(request(), excluding: [])!, b = group.begin(request(), excluding: [])!
        let one = port(a) == 1 ? a : b, two = port(a) == 1 ? b : a
        one.finish(outcome(header: 10))
        two.finish(outcome(header: 30))
        let stuck = group.begin(request(), excluding: [])!
        XCTAssertEqual(port(stuck), 1)
        // :1's request has been in flight for 5 s: with inflight it counts, and :2 is chosen.
        clock.advance(seconds: 5)
        XCTAssertEqual(port(group.begin(request(), excluding: [])), 2)
        stuck.finish(outcome(header: 10))
    }

    func testLeastTimeMovingAverageFollowsChange() {
        var peer = BalancedGroup.Peer(servers("127.0.0.1:1")[0])
        BalancedGroup.recordTime(outcome(header: 100), measure: .header, into: &peer)
        XCTAssertEqual(peer.averageNanoseconds, 100e6)
        for _ in 0..<40 { BalancedGroup.recordTime(outcome(header: 10), measure: .header, into: &peer) }
        XCTAssertEqual(peer.averageNanoseconds!, 10e6, accuracy: 1e6)
        BalancedGroup.recordTime(outcome(header: 1000, failure: .timeout), measure: .header, into: &peer)
        XCTAssertEqual(peer.averageNanoseconds!, 10e6, accuracy: 1e6, "failures give no sample")
    }

    // MARK: least_queue

    func testLeastQueueFollowsReportedDepth() {
        let clock = TestClock()
        let random = TestRandom([0, 1])
        let group = BalancedGroup(name: "q", method: .leastQueue, servers: servers("127.0.0.1:1", "127.0.0.1:2"),
                                  now: { clock.now }, random: { random.next() })
        // :1 reports a deep model queue, :2 a short one.
        let first = group.begin(request(), excluding: [])!
        let second = group.begin(request(), excluding: [])!
        XCTAssertEqual(Set([port(first), port(second)]), [1, 2])
        (port(first) == 1 ? first : second).finish(outcome(queueDepth: 9))
        (port(first) == 1 ? second : first).finish(outcome(queueDepth: 2))
        // :2 takes requests until those sent since its report make its load pass :1's (2 + 7 = 9 ties; the second
        // drawn, :2, takes the tie; 10 > 9 then goes to :1).
        var picks: [Int] = []
        var held: [PeerLease] = []
        for _ in 0..<9 {
            let lease = group.begin(request(), excluding: [])!
            picks.append(port(lease))
            held.append(lease)
        }
        XCTAssertEqual(picks, [2, 2, 2, 2, 2, 2, 2, 2, 1])
        // A new report from :1 that its queue drained moves the traffic there.
        held.removeLast().finish(outcome(queueDepth: 0))
        XCTAssertEqual(port(group.begin(request(), excluding: [])), 1)
        for lease in held { lease.finish(outcome()) }
    }

    func testLeastQueueForgetsAStaleReportWhenNothingIsInFlight() {
        let clock = TestClock()
        let random = TestRandom([0, 1])
        let group = BalancedGroup(name: "q", method: .leastQueue, servers: servers("127.0.0.1:1", "127.0.0.1:2"),
                                  now: { clock.now }, random: { random.next() })
        let a = group.begin(request(), excluding: [])!, b = group.begin(request(), excluding: [])!
        (port(a) == 1 ? a : b).finish(outcome(queueDepth: 50))
        (port(a) == 1 ? b : a).finish(outcome(queueDepth: 1))
        let held = group.begin(request(), excluding: [])!
        XCTAssertEqual(port(held), 2)
        clock.advance(seconds: 3)
        // :1's report is old and nothing is in flight there: its load is 0, against :2's 1 + 1.
        XCTAssertEqual(port(group.begin(request(), excluding: [])), 1)
        held.finish(outcome())
    }

    // MARK: slow_start

    func testSlowStartRampsAPeerBackFromFailure() {
        let clock = TestClock()
        let group = BalancedGroup(name: "s", method: .roundRobin,
                                  servers: servers("127.0.0.1:1 slow_start=10", "127.0.0.1:2"), now: { clock.now })
        func share(_ count: Int = 1000) -> Double {
            var ones = 0
            for _ in 0..<count {
                let lease = group.begin(request(), excluding: [])!
                if port(lease) == 1 { ones += 1 }
                lease.finish(outcome())
            }
            return Double(ones) / Double(count)
        }
        XCTAssertEqual(share(), 0.5, accuracy: 0.01, "no ramp at start")
        let failing = group.begin(request(), excluding: [.tcp(host: "127.0.0.1", port: 2)])!
        failing.finish(outcome(failure: .error))
        XCTAssertEqual(share(100), 0, "unavailable for fail_timeout")
        clock.advance(seconds: 11)           // back 1 s ago: 1/10 of its weight
        let early = share()
        clock.advance(seconds: 4)            // 5 s into the ramp
        let middle = share()
        clock.advance(seconds: 6)            // ramp over
        let late = share()
        XCTAssertEqual(early, 0.1 / 1.1, accuracy: 0.02)
        XCTAssertEqual(middle, 0.5 / 1.5, accuracy: 0.02)
        XCTAssertEqual(late, 0.5, accuracy: 0.01)
    }

    func testSlowStartWeighsLeastConn() {
        let clock = TestClock()
        let group = BalancedGroup(name: "s", method: .leastConn,
                                  servers: servers("127.0.0.1:1 slow_start=10", "127.0.0.1:2"), now: { clock.now })
        group.begin(request(), excluding: [.tcp(host: "127.0.0.1", port: 2)])!.finish(outcome(failure: .error))
        clock.advance(seconds: 12)           // 2 s into the ramp: weight 0.2
        // As in nginx, one request probes a server back from failure; its success clears the failures.
        var probed = false
        for _ in 0..<10 where !probed {
            let lease = group.begin(request(), excluding: [])!
            probed = port(lease) == 1
            lease.finish(outcome())
        }
        XCTAssertTrue(probed)
        // Requests held open: :1 gets one for each five :2 gets (conns / weight compared).
        var held: [PeerLease] = []
        var ones = 0
        for _ in 0..<60 {
            let lease = group.begin(request(), excluding: [])!
            if port(lease) == 1 { ones += 1 }
            held.append(lease)
        }
        XCTAssertEqual(Double(ones) / 60, 1.0 / 6, accuracy: 0.04)
        for lease in held { lease.finish(outcome()) }
    }
}
