import NIOCore

/// The one list of hop-by-hop header fields (RFC 9110 section 7.6.1, plus the `Keep-Alive` and `Proxy-Connection`
/// of HTTP/1.0): fields that describe one connection and never cross a proxy. Protocol modules drop them when they
/// relay a head in either direction and write their own framing instead.
public enum HopByHopHeaders {
    /// Lower-cased names.
    public static let names: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    ]

    /// Whether `name` (any case) is hop-by-hop.
    public static func contains(_ name: String) -> Bool {
        // Every name in the list is 2 to 17 bytes long: most fields are rejected without lower-casing.
        let length = name.utf8.count
        guard length >= 2, length <= 17 else { return false }
        return names.contains(name.lowercased())
    }
}

/// The client of a connection as log lines name it (`client: 10.0.0.1`): the IP address, `unix:` for a unix
/// socket peer, `-` when unknown.
public func describeClient(_ address: SocketAddress?) -> String {
    guard let address else { return "-" }
    if let ip = address.ipAddress { return ip }
    return "unix:"
}
