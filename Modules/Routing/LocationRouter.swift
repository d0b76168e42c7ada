import KernelCore
import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The locations of one virtual server, arranged for nginx's search order.
///
/// 1. An exact (`=`) location equal to the path wins at once. Next, a path that is a proxying prefix location
///    (its handler declares `.proxies`) without its trailing slash (`/api` for `location /api/` with `uwsgi_pass`)
///    is redirected with 301 to the slashed path, as nginx does.
/// 2. Otherwise the longest matching prefix is found (plain and `^~` alike); if it is `^~`, it wins.
/// 3. Otherwise the regular expressions (`~`, `~*`) are tried in file order; the first match wins.
/// 4. Otherwise the longest matching prefix wins, if any.
struct LocationTable: Sendable {
    /// A class, so that the search hands out a reference rather than copying the entry.
    final class Prefix: Sendable {
        let bytes: [UInt8]
        let stopsRegexSearch: Bool
        let decision: RouteDecision

        init(bytes: [UInt8], stopsRegexSearch: Bool, decision: RouteDecision) {
            self.bytes = bytes
            self.stopsRegexSearch = stopsRegexSearch
            self.decision = decision
        }
    }
    struct Regex: Sendable {
        let regex: PCRERegex
        let decision: RouteDecision
    }

    private let exact: [String: RouteDecision]
    /// Slash-appending redirects, by the path without its slash.
    private let slashRedirects: [String: RouteDecision]
    /// Longest first; equal lengths cannot occur (duplicates are configuration errors).
    private let prefixes: [Prefix]
    /// In file order.
    private let regexes: [Regex]

    init(exact: [String: RouteDecision], slashRedirects: [String: RouteDecision] = [:], prefixes: [Prefix], regexes: [Regex]) {
        self.exact = exact
        self.slashRedirects = slashRedirects
        self.prefixes = prefixes.sorted { $0.bytes.count > $1.bytes.count }
        self.regexes = regexes
    }

    /// The decision of the location matching `path`, nil when none does.
    func decision(for path: String) -> RouteDecision? {
        if !exact.isEmpty, let decision = exact[path] { return decision }
        if !slashRedirects.isEmpty, let decision = slashRedirects[path] { return decision }
        let longest = longestPrefix(of: path)
        if let longest, longest.stopsRegexSearch { return longest.decision }
        for entry in regexes {
            if let captures = entry.regex.captures(in: path) {
                return entry.decision.withCaptures(captures, names: entry.regex.captureNames)
            }
        }
        return longest?.decision
    }

    private func longestPrefix(of path: String) -> Prefix? {
        guard !prefixes.isEmpty else { return nil }
        let found = path.utf8.withContiguousStorageIfAvailable { longestPrefix(in: $0) }
        if let found { return found }
        return Array(path.utf8).withUnsafeBufferPointer { longestPrefix(in: $0) }
    }

    private func longestPrefix(in path: UnsafeBufferPointer<UInt8>) -> Prefix? {
        for prefix in prefixes where prefix.bytes.count <= path.count {
            let equal = prefix.bytes.withUnsafeBufferPointer { bytes in
                memcmp(bytes.baseAddress!, path.baseAddress!, bytes.count) == 0
            }
            if equal { return prefix }
        }
        return nil
    }
}

/// One `server` as the router uses it (a class: routing reads it in place instead of copying its tables).
final class VirtualServer: Sendable {
    /// The first name (`$server_name`).
    let name: String
    let locations: LocationTable
    /// The answer when no location matches: 404 with the server's body limit and access log.
    let notFound: RouteDecision
    /// A server-level `return`: answers every request of the server before locations are searched, as in nginx.
    let serverReturn: RouteDecision?

    init(name: String, locations: LocationTable, notFound: RouteDecision, serverReturn: RouteDecision?) {
        self.name = name
        self.locations = locations
        self.notFound = notFound
        self.serverReturn = serverReturn
    }

    func decision(for path: String) -> RouteDecision {
        if let serverReturn { return serverReturn }
        return locations.decision(for: path) ?? notFound
    }
}

