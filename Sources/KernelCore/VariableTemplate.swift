/// A text with nginx variables (`https://$host$request_uri`, `${scheme}://x`, `/items/$1`, `$id`), compiled once
/// when the configuration is loaded into parts that are filled in per request.
///
/// The syntax is nginx's: `$name` takes the longest run of letters, digits and `_`; `${name}` delimits a name
/// (`${host}x`); `$` and one digit is a capture of the location's regular expression (`$12` is `$1` then "2").
/// A name the registry does not know and that is no named group of the regular expression is an error, as
/// nginx's `unknown "name" variable`.
public struct VariableTemplate: Sendable {
    /// One piece of the text.
    public enum Part: Sendable {
        case literal(String)
        /// A variable of the registry, with its name as written (lower-cased).
        case variable(name: String, getter: VariableGetter)
        /// `$1`...`$9`, or a named group (`(?<id>...)` used as `$id`) resolved to its number.
        case capture(Int)
    }

    public let parts: [Part]

    /// A template of no text.
    public static let empty = VariableTemplate(parts: [])

    private init(parts: [Part]) { self.parts = parts }

    /// Compiles `text` against `variables`; `captureNames` are the named groups of the location's regular
    /// expression (group numbers by name), which win over registry names as they are the nearer scope.
    public init(_ text: String, variables: VariableRegistry = .standard,
                captureNames: [String: Int] = [:]) throws(VariableTemplateError) {
        var parts: [Part] = []
        var literal: [UInt8] = []
        let bytes = Array(text.utf8)
        var index = 0
        func isNameByte(_ byte: UInt8) -> Bool {
            (byte >= 97 && byte <= 122) || (byte >= 65 && byte <= 90) || (byte >= 48 && byte <= 57) || byte == 95
        }
        while index < bytes.count {
            guard bytes[index] == UInt8(ascii: "$") else {
                literal.append(bytes[index])
                index += 1
                continue
            }
            var cursor = index + 1
            let name: String
            if cursor < bytes.count, bytes[cursor] == UInt8(ascii: "{") {
                let start = cursor + 1
                guard let close = bytes[start...].firstIndex(of: UInt8(ascii: "}")) else {
                    throw VariableTemplateError("the closing bracket in \"\(String(decoding: bytes[start...], as: UTF8.self))\" variable is missing")
                }
                name = String(decoding: bytes[start..<close], as: UTF8.self)
                cursor = close + 1
            } else if cursor < bytes.count, bytes[cursor] >= 48, bytes[cursor] <= 57 {
                name = String(UnicodeScalar(bytes[cursor]))
                cursor += 1
            } else {
                let start = cursor
                while cursor < bytes.count, isNameByte(bytes[cursor]) { cursor += 1 }
                name = String(decoding: bytes[start..<cursor], as: UTF8.self)
            }
            guard !name.isEmpty, name.utf8.allSatisfy(isNameByte) else {
                throw VariableTemplateError("invalid variable name after \"$\" in \"\(text)\" (a literal \"$\" cannot be written)")
            }
            if !literal.isEmpty {
                parts.append(.literal(String(decoding: literal, as: UTF8.self)))
                literal = []
            }
            parts.append(try VariableTemplate.part(named: name, variables: variables, captureNames: captureNames))
            index = cursor
        }
        if !literal.isEmpty { parts.append(.literal(String(decoding: literal, as: UTF8.self))) }
        self.parts = parts
    }

    private static func part(named name: String, variables: VariableRegistry,
                             captureNames: [String: Int]) throws(VariableTemplateError) -> Part {
        let lowered = name.lowercased()
        if lowered.utf8.count == 1, let digit = Int(lowered), digit >= 1 { return .capture(digit) }
        if let group = captureNames[name] ?? captureNames.first(where: { $0.key.lowercased() == lowered })?.value {
            return .capture(group)
        }
        guard let getter = variables.getter(for: lowered) else {
            throw VariableTemplateError("unknown \"\(name)\" variable")
        }
        return .variable(name: lowered, getter: getter)
    }

    /// The text when it holds no variable.
    public var constantText: String? {
        if parts.isEmpty { return "" }
        guard parts.count == 1, case .literal(let text) = parts[0] else { return nil }
        return text
    }

    /// The highest capture used (`$3`, or a named group's number), 0 when none.
    public var highestCapture: Int {
        parts.reduce(0) { highest, part in
            if case .capture(let number) = part { return max(highest, number) }
            return highest
        }
    }

    /// The names of the variables used, in order.
    public var variableNames: [String] {
        parts.compactMap { part in
            if case .variable(let name, _) = part { return name }
            return nil
        }
    }

    /// The text for one evaluation; a variable not found and a capture the match did not set are empty.
    public func render(_ context: VariableContext) -> String {
        if parts.count == 1, case .literal(let text) = parts[0] { return text }
        var output = ""
        for part in parts {
            switch part {
            case .literal(let text): output += text
            case .variable(_, let getter): output += getter(context) ?? ""
            case .capture(let number):
                let captures = context.route.captures
                if number <= captures.count { output += captures[number - 1] }
            }
        }
        return output
    }

    /// The text for a request on its route.
    public func render(_ request: KernelRequest, route: RouteInfo) -> String {
        render(VariableContext(request: request, route: route))
    }
}

/// A template that does not compile; the caller adds the place in the file.
public struct VariableTemplateError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
