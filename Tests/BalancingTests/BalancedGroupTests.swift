@testable import Balancing
import KernelCore
import NIOConcurrencyHelpers
import NIOCore
import XCTest

final class BalancedGroupTests: XCTestCase {
    private func server(_ text: String) throws -> UpstreamServer {
        var server = UpstreamServer(address: PeerAddress(parsing: text.split(separator: " ").first.map(String.init)!)!)
        for word in text.split(separator: " ").dropFirst() {
            let parts = word.split(separator: "=")
            switch parts[0] {
            case "weight": server.weight = Int(parts[1])!
            case "max_fails": server.maxFails = Int(parts[1])!
            case "max_conns": server.maxConns = Int(parts[1])!
            case "backup": server.backup = true
            case "down": server.down = true
            default: XCTFail("unknown \(word)")
            }
        }
        return server
    }

    private func request(from ip: String) -> KernelRequest {
        let connection = ConnectionInfo(protocolName: "http", listener: "test",
                                        remoteAddress: try! SocketAddress(ipAddress: ip, port: 40000), localAddress: nil)
        return KernelRequest(method: "GET", uri: "/", path: "/", query: "", version: .http1_1, headers: [:],
                             connection: connection)
    }

    private let success = PeerLeaseOutcome(status: 200, bytesReceived: 1, durationNanoseconds: 1)
    private let failure = PeerLeaseOutcome(status: nil, bytesReceived: 0, durationNanoseconds: 1, failure: .error)

    /// Picks `count` peers, finishing each lease at once with success; the ports, in order.
    private func sequence(_ group: BalancedGroup, _ count: Int, from ip: String = "10.0.0.1") -> [Int] {
        (0..<count).map { _ in
            let lease = group.begin(request(from: ip), excluding: [])!
            lease.finish(success)
            guard case .tcp(_, let port) = lease.peer else { return -1 }
            return port
        }
    }

    func testSmoothWeightedRoundRobinGivesNginxsSequence() throws {
        let group = BalancedGroup(name: "b", method: .roundRobin,
                                  servers: [try server("127.0.0.1:1 weight=5"), try server("127.0.0.1:2"), try server("127.0.0.1:3")])
        // nginx's documented sequence for weights 5, 1, 1: a a b a c a a, repeating.
        XCTAssertEqual(sequence(group, 14), [1, 1, 2, 1, 3, 1, 1, 1, 1, 2, 1, 3, 1, 1])
    }

    func testEqualWeightsAlternate() throws {
        let group = BalancedGroup(name: "b", method: .roundRobin, servers: [try server("127.0.0.1:1"), try server("127.0.0.1:2")])
        XCTAssertEqual(sequence(group, 4), [1, 2, 1, 2])
    }

    func testMaxFailsMarksAPeerDownForFailTimeoutThenItIsTriedAgain() throws {
        let clock = TestClock()
        let group = BalancedGroup(name: "b", method: .roundRobin,
                                  servers: [try server("127.0.0.1:1 max_fails=2"), try server("127.0.0.1:2")],
                                  now: { clock.now })
        for _ in 0..<2 {
            let lease = group.begin(request(from: "10.0.0.1"), excluding: [.tcp(host: "127.0.0.1", port: 2)])!
            XCTAssertEqual(lease.peer, .tcp(host: "127.0.0.1", port: 1))
            lease.finish(failure)
        }
        XCTAssertEqual(sequence(group, 3), [2, 2, 2], "down for fail_timeout (10s)")
        XCTAssertNil(group.begin(request(from: "10.0.0.1"), excluding: [.tcp(host: "127.0.0.1", port: 2)]),
                     "no live upstream when the other is excluded")
        clock.advance(seconds: 10.5)
        XCTAssertTrue(sequence(group, 4).contains(1), "back after fail_timeout")
    }

