@testable import Balancing
import KernelCore
import XCTest

final class HashBalancingTests: XCTestCase {
    /// The servers of the nginx run the expected mappings below come from.
    private let nginxServers = servers("127.0.0.1:18001", "127.0.0.1:18002 weight=2", "127.0.0.1:18003")
    private let keys = ["a", "b", "c", "user1", "user2", "user3", "alice", "bob", "/v1/models/m", "42"]

    private func group(_ servers: [UpstreamServer], consistent: Bool, clock: TestClock = TestClock()) throws -> BalancedGroup {
        BalancedGroup(name: "h", method: .hash(try HashKey("$arg_k"), consistent: consistent), servers: servers,
                      now: { clock.now })
    }

    private func pick(_ group: BalancedGroup, _ key: String, excluding excluded: [PeerAddress] = []) -> Int {
        let lease = group.begin(request(uri: "/?k=\(key)"), excluding: excluded)
        lease?.finish(outcome())
        return port(lease) - 18000
    }

    func testCRC32IsZlibs() {
        XCTAssertEqual(CRC32.checksum(Array("123456789".utf8)), 0xCBF4_3926)
        XCTAssertEqual(CRC32.checksum([]), 0)
    }

    func testTheSameKeyGoesToTheSamePeer() throws {
        let group = try group(nginxServers, consistent: false)
        for key in keys {
            let first = pick(group, key)
            XCTAssertEqual((0..<5).map { _ in pick(group, key) }, Array(repeating: first, count: 5), key)
        }
    }

    /// Mappings read from nginx 1.x itself: `upstream { hash $arg_k; server 127.0.0.1:18001; server
    /// 127.0.0.1:18002 weight=2; server 127.0.0.1:18003; }` proxying to three servers answering 1, 2, 3,
    /// queried with `?k=KEY`.
    func testHashMapsKeysAsNginxDoes() throws {
        let group = try group(nginxServers, consistent: false)
        XCTAssertEqual(keys.map { pick(group, $0) }, [3, 2, 2, 2, 1, 3, 2, 3, 2, 1])
    }

    /// The same nginx with 18002 marked `down`: the rehash loop walks on as nginx's does.
    func testHashRehashesPastAnUnusablePeerAsNginxDoes() throws {
        var servers = nginxServers
        servers[1].down = true
        let group = try group(servers, consistent: false)
        XCTAssertEqual(keys.map { pick(group, $0) }, [3, 3, 1, 1, 1, 3, 3, 3, 1, 1])
    }

    /// nginx's `hash $arg_k consistent` over the same servers, then with 127.0.0.1:18004 added, then with
    /// 18002 `down`.
    func testConsistentHashMapsKeysAsNginxDoes() throws {
        XCTAssertEqual(keys.map { pick(try! group(nginxServers, consistent: true), $0) }, [2, 3, 3, 2, 2, 1, 1, 2, 2, 2])
        let four = try group(nginxServers + servers("127.0.0.1:18004"), consistent: true)
        XCTAssertEqual(keys.map { pick(four, $0) }, [2, 3, 4, 2, 2, 1, 1, 2, 2, 4])
        var withDown = nginxServers
        withDown[1].down = true
        let down = try group(withDown, consistent: true)
        XCTAssertEqual(keys.map { pick(down, $0) }, [3, 3, 3, 1, 3, 1, 1, 3, 1, 1])
    }

