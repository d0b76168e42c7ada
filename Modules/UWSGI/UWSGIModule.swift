import KernelConfig
import KernelCore
import KernelUpstream
import NIOCore

/// One uwsgi listener as configured.
public struct UWSGIListenerConfiguration: Sendable {
    public var address: ListenAddress
    /// As written in YAML.
    public var text: String
    public var mode: UInt32?
    public var owner: String?
    /// The accept queue length; nil is `kernel.listen_backlog`.
    public var backlog: Int32?
    /// Where the address is written, for errors about binding it.
    public var mark: SourceMark?
}

/// The `uwsgi:` section.
public struct UWSGIConfiguration: Sendable {
    public var listeners: [UWSGIListenerConfiguration] = []
    /// uWSGI `buffer-size`: the largest vars block accepted.
    public var bufferSize = ByteSize(bytes: 4096)
    public var clientBodyTimeout = ConfigDuration.seconds(60)
    public var sendTimeout = ConfigDuration.seconds(60)
}

/// The `uwsgi` module: uwsgi listeners on the worker side (what uWSGI's `socket =` does) and the `uwsgi_pass`
/// location handler on the edge side (what nginx's `uwsgi_pass` does).
///
/// It runs in the edge role too, for `uwsgi_pass`; its listeners open only in the worker and both roles, so that
/// one file can describe a deployment whose edge and worker share a host.
public enum UWSGIModule: KernelModule {
    public static let configurationKey = "uwsgi"
    public static let roles: Set<KernelRole> = [.edge, .worker]

    public static func decode(_ value: ConfigValue, registrar: Registrar) throws -> UWSGIConfiguration {
        var configuration = UWSGIConfiguration()
        let mapping = try value.mapping()
        if let listen = mapping.optional("listen") {
            // One address, one mapping, or a list of either.
            let items: [ConfigValue]
            if case .mapping = listen.node { items = [listen] } else { items = try listen.list(allowScalar: true) }
            for item in items {
                configuration.listeners.append(try decodeListener(item))
            }
        }
        if let size = mapping.optional("buffer_size") {
            let parsed = try size.size()
            // 64k (65536) is what uWSGI deployments write for "the largest block the 16-bit size can announce".
            guard parsed.bytes >= 16, parsed.bytes <= 65536 else {
                throw size.error("expected a size from 16 to 64k (the uwsgi header's 16-bit size field), found \(parsed)")
            }
            configuration.bufferSize = parsed
        }
        if let timeout = mapping.optional("client_body_timeout") {
            configuration.clientBodyTimeout = try positiveDuration(timeout)
        }
        if let timeout = mapping.optional("send_timeout") {
            configuration.sendTimeout = try positiveDuration(timeout)
        }
        try mapping.finish()
        return configuration
    }

    private static func decodeListener(_ item: ConfigValue) throws -> UWSGIListenerConfiguration {
        var text: String
        var mode: UInt32?
        var owner: String?
        var backlog: Int32?
        var addressValue = item
        if case .mapping = item.node {
            let fields = try item.mapping()
            addressValue = try fields.required("address")
            text = try addressValue.nonEmptyString()
            if let modeValue = fields.optional("mode") {
                let modeText = try modeValue.string()
                guard !modeText.isEmpty, modeText.count <= 4, let parsed = UInt32(modeText, radix: 8), parsed <= 0o777 else {
                    throw modeValue.expected("an octal file mode such as \"0660\"")
                }
                mode = parsed
            }
            if let ownerValue = fields.optional("owner") {
                owner = try ownerValue.nonEmptyString()
            }
            if let backlogValue = fields.optional("backlog") {
                backlog = Int32(try backlogValue.int(in: 1...65535))
            }
            try fields.finish()
        } else {
            text = try item.nonEmptyString()
        }
        guard let address = ListenAddress(parsing: text) else {
            throw addressValue.expected("an address such as 127.0.0.1:6666, [::1]:6666, 6666 or unix:/run/kernel.sock")
        }
        if case .tcp = address, mode != nil || owner != nil {
            throw item.error("mode and owner apply to unix sockets only")
        }
        return UWSGIListenerConfiguration(address: address, text: text, mode: mode, owner: owner, backlog: backlog,
                                          mark: addressValue.mark)
    }

    static func positiveDuration(_ value: ConfigValue) throws -> ConfigDuration {
        let duration = try value.duration()
        guard duration.milliseconds > 0 else { throw value.expected("a duration above zero") }
        return duration
    }

    public static func register(_ configuration: UWSGIConfiguration, into registrar: Registrar) throws {
        registrar.addLocationHandler("uwsgi_pass", capabilities: .proxies) { value, location, _ in
            try UWSGIPassFactory.make(value: value, location: location, registrar: registrar)
        }
        registrar.addUpstreamProber(scheme: "uwsgi", UWSGIProber(logger: registrar.logger))
        // nginx allows these at server (and http) level too; a location's own value replaces the server's.
        registrar.addServerInheritedKeys([
            "uwsgi_param", "uwsgi_pass_request_headers", "uwsgi_connect_timeout", "uwsgi_send_timeout",
            "uwsgi_read_timeout", "uwsgi_buffer_size", "uwsgi_next_upstream", "uwsgi_next_upstream_tries",
            "uwsgi_next_upstream_timeout", "uwsgi_request_buffering", "request_timeout", "request_timeout_header",
            "uwsgi_hide_header", "uwsgi_pass_header", "uwsgi_ignore_client_abort",
        ] + UpstreamBuffering.keys(prefix: "uwsgi"))
        guard registrar.role != .edge else {
            if !configuration.listeners.isEmpty {
                registrar.logger.info("uwsgi listeners are not opened in role edge")
            }
            return
        }
        for listener in configuration.listeners {
            let settings = UWSGIListenerSettings(
                listener: listener.text, bufferSize: configuration.bufferSize.bytes,
                clientBodyTimeout: .milliseconds(configuration.clientBodyTimeout.milliseconds),
                sendTimeout: .milliseconds(configuration.sendTimeout.milliseconds))
            registrar.addListener(ListenerSpec(
                protocolName: "uwsgi", address: listener.address, unixSocketMode: listener.mode,
                unixSocketOwner: listener.owner, backlog: listener.backlog, mark: listener.mark,
                initializeConnection: { channel, runtime in settings.configure(channel, runtime: runtime) }))
        }
    }
}

