import NIOCore

/// A server's access log: nginx's `combined` format or JSON lines.
public final class AccessLog: Sendable {
    public enum Format: String, Sendable, CaseIterable {
        /// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"`
        case combined
        /// One JSON object a line with the same fields plus `request_time`, `server_name` and `location`.
        case json
    }

    public let file: LogFile
    public let format: Format

    public init(file: LogFile, format: Format) {
        self.file = file
        self.format = format
    }

    /// Logs one finished request. `requestTime` is in seconds.
    public func log(_ request: KernelRequest, route: RouteInfo, status: Int, bodyBytesSent: Int, requestTime: Double) {
        let time = LogTime.now()
        switch format {
        case .combined:
            let referer = request.headers["Referer"] ?? "-"
            let agent = request.headers["User-Agent"] ?? "-"
            file.write(line: "\(request.connection.remoteIP) - - [\(time.accessLog)] \"\(escape(request.requestLine))\" \(status) \(bodyBytesSent) \"\(escape(referer))\" \"\(escape(agent))\"")
        case .json:
            var line = "{\"time\":\(JSONText.quoted(time.iso))"
            line += ",\"remote_addr\":\(JSONText.quoted(request.connection.remoteIP))"
            line += ",\"request\":\(JSONText.quoted(request.requestLine))"
            line += ",\"status\":\(status),\"body_bytes_sent\":\(bodyBytesSent)"
            line += ",\"request_time\":\(formatSeconds(requestTime))"
            line += ",\"http_referer\":\(JSONText.quoted(request.headers["Referer"] ?? ""))"
            line += ",\"http_user_agent\":\(JSONText.quoted(request.headers["User-Agent"] ?? ""))"
            line += ",\"server_name\":\(JSONText.quoted(route.serverName)),\"location\":\(JSONText.quoted(route.location))"
            line += ",\"protocol\":\(JSONText.quoted(request.connection.protocolName))}"
            file.write(line: line)
        }
    }

    /// nginx escapes `"`, `\` and bytes outside printable ASCII as `\xHH` in access logs.
    private func escape(_ text: String) -> String {
        guard text.utf8.contains(where: { $0 < 0x20 || $0 >= 0x7f || $0 == 0x22 || $0 == 0x5c }) else { return text }
        var out = ""
        for byte in text.utf8 {
            if byte < 0x20 || byte >= 0x7f || byte == 0x22 || byte == 0x5c {
                let hex = String(byte, radix: 16, uppercase: true)
                out += "\\x" + (hex.count == 1 ? "0" + hex : hex)
            } else {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            }
        }
        return out
    }

    private func formatSeconds(_ seconds: Double) -> String {
        let millis = Int((seconds * 1000).rounded())
        let fraction = millis % 1000
        return "\(millis / 1000)." + (fraction < 10 ? "00" : fraction < 100 ? "0" : "") + "\(fraction)"
    }
}
