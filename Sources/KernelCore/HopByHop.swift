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

    /// The header names `Connection` values list as options of this hop (RFC 9110 section 7.6.1: a proxy removes
    /// them before it forwards the message), lower-cased; `close` and `keep-alive` are no header names, the
    /// hop-by-hop names are dropped anyway, and `Content-Length` frames the message it is in. Empty, without
    /// allocating, for the usual `keep-alive`, `close` or `Upgrade`.
    public static func listedOptions<Values: Sequence<String>>(inConnectionValues values: Values) -> [String] {
        var listed: [String] = []
        for value in values {
            for option in value.split(separator: ",") {
                let name = String(option.trimmingASCIIBlanks())
                guard !name.isEmpty, !name.equalsCaseInsensitive("close"), !contains(name),
                      !name.equalsCaseInsensitive("content-length") else { continue }
                listed.append(name.lowercased())
            }
        }
        return listed
    }
}

extension Substring {
    /// Without the spaces and tabs around it.
    fileprivate func trimmingASCIIBlanks() -> Substring {
        var trimmed = self
        while let first = trimmed.first, first == " " || first == "\t" { trimmed.removeFirst() }
        while let last = trimmed.last, last == " " || last == "\t" { trimmed.removeLast() }
        return trimmed
    }
}

/// The client of a connection as log lines name it (`client: 10.0.0.1`): the IP address, `unix:` for a unix
/// socket peer, `-` when unknown.
public func describeClient(_ address: SocketAddress?) -> String {
    guard let address else { return "-" }
    if let ip = address.ipAddress { return ip }
    return "unix:"
}
