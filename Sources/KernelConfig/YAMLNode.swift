/// A position in a configuration file, 1-based as editors show it.
public struct SourceMark: Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// One node of a parsed YAML document. Every node keeps where it came from so that errors can name it.
public indirect enum YAMLNode: Sendable {
    /// A scalar. `isPlain` is false for quoted and block scalars: those are never read as null or bool.
    case scalar(String, mark: SourceMark, isPlain: Bool)
    case sequence([YAMLNode], mark: SourceMark)
    /// A mapping, in file order. Keys are scalars; duplicates are rejected by the parser.
    case mapping([(key: YAMLNode, value: YAMLNode)], mark: SourceMark)

    public var mark: SourceMark {
        switch self {
        case .scalar(_, let mark, _), .sequence(_, let mark), .mapping(_, let mark): return mark
        }
    }

    /// The scalar text, or nil for collections.
    public var scalarText: String? {
        if case .scalar(let text, _, _) = self { return text }
        return nil
    }

    /// True for `~`, `null`, `Null`, `NULL` and an empty plain scalar (`key:` with nothing after it).
    public var isNull: Bool {
        if case .scalar(let text, _, let plain) = self, plain {
            return text.isEmpty || text == "~" || text == "null" || text == "Null" || text == "NULL"
        }
        return false
    }

    /// How an error message describes what was found here.
    public var foundDescription: String {
        switch self {
        case .scalar(let text, _, _):
            if isNull { return "null" }
            return "\"\(text)\""
        case .sequence: return "a sequence"
        case .mapping: return "a mapping"
        }
    }
}
