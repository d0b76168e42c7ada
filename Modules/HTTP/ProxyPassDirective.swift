import KernelConfig
import KernelCore
import KernelUpstream
import NIOCore

/// Builds `proxy_pass` handlers from a location mapping: the directive's URL and the location's `proxy_*` keys,
/// decoded strictly with nginx's defaults.
enum ProxyPassFactory {
    static func make(value: ConfigValue, location: ConfigMapping, context: LocationContext,
                     registrar: Registrar) throws -> ProxyPassHandler {
        let text = try value.nonEmptyString()
        let target: ProxyTarget
        do {
            target = try ProxyTarget(parsing: text)
        } catch let error as ProxyTarget.SyntaxError {
            throw value.error(error.description)
        }
        let group: any UpstreamGroup
        switch try target.destination(groupExists: { registrar.upstreamGroup(named: $0) != nil }) {
        case .group(let name):
            let named = registrar.upstreamGroup(named: name)!
            if let scheme = named.scheme, scheme != "http" {
                throw value.error("upstream group \"\(name)\" speaks \(scheme), not http (proxy_pass needs an http group)")
            }
            group = named
        case .peer(let peer):
            group = SinglePeerGroup(peer)
        }

        // `$proxy_host` and `$proxy_port` are this location's: the templates of its `proxy_set_header` lines
        // and of its URI see them as constants.
        var variables = registrar.variables
        let proxyHost = target.proxyHost
        let proxyPort = target.proxyPort
        variables.register("proxy_host") { _ in proxyHost }
        variables.register("proxy_port") { _ in proxyPort }

        let isRegex = context.match.hasPrefix("~")
        let uriRule: ProxyURIRule
        if let uri = target.uri {
            if uri.contains("$") {
                let template = try compile(uri, at: value, variables: variables)
                if template.highestCapture > 0, !isRegex {
                    throw value.error("$\(template.highestCapture) needs a regular expression location (~ or ~*)")
                }
                uriRule = .template(template)
            } else if let prefix = context.prefix, !isRegex {
                uriRule = .replacingPrefix(uri: uri, locationLength: prefix.utf8.count)
            } else {
                throw value.error("\"proxy_pass\" cannot have URI part in location given by regular expression (use variables, such as $1, in the URI)")
            }
        } else {
            uriRule = .original
        }

        var http10 = false
        if let version = location.optional("proxy_http_version") {
            http10 = try version.oneOf(["1.0", "1.1"]) == "1.0"
        }
        let keepsConnections = group.keepalive != nil && !http10
        var head = ProxyRequestHead(uriRule: uriRule, http10: http10,
                                    headers: defaultHeaders(keepalive: keepsConnections, variables: variables))
        if let lines = location.optional("proxy_set_header") {
            head.headers = merged(head.headers, try decodeSetHeaders(lines, variables: variables))
        }
        if let flag = location.optional("proxy_pass_request_headers") { head.passRequestHeaders = try flag.bool() }
        if let flag = location.optional("proxy_pass_request_body") { head.passRequestBody = try flag.bool() }

        var configuration = ProxyPassConfiguration(group: group, head: head)
        // Named peers are looked up now, while the configuration loads: no request waits for a lookup.
        let book = PeerAddressBook()
        do {
            try book.resolve(group.peers)
        } catch let notFound as PeerNotFound {
            throw value.error(notFound.description)
        }
        configuration.resolver = book
        if let timeout = location.optional("proxy_connect_timeout") { configuration.connectTimeout = try positive(timeout) }
        if let timeout = location.optional("proxy_send_timeout") { configuration.sendTimeout = try positive(timeout) }
        if let timeout = location.optional("proxy_read_timeout") { configuration.readTimeout = try positive(timeout) }
        if let next = location.optional("proxy_next_upstream") { configuration.nextUpstream = try NextUpstreamConditions.decode(next) }
        if let tries = location.optional("proxy_next_upstream_tries") {
            configuration.nextUpstreamTries = try tries.int(in: 0...Int(Int32.max), what: "a number of tries (0: no limit)")
        }
        if let timeout = location.optional("proxy_next_upstream_timeout") {
            configuration.nextUpstreamTimeout = .milliseconds(try timeout.duration().milliseconds)
        }
        configuration.deadline = try RequestDeadlinePolicy.decode(from: location)
        if let size = location.optional("proxy_buffer_size") {
            let parsed = try size.size()
            guard parsed.bytes >= 64, parsed.bytes <= 1 << 20 else { throw size.expected("a size from 64 bytes to 1m") }
            configuration.bufferSize = parsed.bytes
        }
        configuration.buffering = try UpstreamBuffering.decode(location, prefix: "proxy",
                                                               defaultTempPath: registrar.runDirectory + "/proxy_temp")
        if let flag = location.optional("proxy_request_buffering") { configuration.requestBuffering = try flag.bool() }
        configuration.headerRules = try UpstreamHeaderRules.decode(location, prefix: "proxy")
        if let flag = location.optional("proxy_ignore_client_abort") { configuration.ignoreClientAbort = try flag.bool() }
        configuration.redirects = try decodeRedirects(location.optional("proxy_redirect"), target: target,
                                                      uriRule: uriRule, context: context, variables: variables)
        configuration.redirectStyle = context.redirects
        return ProxyPassHandler(configuration: configuration)
    }

