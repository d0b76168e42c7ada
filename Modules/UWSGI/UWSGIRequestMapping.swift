import KernelCore
import NIOCore

/// Turns the variables of a uwsgi request into the kernel's request shape, as uWSGI builds a WSGI environ.
public enum UWSGIRequestMapping {
    /// Why a head cannot become a request; answered with 400.
    public struct Invalid: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// Maps `head`. `remoteAddress` and `localAddress` are the connection's; `REMOTE_ADDR`/`REMOTE_PORT` (the real
    /// client, as the front proxy saw it) take precedence over the former.
    public static func request(from head: UWSGIRequestHead, listener: String, remoteAddress: SocketAddress?,
                               localAddress: SocketAddress?) throws -> KernelRequest {
        var method: String?
        var requestURI: String?
        var pathInfo: String?
        var queryString: String?
        var serverProtocol: String?
        var remoteAddr: String?
        var remotePort: String?
        var uwsgiScheme: String?
        var requestScheme: String?
        var https: String?
        var headers = HeaderVariables()
        var contentType: String?

        for (position, (name, value)) in head.variables.enumerated() {
            switch name {
            case "REQUEST_METHOD": method = value
            case "REQUEST_URI": requestURI = value
            case "PATH_INFO": pathInfo = value
            case "QUERY_STRING": queryString = value
            case "SERVER_PROTOCOL": serverProtocol = value
            case "REMOTE_ADDR": remoteAddr = value
            case "REMOTE_PORT": remotePort = value
            case "UWSGI_SCHEME": uwsgiScheme = value
            case "REQUEST_SCHEME": requestScheme = value
            case "HTTPS": https = value
            case "CONTENT_TYPE": contentType = value
            case "CONTENT_LENGTH": break  // validated by the decoder: `head.contentLength`
            // CGI carries these two outside HTTP_*; a copy inside would duplicate them.
            case "HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH": break
            default:
                // Other CGI variables (SCRIPT_NAME, SERVER_NAME, ...) have no place in the request shape.
                if name.hasPrefix("HTTP_"), name.utf8.count > 5 {
                    guard isFieldName(name), isFieldValue(value) else {
                        throw Invalid(description: "invalid header variable \"\(escapeForLog(name))\"")
                    }
                    headers.set(headerName(fromVariable: name), value, undecoded: head.variables.undecodedValues?[position])
                }
            }
        }
        // These become request head lines when the request is passed on (proxy_pass writes its target and header
        // lines as they are): bytes no HTTP/1.1 head can hold would let a packet add lines or a request of its own.
        if let contentType, !isFieldValue(contentType) { throw Invalid(description: "invalid CONTENT_TYPE \"\(escapeForLog(contentType))\"") }
        if let requestURI, !isTargetText(requestURI) { throw Invalid(description: "invalid REQUEST_URI \"\(escapeForLog(requestURI))\"") }
        if let queryString, !isTargetText(queryString) { throw Invalid(description: "invalid QUERY_STRING \"\(escapeForLog(queryString))\"") }

        guard let method, !method.isEmpty else { throw Invalid(description: "missing REQUEST_METHOD") }
        guard method.utf8.allSatisfy(HTTPToken.isTokenByte) else { throw Invalid(description: "invalid REQUEST_METHOD") }

        let uri: String
        let path: String
        let query: String
        if let requestURI, !requestURI.isEmpty {
            guard let split = KernelRequest.splitTarget(requestURI) else {
                throw Invalid(description: "invalid REQUEST_URI \"\(requestURI)\"")
            }
            uri = requestURI
            (path, query) = split
        } else {
            // PATH_INFO is already percent-decoded by the front proxy: escape it again, so that decoding and
            // normalising it yields it unchanged and `uri` stays a valid request target.
            let raw = pathInfo.flatMap { $0.isEmpty ? nil : $0 } ?? "/"
            let escaped = percentEscapedPath(raw)
            let args = queryString ?? ""
            uri = args.isEmpty ? escaped : "\(escaped)?\(args)"
            guard escaped.hasPrefix("/"), let normalized = KernelRequest.normalizedPath(escaped) else {
                throw Invalid(description: "invalid PATH_INFO \"\(raw)\"")
            }
            path = normalized
            query = args
        }

        let version: ProtocolVersion
        if let serverProtocol, !serverProtocol.isEmpty {
            guard let parsed = parseVersion(serverProtocol) else {
                throw Invalid(description: "invalid SERVER_PROTOCOL \"\(serverProtocol)\"")
            }
            version = parsed
        } else {
            version = .http1_0
        }

        var fields = headers.fieldsKeepingBytes
        if let contentType, !contentType.isEmpty { fields.add("Content-Type", contentType) }
        if head.contentLength > 0 || head.variables["CONTENT_LENGTH"].map({ !$0.isEmpty }) == true {
            fields.add("Content-Length", String(head.contentLength))
        }

        var client = remoteAddress
        if let remoteAddr, !remoteAddr.isEmpty {
            let port = remotePort.flatMap { Int($0) }.flatMap { (0...65535).contains($0) ? $0 : nil } ?? 0
            if let address = try? SocketAddress(ipAddress: remoteAddr, port: port) { client = address }
        }

        let scheme: String
        if let uwsgiScheme, !uwsgiScheme.isEmpty {
            scheme = uwsgiScheme.lowercased()
        } else if let https, ["on", "1", "true"].contains(https.lowercased()) {
            scheme = "https"
        } else if let requestScheme, !requestScheme.isEmpty {
            scheme = requestScheme.lowercased()
        } else {
            scheme = "http"
        }

        let connection = ConnectionInfo(protocolName: "uwsgi", listener: listener, remoteAddress: client,
                                        localAddress: localAddress, scheme: scheme)
        return KernelRequest(method: method, uri: uri, path: path, query: query, version: version, headers: fields,
                             body: nil, connection: connection)
    }

