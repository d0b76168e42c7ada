import KernelConfig
import KernelCore

/// Response headers at the edge: nginx's `add_header` and a `cors:` block, both filter directives written per
/// server or location (a location's own value replaces the server's, as nginx inherits `add_header`).
///
/// Always enabled, as nginx's headers module is always built in; the optional top-level `cors:` key names policies
/// that servers and locations use by name (`cors: public_api`).
public enum CORSModule: KernelModule {
    public struct Configuration: Sendable {
        /// Named `cors:` policies.
        public var policies: [String: CORSPolicy] = [:]
    }

    public static let configurationKey = "cors"
    public static let roles: Set<KernelRole> = [.edge, .worker]
    public static var enabledWithoutKey: Bool { true }

    public static func decode(_ value: ConfigValue, registrar: Registrar) throws -> Configuration {
        let mapping = try value.mapping()
        var configuration = Configuration()
        if let policies = mapping.optional("policies") {
            let named = try policies.mapping()
            for (name, policy) in named.unread() {
                named.allow(name)
                configuration.policies[name] = try CORSPolicy.decode(policy) { registrar.logger.warning("\($0)") }
            }
            try named.finish()
        }
        try mapping.finish()
        return configuration
    }

    public static func register(_ configuration: Configuration, into registrar: Registrar) throws {
        let logger = registrar.logger
        registrar.addLocationFilter("cors", phase: .headers) { value, _, _ in
            if case .mapping = value.node {
                return CORSFilter(policy: try CORSPolicy.decode(value) { logger.warning("\($0)") })
            }
            let name = try value.nonEmptyString()
            guard let policy = configuration.policies[name] else {
                let known = configuration.policies.keys.sorted().joined(separator: ", ")
                throw value.error("cors: no policy \"\(name)\" in the top-level cors.policies\(known.isEmpty ? "" : " (there are: \(known))")")
            }
            return CORSFilter(policy: policy)
        }
        // Declared after `cors`: filters of one phase nest in declaration order, so on the way out `cors` runs
        // last and its Access-Control-* fields win over inherited `add_header` lines.
        let variables = registrar.variables
        registrar.addLocationFilter("add_header", phase: .headers) { value, _, _ in
            AddHeaderFilter(headers: try AddedHeader.decode(value, variables: variables))
        }
    }
}
