import KernelConfig
import KernelCore

/// An upstream group's `health_check:` (nginx Plus's `health_check`, HAProxy's `check`): every `interval` each
/// peer is sent `GET uri` in the group's protocol. A new peer takes no request until its first check passed (nginx
/// Plus's `mandatory`); a peer is taken out after `fall` failures in a row and comes back after `rise` passes in a
/// row. A check passes when the peer answers within `timeout` with one of `status`.
public struct HealthCheckSettings: Sendable, Equatable {
    public var intervalNanoseconds: UInt64 = 5_000_000_000
    public var uri = "/"
    /// The `Host` of the checks; nil is the group's name (what nginx Plus sends, the upstream's name).
    public var host: String?
    /// The statuses that pass (nginx Plus passes 2xx and 3xx without a `match`).
    public var statuses: [ClosedRange<Int>] = [200...399]
    /// Passes in a row that bring a peer into service (nginx Plus `passes`, HAProxy `rise`).
    public var rise = 1
    /// Failures in a row that take a peer out (nginx Plus `fails`, HAProxy `fall`).
    public var fall = 1
    /// How long a check may take; nil is the interval (HAProxy's rule without `timeout check`).
    public var timeoutNanoseconds: UInt64?

    public init() {}

    public var effectiveTimeoutNanoseconds: UInt64 { timeoutNanoseconds ?? intervalNanoseconds }

    /// Whether an answer with `status` passes.
    public func passes(status: Int) -> Bool { statuses.contains { $0.contains(status) } }

    /// Decodes `{interval: 5s, uri: /healthz, host: api.internal, status: 200 | [200, 204] | "200-399", rise: 2, fall: 3, timeout: 2s}`;
    /// `passes`/`fails` are accepted for `rise`/`fall`.
    static func decode(_ value: ConfigValue) throws -> HealthCheckSettings {
        let mapping = try value.mapping()
        var settings = HealthCheckSettings()
        if let interval = mapping.optional("interval") {
            settings.intervalNanoseconds = try positiveNanoseconds(interval)
        }
        if let timeout = mapping.optional("timeout") {
            settings.timeoutNanoseconds = try positiveNanoseconds(timeout)
        }
        if let uri = mapping.optional("uri") {
            let text = try uri.nonEmptyString()
            guard text.hasPrefix("/"), !text.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7f }) else {
                throw uri.expected("a path starting with / and without spaces or control characters")
            }
            settings.uri = text
        }
        if let host = mapping.optional("host") {
            let text = try host.nonEmptyString()
            // A Host value goes on the wire as it is: no spaces, no control bytes, nothing a header cannot hold.
            guard !text.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7f || $0 == UInt8(ascii: "/") }) else {
                throw host.expected("a host name, optionally with :port")
            }
            settings.host = text
        }
        if let status = mapping.optional("status") {
            settings.statuses = try status.list(allowScalar: true).map(statusRange)
            guard !settings.statuses.isEmpty else { throw status.expected("at least one status") }
        }
        settings.rise = try count(mapping, "rise", alias: "passes") ?? 1
        settings.fall = try count(mapping, "fall", alias: "fails") ?? 1
        try mapping.finish()
        return settings
    }

    private static func positiveNanoseconds(_ value: ConfigValue) throws -> UInt64 {
        let duration = try value.duration()
        guard duration.milliseconds > 0 else { throw value.expected("a duration above zero") }
        return UInt64(duration.milliseconds) * 1_000_000
    }

    /// `200`, `"200-399"`.
    private static func statusRange(_ value: ConfigValue) throws -> ClosedRange<Int> {
        let text = try value.nonEmptyString()
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count <= 2, let low = Int(parts[0]), let high = Int(parts.last!), (100...599).contains(low),
              (100...599).contains(high), low <= high else {
            throw value.expected("a status from 100 to 599 or a range such as 200-399")
        }
        return low...high
    }

    private static func count(_ mapping: ConfigMapping, _ key: String, alias: String) throws -> Int? {
        let value = mapping.optional(key)
        let aliasValue = mapping.optional(alias)
        if value != nil, let aliasValue { throw aliasValue.error("\(alias) is another name for \(key): write one of them") }
        guard let given = value ?? aliasValue else { return nil }
        return try given.int(in: 1...1000)
    }
}

