@testable import Balancing
import KernelConfig
import KernelCore
import NIOCore
import XCTest

final class HealthCheckTests: XCTestCase {
    private let a = PeerAddress.tcp(host: "127.0.0.1", port: 1)
    private let b = PeerAddress.tcp(host: "127.0.0.1", port: 2)
    private let second: UInt64 = 1_000_000_000

    private func settings(rise: Int, fall: Int, interval: UInt64 = 5_000_000_000) -> HealthCheckSettings {
        var settings = HealthCheckSettings()
        settings.rise = rise
        settings.fall = fall
        settings.intervalNanoseconds = interval
        return settings
    }

    func testTheFirstCheckDecidesThenFallFailuresTakeAPeerOutAndRisePassesBringItBack() {
        var health = PeerHealth()
        XCTAssertFalse(health.healthy, "a checked peer starts out of service")
        XCTAssertEqual(health.record(passed: true, rise: 2, fall: 3), .becameHealthy, "nginx Plus's mandatory: the first check decides")
        XCTAssertEqual(health.decidingChecks, 1)
        XCTAssertFalse(health.hasBeenHealthyBefore)
        XCTAssertNil(health.record(passed: false, rise: 2, fall: 3))
        XCTAssertNil(health.record(passed: false, rise: 2, fall: 3))
        XCTAssertNil(health.record(passed: true, rise: 2, fall: 3), "a pass restarts the count of failures")
        XCTAssertNil(health.record(passed: false, rise: 2, fall: 3))
        XCTAssertNil(health.record(passed: false, rise: 2, fall: 3))
        XCTAssertTrue(health.healthy)
        XCTAssertEqual(health.record(passed: false, rise: 2, fall: 3), .becameUnhealthy)
        XCTAssertEqual(health.decidingChecks, 3)
        XCTAssertFalse(health.healthy)
        XCTAssertNil(health.record(passed: true, rise: 2, fall: 3))
        XCTAssertNil(health.record(passed: false, rise: 2, fall: 3), "a failure restarts the count of passes")
        XCTAssertNil(health.record(passed: true, rise: 2, fall: 3))
        XCTAssertEqual(health.record(passed: true, rise: 2, fall: 3), .becameHealthy)
        XCTAssertEqual(health.decidingChecks, 2)
        XCTAssertTrue(health.hasBeenHealthyBefore, "the second return is \"healthy again\"")

        var failing = PeerHealth()
        XCTAssertEqual(failing.record(passed: false, rise: 2, fall: 3), .becameUnhealthy, "a failed first check is reported")
        XCTAssertNil(failing.record(passed: true, rise: 2, fall: 3))
        XCTAssertEqual(failing.record(passed: true, rise: 2, fall: 3), .becameHealthy)
        XCTAssertFalse(failing.hasBeenHealthyBefore)
    }

    func testChecksAreDueEveryIntervalNeverTwiceAtOnceAndFollowTheGroupsPeers() {
        var schedule = HealthCheckSchedule(settings: settings(rise: 1, fall: 1))
        let start: UInt64 = 100 * second
        XCTAssertEqual(schedule.due(peers: [a, b], at: start), [a, b], "new peers are checked at once")
        XCTAssertEqual(schedule.due(peers: [a, b], at: start + 6 * second), [], "a check in flight is not repeated")
        XCTAssertNil(schedule.nextDue, "both are being checked")
        XCTAssertEqual(schedule.finished(a, passed: true, at: start + 1 * second)?.transition, .becameHealthy)
        XCTAssertEqual(schedule.nextDue, start + 5 * second, "the next check is an interval after the last began")
        XCTAssertEqual(schedule.due(peers: [a, b], at: start + 4 * second), [])
        XCTAssertEqual(schedule.due(peers: [a, b], at: start + 5 * second), [a])
        // b's check outlasted the interval: it is due again as soon as it ends.
        XCTAssertEqual(schedule.finished(b, passed: false, at: start + 7 * second)?.health.healthy, false)
        XCTAssertEqual(schedule.due(peers: [a, b], at: start + 7 * second), [b])
        // a leaves the group: its result is dropped, and a peer that comes back starts over, out of service.
        XCTAssertEqual(schedule.due(peers: [b], at: start + 8 * second), [])
        XCTAssertNil(schedule.finished(a, passed: true, at: start + 8 * second))
        XCTAssertNil(schedule.health(of: a))
        XCTAssertEqual(schedule.due(peers: [a, b], at: start + 9 * second), [a])
        XCTAssertEqual(schedule.health(of: a)?.healthy, false)
    }

