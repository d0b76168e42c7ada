import NIOCore

/// The one list of hop-by-hop header fields (RFC 9110 section 7.6.1, plus the `Keep-Alive` and `Proxy-Connection`
/// of HTTP/1.0): fields that describe one connection and never cross a proxy. Protocol modules drop them when they
/// relay a head in either direction and write their own framing instead.
public enum HopByHopHeaders {
    /// Lower-cased names.
    public static let names: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    ]

    /// Whether `name` (any case) is hop-by-hop. Compared by length first and then in place: writers ask this for
    /// every header of every response, so it must not allocate.
    @inlinable
    public static func contains(_ name: String) -> Bool {
        switch name.utf8.count {
        case 2: return name.equalsCaseInsensitive("te")
        case 7: return name.equalsCaseInsensitive("trailer") || name.equalsCaseInsensitive("upgrade")
        case 10: return name.equalsCaseInsensitive("connection") || name.equalsCaseInsensitive("keep-alive")
        case 16: return name.equalsCaseInsensitive("proxy-connection")
        case 17: return name.equalsCaseInsensitive("transfer-encoding")
        default: return false
        }
    }
}

/// The client of a connection as log lines name it (`client: 10.0.0.1`): the IP address, `unix:` for a unix
/// socket peer, `-` when unknown.
public func describeClient(_ address: SocketAddress?) -> String {
    guard let address else { return "-" }
    if let ip = address.ipAddress { return ip }
    return "unix:"
}
