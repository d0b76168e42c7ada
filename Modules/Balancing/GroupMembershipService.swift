import KernelConfig
import KernelCore
import KernelUpstream
import Logging
import NIOCore

/// nginx's `resolver` and `resolver_timeout` of an upstream group, read from the group's mapping.
enum ResolverDirective {
    /// `resolver: 127.0.0.1:5353 [::1] valid=30s ipv4=on ipv6=off`, with `resolver_timeout: 5s` beside it.
    static func decode(_ value: ConfigValue, timeout: ConfigValue?) throws -> ResolverSettings {
        var settings = ResolverSettings(servers: [])
        if let timeout {
            let duration = try timeout.duration()
            guard duration.milliseconds > 0 else { throw timeout.expected("a duration above zero") }
            settings.timeout = .milliseconds(duration.milliseconds)
        }
        let text = try value.nonEmptyString()
        for word in text.split(separator: " ", omittingEmptySubsequences: true).map(String.init) {
            if word.hasPrefix("valid=") {
                guard let duration = ConfigDuration(parsing: String(word.dropFirst(6))), duration.milliseconds > 0 else {
                    throw value.error("resolver: invalid valid \"\(word.dropFirst(6))\"")
                }
                settings.valid = .milliseconds(duration.milliseconds)
            } else if word.hasPrefix("ipv4=") || word.hasPrefix("ipv6=") {
                let flag = word.dropFirst(5)
                guard flag == "on" || flag == "off" else {
                    throw value.error("resolver: invalid \(word.prefix(4)) value \"\(flag)\" (on or off)")
                }
                if word.hasPrefix("ipv4=") { settings.ipv4 = flag == "on" } else { settings.ipv6 = flag == "on" }
            } else if let address = nameServer(word) {
                settings.servers.append(address)
            } else {
                throw value.error("resolver: invalid address \"\(word)\" (an IP address with an optional port: 127.0.0.1:5353, [::1])")
            }
        }
        guard !settings.servers.isEmpty else { throw value.error("resolver: no address") }
        guard settings.ipv4 || settings.ipv6 else { throw value.error("resolver: \"ipv4\" and \"ipv6\" cannot both be \"off\"") }
        return settings
    }

    /// `127.0.0.1`, `127.0.0.1:5353`, `::1`, `[::1]`, `[::1]:5353`; port 53 when none is written.
    static func nameServer(_ word: String) -> SocketAddress? {
        if let address = try? SocketAddress(ipAddress: word, port: 53) { return address }
        if word.hasPrefix("["), let close = word.firstIndex(of: "]") {
            let host = String(word[word.index(after: word.startIndex)..<close])
            let rest = word[word.index(after: close)...]
            if rest.isEmpty { return try? SocketAddress(ipAddress: host, port: 53) }
            guard rest.hasPrefix(":"), let port = Int(rest.dropFirst()), (1...65535).contains(port) else { return nil }
            return try? SocketAddress(ipAddress: host, port: port)
        }
        guard let colon = word.lastIndex(of: ":"), let port = Int(word[word.index(after: colon)...]),
              (1...65535).contains(port) else { return nil }
        return try? SocketAddress(ipAddress: String(word[..<colon]), port: port)
    }
}

/// Keeps the peers of a group's `resolve` lines equal to their names' answers (nginx 1.27's `server ... resolve`):
/// each name is asked when the service starts (before the listeners open), then again when its answer expires
/// (the smallest TTL, or the resolver's `valid=`). A name that cannot be resolved keeps its last peers and is
/// asked again after `resolver_timeout` (at least 1 s), as nginx does; a name that does not exist (NXDOMAIN)
/// has no peers. Everything runs on one event loop, with the non-blocking `DNSClient`.
public final class GroupMembershipService: KernelService, @unchecked Sendable {
    public let name: String
    private let group: BalancedGroup
    private let lines: [UpstreamServer]
    private let client: DNSClient
    private let logger: Logger
    private let eventLoop: any EventLoop
    /// Loop-confined: set by `stop`, and the refreshes scheduled.
    private var stopped = false
    private var scheduled: [Int: Scheduled<Void>] = [:]

    /// How long a name without records (none found, or NXDOMAIN) waits before it is asked again when the
    /// resolver has no `valid=`.
    static let negativeRetry = TimeAmount.seconds(10)

    public init(group: BalancedGroup, resolver: ResolverSettings, eventLoop: any EventLoop, logger: Logger) {
        name = "upstream \"\(group.name)\" resolver"
        self.group = group
        lines = group.servers.filter(\.resolve)
        client = DNSClient(settings: resolver)
        self.eventLoop = eventLoop
        self.logger = logger
    }

    public func start() async throws {
        let first = try await eventLoop.submit { [self] in
            EventLoopFuture.andAllComplete(lines.indices.map { refresh($0) }, on: eventLoop)
        }.get()
        try await first.get()
    }

    public func stop() async {
        try? await eventLoop.submit { [self] in
            stopped = true
            for task in scheduled.values { task.cancel() }
            scheduled = [:]
        }.get()
    }

    /// Asks for line `index`'s name and applies the answer; the future completes once it is applied (it never
    /// fails: a failure is logged and retried).
    private func refresh(_ index: Int) -> EventLoopFuture<Void> {
        let server = lines[index]
        guard case .tcp(let host, let port) = server.address else { return eventLoop.makeSucceededVoidFuture() }
        return client.resolve(host, on: eventLoop).hop(to: eventLoop).map { [self] answer in
            guard !stopped else { return }
            apply(answer.addresses.map { PeerAddress.tcp(host: $0, port: port) }, to: server)
            let expiry: TimeAmount
            if let valid = client.settings.valid {
                expiry = valid
            } else if let ttl = answer.ttl {
                expiry = .seconds(Int64(ttl))
            } else {
                expiry = Self.negativeRetry
            }
            schedule(index, in: expiry)
        }.recover { [self] error in
            guard !stopped else { return }
            let failure = error as? DNSLookupError ?? .network("\(error)")
            logger.error("\(host) could not be resolved (\(failure))")
            if failure.isNameNotFound {
                apply([], to: server)
                schedule(index, in: client.settings.valid ?? Self.negativeRetry)
            } else {
                schedule(index, in: client.settings.timeout)
            }
        }
    }

    private func apply(_ addresses: [PeerAddress], to server: UpstreamServer) {
        let change = group.replaceResolvedPeers(of: server, with: addresses)
        for peer in change.added {
            logger.info("upstream \"\(group.name)\": peer \(peer) of \(server.address) added")
        }
        for peer in change.removed {
            logger.info("upstream \"\(group.name)\": peer \(peer) of \(server.address) removed")
        }
    }

    /// The next question for line `index`, at least 1 s away (a TTL of 0 must not make a busy loop).
    private func schedule(_ index: Int, in delay: TimeAmount) {
        let wait = max(delay, .seconds(1))
        scheduled[index] = eventLoop.scheduleTask(in: wait) { [self] in
            scheduled[index] = nil
            guard !stopped else { return }
            _ = refresh(index)
        }
    }
}