/// Builds `uwsgi_pass` handlers from a location mapping.
enum UWSGIPassFactory {
    static func make(value: ConfigValue, location: ConfigMapping, registrar: Registrar) throws -> any RequestHandler {
        let target = try value.nonEmptyString()
        let group: any UpstreamGroup
        let stripped = target.hasPrefix("uwsgi://") ? String(target.dropFirst(8)) : target
        if let named = registrar.upstreamGroup(named: stripped) {
            if let scheme = named.scheme, scheme != "uwsgi" {
                throw value.error("upstream \"\(named.name)\" speaks \(scheme) (its protocol:), not uwsgi")
            }
            group = named
        } else if let peer = PeerAddress(parsing: stripped) {
            group = SinglePeerGroup(peer)
        } else {
            throw value.expected("host:port, unix:/path or the name of an upstream group")
        }
        var configuration = UWSGIPassConfiguration(group: group)
        // Named peers are looked up now, while the configuration loads (nginx resolves them at start-up too): no
        // request ever waits for a blocking lookup on its event loop.
        let book = PeerAddressBook()
        do {
            try book.resolve(group.peers)
        } catch let notFound as PeerNotFound {
            throw value.error(notFound.description)
        }
        configuration.resolver = book
        if let params = location.optional("uwsgi_param") {
            configuration.params = UWSGIParam.merged(try decodeParams(params, variables: registrar.variables))
        }
        if let timeout = location.optional("uwsgi_connect_timeout") {
            configuration.connectTimeout = .milliseconds(try UWSGIModule.positiveDuration(timeout).milliseconds)
        }
        if let timeout = location.optional("uwsgi_read_timeout") {
            configuration.readTimeout = .milliseconds(try UWSGIModule.positiveDuration(timeout).milliseconds)
        }
        if let timeout = location.optional("uwsgi_send_timeout") {
            configuration.sendTimeout = .milliseconds(try UWSGIModule.positiveDuration(timeout).milliseconds)
        }
        if let next = location.optional("uwsgi_next_upstream") {
            configuration.nextUpstream = try NextUpstreamConditions.decode(next)
        }
        if let tries = location.optional("uwsgi_next_upstream_tries") {
            configuration.nextUpstreamTries = try tries.int(in: 0...Int(Int32.max), what: "a number of tries (0: no limit)")
        }
        if let timeout = location.optional("uwsgi_next_upstream_timeout") {
            configuration.nextUpstreamTimeout = .milliseconds(try timeout.duration().milliseconds)
        }
        if let flag = location.optional("uwsgi_request_buffering") {
            configuration.requestBuffering = try flag.bool()
        }
        if let flag = location.optional("uwsgi_pass_request_headers") {
            configuration.passRequestHeaders = try flag.bool()
        }
        if let size = location.optional("uwsgi_buffer_size") {
            let parsed = try size.size()
            guard parsed.bytes >= 64 else { throw size.expected("a size of at least 64 bytes") }
            configuration.bufferSize = parsed.bytes
        }
        configuration.buffering = try UpstreamBuffering.decode(location, prefix: "uwsgi",
                                                               defaultTempPath: registrar.runDirectory + "/uwsgi_temp")
        configuration.headerRules = try UpstreamHeaderRules.decode(location, prefix: "uwsgi")
        if let flag = location.optional("uwsgi_ignore_client_abort") { configuration.ignoreClientAbort = try flag.bool() }
        if let modifier = location.optional("uwsgi_modifier1") {
            configuration.modifier1 = UInt8(try modifier.int(in: 0...255))
        }
        if let modifier = location.optional("uwsgi_modifier2") {
            configuration.modifier2 = UInt8(try modifier.int(in: 0...255))
        }
        configuration.deadline = try RequestDeadlinePolicy.decode(from: location)
        return UWSGIPassHandler(configuration: configuration)
    }

    /// `uwsgi_param: {NAME: value, NAME2: {value: $https, if_not_empty: true}}`.
    static func decodeParams(_ value: ConfigValue, variables: VariableRegistry = .standard) throws -> [UWSGIParam] {
        let mapping = try value.mapping()
        var params: [UWSGIParam] = []
        for (name, entry) in mapping.unread() {
            mapping.allow(name)
            guard !name.isEmpty, name.utf8.count <= 65535 else { throw entry.error("invalid uwsgi param name") }
            var text: String
            var ifNotEmpty = false
            var templateValue = entry
            if case .mapping = entry.node {
                let fields = try entry.mapping()
                templateValue = try fields.required("value")
                text = try templateValue.string()
                if let flag = fields.optional("if_not_empty") { ifNotEmpty = try flag.bool() }
                try fields.finish()
            } else if entry.isNull {
                text = ""
            } else {
                text = try entry.string()
            }
            do {
                params.append(UWSGIParam(name: name, value: try UWSGIParamTemplate(parsing: text, variables: variables), ifNotEmpty: ifNotEmpty))
            } catch let error as UWSGIParamTemplateError {
                throw templateValue.error(error.description)
            }
        }
        try mapping.finish()
        return params
    }
}
