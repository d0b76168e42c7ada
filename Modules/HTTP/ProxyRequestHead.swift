import KernelCore
import NIOCore

/// Which URI goes on the request line to the upstream: nginx's `proxy_pass` rules.
enum ProxyURIRule: Sendable {
    /// `proxy_pass` without a URI part: the request's URI as the client sent it (`$request_uri`, escapes kept).
    case original
    /// A URI part in a prefix or exact location: the part of the normalised URI that matched the location is
    /// replaced by `uri`, the rest follows (escaped again when the client's URI had escapes), then `?args`.
    case replacingPrefix(uri: String, locationLength: Int)
    /// A URI part with variables (`/items/$1` in a regex location): sent as it renders, nothing appended.
    case template(VariableTemplate)
}

/// One `proxy_set_header` line (or a default): a name and its value template. An empty rendered value leaves
/// the line out.
struct ProxyHeaderLine: Sendable {
    var name: String
    var value: VariableTemplate
}

/// How the request body goes to the upstream.
enum ProxyBodyFraming: Sendable, Equatable {
    /// `Content-Length` (a body of known length, or none).
    case length
    /// `Transfer-Encoding: chunked`: a body streamed while it arrives, of unknown length.
    case chunked
}

/// Builds the request head nginx's `ngx_http_proxy_create_request` builds: the request line, the
/// `proxy_set_header` lines (defaults included) with values from the variable registry, then the client's header
/// lines except the hop-by-hop ones and those a `proxy_set_header` names, then the body's framing.
struct ProxyRequestHead: Sendable {
    var uriRule: ProxyURIRule
    /// `proxy_http_version 1.0` (else 1.1).
    var http10 = false
    /// The `proxy_set_header` lines in order, `Host` first; the defaults are already merged in.
    var headers: [ProxyHeaderLine]
    /// `proxy_pass_request_headers`.
    var passRequestHeaders = true
    /// `proxy_pass_request_body`.
    var passRequestBody = true

    /// Client header lines never passed on: they describe the client's connection or body, which the proxy
    /// frames itself (nginx's default `proxy_set_header` list: Host, Connection, Content-Length,
    /// Transfer-Encoding, TE, Keep-Alive, Expect, Upgrade, Proxy-Connection).
    static func isFramingHeader(_ name: String) -> Bool {
        if HopByHopHeaders.contains(name) { return true }
        switch name.utf8.count {
        case 4: return name.equalsCaseInsensitive("host")
        case 6: return name.equalsCaseInsensitive("expect")
        case 14: return name.equalsCaseInsensitive("content-length")
        default: return false
        }
    }

    /// The URI of the request line.
    func uri(for request: KernelRequest, route: RouteInfo) -> String {
        switch uriRule {
        case .original:
            return request.requestURI
        case .template(let template):
            // Captures and `$uri` are decoded: a `%0D%0A` of the client's must not become a line of the request;
            // `%`, `?` and `#` stay as the template and its variables put them.
            return PercentEncoding.escaped(template.render(request, route: route))
        case .replacingPrefix(let uri, let locationLength):
            let path = request.path
            let cut = min(locationLength, path.utf8.count)
            let rest = String(decoding: path.utf8.dropFirst(cut), as: UTF8.self)
            // The client's URI had escapes: the decoded rest is escaped again, as nginx does for a quoted URI.
            let tail = request.uri.utf8.contains(UInt8(ascii: "%")) ? Self.escapeURI(rest) : rest
            let query = request.query
            return query.isEmpty ? uri + tail : uri + tail + "?" + query
        }
    }

    /// nginx's `ngx_escape_uri(..., NGX_ESCAPE_URI)`: controls, space, `#`, `%`, `?`, DEL and bytes from 0x80 as
    /// `%XX`.
    static func escapeURI(_ text: String) -> String {
        PercentEncoding.escaped(text) {
            PercentEncoding.breaksALine($0) || $0 == UInt8(ascii: "#") || $0 == UInt8(ascii: "%") || $0 == UInt8(ascii: "?")
        }
    }

