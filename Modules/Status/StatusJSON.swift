import KernelCore

/// A JSON value as the status endpoint writes it, with its members in the order given.
enum StatusJSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([StatusJSON])
    case object([(String, StatusJSON)])

    static func == (a: StatusJSON, b: StatusJSON) -> Bool { a.rendered == b.rendered }

    /// A number, or null for a missing, infinite or NaN one (JSON has no such numbers).
    static func number(_ value: Double?) -> StatusJSON {
        guard let value, value.isFinite else { return .null }
        return .number(value)
    }

    static func integer(_ value: Int) -> StatusJSON { .number(Double(value)) }

    var rendered: String {
        var text = ""
        write(into: &text)
        return text
    }

    func write(into text: inout String) {
        switch self {
        case .null: text += "null"
        case .bool(let value): text += value ? "true" : "false"
        case .number(let value): text += Self.format(value)
        case .string(let value): text += JSONText.quoted(value)
        case .array(let items):
            text += "["
            for (index, item) in items.enumerated() {
                if index > 0 { text += "," }
                item.write(into: &text)
            }
            text += "]"
        case .object(let members):
            text += "{"
            for (index, (name, value)) in members.enumerated() {
                if index > 0 { text += "," }
                text += JSONText.quoted(name)
                text += ":"
                value.write(into: &text)
            }
            text += "}"
        }
    }

    /// Whole numbers without a fraction (`12`, not `12.0`); others in Swift's shortest round-trip form, which is
    /// valid JSON (`0.0125`, `1e-05`).
    static func format(_ value: Double) -> String {
        guard value.isFinite else { return "null" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return "\(value)"
    }
}
