import KernelCore
import NIOCore

/// Writes response heads the way uWSGI does for a WSGI app: `SERVER_PROTOCOL status reason`, `Name: value` lines,
/// an empty line. No chunking: a body of unknown length is delimited by closing the connection.
public enum UWSGIResponseWriter {
    public static func writeHead(_ response: KernelResponse, version: ProtocolVersion, method: String, to buffer: inout ByteBuffer) {
        buffer.writeString("\(version) \(response.status) \(sanitized(response.reasonPhrase))\r\n")
        var hasLength = false
        for (name, value) in response.headers {
            // A name or value holding CR or LF would split the head: such a field is dropped.
            guard !name.isEmpty, !containsLineBreak(name), !containsLineBreak(value) else { continue }
            // The connection's own fields: uwsgi frames the body by closing.
            if HopByHopHeaders.contains(name) { continue }
            if name.equalsCaseInsensitive("Content-Length") { hasLength = true }
            buffer.writeString(name)
            buffer.writeString(": ")
            buffer.writeString(value)
            buffer.writeString("\r\n")
        }
        if !hasLength, let length = response.body.knownLength,
           !ResponseBodyRule.statusForbidsBody(response.status) {
            buffer.writeString("Content-Length: \(length)\r\n")
        }
        buffer.writeString("\r\n")
    }

    private static func containsLineBreak(_ text: String) -> Bool {
        text.utf8.contains { $0 == 13 || $0 == 10 }
    }

    private static func sanitized(_ reason: String) -> String {
        containsLineBreak(reason) ? "" : reason
    }
}
