import CYAML
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Parses YAML files with libyaml into `YAMLNode` trees that keep line and column.
///
/// Beyond plain YAML it resolves, in this order:
/// - `include: PATH` or `include: [PATH, ...]` in any mapping: each path (relative to the including file, globs
///   allowed, sorted) must hold a mapping whose keys are merged in place of the `include` key;
/// - `${NAME}` and `${NAME:-default}` in scalar values: environment variables.
/// Duplicate keys are errors, also when one of them comes from an included file.
///
/// A file cannot make the parser use unbounded memory or stack: aliases are counted as the nodes they expand to
/// (a "billion laughs" file stops at `maximumNodes`), and collections nested deeper than `maximumDepth` are refused
/// while libyaml's events are read, before anything recurses that deep.
public struct YAMLParser: Sendable {
    public var environment: [String: String]
    /// Include depth beyond which a cycle is assumed.
    public var maximumIncludeDepth = 16
    /// Nodes a configuration may hold once every alias is expanded, summed over the file and what it includes.
    public var maximumNodes = 1_000_000
    /// Collections nested in one another, counted through includes (an included file's root is at the depth of the
    /// mapping that includes it).
    public var maximumDepth = 256

    public init(environment: [String: String] = [:]) {
        self.environment = environment
    }

    /// Parses the file at `path`. An empty file is an empty mapping.
    public func parseFile(_ path: String) throws -> YAMLNode {
        try parseFile(path, depth: 0, keyPath: "", nesting: 0, budget: NodeBudget(remaining: maximumNodes))
    }

    /// Parses YAML text; `file` is the name errors use.
    public func parse(_ text: String, file: String) throws -> YAMLNode {
        try parse(text, file: file, depth: 0, keyPath: "", nesting: 0, budget: NodeBudget(remaining: maximumNodes))
    }

    /// `keyPath` is where the file's root sits in the whole configuration (an included file's include key's
    /// mapping), so that errors inside it name the full key path; `nesting` is how deep that mapping is.
    private func parseFile(_ path: String, depth: Int, keyPath: String, nesting: Int, budget: NodeBudget) throws -> YAMLNode {
        guard let text = readConfigurationFile(path) else {
            throw ConfigError(mark: nil, path: "", message: "\(path): cannot read file: \(String(cString: strerror(errno)))")
        }
        return try parse(text, file: path, depth: depth, keyPath: keyPath, nesting: nesting, budget: budget)
    }

    private func parse(_ text: String, file: String, depth: Int, keyPath: String, nesting: Int,
                       budget: NodeBudget) throws -> YAMLNode {
        var reader = EventReader(file: file, budget: budget, maximumNodes: maximumNodes, maximumDepth: maximumDepth)
        let root = try reader.readDocument(text, nesting: nesting)
        return try resolve(root, file: file, depth: depth, path: keyPath, nesting: nesting, budget: budget)
    }

    // MARK: - include and environment