    /// nginx's defaults: `Host: $proxy_host`, and `Connection: close` unless the group keeps connections open.
    /// `variables` is the location's registry, where `$proxy_host` has its value.
    static func defaultHeaders(keepalive: Bool, variables: VariableRegistry) -> [ProxyHeaderLine] {
        var lines = [ProxyHeaderLine(name: "Host", value: try! VariableTemplate("$proxy_host", variables: variables))]
        if !keepalive { lines.append(ProxyHeaderLine(name: "Connection", value: try! VariableTemplate("close"))) }
        return lines
    }

    /// The defaults with the location's lines applied: a line of a default's name replaces it in place (so `Host`
    /// stays first), the others follow in their order.
    static func merged(_ defaults: [ProxyHeaderLine], _ own: [ProxyHeaderLine]) -> [ProxyHeaderLine] {
        var lines = defaults
        for line in own {
            if let index = lines.firstIndex(where: { $0.name.equalsCaseInsensitive(line.name) }) {
                lines[index] = line
            } else {
                lines.append(line)
            }
        }
        return lines
    }

    /// `proxy_set_header: {Host: $host, X-Real-IP: $remote_addr, Accept-Encoding: ""}`.
    static func decodeSetHeaders(_ value: ConfigValue, variables: VariableRegistry) throws -> [ProxyHeaderLine] {
        let mapping = try value.mapping()
        var lines: [ProxyHeaderLine] = []
        for (name, entry) in mapping.unread() {
            mapping.allow(name)
            guard HTTPToken.isToken(name) else { throw entry.error("invalid header name \"\(name)\"") }
            if lines.contains(where: { $0.name.equalsCaseInsensitive(name) }) {
                throw entry.error("duplicate proxy_set_header \"\(name)\"")
            }
            let text = entry.isNull ? "" : try entry.string()
            guard text.utf8.allSatisfy({ $0 == 9 || ($0 >= 0x20 && $0 != 0x7F) }) else {
                throw entry.expected("a header value without control characters")
            }
            lines.append(ProxyHeaderLine(name: name, value: try compile(text, at: entry, variables: variables)))
        }
        try mapping.finish()
        return lines
    }

    /// `proxy_redirect: default | off | {FROM: TO}`; absent is `default`.
    static func decodeRedirects(_ value: ConfigValue?, target: ProxyTarget, uriRule: ProxyURIRule,
                                context: LocationContext, variables: VariableRegistry) throws -> [ProxyRedirectRule] {
        guard let value else { return defaultRedirect(target: target, uriRule: uriRule, context: context) }
        if case .mapping = value.node {
            let mapping = try value.mapping()
            var rules: [ProxyRedirectRule] = []
            for (from, entry) in mapping.unread() {
                mapping.allow(from)
                if from.hasPrefix("~") { throw entry.error("regular expressions in proxy_redirect are not supported") }
                let to = entry.isNull ? "" : try entry.string()
                rules.append(ProxyRedirectRule(from: try compile(from, at: entry, variables: variables),
                                               to: try compile(to, at: entry, variables: variables)))
            }
            try mapping.finish()
            return rules
        }
        switch try value.oneOf(["default", "off"]) {
        case "off":
            return []
        default:
            if case .template = uriRule {
                throw value.error("\"proxy_redirect default\" cannot be used with \"proxy_pass\" directive with variables")
            }
            return defaultRedirect(target: target, uriRule: uriRule, context: context)
        }
    }

    /// nginx's `proxy_redirect default`: with a URI part, the URL as written becomes the location's prefix;
    /// without one, the URL and `/` become `/`. A URI with variables has no default.
    static func defaultRedirect(target: ProxyTarget, uriRule: ProxyURIRule, context: LocationContext) -> [ProxyRedirectRule] {
        switch uriRule {
        case .template:
            return []
        case .original:
            return [ProxyRedirectRule(from: literal(target.url + "/"), to: literal("/"))]
        case .replacingPrefix(let uri, _):
            return [ProxyRedirectRule(from: literal(target.url + uri), to: literal(context.prefix ?? "/"))]
        }
    }

    private static func literal(_ text: String) -> VariableTemplate {
        // A template of text only: `$` in a URL written in the file is compiled as the file gives it elsewhere.
        (try? VariableTemplate(text, variables: VariableRegistry())) ?? .empty
    }

    static func compile(_ text: String, at value: ConfigValue, variables: VariableRegistry) throws -> VariableTemplate {
        do {
            return try VariableTemplate(text, variables: variables)
        } catch {
            throw value.error(error.description)
        }
    }

    static func positive(_ value: ConfigValue) throws -> TimeAmount {
        let duration = try value.duration()
        guard duration.milliseconds > 0 else { throw value.expected("a duration above zero") }
        return .milliseconds(duration.milliseconds)
    }
}
