import KernelConfig
import KernelCore

/// The `routing` module: virtual servers (`server_name`, `listen`, `default_server`) and nginx `location`s with
/// `return` or a handler directive of another module (`uwsgi_pass`, `inference`), and any filter directives of
/// other modules (`Registrar.addLocationFilter`) at server or location level.
///
/// It is registered last in the module list: its locations use the handler and filter directives the modules
/// before it declared, and each location's filter chain is built here, once. The whole configuration is turned into a `LocationRouter` while decoding, so that every error names
/// its place in the file before anything starts.
public enum RoutingModule: KernelModule {
    /// The decoded configuration is the router itself.
    public typealias Configuration = LocationRouter

    /// The top-level key: `routing:`.
    public static let configurationKey = "routing"
    /// Edge and worker processes both route (`both` runs it too).
    public static let roles: Set<KernelRole> = [.edge, .worker]

    /// Decodes `routing.log_format` and `routing.servers[]` and builds the router.
    public static func decode(_ value: ConfigValue, registrar: Registrar) throws -> LocationRouter {
        let mapping = try value.mapping()
        NamedCaptureVariables.register(servers: mapping.optional("servers"), into: registrar)
        let formats = try AccessLogDecoder.decodeFormats(mapping.optional("log_format"), variables: registrar.variables)
        let serversValue = try mapping.required("servers")
        try mapping.finish()
        let items = try serversValue.list()
        guard !items.isEmpty else { throw serversValue.error("expected at least one server, found an empty list") }
        let decoder = RoutingDecoder(registrar: registrar, logFormats: formats)
        let servers = try items.map { try decoder.decodeServer($0) }
        return try RouterBuilder(servers: servers, registrar: registrar).build()
    }

    /// Installs the router.
    public static func register(_ configuration: LocationRouter, into registrar: Registrar) throws {
        registrar.setRouter(configuration)
    }
}

/// A server as decoded, before the listener tables are built.
struct DecodedServer {
    let path: String
    /// Names with where they were written; a regex name carries its compiled expression.
    let names: [(name: ServerName, value: ConfigValue, regex: PCRERegex?)]
    /// `$server_name`: the first name as written, or empty.
    let firstName: String
    /// Addresses of `listen` as written with their canonical form; nil means every listener.
    let listen: [(written: String, canonical: String)]?
    let defaultServer: ConfigValue?
    let server: VirtualServer
}

/// Decodes servers and locations strictly, with the registrar's location handlers and log files.
struct RoutingDecoder {
    let registrar: Registrar
    private let accessLogs: AccessLogDecoder

    /// nginx's default `client_max_body_size`.
    static let defaultMaxBodySize = 1 << 20

    init(registrar: Registrar, logFormats: [String: LogFormat] = LogFormat.predefined) {
        self.registrar = registrar
        accessLogs = AccessLogDecoder(registrar: registrar, formats: logFormats)
    }

