/// nginx's `log_format NAME [escape=default|json|none] STRING...`: the line an access log writes for a finished
/// exchange, compiled once from variables of the registry.
public struct LogFormat: Sendable {
    /// How variable values are escaped in the line (the text around them is written as it is).
    public enum Escape: String, Sendable, CaseIterable {
        /// nginx's default: `"`, `\` and bytes below 0x20 or from 0x7f on become `\xHH`; a variable not found is `-`.
        case `default`
        /// The inside of a JSON string (`\"`, `\\`, `\n`, `\u00XX`); a variable not found is empty.
        case json
        /// Nothing escaped; a variable not found is `-`.
        case none
    }

    public let name: String
    public let escape: Escape
    public let template: VariableTemplate

    /// Compiles `text`; throws for an unknown variable or a malformed reference.
    public init(name: String, escape: Escape = .default, _ text: String,
                variables: VariableRegistry = .standard) throws(VariableTemplateError) {
        self.name = name
        self.escape = escape
        template = try VariableTemplate(text, variables: variables)
    }

    /// nginx's predefined `combined`, the default of every access log.
    public static let combined = try! LogFormat(
        name: "combined",
        "$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\"")

    /// One JSON object a line: the fields of `combined` (the time as ISO 8601) with `request_time`, the server, the
    /// location and the listener's protocol.
    public static let json = try! LogFormat(
        name: "json", escape: .json,
        "{\"time\":\"$time_iso8601\",\"remote_addr\":\"$remote_addr\",\"request\":\"$request\",\"status\":$status,"
            + "\"body_bytes_sent\":$body_bytes_sent,\"request_time\":$request_time,\"http_referer\":\"$http_referer\","
            + "\"http_user_agent\":\"$http_user_agent\",\"server_name\":\"$server_name\",\"location\":\"$location\","
            + "\"protocol\":\"$listener_protocol\"}")

    /// The formats every configuration has, by name.
    public static let predefined: [String: LogFormat] = ["combined": combined, "json": json]

    /// The line for one finished exchange, without the newline.
    public func line(for exchange: FinishedExchange) -> String {
        line(for: VariableContext(finished: exchange))
    }

    /// The line for an evaluation context, without the newline.
    public func line(for context: VariableContext) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(256)
        for part in template.parts {
            switch part {
            case .literal(let text):
                bytes.append(contentsOf: text.utf8)
            case .variable(_, let getter):
                append(getter(context), to: &bytes)
            case .capture(let number):
                let captures = context.route.captures
                append(number <= captures.count ? captures[number - 1] : nil, to: &bytes)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private func append(_ value: String?, to bytes: inout [UInt8]) {
        guard let value else {
            if escape != .json { bytes.append(UInt8(ascii: "-")) }
            return
        }
        switch escape {
        case .none: bytes.append(contentsOf: value.utf8)
        case .json: JSONText.appendEscaped(value, to: &bytes)
        case .default: LogFormat.appendDefaultEscaped(value, to: &bytes)
        }
    }

    /// nginx's `ngx_http_log_escape`: `"`, `\` and bytes outside printable ASCII as `\xHH` (upper-case hex).
    static func appendDefaultEscaped(_ value: String, to bytes: inout [UInt8]) {
        func needsEscape(_ byte: UInt8) -> Bool { byte < 0x20 || byte >= 0x7f || byte == 0x22 || byte == 0x5c }
        guard value.utf8.contains(where: needsEscape) else {
            bytes.append(contentsOf: value.utf8)
            return
        }
        let hex: [UInt8] = Array("0123456789ABCDEF".utf8)
        for byte in value.utf8 {
            if needsEscape(byte) {
                bytes += [UInt8(ascii: "\\"), UInt8(ascii: "x"), hex[Int(byte >> 4)], hex[Int(byte & 15)]]
            } else {
                bytes.append(byte)
            }
        }
    }
}

/// A server's access log: one line in its `LogFormat` for every finished exchange, one `write(2)` each. It is
/// one request-finish observer among others.
public final class AccessLog: RequestFinishObserver {
    public let file: LogFile
    public let format: LogFormat

    public init(file: LogFile, format: LogFormat = .combined) {
        self.file = file
        self.format = format
    }

    public func exchangeFinished(_ exchange: FinishedExchange) {
        file.write(line: format.line(for: exchange))
    }
}