    private func resolve(_ node: YAMLNode, file: String, depth: Int, path: String, nesting: Int,
                         budget: NodeBudget) throws -> YAMLNode {
        switch node {
        case .scalar(let text, let mark, let plain):
            return .scalar(try expandEnvironment(text, mark: mark, path: path), mark: mark, isPlain: plain)
        case .sequence(let items, let mark):
            return .sequence(try items.enumerated().map { index, item in
                try resolve(item, file: file, depth: depth, path: "\(path)[\(index)]", nesting: nesting + 1, budget: budget)
            }, mark: mark)
        case .mapping(let entries, let mark):
            var merged: [(key: YAMLNode, value: YAMLNode)] = []
            var seen: [String: SourceMark] = [:]
            func append(_ key: YAMLNode, _ value: YAMLNode, path childPath: String) throws {
                let name = key.scalarText ?? ""
                if let first = seen[name] {
                    throw ConfigError(mark: key.mark, path: childPath,
                                      message: "duplicate key \"\(name)\" (first defined at \(first))")
                }
                seen[name] = key.mark
                merged.append((key, value))
            }
            for (key, value) in entries {
                let name = key.scalarText ?? ""
                let childPath = path.isEmpty ? name : "\(path).\(name)"
                if name == "include" {
                    for included in try includedFiles(value, from: file, path: childPath) {
                        guard depth < maximumIncludeDepth else {
                            throw ConfigError(mark: value.mark, path: childPath,
                                              message: "includes nested deeper than \(maximumIncludeDepth) levels (a cycle?)")
                        }
                        let tree = try parseFile(included, depth: depth + 1, keyPath: path, nesting: nesting, budget: budget)
                        guard case .mapping(let includedEntries, _) = tree else {
                            throw ConfigError(mark: tree.mark, path: childPath,
                                              message: "an included file must hold a mapping, found \(tree.foundDescription)")
                        }
                        for (k, v) in includedEntries {
                            let kn = k.scalarText ?? ""
                            try append(k, v, path: path.isEmpty ? kn : "\(path).\(kn)")
                        }
                    }
                } else {
                    try append(key, try resolve(value, file: file, depth: depth, path: childPath, nesting: nesting + 1,
                                                budget: budget), path: childPath)
                }
            }
            return .mapping(merged, mark: mark)
        }
    }

    private func includedFiles(_ value: YAMLNode, from file: String, path: String) throws -> [String] {
        let patterns: [YAMLNode]
        switch value {
        case .scalar: patterns = [value]
        case .sequence(let items, _): patterns = items
        case .mapping:
            throw ConfigError(mark: value.mark, path: path, message: "expected a file path or a list of paths, found a mapping")
        }
        var files: [String] = []
        for pattern in patterns {
            guard var text = pattern.scalarText, !pattern.isNull else {
                throw ConfigError(mark: pattern.mark, path: path, message: "expected a file path, found \(pattern.foundDescription)")
            }
            text = try expandEnvironment(text, mark: pattern.mark, path: path)
            text = ConfigPath.resolve(text, in: ConfigPath.directory(of: file))
            let isGlob = text.contains { $0 == "*" || $0 == "?" || $0 == "[" }
            if isGlob {
                files += globFiles(text)  // an empty glob includes nothing, as nginx's include does
            } else {
                guard access(text, R_OK) == 0 else {
                    throw ConfigError(mark: pattern.mark, path: path,
                                      message: "cannot read included file \"\(text)\": \(String(cString: strerror(errno)))")
                }
                files.append(text)
            }
        }
        return files
    }

    /// Expands `${NAME}` and `${NAME:-default}`; `$$` is a literal `$`.
    func expandEnvironment(_ text: String, mark: SourceMark, path: String) throws -> String {
        guard text.contains("$") else { return text }
        var output = ""
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            let next = text.index(after: index)
            if character == "$", next < text.endIndex, text[next] == "$" {
                output.append("$")
                index = text.index(after: next)
            } else if character == "$", next < text.endIndex, text[next] == "{" {
                guard let close = text[next...].firstIndex(of: "}") else {
                    throw ConfigError(mark: mark, path: path, message: "unterminated \"${\" in \"\(text)\"")
                }
                let body = text[text.index(after: next)..<close]
                let name: Substring
                let fallback: Substring?
                if let colon = body.firstIndex(of: ":"), body[body.index(after: colon)...].first == "-" {
                    name = body[..<colon]
                    fallback = body[body.index(colon, offsetBy: 2)...]
                } else {
                    name = body
                    fallback = nil
                }
                if let value = environment[String(name)], !value.isEmpty {
                    output += value
                } else if let fallback {
                    output += fallback
                } else {
                    // `${NAME}` requires a value; an empty one is as good as none (`${NAME:-}` allows it).
                    let state = environment[String(name)] == nil ? "is not set" : "is empty"
                    throw ConfigError(mark: mark, path: path, message: "environment variable \(name) \(state)")
                }
                index = text.index(after: close)
            } else {
                output.append(character)
                index = next
            }
        }
        return output
    }
}