    func testTheOnlyPrimaryIsNeverMarkedDown() throws {
        // nginx's single-peer groups: max_fails and fail_timeout are ignored, the server keeps taking requests.
        let clock = TestClock()
        let group = BalancedGroup(name: "b", method: .roundRobin, servers: [try server("127.0.0.1:1 max_fails=1")],
                                  now: { clock.now })
        for _ in 0..<3 {
            let lease = try XCTUnwrap(group.begin(request(from: "10.0.0.1"), excluding: []))
            XCTAssertEqual(lease.peer, .tcp(host: "127.0.0.1", port: 1))
            lease.finish(failure)
        }
        XCTAssertEqual(sequence(group, 2), [1, 1], "still usable after failures")
        // With a second primary the same failures count again.
        let pair = BalancedGroup(name: "p", method: .roundRobin,
                                 servers: [try server("127.0.0.1:1 max_fails=1"), try server("127.0.0.1:2")], now: { clock.now })
        let lease = try XCTUnwrap(pair.begin(request(from: "10.0.0.1"), excluding: [.tcp(host: "127.0.0.1", port: 2)]))
        lease.finish(failure)
        XCTAssertEqual(sequence(pair, 3), [2, 2, 2])
        // With a backup server the one primary is no single peer: its failures count, the backup takes over.
        let backed = BalancedGroup(name: "k", method: .roundRobin,
                                   servers: [try server("127.0.0.1:1 max_fails=1"), try server("127.0.0.1:9 backup")], now: { clock.now })
        try XCTUnwrap(backed.begin(request(from: "10.0.0.1"), excluding: [])).finish(failure)
        XCTAssertEqual(try XCTUnwrap(backed.begin(request(from: "10.0.0.1"), excluding: [])).peer, .tcp(host: "127.0.0.1", port: 9))
    }

    func testBackupServesOnlyWhenEveryPrimaryIsUnavailable() throws {
        let group = BalancedGroup(name: "b", method: .roundRobin,
                                  servers: [try server("127.0.0.1:1 max_conns=1"), try server("127.0.0.1:9 backup")])
        let held = group.begin(request(from: "10.0.0.1"), excluding: [])!
        XCTAssertEqual(held.peer, .tcp(host: "127.0.0.1", port: 1))
        let spill = group.begin(request(from: "10.0.0.1"), excluding: [])!
        XCTAssertEqual(spill.peer, .tcp(host: "127.0.0.1", port: 9), "the primary is at max_conns")
        held.finish(success)
        spill.finish(success)
        XCTAssertEqual(sequence(group, 3), [1, 1, 1])
    }

    func testDownServersAreNeverPicked() throws {
        let group = BalancedGroup(name: "b", method: .roundRobin,
                                  servers: [try server("127.0.0.1:1 down"), try server("127.0.0.1:2")])
        XCTAssertEqual(sequence(group, 3), [2, 2, 2])
    }

    func testIPHashIsStickyPerSlash24AndRemapsWhenItsPeerFails() throws {
        let group = BalancedGroup(name: "b", method: .ipHash,
                                  servers: [try server("127.0.0.1:1"), try server("127.0.0.1:2"), try server("127.0.0.1:3")])
        let first = sequence(group, 5, from: "192.168.7.10")
        XCTAssertEqual(Set(first).count, 1, "one client, one server")
        XCTAssertEqual(sequence(group, 3, from: "192.168.7.200"), Array(first.prefix(3)), "the same /24 maps the same")
        var spread = Set<Int>()
        for third in 0..<64 { spread.formUnion(sequence(group, 1, from: "10.\(third).\(third * 3 % 256).1")) }
        XCTAssertEqual(spread, [1, 2, 3], "clients spread over every server")
        // The client's server is excluded (as after a failed try): the hash walks on to another one.
        let excluded = PeerAddress.tcp(host: "127.0.0.1", port: first[0])
        let other = group.begin(request(from: "192.168.7.10"), excluding: [excluded])!
        XCTAssertNotEqual(other.peer, excluded)
    }

