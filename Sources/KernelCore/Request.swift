import Atomics
import NIOCore

private let connectionSerial = ManagedAtomic<UInt64>(0)
private let requestSerial = ManagedAtomic<UInt64>(0)

/// Where a request came in: filled by the protocol module that accepted it.
public struct ConnectionInfo: Sendable {
    /// `http` or `uwsgi`.
    public var protocolName: String
    /// The listener's configured address, as written in YAML (`127.0.0.1:8080`, `unix:/run/k.sock`).
    public var listener: String
    public var remoteAddress: SocketAddress?
    public var localAddress: SocketAddress?
    /// `http` or `https`, as the client used it (uwsgi carries it in `UWSGI_SCHEME`/`HTTPS`).
    public var scheme: String
    /// The connection's serial number (`$connection`), unique in the process; 0 when not set.
    public var id: UInt64 = 0
    /// How many requests this connection has begun, this one included (`$connection_requests`).
    public var requestNumber: Int = 0

    public init(protocolName: String, listener: String, remoteAddress: SocketAddress?, localAddress: SocketAddress?, scheme: String = "http") {
        self.protocolName = protocolName
        self.listener = listener
        self.remoteAddress = remoteAddress
        self.localAddress = localAddress
        self.scheme = scheme
    }

    /// A new connection serial number for `id`.
    public static func nextID() -> UInt64 {
        connectionSerial.wrappingIncrementThenLoad(ordering: .relaxed)
    }

    /// The client's IP address as text (`$remote_addr`), or `-`.
    public var remoteIP: String { remoteAddress?.ipAddress ?? (remoteAddress == nil ? "-" : "unix:") }
}

/// The HTTP version a request was sent with.
public struct ProtocolVersion: Sendable, Hashable, CustomStringConvertible {
    public var major: Int
    public var minor: Int
    public init(major: Int, minor: Int) { self.major = major; self.minor = minor }
    public static let http1_0 = ProtocolVersion(major: 1, minor: 0)
    public static let http1_1 = ProtocolVersion(major: 1, minor: 1)
    public var description: String { "HTTP/\(major).\(minor)" }
}

/// A request, in the one shape every protocol module produces and every handler consumes.
///
/// A value type whose fields live in one copy-on-write box: a request passes through the router, the filters, the
/// handler and the access log, and each copy is then one reference count instead of one per field.
public struct KernelRequest: Sendable {
    private final class Storage: @unchecked Sendable {
        // Mutated only while uniquely referenced (see `unique`), so sharing it between copies is safe.
        var method: String
        var uri: String
        var path: String
        var query: String
        var version: ProtocolVersion
        var headers: HeaderFields
        var body: ByteBuffer?
        var bodySource: RequestBodySource?
        var connection: ConnectionInfo
        /// Set when the request was made on a connection without a serial number (`ConnectionInfo.id` 0): unique in
        /// the process, the same in every copy of one request. 0 otherwise (see `KernelRequest.identity`).
        let serial: UInt64

        init(method: String, uri: String, path: String, query: String, version: ProtocolVersion, headers: HeaderFields,
             body: ByteBuffer?, connection: ConnectionInfo, serial: UInt64) {
            self.method = method
            self.uri = uri
            self.path = path
            self.query = query
            self.version = version
            self.headers = headers
            self.body = body
            self.bodySource = nil
            self.connection = connection
            self.serial = serial
        }

        func copy() -> Storage {
            let copy = Storage(method: method, uri: uri, path: path, query: query, version: version, headers: headers,
                               body: body, connection: connection, serial: serial)
            copy.bodySource = bodySource
            return copy
        }
    }

    private var storage: Storage

    /// The storage, copied first when another request value shares it.
    private var unique: Storage {
        mutating get {
            if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
            return storage
        }
    }

