/// How a `location` matches a request path, parsed from the text written after `location:`.
///
/// nginx's forms: `= /exact`, `^~ /prefix`, `~ regex` (case-sensitive), `~* regex` (case-insensitive), `/prefix`.
/// The modifier may also be written attached (`=/`, `~\.php$`), as nginx allows.
enum LocationMatch: Sendable, Equatable {
    case exact(String)
    /// A prefix; `stopsRegexSearch` is `^~`: when it is the longest matching prefix, regexes are not tried.
    case prefix(String, stopsRegexSearch: Bool)
    case regex(String, caseInsensitive: Bool)

    /// Parses the location text; throws a message without position (the caller adds it).
    static func parse(_ text: String) throws -> LocationMatch {
        let modifier: String
        if text.hasPrefix("^~") { modifier = "^~" }
        else if text.hasPrefix("~*") { modifier = "~*" }
        else if text.hasPrefix("~") { modifier = "~" }
        else if text.hasPrefix("=") { modifier = "=" }
        else if text.hasPrefix("@") {
            throw LocationSyntaxError("named locations (@name) are not supported")
        } else { modifier = "" }
        let argument = String(text.dropFirst(modifier.count).drop { $0 == " " || $0 == "\t" })
        switch modifier {
        case "~", "~*":
            guard !argument.isEmpty else { throw LocationSyntaxError("expected a regular expression after \"\(modifier)\"") }
            return .regex(argument, caseInsensitive: modifier == "~*")
        default:
            guard argument.hasPrefix("/") else {
                let shown = modifier.isEmpty ? "" : "after \"\(modifier)\" "
                throw LocationSyntaxError("expected a path starting with \"/\" \(shown)(forms: = /exact, ^~ /prefix, ~ regex, ~* regex, /prefix), found \"\(text)\"")
            }
            guard !argument.contains(where: { $0 == " " || $0 == "\t" }) else {
                throw LocationSyntaxError("a location path cannot hold blanks, found \"\(text)\"")
            }
            switch modifier {
            case "=": return .exact(argument)
            case "^~": return .prefix(argument, stopsRegexSearch: true)
            default: return .prefix(argument, stopsRegexSearch: false)
            }
        }
    }

    /// Whether it is a prefix location (`/path`, `^~ /path`): what a handler that strips a prefix needs.
    var isPrefix: Bool {
        if case .prefix = self { return true }
        return false
    }

    /// The path of an exact or prefix location (what a handler may strip), nil for a regex.
    var path: String? {
        switch self {
        case .exact(let path), .prefix(let path, _): return path
        case .regex: return nil
        }
    }
}

/// A malformed location text.
struct LocationSyntaxError: Error {
    var message: String
    init(_ message: String) { self.message = message }
}