    func testIPHashKeysAreNginxs() throws {
        XCTAssertEqual(BalancedGroup.ipHashKey(try SocketAddress(ipAddress: "192.168.7.10", port: 1)), [192, 168, 7])
        XCTAssertEqual(BalancedGroup.ipHashKey(try SocketAddress(ipAddress: "::1", port: 1))?.count, 16)
        XCTAssertNil(BalancedGroup.ipHashKey(try SocketAddress(unixDomainSocketPath: "/tmp/x")))
    }

    func testLeastConnPrefersTheServerWithFewerRequestsInFlightForItsWeight() throws {
        let group = BalancedGroup(name: "b", method: .leastConn,
                                  servers: [try server("127.0.0.1:1"), try server("127.0.0.1:2 weight=2")])
        let one = PeerAddress.tcp(host: "127.0.0.1", port: 1), two = PeerAddress.tcp(host: "127.0.0.1", port: 2)
        // Nothing in flight: a tie, decided by weighted round robin (weight 2 first).
        let first = group.begin(request(from: "10.0.0.1"), excluding: [])!
        XCTAssertEqual(first.peer, two)
        // 1/2 in flight on :2 against 0/1 on :1.
        let second = group.begin(request(from: "10.0.0.1"), excluding: [])!
        XCTAssertEqual(second.peer, one)
        // 1/2 against 1/1: :2 has fewer for its weight.
        let third = group.begin(request(from: "10.0.0.1"), excluding: [])!
        XCTAssertEqual(third.peer, two)
        // 2/2 against 1/1: a tie again; finishing :1's request makes it the least loaded.
        second.finish(success)
        XCTAssertEqual(group.begin(request(from: "10.0.0.1"), excluding: [])?.peer, one)
        // A lease counts until it is finished, which the engine does at the end of the body.
        first.finish(success)
        third.finish(success)
    }

    func testALeaseFinishedTwiceCountsOnce() throws {
        let group = BalancedGroup(name: "b", method: .roundRobin, servers: [try server("127.0.0.1:1 max_conns=1")])
        let lease = group.begin(request(from: "10.0.0.1"), excluding: [])!
        lease.finish(success)
        lease.finish(success)
        let next = group.begin(request(from: "10.0.0.1"), excluding: [])
        XCTAssertNotNil(next, "the connection count went back to 0 once, not below")
        XCTAssertNil(group.begin(request(from: "10.0.0.1"), excluding: []), "max_conns=1 still holds")
    }
}

/// What metrics and readiness read of a group: each peer up or not.
final class PeerStateTests: XCTestCase {
    func testAPeerIsUpUnlessDownFailedOrFailingItsHealthChecks() {
        let clock = TestClock()
        let group = BalancedGroup(name: "b", method: .roundRobin,
                                  servers: servers("127.0.0.1:1 max_fails=1", "127.0.0.1:2 down", "127.0.0.1:3", "127.0.0.1:4 backup"),
                                  now: { clock.now })
        func states() -> [String: Bool] {
            Dictionary(uniqueKeysWithValues: group.peerStates().map { ($0.address, $0.up) })
        }
        XCTAssertEqual(states(), ["127.0.0.1:1": true, "127.0.0.1:2": false, "127.0.0.1:3": true, "127.0.0.1:4": true])
        let lease = group.begin(request(), excluding: [])!
        XCTAssertEqual(port(lease), 1)
        lease.finish(outcome(failure: .error))
        XCTAssertEqual(states()["127.0.0.1:1"], false, "failed within fail_timeout")
        clock.advance(seconds: 11)
        XCTAssertEqual(states()["127.0.0.1:1"], true, "back once fail_timeout (10s) has passed")
        group.setPassesHealthChecks(false, peer: .tcp(host: "127.0.0.1", port: 3))
        XCTAssertEqual(states()["127.0.0.1:3"], false, "failing its health checks")
    }
}
