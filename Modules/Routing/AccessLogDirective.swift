import KernelConfig
import KernelCore

/// `routing.log_format` (nginx's `log_format NAME [escape=...] STRING...`) and each server's or location's
/// `access_log`, which names a format.
///
/// ```yaml
/// routing:
///   log_format:
///     upstream: '$remote_addr [$time_local] "$request" $status $upstream_addr $request_time'
///     api: {escape: json, format: '{"uri":"$uri","status":$status}'}
///   servers:
///     - access_log: {path: logs/access.log, format: upstream}
/// ```
struct AccessLogDecoder {
    let registrar: Registrar
    /// The formats by name: `combined`, `json` and those of `log_format`.
    let formats: [String: LogFormat]
    private let logs = AccessLogCache()

    init(registrar: Registrar, formats: [String: LogFormat]) {
        self.registrar = registrar
        self.formats = formats
    }

    /// Decodes `log_format`: a mapping from names to a format string, a list of strings (joined, as nginx joins
    /// the strings of one `log_format`), or `{escape: default|json|none, format: ...}`. Names are unique and
    /// cannot redefine `combined` or `json`.
    static func decodeFormats(_ value: ConfigValue?, variables: VariableRegistry) throws -> [String: LogFormat] {
        var formats = LogFormat.predefined
        guard let value else { return formats }
        let mapping = try value.mapping()
        for (name, entry) in mapping.unread() {
            mapping.allow(name)
            guard !name.isEmpty, name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
                throw entry.error("a log format name is a word without blanks, found \"\(name)\"")
            }
            if formats[name] != nil {
                throw entry.error("duplicate log_format name \"\(name)\"")
            }
            var escape = LogFormat.Escape.default
            var textValue = entry
            if case .mapping = entry.node {
                let fields = try entry.mapping()
                textValue = try fields.required("format")
                if let escapeValue = fields.optional("escape") {
                    escape = LogFormat.Escape(rawValue: try escapeValue.oneOf(LogFormat.Escape.allCases.map(\.rawValue)))!
                }
                try fields.finish()
            }
            let text: String
            if case .sequence = textValue.node {
                text = try textValue.list().map { try $0.string() }.joined()
            } else {
                text = try textValue.string()
            }
            guard !text.isEmpty else { throw textValue.expected("a format string") }
            do {
                formats[name] = try LogFormat(name: name, escape: escape, text, variables: variables)
            } catch {
                throw textValue.error(error.message)
            }
        }
        try mapping.finish()
        return formats
    }

    /// `access_log`: `off`, `stdout`, `stderr`, a path, or `{path: ..., format: NAME}` (default `combined`). Nil
    /// is off. While only checking (`kernel -t`) nothing is opened.
    func decode(_ value: ConfigValue) throws -> AccessLog? {
        var format = LogFormat.combined
        let pathValue: ConfigValue
        if case .mapping = value.node {
            let fields = try value.mapping()
            pathValue = try fields.required("path")
            if let formatValue = fields.optional("format") {
                let name = try formatValue.nonEmptyString()
                guard let named = formats[name] else {
                    let known = formats.keys.sorted().joined(separator: ", ")
                    throw formatValue.error("unknown log format \"\(name)\" (known: \(known))")
                }
                format = named
            }
            try fields.finish()
        } else {
            // `off` quoted or not, as nginx reads `access_log off` and `access_log "off"` alike.
            if value.node.scalarText == "off" { return nil }
            pathValue = value
        }
        let text = try pathValue.nonEmptyString()
        if text == "off" { throw pathValue.error("\"off\" cannot have a format; write access_log: off") }
        let path = text == "stdout" || text == "stderr" ? text : registrar.resolvePath(text)
        guard registrar.mode == .run else { return nil }
        do {
            return try logs.log(path: path, format: format, files: registrar.runtime.logFiles)
        } catch {
            throw pathValue.error("\(error)")
        }
    }
}

/// One `AccessLog` per file and format, so that servers writing to one file in one format share it.
private final class AccessLogCache {
    private var logs: [String: AccessLog] = [:]

    func log(path: String, format: LogFormat, files: LogFileRegistry) throws -> AccessLog {
        let key = "\(format.name) \(path)"
        if let log = logs[key] { return log }
        let log = AccessLog(file: try files.file(path), format: format)
        logs[key] = log
        return log
    }
}
