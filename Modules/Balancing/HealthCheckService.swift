import KernelCore
import KernelUpstream
import Logging
import NIOCore

/// Runs a group's active health checks: on one event loop, through the `UpstreamProber` of the group's protocol,
/// never blocking. Each result updates the peer's rise/fall count (`HealthCheckSchedule`) and tells the group
/// whether the peer passes (`BalancedGroup.setPassesHealthChecks`), which every balancing method consults. Stopped
/// with its configuration generation (reload, shutdown); a check still running then is ignored when it ends.
public final class HealthCheckService: KernelService, @unchecked Sendable {
    public let name: String
    private let group: BalancedGroup
    private let scheme: String
    private let findProber: @Sendable () -> (any UpstreamProber)?
    private let addresses: any PeerAddressResolver
    private let eventLoop: any EventLoop
    private let logger: Logger
    private let now: @Sendable () -> UInt64
    // Loop-confined.
    private var schedule: HealthCheckSchedule
    private var prober: (any UpstreamProber)?
    private var timer: Scheduled<Void>?
    private var stopped = false

    /// `findProber` is asked when the service starts: the protocol modules register their probers after the
    /// balancing module has decoded its groups. `addresses` holds the addresses of the group's named servers.
    public init(group: BalancedGroup, settings: HealthCheckSettings, scheme: String,
                prober findProber: @escaping @Sendable () -> (any UpstreamProber)?,
                addresses: any PeerAddressResolver, eventLoop: any EventLoop, logger: Logger,
                now: @escaping @Sendable () -> UInt64 = { KernelClock.monotonicNanoseconds() }) {
        name = "upstream \"\(group.name)\" health checks"
        self.group = group
        self.scheme = scheme
        self.findProber = findProber
        self.addresses = addresses
        self.eventLoop = eventLoop
        self.logger = logger
        self.now = now
        schedule = HealthCheckSchedule(settings: settings)
    }

    public func start() async throws {
        guard let prober = findProber() else {
            throw HealthCheckUnavailable(group: group.name, scheme: scheme)
        }
        // The first round is waited for (each check is bounded by the timeout), so that the peers that pass are
        // in service when the listeners open or the reloaded configuration takes over.
        let firstRound = try await eventLoop.submit { [self] in
            self.prober = prober
            return EventLoopFuture.andAllComplete(tick(), on: eventLoop)
        }.get()
        try await firstRound.get()
    }

    public func stop() async {
        try? await eventLoop.submit { [self] in
            stopped = true
            timer?.cancel()
            timer = nil
        }.get()
    }

    /// Starts the checks that are due and sleeps until the next one (at most an interval, so that peers a
    /// resolver adds are found); the checks' futures complete when their results are recorded.
    @discardableResult
    private func tick() -> [EventLoopFuture<Void>] {
        guard !stopped, let prober else { return [] }
        let time = now()
        // A `local` server is this process itself: nothing to probe, it is up while the process is.
        let checks = schedule.due(peers: group.peers.filter { $0 != .local }, at: time).map { check($0, with: prober) }
        rearm(at: time)
        return checks
    }

    private func rearm(at time: UInt64) {
        timer?.cancel()
        let interval = schedule.settings.intervalNanoseconds
        let next = min(schedule.nextDue ?? time &+ interval, time &+ interval)
        let delay = next > time ? Int64(clamping: next - time) : 0
        timer = eventLoop.scheduleTask(in: .nanoseconds(delay)) { [self] in tick() }
    }

    private func check(_ peer: PeerAddress, with prober: any UpstreamProber) -> EventLoopFuture<Void> {
        let settings = schedule.settings
        let target = connectable(peer)
        let timeout = TimeAmount.nanoseconds(Int64(clamping: settings.effectiveTimeoutNanoseconds))
        return prober.probe(target, uri: settings.uri, host: settings.host ?? group.name, timeout: timeout, on: eventLoop)
            .hop(to: eventLoop)
            .map { status -> Result<Int, any Error> in .success(status) }
            .recover { error in .failure(error) }
            .map { [self] result in
                guard !stopped else { return }
                let passed: Bool
                let detail: String
                switch result {
                case .success(let status):
                    passed = settings.passes(status: status)
                    detail = "status \(status)"
                case .failure(let error):
                    passed = false
                    detail = "\(error)"
                }
                guard let (health, transition) = schedule.finished(peer, passed: passed, at: now()) else { return }
                group.setPassesHealthChecks(health.healthy, peer: peer)
                let checks = "\(health.decidingChecks) \(passed ? "passed" : "failed") health check\(health.decidingChecks == 1 ? "" : "s") of \(settings.uri)"
                switch transition {
                case .becameUnhealthy?:
                    logger.warning("upstream \"\(group.name)\": peer \(peer) is unhealthy after \(checks) (\(detail))")
                case .becameHealthy?:
                    let again = health.hasBeenHealthyBefore ? " again" : ""
                    logger.notice("upstream \"\(group.name)\": peer \(peer) is healthy\(again) after \(checks)")
                case nil:
                    break
                }
                rearm(at: now())
            }
    }

    /// A named server's address as the resolver has it, so that the prober never looks a name up.
    private func connectable(_ peer: PeerAddress) -> PeerAddress {
        guard case .tcp(let host, let port) = peer, PeerAddressBook.isNamed(peer),
              let address = addresses.address(host: host, port: port), let ip = address.ipAddress else { return peer }
        return .tcp(host: ip, port: port)
    }
}

/// A group with health checks whose protocol no module can check.
public struct HealthCheckUnavailable: Error, Sendable, CustomStringConvertible {
    public var group: String
    public var scheme: String
    public var description: String {
        "upstream \"\(group)\": no health check for protocol \(scheme) (is its module configured?)"
    }
}
