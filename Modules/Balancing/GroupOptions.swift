import KernelConfig
import KernelCore
import KernelUpstream

/// The keys of an upstream group that go beyond picking a peer: `protocol:` (what the servers speak),
/// `resolver:`/`resolver_timeout:` (for `resolve` servers) and `health_check:`, with the services they need.
struct GroupOptions {
    /// `http` or `uwsgi`; nil when the group does not say.
    var scheme: String?
    var resolver: ResolverSettings?
    var healthCheck: HealthCheckSettings?

    static let schemes = ["http", "uwsgi"]

    /// Reads the keys from a group's mapping; `servers` are its decoded server lines.
    static func decode(_ mapping: ConfigMapping, group: String, servers: [(server: UpstreamServer, value: ConfigValue)],
                       body: ConfigValue) throws -> GroupOptions {
        var options = GroupOptions()
        if let scheme = mapping.optional("protocol") {
            options.scheme = try scheme.oneOf(schemes)
        }
        let timeout = mapping.optional("resolver_timeout")
        if let resolver = mapping.optional("resolver") {
            options.resolver = try ResolverDirective.decode(resolver, timeout: timeout)
        } else if let timeout {
            throw timeout.error("resolver_timeout needs a resolver in the group")
        }
        if options.resolver == nil, let unresolvable = servers.first(where: { $0.server.resolve }) {
            // nginx: "no resolver defined to resolve ..." when the configuration loads.
            throw unresolvable.value.error("no resolver defined to resolve \(unresolvable.server.address) in upstream \"\(group)\"")
        }
        if let check = mapping.optional("health_check") {
            guard options.scheme != nil else {
                throw check.error("upstream \"\(group)\": health_check needs the group's protocol (protocol: http or uwsgi)")
            }
            options.healthCheck = try HealthCheckSettings.decode(check)
        }
        return options
    }

    /// The group's services: its resolver's and its health checks'. Named servers that are not `resolve`d are
    /// looked up now (blocking, while the configuration loads, as `uwsgi_pass` does) for the checks to reach them.
    func addServices(for group: BalancedGroup, registrar: Registrar, body: ConfigValue) throws {
        if let resolver {
            registrar.addService(GroupMembershipService(group: group, resolver: resolver,
                                                        eventLoop: registrar.eventLoopGroup.next(), logger: registrar.logger))
        }
        if let healthCheck, let scheme {
            let book = PeerAddressBook()
            do {
                try book.resolve(group.peers)
            } catch let notFound as PeerNotFound {
                throw body.error(notFound.description)
            }
            registrar.addService(HealthCheckService(
                group: group, settings: healthCheck, scheme: scheme,
                prober: { [registrar] in registrar.upstreamProber(scheme: scheme) },
                addresses: book, eventLoop: registrar.eventLoopGroup.next(), logger: registrar.logger))
        }
    }
}