/// The servers reachable on one listener, arranged for nginx's `server_name` order: exact name, longest leading
/// wildcard (`*.example.com`), longest trailing wildcard (`www.example.*`), first matching regex in file order,
/// else the listener's default server.
struct ServerTable: Sendable {
    struct Wildcard: Sendable {
        let text: String
        let server: Int
    }
    struct Regex: Sendable {
        let regex: PCRERegex
        let server: Int
    }

    let exact: [String: Int]
    /// Longest first.
    let leadingWildcards: [Wildcard]
    /// Longest first.
    let trailingWildcards: [Wildcard]
    let regexes: [Regex]
    /// Index of the default server, nil when the listener has no server.
    let defaultServer: Int?
    /// Set when the listener has one server: the Host header need not be looked at.
    let onlyServer: Int?

    init(exact: [String: Int], leadingWildcards: [Wildcard], trailingWildcards: [Wildcard], regexes: [Regex],
         defaultServer: Int?, serverCount: Int) {
        self.exact = exact
        self.leadingWildcards = leadingWildcards.sorted { $0.text.utf8.count > $1.text.utf8.count }
        self.trailingWildcards = trailingWildcards.sorted { $0.text.utf8.count > $1.text.utf8.count }
        self.regexes = regexes
        self.defaultServer = defaultServer
        onlyServer = serverCount == 1 ? defaultServer : nil
    }

    /// The server for `host` (lower-case, without port; nil when the request has none).
    func server(for request: KernelRequest) -> Int? {
        if let onlyServer { return onlyServer }
        // `KernelRequest.host` already drops the port and one trailing dot, as nginx's `$host` does.
        let host = request.host ?? ""
        if let server = exact[host] { return server }
        guard !host.isEmpty else { return defaultServer }
        let length = host.utf8.count
        for wildcard in leadingWildcards where length > wildcard.text.utf8.count && host.utf8.hasSuffix(wildcard.text.utf8) {
            return wildcard.server
        }
        for wildcard in trailingWildcards where length > wildcard.text.utf8.count && host.utf8.starts(with: wildcard.text.utf8) {
            return wildcard.server
        }
        for entry in regexes where entry.regex.matches(host) {
            return entry.server
        }
        return defaultServer
    }
}

extension String.UTF8View {
    fileprivate func hasSuffix(_ suffix: String.UTF8View) -> Bool {
        guard count >= suffix.count else { return false }
        return self[index(endIndex, offsetBy: -suffix.count)...].elementsEqual(suffix)
    }
}

/// The routing module's `RequestRouter`: picks the virtual server by listener and Host, then the location by
/// nginx's precedence, and returns the decision prepared for it at configuration time.
public struct LocationRouter: RequestRouter {
    let servers: [VirtualServer]
    /// Tables of listeners named in some server's `listen`, by the address as written and in canonical form.
    let tablesByListener: [String: ServerTable]
    /// The table of every other listener: the servers without `listen`.
    let otherListeners: ServerTable
    /// The answer on a listener no server is on.
    let noServer: RouteDecision

    /// Chooses the server and location for a request head.
    public func route(_ request: KernelRequest) -> RouteDecision {
        let table = tablesByListener.isEmpty ? otherListeners : table(for: request.connection.listener)
        guard let index = table.server(for: request) else { return noServer }
        return servers[index].decision(for: request.path)
    }

    private func table(for listener: String) -> ServerTable {
        if let table = tablesByListener[listener] { return table }
        // The protocol module may spell the address differently (`8080` for `0.0.0.0:8080`).
        if let address = ListenAddress(parsing: listener), let table = tablesByListener[address.description] {
            return table
        }
        return otherListeners
    }
}

/// nginx's redirect of `/dir` to `/dir/` for a proxying prefix location `/dir/`: 301 to the location's own path
/// (never the request's bytes), the query kept.
struct SlashRedirectHandler: ImmediateRequestHandler {
    let location: String
    /// The location's `absolute_redirect` and the rest.
    let redirects: RedirectStyle

    func response(to request: KernelRequest, context: RequestContext) -> KernelResponse {
        let target = request.query.isEmpty ? location : location + "?" + request.query
        return ReturnDirective.response(status: 301, body: .redirect(VariableTemplate.empty),
                                        text: redirects.location(target, for: request, serverName: context.route.serverName))
    }
}