    func testConsistentHashMovesFewKeysWhenAPeerIsAdded() throws {
        let four = servers("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80")
        let before = try group(four, consistent: true)
        let after = try group(four + servers("10.0.0.5:80"), consistent: true)
        let keys = (0..<20_000).map { "/items/\($0)" }
        var moved = 0
        for key in keys {
            let old = before.begin(request(uri: "/?k=\(key)"), excluding: [])!
            let new = after.begin(request(uri: "/?k=\(key)"), excluding: [])!
            old.finish(outcome())
            new.finish(outcome())
            if old.peer != new.peer {
                moved += 1
                XCTAssertEqual(new.peer, .tcp(host: "10.0.0.5", port: 80), "a key that moves, moves to the new peer")
            }
        }
        let fraction = Double(moved) / Double(keys.count)
        // Ideally 1/(n+1) = 0.2 of the keys; 160 points per server keep it near that.
        XCTAssertGreaterThan(fraction, 0.15)
        XCTAssertLessThan(fraction, 0.25)
        // Plain hash, by contrast, remaps most keys.
        let plainBefore = try group(four, consistent: false), plainAfter = try group(four + servers("10.0.0.5:80"), consistent: false)
        let plainMoved = keys.filter { key in
            plainBefore.begin(request(uri: "/?k=\(key)"), excluding: [])?.peer != plainAfter.begin(request(uri: "/?k=\(key)"), excluding: [])?.peer
        }.count
        XCTAssertGreaterThan(Double(plainMoved) / Double(keys.count), 0.5)
    }

    func testAFailedPeersKeysGoElsewhereAndComeBack() throws {
        let clock = TestClock()
        let group = try group(servers("127.0.0.1:18001", "127.0.0.1:18002", "127.0.0.1:18003"), consistent: true, clock: clock)
        let keys = (0..<300).map { "k\($0)" }
        let home = Dictionary(uniqueKeysWithValues: keys.map { ($0, pick(group, $0)) })
        let victim = home["k0"]!
        let lease = group.begin(request(uri: "/?k=k0"), excluding: [])!
        lease.finish(outcome(failure: .error))       // max_fails=1: down for fail_timeout
        for key in keys {
            let now = pick(group, key)
            if home[key] == victim { XCTAssertNotEqual(now, victim, key) } else { XCTAssertEqual(now, home[key], "\(key) stays") }
        }
        clock.advance(seconds: 11)
        XCTAssertEqual(keys.map { pick(group, $0) }, keys.map { home[$0]! }, "back after fail_timeout")
    }

    func testATriedPeerIsHashedPast() throws {
        let group = try group(nginxServers, consistent: false)
        let first = pick(group, "user3")
        let other = pick(group, "user3", excluding: [.tcp(host: "127.0.0.1", port: 18000 + first)])
        XCTAssertNotEqual(other, first)
        XCTAssertNotEqual(other, -18001)
    }

    func testAnEmptyKeyIsRoundRobin() throws {
        let group = try group(servers("127.0.0.1:18001", "127.0.0.1:18002"), consistent: true)
        XCTAssertEqual((0..<4).map { _ in pick(group, "") }, [1, 2, 1, 2])
    }

    func testKeysUseRegistryVariables() throws {
        let group = BalancedGroup(name: "h", method: .hash(try HashKey("$remote_addr$request_uri"), consistent: false),
                                  servers: nginxServers)
        let a = group.begin(request(from: "192.0.2.1", uri: "/x"), excluding: [])
        let b = group.begin(request(from: "192.0.2.1", uri: "/x"), excluding: [])
        XCTAssertEqual(a?.peer, b?.peer)
        XCTAssertThrowsError(try HashKey("$no_such_variable"))
        XCTAssertThrowsError(try HashKey("$1"))
    }

    func testPointsSplitNamesAsNginxDoes() {
        XCTAssertEqual(ConsistentHashRing.hostAndPort("127.0.0.1:80").host, "127.0.0.1")
        XCTAssertEqual(ConsistentHashRing.hostAndPort("[::1]:80").host, "[::1]")
        XCTAssertEqual(ConsistentHashRing.hostAndPort("[::1]:80").port, "80")
        XCTAssertEqual(ConsistentHashRing.hostAndPort("unix:/run/a.sock").host, "/run/a.sock")
        XCTAssertEqual(ConsistentHashRing.hostAndPort("unix:/run/a.sock").port, "")
        XCTAssertEqual(ConsistentHashRing(servers: servers("127.0.0.1:1 weight=2")).points.count, 320)
    }
}