    func testAHealthCheckedGroupUsesOnlyPeersThatPassed() throws {
        let group = BalancedGroup(name: "b", method: .roundRobin,
                                  servers: [UpstreamServer(address: a), UpstreamServer(address: b)], scheme: "uwsgi",
                                  healthChecked: true)
        XCTAssertNil(group.begin(request(), excluding: []), "no peer has passed yet")
        group.setPassesHealthChecks(true, peer: b)
        XCTAssertEqual((0..<4).map { _ in pick(group) }, [b, b, b, b])
        group.setPassesHealthChecks(true, peer: a)
        XCTAssertEqual(Set((0..<4).map { _ in pick(group) }), [a, b])
        group.setPassesHealthChecks(false, peer: b)
        XCTAssertEqual((0..<4).map { _ in pick(group) }, [a, a, a, a])
        XCTAssertEqual(group.scheme, "uwsgi")
    }

    func testEveryMethodConsultsTheHealthChecks() throws {
        for method in [BalancingMethod.roundRobin, .ipHash, .leastConn] {
            let group = BalancedGroup(name: "b", method: method,
                                      servers: [UpstreamServer(address: a), UpstreamServer(address: b)], healthChecked: true)
            group.setPassesHealthChecks(true, peer: a)
            XCTAssertEqual(Set((0..<6).map { _ in pick(group) }), [a], "\(method)")
        }
    }

    func testSettingsDecodeNginxPlusAndHAProxyNames() throws {
        let decoded = try HealthCheckSettings.decode(value("{interval: 2s, uri: /healthz, status: [200, 204-206], passes: 2, fall: 3, timeout: 500ms}"))
        XCTAssertEqual(decoded.intervalNanoseconds, 2 * second)
        XCTAssertEqual(decoded.uri, "/healthz")
        XCTAssertEqual(decoded.statuses, [200...200, 204...206])
        XCTAssertEqual(decoded.rise, 2)
        XCTAssertEqual(decoded.fall, 3)
        XCTAssertEqual(decoded.effectiveTimeoutNanoseconds, 500_000_000)
        XCTAssertTrue(decoded.passes(status: 205))
        XCTAssertFalse(decoded.passes(status: 503))

        XCTAssertNil(decoded.host, "the group's name is the Host unless one is written")
        XCTAssertEqual(try HealthCheckSettings.decode(value("{host: api.internal:8080}")).host, "api.internal:8080")
        XCTAssertThrowsError(try HealthCheckSettings.decode(value("{host: \"a b\"}")))

        let defaults = try HealthCheckSettings.decode(value("{}"))
        XCTAssertEqual(defaults.uri, "/")
        XCTAssertEqual(defaults.effectiveTimeoutNanoseconds, defaults.intervalNanoseconds, "HAProxy's timeout rule")
        XCTAssertTrue(defaults.passes(status: 302) && !defaults.passes(status: 404))

        XCTAssertThrowsError(try HealthCheckSettings.decode(value("{rise: 2, passes: 2}"))) { error in
            XCTAssertTrue("\(error)".contains("passes is another name for rise"), "\(error)")
        }
        XCTAssertThrowsError(try HealthCheckSettings.decode(value("{status: 299-200}")))
        XCTAssertThrowsError(try HealthCheckSettings.decode(value("{uri: healthz}")))
        XCTAssertThrowsError(try HealthCheckSettings.decode(value("{interval: 0s}")))
        XCTAssertThrowsError(try HealthCheckSettings.decode(value("{rise: 1, checks: 3}")))
    }

    private func value(_ text: String) throws -> ConfigValue {
        try ConfigValue(node: YAMLParser().parse("check: \(text)\n", file: "test.yaml"), path: "").mapping().required("check")
    }

    private func request() -> KernelRequest {
        let connection = ConnectionInfo(protocolName: "http", listener: "test",
                                        remoteAddress: try! SocketAddress(ipAddress: "10.0.0.1", port: 40000), localAddress: nil)
        return KernelRequest(method: "GET", uri: "/", path: "/", query: "", version: .http1_1, headers: [:], connection: connection)
    }

    private func pick(_ group: BalancedGroup) -> PeerAddress? {
        guard let lease = group.begin(request(), excluding: []) else { return nil }
        lease.finish(PeerLeaseOutcome(status: 200, bytesReceived: 1, durationNanoseconds: 1))
        return lease.peer
    }
}

/// The peers of `resolve` lines: added and removed without a reload, with requests in flight on a removed peer
/// finishing normally.
final class ResolvedPeersTests: XCTestCase {
    private func line(_ text: String) throws -> UpstreamServer {
        let parsed = try ConfigValue(node: YAMLParser().parse("s: \(text)\n", file: "test.yaml"), path: "").mapping().required("s")
        return try UpstreamServer.decode(parsed)
    }

    private func ip(_ last: Int) -> PeerAddress { .tcp(host: "10.0.0.\(last)", port: 6666) }