/// The text of the file at `path` (as UTF-8, invalid bytes replaced), or nil when it cannot be read or is larger
/// than `limit` bytes (configuration and settings files are small: a huge one is refused, not read whole).
public func readConfigurationFile(_ path: String, limit: Int = Int.max) -> String? {
    guard let handle = fopen(path, "rb") else { return nil }
    defer { fclose(handle) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = fread(&chunk, 1, chunk.count, handle)
        if count > 0 { bytes += chunk[0..<count] }
        guard bytes.count <= limit else { return nil }
        if count < chunk.count { break }
    }
    if ferror(handle) != 0 { return nil }
    return String(decoding: bytes, as: UTF8.self)
}

private func globFiles(_ pattern: String) -> [String] {
    var result = glob_t()
    defer { globfree(&result) }
    guard glob(pattern, 0, nil, &result) == 0 else { return [] }
    var files: [String] = []
    for index in 0..<Int(result.gl_pathc) {
        if let path = result.gl_pathv[index] { files.append(String(cString: path)) }
    }
    return files.sorted()
}

/// How many more nodes the configuration being parsed may expand to: one budget for a file and all it includes.
private final class NodeBudget {
    var remaining: Int
    init(remaining: Int) { self.remaining = remaining }
}

/// Pulls libyaml events and builds the node tree of one document.
///
/// libyaml's parser keeps its nesting on heap stacks, not the C stack; the recursion is here, in `node`, so the depth
/// limit is checked at each collection's start event, before descending.
private struct EventReader {
    let file: String
    var parser = yaml_parser_t()
    /// An anchored node and the number of nodes it stands for with its own aliases expanded.
    var anchors: [String: (node: YAMLNode, expandedSize: Int)] = [:]
    let budget: NodeBudget
    let maximumNodes: Int
    let maximumDepth: Int

    init(file: String, budget: NodeBudget, maximumNodes: Int, maximumDepth: Int) {
        self.file = file
        self.budget = budget
        self.maximumNodes = maximumNodes
        self.maximumDepth = maximumDepth
    }

    /// Reads the one document of `text`; its root sits `nesting` collections deep (in the including file).
    mutating func readDocument(_ text: String, nesting: Int) throws -> YAMLNode {
        var bytes = Array(text.utf8)
        guard yaml_parser_initialize(&parser) == 1 else {
            throw ConfigError(mark: nil, path: "", message: "\(file): cannot initialise the YAML parser")
        }
        defer { yaml_parser_delete(&parser) }
        return try bytes.withUnsafeMutableBufferPointer { buffer -> YAMLNode in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            var root: YAMLNode? = nil
            var documents = 0
            while true {
                var event = try nextEvent()
                defer { yaml_event_delete(&event) }
                switch event.type {
                case YAML_STREAM_START_EVENT, YAML_DOCUMENT_END_EVENT:
                    continue
                case YAML_DOCUMENT_START_EVENT:
                    documents += 1
                    if documents > 1 {
                        throw ConfigError(mark: mark(event.start_mark), path: "",
                                          message: "a configuration file holds one YAML document, found a second one")
                    }
                    var first = try nextEvent()
                    defer { yaml_event_delete(&first) }
                    if first.type == YAML_DOCUMENT_END_EVENT { continue }
                    root = try node(startingWith: &first, depth: nesting)
                case YAML_STREAM_END_EVENT:
                    if let root {
                        if root.isNull { return .mapping([], mark: root.mark) }
                        return root
                    }
                    return .mapping([], mark: SourceMark(file: file, line: 1, column: 1))
                default:
                    throw ConfigError(mark: mark(event.start_mark), path: "", message: "unexpected YAML event")
                }
            }
        }
    }