    /// How `request`'s body goes out: chunked only for a body still arriving whose length nobody declared.
    static func bodyFraming(of request: KernelRequest) -> ProxyBodyFraming {
        if case .stream(let stream)? = request.bodySource, stream.length == nil { return .chunked }
        return .length
    }

    /// Writes the head for `request` into `buffer`. `framing` is the body's (see `bodyFraming(of:)`).
    func write(_ request: KernelRequest, route: RouteInfo, framing: ProxyBodyFraming, into buffer: inout ByteBuffer) {
        let context = VariableContext(request: request, route: route)
        buffer.writeString(request.method)
        buffer.writeStaticString(" ")
        buffer.writeString(uri(for: request, route: route))
        buffer.writeStaticString(http10 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n")
        for line in headers {
            let value = line.value.render(context)
            guard Self.isWritten(value) else { continue }
            // What a value takes from the client's fields (`$http_name`, `$proxy_add_x_forwarded_for`) goes as the
            // bytes it came as.
            writeField(line.name, value, request.headers.undecodedBytes(ofRendered: value), into: &buffer)
        }
        if passRequestBody {
            if framing == .chunked {
                buffer.writeStaticString("Transfer-Encoding: chunked\r\n")
            } else if let length = request.bodyLength, length > 0 {
                buffer.writeStaticString("Content-Length: ")
                buffer.writeString(String(length))
                buffer.writeStaticString("\r\n")
            } else if request.headers.contains("Content-Length") || request.headers.contains("Transfer-Encoding") {
                // The client framed a body that turned out empty: the upstream hears so, as nginx tells it.
                buffer.writeStaticString("Content-Length: 0\r\n")
            }
        }
        if passRequestHeaders {
            // The client's `Connection` options name fields of its own hop, not passed on (RFC 9110 7.6.1).
            let connectionValues = request.headers.values("Connection")
            let listed = connectionValues.isEmpty ? [] : HopByHopHeaders.listedOptions(inConnectionValues: connectionValues)
            for (index, (name, value)) in request.headers.fields.enumerated()
            where !Self.isFramingHeader(name) && !sets(name) && !listed.contains(where: { name.equalsCaseInsensitive($0) }) {
                writeField(name, value, request.headers.undecodedBytes(at: index), into: &buffer)
            }
        }
        buffer.writeStaticString("\r\n")
    }

    /// Whether a rendered `proxy_set_header` value goes on the wire: an empty value removes the line (nginx); a
    /// value that could break the head is never written.
    static func isWritten(_ value: String) -> Bool {
        !value.isEmpty && value.utf8.allSatisfy({ $0 == 9 || ($0 >= 0x20 && $0 != 0x7F) })
    }

    /// Whether the head written for `request` carries `Upgrade`. Only a `proxy_set_header Upgrade` line can put it
    /// there (the client's own is hop-by-hop and never passed), when its value renders to a written one
    /// (`$http_upgrade` is empty for a client that asked for none).
    func sendsUpgrade(_ request: KernelRequest, route: RouteInfo) -> Bool {
        guard let line = headers.first(where: { $0.name.equalsCaseInsensitive("Upgrade") }) else { return false }
        return Self.isWritten(line.value.render(VariableContext(request: request, route: route)))
    }

    /// Whether a `proxy_set_header` line (or a default) names `name`: the client's lines of that name are dropped,
    /// whatever the value renders to.
    private func sets(_ name: String) -> Bool {
        headers.contains { $0.name.equalsCaseInsensitive(name) }
    }

    /// `undecoded`: the bytes the value came as, when they were no UTF-8.
    private func writeField(_ name: String, _ value: String, _ undecoded: [UInt8]?, into buffer: inout ByteBuffer) {
        buffer.writeString(name)
        buffer.writeStaticString(": ")
        if let undecoded { buffer.writeBytes(undecoded) } else { buffer.writeString(value) }
        buffer.writeStaticString("\r\n")
    }
}