    /// `GET`, `POST`, ...
    public var method: String {
        get { storage.method }
        _modify { yield &unique.method }
    }
    /// The request target as received (`/v1/parse?x=1`, or the absolute form `http://host/v1/parse?x=1`); its
    /// origin form is `requestURI`.
    public var uri: String {
        get { storage.uri }
        _modify { yield &unique.uri }
    }
    /// The path without the query, percent-decoded and normalised (`.` and `..` resolved, `//` merged) the way nginx
    /// matches locations. Set with `KernelRequest.normalizedPath(_:)` by protocol modules.
    public var path: String {
        get { storage.path }
        _modify { yield &unique.path }
    }
    /// The query string without `?`, or empty (`$args`).
    public var query: String {
        get { storage.query }
        _modify { yield &unique.query }
    }
    public var version: ProtocolVersion {
        get { storage.version }
        _modify { yield &unique.version }
    }
    public var headers: HeaderFields {
        get { storage.headers }
        _modify { yield &unique.headers }
    }
    /// The request body in memory: the whole body, read before the handler runs (as nginx buffers request
    /// bodies by default). A body larger than `client_body_buffer_size` is spooled to a file; handlers whose
    /// `requestBodyUse` is `.memory` still get it here (read back into memory, up to `client_max_body_size`),
    /// the others find it in `bodySource`.
    public var body: ByteBuffer? {
        get { storage.body }
        _modify { yield &unique.body }
    }
    /// The body when it is not in `body`: the spooled file, or the stream of a body still arriving.
    public var bodySource: RequestBodySource? {
        get { storage.bodySource }
        _modify { yield &unique.bodySource }
    }
    /// The body's length when known: what is in memory, the spooled file's length, or the declared length of a
    /// stream.
    public var bodyLength: Int64? {
        if let source = bodySource { return source.length }
        return body.map { Int64($0.readableBytes) }
    }
    public var connection: ConnectionInfo {
        get { storage.connection }
        _modify { yield &unique.connection }
    }
    /// Two numbers that identify the request in the process, the same in every copy of it (`$request_id` is made
    /// from them): the connection's serial number and the request's number on it when the listener numbers its
    /// connections, else 0 and a process-wide request serial.
    public var identity: (UInt64, UInt64) {
        let connection = storage.connection
        if connection.id != 0 { return (connection.id, UInt64(connection.requestNumber)) }
        return (0, storage.serial)
    }

    public init(method: String, uri: String, path: String, query: String, version: ProtocolVersion,
                headers: HeaderFields, body: ByteBuffer? = nil, connection: ConnectionInfo) {
        storage = Storage(method: method, uri: uri, path: path, query: query, version: version, headers: headers,
                          body: body, connection: connection,
                          // A numbered connection identifies its requests without a shared counter.
                          serial: connection.id != 0 ? 0 : requestSerial.wrappingIncrementThenLoad(ordering: .relaxed))
    }

    /// The host the client asked for, without a port or a trailing dot, lower-cased (`$host`): the authority of an
    /// absolute-form target (`GET http://example.com/ HTTP/1.1`) takes precedence over the `Host` header, as
    /// RFC 9112 section 3.2.2 requires.
    public var host: String? {
        guard var host = absoluteFormAuthority ?? headers["Host"], !host.isEmpty else { return nil }
        if host.hasPrefix("[") {
            if let end = host.firstIndex(of: "]") { host = String(host[...end]) }
        } else if let colon = host.lastIndex(of: ":") {
            host = String(host[..<colon])
        }
        if host.hasSuffix(".") { host.removeLast() }
        return host.isEmpty ? nil : host.lowercased()
    }

    /// nginx's `$request_port`: the port of an absolute-form target's authority, else of the `Host` header, as
    /// written (`8080`); nil when neither names one.
    public var requestPort: String? {
        guard let authority = absoluteFormAuthority ?? headers["Host"] else { return nil }
        let port: Substring
        if authority.hasPrefix("[") {
            guard let end = authority.firstIndex(of: "]") else { return nil }
            let rest = authority[authority.index(after: end)...]
            guard rest.first == ":" else { return nil }
            port = rest.dropFirst()
        } else {
            guard let colon = authority.lastIndex(of: ":") else { return nil }
            port = authority[authority.index(after: colon)...]
        }
        return port.isEmpty ? nil : String(port)
    }

    /// The authority the request is for, as an upstream application should see it in `HTTP_HOST`: `$host` and
    /// the port the client wrote (nginx 1.30's `$host$is_request_port$request_port`). Unlike the raw `Host`
    /// field it follows an absolute-form target, so `GET http://example.com/` with `Host: other` is for
    /// `example.com`. Nil without a `Host` or an absolute-form target.
    public var effectiveAuthority: String? {
        guard let host else { return nil }
        guard let port = requestPort else { return host }
        return host + ":" + port
    }

