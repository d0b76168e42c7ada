/// One `server_name` entry, in nginx's forms.
enum ServerName: Sendable {
    /// `example.com`, and `""` (requests without a Host header). Stored lower-cased.
    case exact(String)
    /// `*.example.com` (stored as `.example.com`): any name ending so, with at least one more character in front.
    case leadingWildcard(suffix: String)
    /// `www.example.*` (stored as `www.example.`): any name starting so, with at least one more character after.
    case trailingWildcard(prefix: String)
    /// `~^www\d+\.example\.com$`: a regular expression, matched case-insensitively.
    case regex(String)

    /// Parses one entry; `.example.com` yields both `example.com` and `*.example.com`, as in nginx.
    static func parse(_ text: String) throws -> [ServerName] {
        if text.hasPrefix("~") {
            let pattern = String(text.dropFirst())
            guard !pattern.isEmpty else { throw ServerNameSyntaxError("expected a regular expression after \"~\"") }
            return [.regex(pattern)]
        }
        let name = text.lowercased()
        guard !name.contains(where: { $0 == " " || $0 == "\t" || $0 == "/" }) else {
            throw ServerNameSyntaxError("a server name cannot hold blanks or \"/\", found \"\(text)\"")
        }
        let stars = name.filter { $0 == "*" }.count
        if name.hasPrefix("*.") && stars == 1 && name.count > 2 {
            return [.leadingWildcard(suffix: String(name.dropFirst()))]
        }
        if name.hasSuffix(".*") && stars == 1 && name.count > 2 {
            return [.trailingWildcard(prefix: String(name.dropLast()))]
        }
        guard stars == 0 else {
            throw ServerNameSyntaxError("a wildcard server name has one \"*\" at its start (\"*.example.com\") or end (\"www.example.*\"), found \"\(text)\"")
        }
        if name.hasPrefix("."), name.count > 1 {
            return [.exact(String(name.dropFirst())), .leadingWildcard(suffix: name)]
        }
        return [.exact(name)]
    }
}

/// A malformed server name.
struct ServerNameSyntaxError: Error {
    var message: String
    init(_ message: String) { self.message = message }
}