    func decodeServer(_ value: ConfigValue) throws -> DecodedServer {
        let mapping = try value.mapping()

        var names: [(name: ServerName, value: ConfigValue, regex: PCRERegex?)] = []
        var firstName = ""
        if let namesValue = mapping.optional("server_name") {
            for (position, item) in try namesValue.list(allowScalar: true).enumerated() {
                let text = try item.string()
                if position == 0 { firstName = text.hasPrefix("~") ? text : text.lowercased() }
                let parsed: [ServerName]
                do {
                    parsed = try ServerName.parse(text)
                } catch let error as ServerNameSyntaxError {
                    throw item.error(error.message)
                }
                for name in parsed {
                    var regex: PCRERegex? = nil
                    if case .regex(let pattern) = name {
                        do {
                            // Host names are matched lower-cased and case-insensitively, as nginx does.
                            regex = try PCRERegex(pattern, caseInsensitive: true)
                        } catch {
                            throw item.error("invalid regular expression \"\(pattern)\": \(error)")
                        }
                    }
                    names.append((name, item, regex))
                }
            }
        }

        var listen: [(written: String, canonical: String)]? = nil
        if let listenValue = mapping.optional("listen") {
            let items = try listenValue.list(allowScalar: true)
            guard !items.isEmpty else { throw listenValue.expected("at least one listener address") }
            listen = try items.map { item in
                let text = try item.string()
                guard let address = ListenAddress(parsing: text) else {
                    throw item.expected("a listener address as in http.listen or uwsgi.listen (127.0.0.1:8080, [::1]:8080, 8080, unix:/path)")
                }
                return (text, address.description)
            }
        }

        var defaultServer: ConfigValue? = nil
        if let defaultValue = mapping.optional("default_server"), try defaultValue.bool() {
            defaultServer = defaultValue
        }

        let maxBodySize = try mapping.optional("client_max_body_size").map(bodySize) ?? RoutingDecoder.defaultMaxBodySize
        let accessLog = try mapping.optional("access_log").map(accessLog) ?? nil
        let bodyBuffering = try decodeBodyBuffering(mapping, inheriting: .default)
        let redirects = try RedirectStyle.decode(mapping, inheriting: .default)
        // Server-level filter directives: inherited by every location that does not write the same directive, and
        // around the server's own answers (its `return`, its 404).
        let serverFilters = try decodeFilterDirectives(mapping, context: .server)
        let serverChain = registrar.filterChain(Array(serverFilters.values))
        // Handler options written at server level (`proxy_set_header`, `uwsgi_read_timeout`, ...): what every
        // location that does not write them reads.
        var inheritedOptions: [String: ConfigValue] = [:]
        for key in registrar.serverInheritedKeys.sorted() {
            if let option = mapping.optional(key) { inheritedOptions[key] = option }
        }

        var serverReturn: RouteDecision? = nil
        if let returnValue = mapping.optional("return") {
            let directive = try ReturnDirective(returnValue, variables: registrar.variables)
            if directive.highestCapture > 0 {
                throw returnValue.error("$\(directive.highestCapture) needs a regular expression location (~ or ~*)")
            }
            serverReturn = RouteDecision(route: RouteInfo(serverName: firstName), handler: directive.makeHandler(redirects: redirects),
                                         filters: serverChain, maxBodySize: maxBodySize == 0 ? nil : maxBodySize, accessLog: accessLog,
                                         bodyBuffering: bodyBuffering)
        }

        var exact: [String: RouteDecision] = [:]
        var prefixes: [LocationTable.Prefix] = []
        var regexes: [LocationTable.Regex] = []
        var seen: [String: SourceMark] = [:]
        var slashRedirectCandidates: [(path: String, decision: RouteDecision)] = []
        if let locationsValue = mapping.optional("locations") {
            for item in try locationsValue.list() {
                let location = try decodeLocation(item, serverName: firstName, maxBodySize: maxBodySize, accessLog: accessLog,
                                                  bodyBuffering: bodyBuffering, redirects: redirects,
                                                  filters: serverFilters, inheriting: inheritedOptions)
                if let path = location.match.path {
                    let key = location.match.isExact ? "= \(path)" : path
                    if let first = seen[key] {
                        throw location.matchValue.error("duplicate location \"\(location.matchText)\" (first defined at \(first))")
                    }
                    seen[key] = location.matchValue.mark
                }
                switch location.match {
                case .exact(let path):
                    exact[path] = location.decision
                case .prefix(let path, let stops):
                    prefixes.append(.init(bytes: Array(path.utf8), stopsRegexSearch: stops, decision: location.decision))
                    if location.capabilities.contains(.proxies), path.count > 1, path.hasSuffix("/") {
                        let redirect = location.decision.withHandler(SlashRedirectHandler(location: path, redirects: location.redirects))
                        slashRedirectCandidates.append((String(path.dropLast()), redirect))
                    }
                case .regex:
                    regexes.append(.init(regex: location.regex!, decision: location.decision))
                }
            }
        }
        try mapping.finish()
        // An explicit location for the unslashed path takes it over, as in nginx.
        var slashRedirects: [String: RouteDecision] = [:]
        for candidate in slashRedirectCandidates
        where exact[candidate.path] == nil && !prefixes.contains(where: { $0.bytes.elementsEqual(candidate.path.utf8) }) {
            slashRedirects[candidate.path] = candidate.decision
        }

        let notFound = RouteDecision(route: RouteInfo(serverName: firstName),
                                     handler: StaticResponseHandler(.error(404, "not found")), filters: serverChain,
                                     maxBodySize: maxBodySize == 0 ? nil : maxBodySize, accessLog: accessLog,
                                     bodyBuffering: bodyBuffering)
        let server = VirtualServer(name: firstName,
                                   locations: LocationTable(exact: exact, slashRedirects: slashRedirects,
                                                            prefixes: prefixes, regexes: regexes),
                                   notFound: notFound, serverReturn: serverReturn)
        return DecodedServer(path: value.path, names: names, firstName: firstName, listen: listen,
                             defaultServer: defaultServer, server: server)
    }

    struct DecodedLocation {
        let match: LocationMatch
        let matchText: String
        let matchValue: ConfigValue
        let regex: PCRERegex?
        /// What the handler directive declared (empty for `return`).
        let capabilities: LocationHandlerCapabilities
        let decision: RouteDecision
        /// The location's `absolute_redirect` and the rest (its slash redirect uses them).
        let redirects: RedirectStyle
    }

