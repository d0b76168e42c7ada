import KernelConfig
import NIOCore

/// nginx's `absolute_redirect`, `port_in_redirect` and `server_name_in_redirect`: how a redirect the kernel makes
/// itself (`return 301 /path`, the slash redirect of a proxying prefix location, a `Location` that `proxy_redirect`
/// rewrote) names its target. With nginx's
/// defaults a relative `Location` (`/path`) goes out absolute, with the scheme, the host the client asked for and
/// the port it connected to (left out when it is the scheme's own): `http://example.com:8080/path`.
public struct RedirectStyle: Sendable, Equatable {
    /// `absolute_redirect`: off sends a relative `Location` as it is.
    public var absolute = true
    /// `port_in_redirect`: off leaves the port out.
    public var portInRedirect = true
    /// `server_name_in_redirect`: on names the server's first `server_name` instead of the client's `Host`.
    public var serverNameInRedirect = false

    public static let `default` = RedirectStyle()

    public init() {}

    /// The server and location keys, each inherited by the locations that do not write it.
    public static let keys = ["absolute_redirect", "port_in_redirect", "server_name_in_redirect"]

    /// The style `mapping` writes, over `inherited`.
    public static func decode(_ mapping: ConfigMapping, inheriting inherited: RedirectStyle) throws -> RedirectStyle {
        var style = inherited
        if let value = mapping.optional("absolute_redirect") { style.absolute = try value.bool() }
        if let value = mapping.optional("port_in_redirect") { style.portInRedirect = try value.bool() }
        if let value = mapping.optional("server_name_in_redirect") { style.serverNameInRedirect = try value.bool() }
        return style
    }

    /// `location` as it goes out for `request`: a relative one made absolute when the style says so; an absolute
    /// one (`https://...`), or one that does not start with `/`, as it is.
    public func location(_ location: String, for request: KernelRequest, serverName: String) -> String {
        guard absolute, location.utf8.first == UInt8(ascii: "/") else { return location }
        let connection = request.connection
        var host = serverNameInRedirect ? Self.literalName(serverName) : (request.host ?? Self.literalName(serverName))
        if host.isEmpty {
            // No name to give (no `Host`, no literal server name): the address the client connected to, as nginx.
            guard let ip = connection.localAddress?.ipAddress else { return location }
            host = ip.contains(":") ? "[\(ip)]" : ip
        }
        var origin = connection.scheme + "://" + host
        if portInRedirect, let port = connection.localAddress?.port,
           !(connection.scheme == "http" && port == 80), !(connection.scheme == "https" && port == 443) {
            origin += ":" + String(port)
        }
        return origin + location
    }

    /// A server name that names one host: not a wildcard (`*.example.com`), a regular expression or `_`.
    private static func literalName(_ name: String) -> String {
        if name.isEmpty || name == "_" || name.hasPrefix("~") || name.contains("*") { return "" }
        return name.hasPrefix(".") ? String(name.dropFirst()) : name
    }
}