/// A peer's health as its checks have found it: nginx Plus's `mandatory` start and HAProxy's rise/fall counting.
///
/// A new peer is "checking" (out of service) until its first check ends, which decides at once, as nginx Plus's
/// `mandatory` does; after that it takes `rise` passes in a row to come back and `fall` failures in a row to
/// go out.
public struct PeerHealth: Sendable, Equatable {
    public private(set) var healthy = false
    /// Whether a check has ended yet.
    public private(set) var checked = false
    /// Passes in a row while out of service, failures in a row while in service.
    public private(set) var streak = 0
    /// How many checks in a row made the latest transition (1 for the first check).
    public private(set) var decidingChecks = 0
    /// How many times the peer came into service.
    public private(set) var timesHealthy = 0

    public init() {}

    /// Whether the peer had been in service before its latest return (for "is healthy again").
    public var hasBeenHealthyBefore: Bool { timesHealthy > 1 }

    /// What a check's result changed.
    public enum Transition: Sendable, Equatable {
        case becameHealthy
        case becameUnhealthy
    }

    /// Counts one check; a transition when the peer comes into or goes out of service (or its first check
    /// failed).
    public mutating func record(passed: Bool, rise: Int, fall: Int) -> Transition? {
        if !checked {
            checked = true
            return change(to: passed, after: 1)
        }
        if passed == healthy {
            streak = 0
            return nil
        }
        streak += 1
        guard streak >= (healthy ? fall : rise) else { return nil }
        return change(to: passed, after: streak)
    }

    private mutating func change(to healthy: Bool, after checks: Int) -> Transition {
        self.healthy = healthy
        streak = 0
        decidingChecks = checks
        if healthy { timesHealthy += 1 }
        return healthy ? .becameHealthy : .becameUnhealthy
    }
}

/// The checks of one group, with an injected clock: which peers are due for a check, and what each result does.
/// Each peer is checked `interval` after its previous check began, never twice at once; a peer that leaves the
/// group is forgotten, and one that joins is due at once.
public struct HealthCheckSchedule: Sendable {
    public let settings: HealthCheckSettings
    struct Entry: Sendable {
        var health = PeerHealth()
        var due: UInt64
        var checking = false
    }
    private var entries: [PeerAddress: Entry] = [:]

    public init(settings: HealthCheckSettings) { self.settings = settings }

    /// The peers to check now among the group's current `peers` (each is then marked as being checked).
    public mutating func due(peers: [PeerAddress], at now: UInt64) -> [PeerAddress] {
        let current = Set(peers)
        entries = entries.filter { current.contains($0.key) }
        var checks: [PeerAddress] = []
        for peer in peers {
            var entry = entries[peer] ?? Entry(due: now)
            if !entry.checking, entry.due <= now {
                entry.checking = true
                entry.due = now &+ settings.intervalNanoseconds
                checks.append(peer)
            }
            entries[peer] = entry
        }
        return checks
    }

    /// When the next check is due (nil with no peer waiting for one).
    public var nextDue: UInt64? {
        entries.values.filter { !$0.checking }.map(\.due).min()
    }

    /// Records a check of `peer` that ended; nil when the peer left the group meanwhile. The health is what the
    /// group must be told, the transition what is logged.
    public mutating func finished(_ peer: PeerAddress, passed: Bool, at now: UInt64) -> (health: PeerHealth, transition: PeerHealth.Transition?)? {
        guard var entry = entries[peer] else { return nil }
        entry.checking = false
        // A check that outlasted its interval makes the next one due at once, not in the past.
        if entry.due < now { entry.due = now }
        let transition = entry.health.record(passed: passed, rise: settings.rise, fall: settings.fall)
        entries[peer] = entry
        return (entry.health, transition)
    }

    /// The recorded health of `peer`, if it is known.
    public func health(of peer: PeerAddress) -> PeerHealth? { entries[peer]?.health }
}