    /// `example.com:8080` of `http://example.com:8080/path`, or nil for an origin-form target.
    private var absoluteFormAuthority: String? {
        guard let prefix = Self.absoluteFormPrefixLength(uri.utf8) else { return nil }
        let rest = uri.utf8.dropFirst(prefix)
        let start = rest.startIndex
        // `splitTarget` has refused any authority but a host and a port (no user information).
        let end = rest.firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") } ?? rest.endIndex
        return start == end ? nil : String(uri[start..<end])
    }

    /// The length of an absolute-form target's `scheme://`, nil for any other target. nginx's request-line parser
    /// takes any scheme (a letter, then letters, digits, `+`, `-` or `.`, in any case) and then routes by the path:
    /// `GET ftp://host/x` and `GET HTTP://HOST/x` are requests for `/x` of `host`.
    public static func absoluteFormPrefixLength<Bytes: Collection>(_ target: Bytes) -> Int? where Bytes.Element == UInt8 {
        var length = 0
        var index = target.startIndex
        while index != target.endIndex {
            let byte = target[index]
            let lower = byte | 0x20
            if lower >= UInt8(ascii: "a"), lower <= UInt8(ascii: "z") {
                length += 1
            } else if length > 0, (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "+")
                        || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".") {
                length += 1
            } else {
                break
            }
            index = target.index(after: index)
        }
        guard length > 0, target.dropFirst(length).starts(with: "://".utf8) else { return nil }
        return length + 3
    }

    /// The target's path and query as received (`http://host/path?q` → `/path?q`; an origin-form target as it is):
    /// nginx's `$request_uri`, which starts where the path starts.
    public var requestURI: String {
        let target = uri
        guard let prefix = Self.absoluteFormPrefixLength(target.utf8) else { return target }
        // The scheme's bytes are ASCII: the index after them is one of the string's.
        let afterScheme = target[target.utf8.index(target.startIndex, offsetBy: prefix)...]
        guard let start = afterScheme.firstIndex(where: { $0 == "/" || $0 == "?" }) else { return "/" }
        let rest = afterScheme[start...]
        return rest.first == "?" ? "/" + rest : String(rest)
    }

    /// `GET /path?q HTTP/1.1`, as `$request` in access logs.
    public var requestLine: String { "\(method) \(uri) \(version)" }

    /// Splits a request target into a normalised path and a query, or nil when the path escapes the root
    /// (`/../x`) or holds a bad percent escape or a NUL: such requests are answered with 400, as nginx does.
    public static func splitTarget(_ target: String) -> (path: String, query: String)? {
        let utf8 = target.utf8
        // The common case, `/plain/path` without a query, is the target itself: no bytes are copied.
        if utf8.first == UInt8(ascii: "/"), !utf8.contains(UInt8(ascii: "?")), isAlreadyNormalized(utf8) {
            return (target, "")
        }
        // A fragment is no part of the target (nginx ends `$uri` and `$args` at `#`, and a `?` after it starts
        // no query).
        var rawPath = Substring(target)
        if let hash = utf8.firstIndex(of: UInt8(ascii: "#")) { rawPath = rawPath[..<hash] }
        var query = ""
        // `?` is ASCII, so its UTF-8 position is a valid index of the string.
        if let mark = rawPath.utf8.firstIndex(of: UInt8(ascii: "?")) {
            query = String(rawPath[rawPath.utf8.index(after: mark)...])
            rawPath = rawPath[..<mark]
        }
        // Absolute-form targets (`http://host/path`) keep only their path; the host is checked as nginx reads it.
        if let prefix = absoluteFormPrefixLength(rawPath.utf8) {
            let afterScheme = rawPath[rawPath.utf8.index(rawPath.startIndex, offsetBy: prefix)...]
            let slash = afterScheme.firstIndex(of: "/")
            guard isAbsoluteFormAuthority(afterScheme[..<(slash ?? afterScheme.endIndex)].utf8) else { return nil }
            rawPath = slash.map { afterScheme[$0...] } ?? "/"
        }
        // The origin form only: nginx refuses the asterisk form (`OPTIONS *`) and anything else with 400.
        guard rawPath.utf8.first == UInt8(ascii: "/") else { return nil }
        guard let path = normalizedPath(rawPath) else { return nil }
        return (path, query)
    }

    /// Percent-decodes a path and resolves `.`/`..` segments and repeated slashes (nginx `merge_slashes on`).
    public static func normalizedPath<S: StringProtocol>(_ raw: S) -> String? {
        if isAlreadyNormalized(raw.utf8) { return String(raw) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(raw.utf8.count)
        var iterator = Array(raw.utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.popFirst().flatMap(hexValue), let low = iterator.popFirst().flatMap(hexValue) else {
                    return nil
                }
                let decoded = high << 4 | low
                guard decoded != 0 else { return nil }
                bytes.append(decoded)
            } else {
                guard byte != 0 else { return nil }
                bytes.append(byte)
            }
        }
        var segments: [ArraySlice<UInt8>] = []
        let trailingSlash = bytes.last == UInt8(ascii: "/")
        for segment in bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
            if segment.elementsEqual([UInt8(ascii: ".")]) { continue }
            if segment.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) {
                guard !segments.isEmpty else { return nil }
                segments.removeLast()
                continue
            }
            segments.append(segment)
        }
        var result: [UInt8] = [UInt8(ascii: "/")]
        for (index, segment) in segments.enumerated() {
            if index > 0 { result.append(UInt8(ascii: "/")) }
            result += segment
        }
        let last = bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true).last
        let endsWithDotSegment = last.map { $0.elementsEqual([46]) || $0.elementsEqual([46, 46]) } ?? false
        if (trailingSlash || endsWithDotSegment), !segments.isEmpty { result.append(UInt8(ascii: "/")) }
        return String(decoding: result, as: UTF8.self)
    }
}

