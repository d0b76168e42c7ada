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
        name.utf8.withContiguousStorageIfAvailable { contains(bytes: $0) }
            ?? Array(name.utf8).withUnsafeBufferPointer { contains(bytes: $0) }
    }

    /// The same for a name's bytes in memory.
    public static func contains(bytes name: UnsafeBufferPointer<UInt8>) -> Bool {
        func named(_ known: StaticString) -> Bool { equal(name, known) }
        switch name.count {
        case 2: return named("te")
        case 7: return named("trailer") || named("upgrade")
        case 10: return named("connection") || named("keep-alive")
        case 16: return named("proxy-connection")
        case 17: return named("transfer-encoding")
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
            var value = value
            value.withUTF8 { addListedOptions(inConnectionValue: UnsafeRawBufferPointer($0), to: &listed) }
        }
        return listed
    }

    /// The same for one `Connection` value in memory (a head's bytes as they came), its options appended to
    /// `listed`. Read on the bytes: every kept-alive HTTP/1.1 answer carries `Connection: keep-alive`, and
    /// splitting its text by `Character` cost a grapheme check per byte.
    public static func addListedOptions(inConnectionValue value: UnsafeRawBufferPointer, to listed: inout [String]) {
        var start = 0
        while start < value.count {
            var end = start
            while end < value.count, value[end] != UInt8(ascii: ",") { end += 1 }
            var first = start
            var last = end
            while first < last, value[first] == UInt8(ascii: " ") || value[first] == UInt8(ascii: "\t") { first += 1 }
            while last > first, value[last - 1] == UInt8(ascii: " ") || value[last - 1] == UInt8(ascii: "\t") { last -= 1 }
            start = end + 1
            let option = UnsafeRawBufferPointer(rebasing: value[first..<last]).assumingMemoryBound(to: UInt8.self)
            // `close`, a hop-by-hop name, or `Content-Length`: options that name no field to remove.
            guard !option.isEmpty, !contains(bytes: option), !equal(option, "close"), !equal(option, "content-length") else { continue }
            listed.append(String(decoding: option, as: UTF8.self).lowercased())
        }
    }

    /// Whether `bytes` are `known`, in any case.
    private static func equal(_ bytes: UnsafeBufferPointer<UInt8>, _ known: StaticString) -> Bool {
        HTTPToken.equalCaseInsensitive(bytes: bytes, UnsafeBufferPointer(start: known.utf8Start, count: known.utf8CodeUnitCount))
    }
}

/// The client of a connection as log lines name it (`client: 10.0.0.1`): the IP address, `unix:` for a unix
/// socket peer, `-` when unknown.
public func describeClient(_ address: SocketAddress?) -> String {
    guard let address else { return "-" }
    if let ip = address.ipAddress { return ip }
    return "unix:"
}