    func decodeLocation(_ value: ConfigValue, serverName: String, maxBodySize serverMaxBodySize: Int,
                        accessLog serverAccessLog: AccessLog?,
                        bodyBuffering serverBodyBuffering: RequestBodyBuffering = .default,
                        redirects serverRedirects: RedirectStyle = .default,
                        filters serverFilters: [String: DirectiveFilter] = [:],
                        inheriting inheritedOptions: [String: ConfigValue] = [:]) throws -> DecodedLocation {
        let mapping = try value.mapping()
        mapping.inherited = inheritedOptions
        let matchValue = try mapping.required("location")
        let matchText = try matchValue.nonEmptyString()
        let match: LocationMatch
        do {
            match = try LocationMatch.parse(matchText)
        } catch let error as LocationSyntaxError {
            throw matchValue.error(error.message)
        }
        var regex: PCRERegex? = nil
        if case .regex(let pattern, let caseInsensitive) = match {
            do {
                regex = try PCRERegex(pattern, caseInsensitive: caseInsensitive)
            } catch {
                throw matchValue.error("invalid regular expression \"\(pattern)\": \(error)")
            }
        }
        let maxBodySize = try mapping.optional("client_max_body_size").map(bodySize) ?? serverMaxBodySize
        let accessLog = try mapping.optional("access_log").map(accessLog) ?? serverAccessLog
        let bodyBuffering = try decodeBodyBuffering(mapping, inheriting: serverBodyBuffering)
        let redirects = try RedirectStyle.decode(mapping, inheriting: serverRedirects)
        let context = LocationContext(match: matchText, prefix: match.path, redirects: redirects)
        // A filter directive written here replaces the server's value of that directive entirely; the others are
        // inherited (nginx's rule for `add_header` and array directives).
        let ownFilters = try decodeFilterDirectives(mapping, context: context)
        let filters = registrar.filterChain(Array(serverFilters.merging(ownFilters) { _, own in own }.values))

        // The handler: `return`, or one directive an active module declared. Found among the keys not read yet,
        // in file order, so that a null value (`inference:`) still counts as written.
        let candidates = mapping.unread().filter { $0.key == "return" || registrar.locationHandler($0.key) != nil }
        let available = (["return"] + registrar.locationHandlerKeys).sorted().joined(separator: ", ")
        guard let chosen = candidates.first else {
            if let unknown = mapping.unread().first {
                throw unknown.value.error("unknown key (a location needs one handler: \(available))")
            }
            throw value.error("missing a handler (one of: \(available))")
        }
        if candidates.count > 1 {
            throw candidates[1].value.error("a location has one handler, found \"\(chosen.key)\" and \"\(candidates[1].key)\"")
        }
        mapping.allow(chosen.key)
        let handler: any RequestHandler
        let capabilities = chosen.key == "return" ? [] : registrar.locationHandlerCapabilities(chosen.key)
        if capabilities.contains(.stripsPrefix), !match.isPrefix {
            throw chosen.value.error("\"\(chosen.key)\" serves the paths under its location's prefix: it needs a prefix location (/path/ or ^~ /path), found \"\(matchText)\"")
        }
        if chosen.key == "return" {
            let directive = try ReturnDirective(chosen.value, variables: registrar.variables,
                                                captureNames: regex?.captureNames ?? [:])
            let used = directive.highestCapture
            if used > 0 {
                guard let regex else {
                    throw chosen.value.error("$\(used) needs a regular expression location (~ or ~*)")
                }
                guard used <= regex.captureCount else {
                    throw chosen.value.error("$\(used) refers to a group the regular expression \"\(regex.pattern)\" does not have (it has \(regex.captureCount))")
                }
            }
            handler = directive.makeHandler(redirects: redirects)
        } else {
            let factory = registrar.locationHandler(chosen.key)!
            handler = try factory(chosen.value, mapping, context)
        }
        try mapping.finish()
        let decision = RouteDecision(route: RouteInfo(serverName: serverName, location: matchText), handler: handler,
                                     filters: filters, maxBodySize: maxBodySize == 0 ? nil : maxBodySize, accessLog: accessLog,
                                     bodyBuffering: bodyBuffering)
        return DecodedLocation(match: match, matchText: matchText, matchValue: matchValue, regex: regex,
                               capabilities: capabilities, decision: decision, redirects: redirects)
    }

    /// The filter directives written in `mapping` (a server or a location), built, by key.
    private func decodeFilterDirectives(_ mapping: ConfigMapping, context: LocationContext) throws -> [String: DirectiveFilter] {
        var built: [String: DirectiveFilter] = [:]
        for directive in registrar.locationFilterDirectives {
            guard let value = mapping.optional(directive.key) else { continue }
            built[directive.key] = try directive.make(value, in: mapping, context: context)
        }
        return built
    }