    private mutating func nextEvent() throws -> yaml_event_t {
        var event = yaml_event_t()
        guard yaml_parser_parse(&parser, &event) == 1 else {
            let problem = parser.problem.map { String(cString: $0) } ?? "invalid YAML"
            var message = "invalid YAML: \(problem)"
            if let context = parser.context.map({ String(cString: $0) }) {
                message += " (\(context) at line \(parser.context_mark.line + 1), column \(parser.context_mark.column + 1))"
            }
            throw ConfigError(mark: mark(parser.problem_mark), path: "", message: message)
        }
        return event
    }

    private func mark(_ raw: yaml_mark_t) -> SourceMark {
        SourceMark(file: file, line: Int(raw.line) + 1, column: Int(raw.column) + 1)
    }

    /// Counts `count` nodes against the budget; the error names where the configuration passed it.
    private func spend(_ count: Int, at mark: SourceMark) throws {
        guard count <= budget.remaining else {
            throw ConfigError(mark: mark, path: "",
                              message: "the configuration expands to more than \(maximumNodes) YAML nodes (aliases included)")
        }
        budget.remaining -= count
    }

    /// Reads the node `event` starts. `depth` is the number of collections it is nested in.
    private mutating func node(startingWith event: inout yaml_event_t, depth: Int) throws -> YAMLNode {
        let start = mark(event.start_mark)
        switch event.type {
        case YAML_SCALAR_EVENT:
            try spend(1, at: start)
            let scalar = event.data.scalar
            let text = scalar.value.map {
                String(decoding: UnsafeBufferPointer(start: $0, count: Int(scalar.length)), as: UTF8.self)
            } ?? ""
            let node = YAMLNode.scalar(text, mark: start, isPlain: scalar.style == YAML_PLAIN_SCALAR_STYLE)
            if let anchor = scalar.anchor { anchors[String(cString: anchor)] = (node, 1) }
            return node
        case YAML_ALIAS_EVENT:
            let name = event.data.alias.anchor.map { String(cString: $0) } ?? ""
            guard let (node, size) = anchors[name] else {
                throw ConfigError(mark: start, path: "", message: "unknown YAML alias *\(name)")
            }
            // An alias is shared in memory, but everything after parsing (includes, environment, decoding) walks
            // it as a copy: it costs what it expands to.
            try spend(size, at: start)
            return node
        case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
            guard depth < maximumDepth else {
                throw ConfigError(mark: start, path: "", message: "YAML collections nested deeper than \(maximumDepth) levels")
            }
            try spend(1, at: start)
            let before = budget.remaining
            let node: YAMLNode
            let anchor: String?
            if event.type == YAML_SEQUENCE_START_EVENT {
                anchor = event.data.sequence_start.anchor.map { String(cString: $0) }
                var items: [YAMLNode] = []
                while true {
                    var child = try nextEvent()
                    defer { yaml_event_delete(&child) }
                    if child.type == YAML_SEQUENCE_END_EVENT { break }
                    items.append(try self.node(startingWith: &child, depth: depth + 1))
                }
                node = .sequence(items, mark: start)
            } else {
                anchor = event.data.mapping_start.anchor.map { String(cString: $0) }
                var entries: [(key: YAMLNode, value: YAMLNode)] = []
                while true {
                    var keyEvent = try nextEvent()
                    defer { yaml_event_delete(&keyEvent) }
                    if keyEvent.type == YAML_MAPPING_END_EVENT { break }
                    let key = try self.node(startingWith: &keyEvent, depth: depth + 1)
                    guard case .scalar = key else {
                        throw ConfigError(mark: key.mark, path: "", message: "a mapping key must be a scalar, found \(key.foundDescription)")
                    }
                    var valueEvent = try nextEvent()
                    defer { yaml_event_delete(&valueEvent) }
                    entries.append((key, try self.node(startingWith: &valueEvent, depth: depth + 1)))
                }
                node = .mapping(entries, mark: start)
            }
            if let anchor { anchors[anchor] = (node, 1 + before - budget.remaining) }
            return node
        default:
            throw ConfigError(mark: start, path: "", message: "unexpected YAML event")
        }
    }
}
