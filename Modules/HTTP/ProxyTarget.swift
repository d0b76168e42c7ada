import KernelCore

/// The value of a `proxy_pass` directive, parsed as nginx's `ngx_parse_url` reads it: `http://` and an address
/// (`127.0.0.1:8000`, `[::1]:8000`, `localhost`, `unix:/tmp/app.sock:`) or the name of an `upstreams:` group,
/// then an optional URI part (`/two/`, `/items/$1`).
struct ProxyTarget: Equatable {
    /// What connects: a named group (no port written), or one address.
    enum Destination: Equatable {
        case group(String)
        case peer(PeerAddress)
    }

    /// The URL as written up to the URI part (`http://127.0.0.1:8000`), what `proxy_redirect default` matches.
    var url: String
    /// The host part as written (`127.0.0.1:8000`, `backend`, `unix:/tmp/app.sock`).
    var authority: String
    /// The name the address is looked up by: the group name, or the host of a single address.
    var hostName: String
    /// The port, when written or implied (80); nil for a unix socket.
    var port: Int?
    /// Whether the port was written.
    var portWritten: Bool
    var isUnix: Bool
    /// The URI part (from its `/`), nil when there is none.
    var uri: String?

    /// nginx's `$proxy_host`: the host and the port as `proxy_pass` names them, the port left out when it is 80;
    /// `localhost` for a unix socket.
    var proxyHost: String {
        if isUnix { return "localhost" }
        guard let port, port != 80 else { return bracketed(hostName) }
        return "\(bracketed(hostName)):\(port)"
    }

    /// nginx's `$proxy_port`: the port (80 unless written), empty for a unix socket.
    var proxyPort: String { port.map(String.init) ?? "" }

    private func bracketed(_ host: String) -> String { host.contains(":") ? "[\(host)]" : host }

    /// Why a `proxy_pass` value is not a URL the kernel can proxy to.
    struct SyntaxError: Error, Equatable, CustomStringConvertible {
        var description: String
    }

    /// Parses `text`; throws with nginx's wording where it has one.
    init(parsing text: String) throws {
        let scheme = text.prefix { $0 != ":" }
        guard text.dropFirst(scheme.count).hasPrefix("://") else {
            throw SyntaxError(description: "invalid URL prefix in \"\(text)\" (expected http://)")
        }
        guard scheme.lowercased() == "http" else {
            if scheme.lowercased() == "https" {
                throw SyntaxError(description: "https upstreams are not supported in \"\(text)\" (the kernel speaks plain HTTP to upstreams)")
            }
            throw SyntaxError(description: "invalid URL prefix in \"\(text)\" (expected http://)")
        }
        let rest = text[text.index(text.startIndex, offsetBy: scheme.count + 3)...]
        var authority: Substring
        var uri: Substring?
        if rest.hasPrefix("unix:") {
            // `unix:/path` ends at the next colon (`unix:/tmp/app.sock:/uri`), as in nginx.
            let path = rest.dropFirst(5)
            if let colon = path.firstIndex(of: ":") {
                authority = rest[..<colon]
                uri = path[path.index(after: colon)...]
                if uri?.isEmpty == true { uri = nil }
            } else {
                authority = rest
            }
            guard path.first == "/", authority.count > 6 else {
                throw SyntaxError(description: "no path in the unix domain socket \"\(text)\"")
            }
            if let uri, uri.first != "/" {
                throw SyntaxError(description: "invalid URI \"\(uri)\" after the unix domain socket in \"\(text)\"")
            }
        } else if let slash = rest.firstIndex(of: "/") {
            authority = rest[..<slash]
            uri = rest[slash...]
        } else {
            authority = rest
        }
        guard !authority.isEmpty else { throw SyntaxError(description: "no host in \"\(text)\"") }
        if authority.contains("$") {
            throw SyntaxError(description: "variables in the address of \"proxy_pass\" are not supported (\"\(text)\"); name an upstreams group instead")
        }
        if authority.contains("?") || authority.contains("#") || authority.contains("@") {
            throw SyntaxError(description: "invalid host in \"\(text)\"")
        }
        self.url = String(text[..<(uri?.startIndex ?? text.endIndex)])
        if let uri, uri.hasPrefix("/"), text.hasPrefix("http://unix:") {
            // The colon before the URI belongs to neither part.
            self.url = String(text[..<text.index(before: uri.startIndex)])
        }
        self.authority = String(authority)
        self.uri = uri.map(String.init)
        if authority.hasPrefix("unix:") {
            isUnix = true
            hostName = String(authority)
            port = nil
            portWritten = false
            return
        }
        isUnix = false
        guard let (host, port) = ListenAddress.splitHostPort(String(authority)), !host.isEmpty else {
            throw SyntaxError(description: "invalid host in \"\(text)\"")
        }
        if let port, !(1...65535).contains(port) {
            throw SyntaxError(description: "invalid port in \"\(text)\"")
        }
        if authority.last == ":" { throw SyntaxError(description: "invalid port in \"\(text)\"") }
        hostName = host
        self.port = port ?? 80
        portWritten = port != nil
    }

    /// What to connect to: a group named by the host when one exists and no port is written (nginx matches
    /// `upstream` blocks by name), else the address.
    func destination(groupExists: (String) -> Bool) throws -> Destination {
        if isUnix { return .peer(.unix(path: String(hostName.dropFirst(5)))) }
        if !portWritten, groupExists(hostName) { return .group(hostName) }
        return .peer(.tcp(host: hostName, port: port ?? 80))
    }
}