    /// `client_body_buffer_size` (a size of at least 1 byte, at most what one buffer holds) and
    /// `client_body_temp_path` (a directory, relative to the file that names it), each inherited when absent.
    private func decodeBodyBuffering(_ mapping: ConfigMapping, inheriting inherited: RequestBodyBuffering) throws -> RequestBodyBuffering {
        var buffering = inherited
        if let value = mapping.optional("client_body_buffer_size") {
            let size = try value.size().bytes
            guard size >= 1, size <= 1 << 30 else { throw value.expected("a size from 1 to 1g") }
            buffering.bufferSize = size
        }
        if let value = mapping.optional("client_body_temp_path") {
            buffering.tempPath = ConfigPath.resolve(try value.nonEmptyString(), in: ConfigPath.directory(of: value.mark.file))
        }
        return buffering
    }

    /// `client_max_body_size`: a size; 0 is unlimited.
    private func bodySize(_ value: ConfigValue) throws -> Int {
        try value.size().bytes
    }

    /// `access_log` (see `AccessLogDecoder`). Nil is off.
    private func accessLog(_ value: ConfigValue) throws -> AccessLog? {
        try accessLogs.decode(value)
    }
}

extension LocationMatch {
    fileprivate var isExact: Bool {
        if case .exact = self { return true }
        return false
    }
}

/// Builds the per-listener server tables and checks default servers.
struct RouterBuilder {
    let servers: [DecodedServer]
    let registrar: Registrar

    func build() throws -> LocationRouter {
        // Listeners named by some server, canonical form first seen order, with the spellings that name them.
        var canonicalOrder: [String] = []
        var spellings: [String: Set<String>] = [:]
        for server in servers {
            for address in server.listen ?? [] {
                if spellings[address.canonical] == nil { canonicalOrder.append(address.canonical) }
                spellings[address.canonical, default: []].formUnion([address.written, address.canonical])
            }
        }
        var conflicts: [(value: ConfigValue, listener: String)] = []
        let others = try table(for: nil, conflicts: &conflicts)
        var byListener: [String: ServerTable] = [:]
        for canonical in canonicalOrder {
            let table = try table(for: canonical, conflicts: &conflicts)
            for spelling in spellings[canonical]! { byListener[spelling] = table }
        }
        // A server without `listen` is in every table: say each conflict once.
        var warned: Set<SourceMark> = []
        for conflict in conflicts where warned.insert(conflict.value.mark).inserted {
            registrar.logger.warning("\(conflict.value.mark): conflicting server name \"\(conflict.value.node.scalarText ?? "")\" on \(conflict.listener), ignored")
        }
        let noServer = RouteDecision(route: RouteInfo(), handler: StaticResponseHandler(.error(404, "not found")),
                                     filters: registrar.filterChain([]), maxBodySize: RoutingDecoder.defaultMaxBodySize, accessLog: nil)
        return LocationRouter(servers: servers.map(\.server), tablesByListener: byListener, otherListeners: others,
                              noServer: noServer)
    }

    /// The table of the listener `canonical`, or of listeners no server names (nil).
    private func table(for canonical: String?, conflicts: inout [(value: ConfigValue, listener: String)]) throws -> ServerTable {
        let members = servers.indices.filter { index in
            guard let listen = servers[index].listen else { return true }
            guard let canonical else { return false }
            return listen.contains { $0.canonical == canonical }
        }
        let listenerText = canonical ?? "every listener"
        var defaultServer: Int? = nil
        for index in members {
            guard let value = servers[index].defaultServer else { continue }
            if let first = defaultServer {
                throw value.error("a second default server for \(listenerText) (the first is \(servers[first].path))")
            }
            defaultServer = index
        }

        var exact: [String: Int] = [:]
        var leading: [ServerTable.Wildcard] = []
        var trailing: [ServerTable.Wildcard] = []
        var regexes: [ServerTable.Regex] = []
        var wildcardsSeen: Set<String> = []
        for index in members {
            for (name, value, regex) in servers[index].names {
                switch name {
                case .exact(let text):
                    if exact[text] == nil { exact[text] = index } else { conflicts.append((value, listenerText)) }
                case .leadingWildcard(let suffix):
                    if wildcardsSeen.insert("*" + suffix).inserted {
                        leading.append(.init(text: suffix, server: index))
                    } else { conflicts.append((value, listenerText)) }
                case .trailingWildcard(let prefix):
                    if wildcardsSeen.insert(prefix + "*").inserted {
                        trailing.append(.init(text: prefix, server: index))
                    } else { conflicts.append((value, listenerText)) }
                case .regex:
                    regexes.append(.init(regex: regex!, server: index))
                }
            }
        }
        return ServerTable(exact: exact, leadingWildcards: leading, trailingWildcards: trailing, regexes: regexes,
                           defaultServer: defaultServer ?? members.first, serverCount: members.count)
    }

}