    private func request() -> KernelRequest {
        let connection = ConnectionInfo(protocolName: "http", listener: "test", remoteAddress: nil, localAddress: nil)
        return KernelRequest(method: "GET", uri: "/", path: "/", query: "", version: .http1_1, headers: [:], connection: connection)
    }

    private let done = PeerLeaseOutcome(status: 200, bytesReceived: 1, durationNanoseconds: 1)

    func testResolveIsAServerParameterAndNeedsAName() throws {
        XCTAssertTrue(try line("app.internal:6666 weight=2 resolve").resolve)
        XCTAssertFalse(try line("10.0.0.1:6666 resolve").resolve, "an IP address needs no lookup")
        XCTAssertThrowsError(try line("unix:/run/app.sock resolve"))
    }

    func testAResolveLineHasNoPeerUntilItsNameIsResolvedThenFollowsTheAnswers() throws {
        let fixed = try line("127.0.0.1:7000")
        let named = try line("app.internal:6666 weight=2 resolve")
        let group = BalancedGroup(name: "b", method: .roundRobin, servers: [fixed, named])
        XCTAssertEqual(group.peers, [fixed.address], "the name is not a peer itself")
        XCTAssertEqual(group.maxTries, 1)

        XCTAssertEqual(group.replaceResolvedPeers(of: named, with: [ip(1), ip(2), ip(1)]),
                       PeerMembershipChange(added: [ip(1), ip(2)]))
        XCTAssertEqual(group.peers, [fixed.address, ip(1), ip(2)])
        XCTAssertEqual(group.maxTries, 3)
        // The line's weight goes with each address: 2, 2 against 1.
        var counts: [PeerAddress: Int] = [:]
        for _ in 0..<10 {
            let lease = group.begin(request(), excluding: [])!
            counts[lease.peer, default: 0] += 1
            lease.finish(done)
        }
        XCTAssertEqual(counts, [fixed.address: 2, ip(1): 4, ip(2): 4])

        XCTAssertEqual(group.replaceResolvedPeers(of: named, with: [ip(1), ip(2)]), PeerMembershipChange(), "same answer")
    }

    func testARemovedPeerTakesNoNewRequestAndItsRequestsInFlightEndHarmlessly() throws {
        let named = try line("app.internal:6666 resolve")
        let group = BalancedGroup(name: "b", method: .leastConn, servers: [named])
        group.replaceResolvedPeers(of: named, with: [ip(1)])
        let inFlight = group.begin(request(), excluding: [])!
        XCTAssertEqual(inFlight.peer, ip(1))

        XCTAssertEqual(group.replaceResolvedPeers(of: named, with: [ip(2)]),
                       PeerMembershipChange(added: [ip(2)], removed: [ip(1)]))
        XCTAssertEqual(group.peers, [ip(2)])
        for _ in 0..<3 {
            let lease = group.begin(request(), excluding: [])!
            XCTAssertEqual(lease.peer, ip(2))
            lease.finish(done)
        }
        inFlight.finish(PeerLeaseOutcome(status: nil, bytesReceived: 0, durationNanoseconds: 1, failure: .error))
        XCTAssertEqual(group.peers, [ip(2)])

        // The drained slot is reused by the next new address; the list does not grow.
        group.replaceResolvedPeers(of: named, with: [ip(2), ip(3)])
        XCTAssertEqual(group.peers, [ip(3), ip(2)])
        XCTAssertEqual(group.maxTries, 2)
    }

    func testAnAddressThatComesBackWhileDrainingKeepsItsCount() throws {
        let named = try line("app.internal:6666 max_conns=1 resolve")
        let group = BalancedGroup(name: "b", method: .roundRobin, servers: [named])
        group.replaceResolvedPeers(of: named, with: [ip(1)])
        let inFlight = group.begin(request(), excluding: [])!
        group.replaceResolvedPeers(of: named, with: [])
        XCTAssertNil(group.begin(request(), excluding: []), "the name has no address: no live upstreams")
        group.replaceResolvedPeers(of: named, with: [ip(1)])
        XCTAssertNil(group.begin(request(), excluding: []), "its request in flight still counts towards max_conns")
        inFlight.finish(done)
        XCTAssertEqual(group.begin(request(), excluding: [])?.peer, ip(1))
    }

    func testNewPeersOfAHealthCheckedGroupWaitForTheirFirstPass() throws {
        let named = try line("app.internal:6666 resolve")
        let group = BalancedGroup(name: "b", method: .roundRobin, servers: [named], scheme: "uwsgi", healthChecked: true)
        group.replaceResolvedPeers(of: named, with: [ip(1)])
        XCTAssertNil(group.begin(request(), excluding: []))
        group.setPassesHealthChecks(true, peer: ip(1))
        XCTAssertEqual(group.begin(request(), excluding: [])?.peer, ip(1))
    }
}