/// Whether a path starting with `/` has nothing to decode or resolve: no `%`, no NUL, no `//`, no `.` or `..`
/// segment. Most request paths are like that, and then the path is used as it came.
/// The authority of an absolute-form target as nginx's request-line parser takes it: a host of letters, digits,
/// `.` and `-`, or an IP literal in brackets, then an optional `:port` of digits; no user information.
private func isAbsoluteFormAuthority(_ authority: Substring.UTF8View) -> Bool {
    var rest = authority[...]
    if rest.first == UInt8(ascii: "[") {
        guard let close = rest.firstIndex(of: UInt8(ascii: "]")) else { return false }
        let literal = rest[rest.index(after: rest.startIndex)..<close]
        guard !literal.isEmpty, literal.allSatisfy({ byte in
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: ":"), UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "~"),
                 UInt8(ascii: "!"), UInt8(ascii: "$"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "("),
                 UInt8(ascii: ")"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: ","), UInt8(ascii: ";"),
                 UInt8(ascii: "="):
                return true
            default:
                return false
            }
        }) else { return false }
        rest = rest[rest.index(after: close)...]
    } else {
        let hostEnd = rest.firstIndex { byte in
            !((byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || (byte | 0x20 >= UInt8(ascii: "a") && byte | 0x20 <= UInt8(ascii: "z"))
              || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "-"))
        } ?? rest.endIndex
        // nginx's host check after its parser: no two dots in a row, and something besides a final dot.
        let host = rest[..<hostEnd]
        guard !host.isEmpty, !zip(host, host.dropFirst()).contains(where: { $0 == UInt8(ascii: ".") && $1 == UInt8(ascii: ".") }),
              !host.elementsEqual([UInt8(ascii: ".")]) else { return false }
        rest = rest[hostEnd...]
    }
    guard let first = rest.first else { return true }
    guard first == UInt8(ascii: ":") else { return false }
    return rest.dropFirst().allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
}

private func isAlreadyNormalized<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
    var previous: UInt8 = 0
    var segmentLength = 0
    var segmentIsDots = true
    for byte in bytes {
        switch byte {
        case UInt8(ascii: "%"), UInt8(ascii: "#"), 0:
            return false
        case UInt8(ascii: "/"):
            if previous == UInt8(ascii: "/") { return false }
            if segmentLength > 0, segmentLength <= 2, segmentIsDots { return false }
            segmentLength = 0
            segmentIsDots = true
        default:
            segmentLength += 1
            if byte != UInt8(ascii: ".") { segmentIsDots = false }
        }
        previous = byte
    }
    return !(segmentLength > 0 && segmentLength <= 2 && segmentIsDots)
}

private func hexValue(_ byte: UInt8) -> UInt8? {
    switch byte {
    case 48...57: return byte - 48
    case 65...70: return byte - 55
    case 97...102: return byte - 87
    default: return nil
    }
}