    /// The headers of the `HTTP_*` variables, where a variable sent twice keeps its last value, as in uWSGI's
    /// environ: nginx sends `X-Forwarded-For` and (with `underscores_in_headers on`) `X_Forwarded_For` as two
    /// HTTP_X_FORWARDED_FOR, which must not become one repeated header here. Names come from
    /// `headerName(fromVariable:)`, so equal variables give equal names; a linear search serves the usual dozen, an
    /// index takes over for a block with many, so that no vars block costs quadratic time.
    private struct HeaderVariables {
        private(set) var fields = HeaderFields()
        private var index: [String: Int]?
        private static let indexFrom = 32
        /// The raw bytes of the values that were no UTF-8, by field index (`HeaderFields.undecoded`).
        private var undecoded: [Int: [UInt8]] = [:]

        /// The fields, with the bytes of each value that came as no UTF-8 kept for the wire.
        var fieldsKeepingBytes: HeaderFields {
            var result = fields
            for (position, bytes) in undecoded { result.keep(undecoded: bytes, at: position) }
            return result
        }

        mutating func set(_ name: String, _ value: String, undecoded bytes: [UInt8]? = nil) {
            if index == nil, fields.count >= HeaderVariables.indexFrom {
                var built: [String: Int] = [:]
                for (position, field) in fields.fields.enumerated() { built[field.name] = position }
                index = built
            }
            let found: Int?
            if let index {
                found = index[name]
            } else {
                found = fields.fields.firstIndex(where: { $0.name == name })
            }
            let position: Int
            if let found {
                fields.setValue(value, at: found)
                position = found
            } else {
                index?[name] = fields.count
                position = fields.count
                fields.add(name, value)
            }
            undecoded[position] = bytes
        }
    }

    /// `HTTP_X_FOO_BAR` → `X-Foo-Bar`. ASCII letters change case; other bytes are kept as they are.
    public static func headerName(fromVariable name: String) -> String {
        let source = name.utf8.dropFirst(5)
        // Written straight into the string's storage: no intermediate array per header.
        return String(unsafeUninitializedCapacity: source.count) { out in
            var count = 0
            var startOfWord = true
            for byte in source {
                switch byte {
                case UInt8(ascii: "_"):
                    out[count] = UInt8(ascii: "-")
                    startOfWord = true
                    count += 1
                    continue
                case UInt8(ascii: "a")...UInt8(ascii: "z"):
                    out[count] = startOfWord ? byte - 32 : byte
                case UInt8(ascii: "A")...UInt8(ascii: "Z"):
                    out[count] = startOfWord ? byte : byte + 32
                default:
                    out[count] = byte
                }
                count += 1
                startOfWord = false
            }
            return count
        }
    }

    /// A header variable's name that can stand in a head line: no control byte, space, DEL or colon (the bytes
    /// nginx never lets into a header name; other unusual bytes pass, as nginx passes them with
    /// `ignore_invalid_headers off`).
    static func isFieldName(_ name: String) -> Bool {
        name.utf8.allSatisfy { $0 > 0x20 && $0 != 0x7F && $0 != UInt8(ascii: ":") }
    }

    /// A header value without CR, LF or NUL, the bytes that end a head line (nginx refuses them in a request).
    static func isFieldValue(_ value: String) -> Bool {
        value.utf8.allSatisfy { $0 != 13 && $0 != 10 && $0 != 0 }
    }

    /// A request target (or its query) as an HTTP request line carries it: no control byte, space or DEL.
    static func isTargetText(_ text: String) -> Bool {
        text.utf8.allSatisfy { $0 > 0x20 && $0 != 0x7F }
    }

    /// `HTTP/1.1` → 1.1.
    static func parseVersion(_ text: String) -> ProtocolVersion? {
        let bytes = Array(text.utf8)
        guard bytes.count == 8, text.hasPrefix("HTTP/"), bytes[6] == UInt8(ascii: "."),
              (48...57).contains(bytes[5]), (48...57).contains(bytes[7]) else { return nil }
        return ProtocolVersion(major: Int(bytes[5] - 48), minor: Int(bytes[7] - 48))
    }

    /// Escapes what cannot stand literally in a path: `%`, `?`, `#`, controls, space and non-ASCII.
    static func percentEscapedPath(_ path: String) -> String {
        let hex: [Character] = Array("0123456789ABCDEF")
        var out = ""
        for byte in path.utf8 {
            if byte <= 0x20 || byte >= 0x7f || byte == UInt8(ascii: "%") || byte == UInt8(ascii: "?") || byte == UInt8(ascii: "#") {
                out.append("%")
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0x0f)])
            } else {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            }
        }
        return out
    }
}
