/// A YAML node together with its key path: the strict decoder's view of one value.
///
/// Every accessor either returns a typed value or throws a `ConfigError` naming `file:line:column`, the key path
/// and what was expected, so modules decode their configuration without writing error text of their own.
public struct ConfigValue: Sendable {
    public let node: YAMLNode
    /// Dotted key path from the root, e.g. `routing.servers[0].locations[2].return`.
    public let path: String

    public init(node: YAMLNode, path: String) {
        self.node = node
        self.path = path
    }

    public var mark: SourceMark { node.mark }
    public var isNull: Bool { node.isNull }

    /// An error at this value: `file:line:column: path: message`.
    public func error(_ message: String) -> ConfigError {
        ConfigError(mark: node.mark, path: path, message: message)
    }

    /// An "expected X, found Y" error at this value.
    public func expected(_ what: String) -> ConfigError {
        error("expected \(what), found \(node.foundDescription)")
    }

    /// The scalar text. Null is not a string.
    public func string() throws -> String {
        guard case .scalar(let text, _, _) = node, !node.isNull else { throw expected("a string") }
        return text
    }

    /// A non-empty string.
    public func nonEmptyString() throws -> String {
        let text = try string()
        guard !text.isEmpty else { throw expected("a non-empty string") }
        return text
    }

    /// `true`/`false`, `yes`/`no`, `on`/`off` as plain scalars; a quoted one is a string, and its error says so.
    public func bool() throws -> Bool {
        guard case .scalar(let text, _, let plain) = node else { throw expected("true or false") }
        let value: Bool
        switch text {
        case "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON": value = true
        case "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF": value = false
        default: throw expected("true or false")
        }
        guard plain else {
            throw error("expected true or false, found the string \"\(text)\" (write it without quotes)")
        }
        return value
    }

    /// An integer in `range`; `what` names the expectation in errors ("a positive integer").
    public func int(in range: ClosedRange<Int> = Int.min...Int.max, what: String? = nil) throws -> Int {
        let description = what ?? (range == Int.min...Int.max ? "an integer" : "an integer \(range.lowerBound)-\(range.upperBound)")
        guard case .scalar(let text, _, let plain) = node, plain, let value = Int(text), range.contains(value) else {
            throw expected(description)
        }
        return value
    }

    public func double(what: String = "a number") throws -> Double {
        guard case .scalar(let text, _, let plain) = node, plain, let value = Double(text), value.isFinite else {
            throw expected(what)
        }
        return value
    }

    /// A size in nginx units: `512`, `64k`, `100m`, `1g` (binary multiples).
    public func size() throws -> ByteSize {
        guard case .scalar(let text, _, _) = node, let size = ByteSize(parsing: text) else {
            throw expected("a size such as 512, 64k, 100m or 1g")
        }
        return size
    }

    /// A duration in nginx units: `500ms`, `30s`, `5m`, `1h`, `1d`, combinations (`1m30s`); a bare number is seconds.
    public func duration() throws -> ConfigDuration {
        guard case .scalar(let text, _, _) = node, let duration = ConfigDuration(parsing: text) else {
            throw expected("a duration such as 500ms, 30s, 5m or 1h (at most 365d)")
        }
        return duration
    }

    /// One of `choices`.
    public func oneOf(_ choices: [String]) throws -> String {
        guard case .scalar(let text, _, _) = node, choices.contains(text) else {
            throw expected("one of \(choices.joined(separator: ", "))")
        }
        return text
    }

    /// The items of a sequence. A single scalar counts as a list of one when `allowScalar` (`listen: 8080`).
    public func list(allowScalar: Bool = false) throws -> [ConfigValue] {
        switch node {
        case .sequence(let items, _):
            return items.enumerated().map { ConfigValue(node: $1, path: "\(path)[\($0)]") }
        case .scalar where allowScalar && !node.isNull:
            return [ConfigValue(node: node, path: path)]
        default:
            throw expected(allowScalar ? "a value or a list" : "a list")
        }
    }

    /// A list of strings; a single string counts as a list of one.
    public func stringList() throws -> [String] {
        try list(allowScalar: true).map { try $0.string() }
    }

    /// This value as a mapping reader. Call `finish()` on it when every known key has been read.
    public func mapping() throws -> ConfigMapping {
        if node.isNull { return ConfigMapping(entries: [], value: self) }
        guard case .mapping(let entries, _) = node else { throw expected("a mapping") }
        return ConfigMapping(entries: entries, value: self)
    }
}

/// Reads the keys of one mapping strictly: every key must be read, or `finish()` reports it as unknown.
public final class ConfigMapping {
    public let value: ConfigValue
    private let entries: [(key: YAMLNode, value: YAMLNode)]
    private var consumed: Set<String> = []
    private var known: [String] = []
    /// Values of the enclosing block that `optional` gives for keys this mapping does not write (nginx's
    /// inheritance of a server's directives by its locations); errors in them point at the enclosing block's lines.
    public var inherited: [String: ConfigValue] = [:]

    init(entries: [(key: YAMLNode, value: YAMLNode)], value: ConfigValue) {
        self.entries = entries
        self.value = value
    }

    /// Keys in file order.
    public var keys: [String] { entries.compactMap { $0.key.scalarText } }

    public func contains(_ key: String) -> Bool { keys.contains(key) }

    /// The value of `key`, or nil when absent (then the inherited value, if any). An explicit null counts as absent.
    public func optional(_ key: String) -> ConfigValue? {
        known.append(key)
        consumed.insert(key)
        guard let entry = entries.first(where: { $0.key.scalarText == key }), !entry.value.isNull else { return inherited[key] }
        return ConfigValue(node: entry.value, path: childPath(key))
    }

    /// The value of `key`, or a "missing required key" error at this mapping.
    public func required(_ key: String) throws -> ConfigValue {
        guard let found = optional(key) else {
            throw value.error("missing required key \"\(key)\"")
        }
        return found
    }

    /// Marks `key` as understood without reading it (a key handled elsewhere).
    public func allow(_ key: String) {
        known.append(key)
        consumed.insert(key)
    }

    /// The entries not read yet, in file order, as values (used for keys contributed by other modules).
    public func unread() -> [(key: String, value: ConfigValue)] {
        entries.compactMap { entry in
            guard let key = entry.key.scalarText, !consumed.contains(key) else { return nil }
            return (key, ConfigValue(node: entry.value, path: childPath(key)))
        }
    }

    /// The path of a child key.
    public func childPath(_ key: String) -> String {
        value.path.isEmpty ? key : "\(value.path).\(key)"
    }

    /// Throws for the first key that was never read.
    public func finish() throws {
        for entry in entries {
            guard let key = entry.key.scalarText, !consumed.contains(key) else { continue }
            var message = "unknown key"
            if !known.isEmpty {
                var seen = Set<String>()
                let expected = known.filter { seen.insert($0).inserted }.sorted()
                message += " (expected one of: \(expected.joined(separator: ", ")))"
            }
            throw ConfigError(mark: entry.key.mark, path: childPath(key), message: message)
        }
    }
}
