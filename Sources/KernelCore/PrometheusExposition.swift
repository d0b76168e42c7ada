/// One sample line of the Prometheus text exposition format: a metric name (for a histogram, the family name with
/// `_bucket`, `_sum` or `_count`), its labels and its value.
public struct PrometheusSample: Sendable, Equatable {
    public var name: String
    public var labels: [String: String]
    public var value: Double

    public init(name: String, labels: [String: String] = [:], value: Double) {
        self.name = name
        self.labels = labels
        self.value = value
    }
}

/// A metric family: the `# HELP` and `# TYPE` lines and every sample that belongs to them.
public struct PrometheusFamily: Sendable, Equatable {
    public var name: String
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    public var type: String
    public var help: String
    public var samples: [PrometheusSample]

    public init(name: String, type: String, help: String, samples: [PrometheusSample]) {
        self.name = name
        self.type = type
        self.help = help
        self.samples = samples
    }
}

/// The Prometheus text exposition format, version 0.0.4 (`text/plain; version=0.0.4`), as the kernel uses it to
/// answer `/metrics` for a group of processes: each process renders its own families, the process that answers
/// parses every answer, merges them and renders the sum.
///
/// The grammar is the one Prometheus documents: `# HELP name text` (escapes `\\` and `\n`), `# TYPE name type`,
/// other `#` lines are comments, and sample lines `name{label="value",...} value [timestamp]` (label value escapes
/// `\\`, `\"` and `\n`; values may be `+Inf`, `-Inf` and `NaN`). Timestamps are dropped: the kernel's samples
/// have none.
public enum PrometheusExposition {
    /// Parses text format 0.0.4 (HELP/TYPE lines, samples with labels and escapes, +Inf/NaN); tolerant of unknown lines.
    ///
    /// A histogram's `_bucket`, `_sum` and `_count` samples (a summary's `_sum` and `_count`) belong to their
    /// family. A sample with no HELP or TYPE line before it gets an `untyped` family of its own name. Lines that do
    /// not parse are skipped: one malformed answer must not hide the other processes' metrics.
    public static func parse(_ text: String) -> [PrometheusFamily] {
        var families: [PrometheusFamily] = []
        var indexByName: [String: Int] = [:]

        func familyIndex(named name: String) -> Int {
            if let index = indexByName[name] { return index }
            families.append(PrometheusFamily(name: name, type: "untyped", help: "", samples: []))
            indexByName[name] = families.count - 1
            return families.count - 1
        }

        for rawLine in text.utf8.split(separator: UInt8(ascii: "\n")) {
            var line = Scanner(Array(rawLine))
            line.skipBlanks()
            guard !line.atEnd else { continue }
            if line.peek == UInt8(ascii: "#") {
                line.advance()
                line.skipBlanks()
                let keyword = line.word()
                guard keyword == "HELP" || keyword == "TYPE" else { continue }  // a comment
                line.skipBlanks()
                let name = line.word()
                guard isMetricName(name) else { continue }
                line.skipBlanks()
                let index = familyIndex(named: name)
                if keyword == "HELP" {
                    families[index].help = unescapeHelp(line.rest())
                } else {
                    let type = line.word()
                    if knownTypes.contains(type) { families[index].type = type }
                }
                continue
            }
            guard let sample = parseSample(&line) else { continue }
            families[familyIndex(named: owningFamilyName(of: sample.name, in: indexByName, families))].samples
                .append(sample)
        }
        return families
    }

    /// Merges the families of several processes: samples with the same name and labels are summed.
    ///
    /// A family's type and help come from the first process that names them. The result is in the order
    /// `render` writes, so `render(merge(...))` and `merge` itself are deterministic whatever order the answers
    /// arrived in.
    public static func merge(_ processes: [[PrometheusFamily]]) -> [PrometheusFamily] {
        var merged: [String: PrometheusFamily] = [:]
        var sampleIndex: [String: [SampleKey: Int]] = [:]
        for families in processes {
            for family in families {
                var target = merged[family.name] ?? PrometheusFamily(name: family.name, type: family.type, help: family.help, samples: [])
                if target.type == "untyped", family.type != "untyped" { target.type = family.type }
                if target.help.isEmpty { target.help = family.help }
                var index = sampleIndex[family.name] ?? [:]
                for sample in family.samples {
                    let key = SampleKey(name: sample.name, labels: sample.labels)
                    if let position = index[key] {
                        target.samples[position].value += sample.value
                    } else {
                        index[key] = target.samples.count
                        target.samples.append(sample)
                    }
                }
                sampleIndex[family.name] = index
                merged[family.name] = target
            }
        }
        return canonicalOrder(Array(merged.values))
    }

    /// Renders families in text format 0.0.4, in a stable order.
    ///
    /// Families by name; within a family, samples grouped by their labels (without `le` and `quantile`), a
    /// histogram's buckets in ascending `le` with `+Inf` last, then `_sum`, then `_count`. Labels by name.
    public static func render(_ families: [PrometheusFamily]) -> String {
        var text = ""
        for family in canonicalOrder(families) {
            if !family.help.isEmpty {
                text += "# HELP \(family.name) \(escapeHelp(family.help))\n"
            }
            text += "# TYPE \(family.name) \(family.type)\n"
            for sample in family.samples {
                text += sample.name
                if !sample.labels.isEmpty {
                    text += "{"
                    text += sample.labels.sorted { $0.key < $1.key }
                        .map { "\($0.key)=\"\(escapeLabelValue($0.value))\"" }
                        .joined(separator: ",")
                    text += "}"
                }
                text += " \(formatValue(sample.value))\n"
            }
        }
        return text
    }

    /// A sample value as Prometheus clients write it: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
    public static func formatValue(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return value.description
    }

    // MARK: - Ordering

    private struct SampleKey: Hashable {
        var name: String
        var labels: [String: String]
    }

    private static func canonicalOrder(_ families: [PrometheusFamily]) -> [PrometheusFamily] {
        families.sorted { $0.name < $1.name }.map { family in
            var family = family
            family.samples = family.samples
                .map { (sortKey(of: $0, in: family.name), $0) }
                .sorted { lessThan($0.0, $1.0) }
                .map(\.1)
            return family
        }
    }

    /// Where a sample goes in its family: its series (labels other than `le`/`quantile`), then its place in the
    /// series (plain or bucket or quantile by bound, then `_sum`, then `_count`).
    private struct SortKey {
        var series: [String]
        var rank: Int
        var bound: Double
        var name: String
    }

    private static func sortKey(of sample: PrometheusSample, in family: String) -> SortKey {
        let series = sample.labels.filter { $0.key != "le" && $0.key != "quantile" }
            .sorted { $0.key < $1.key }.flatMap { [$0.key, $0.value] }
        let bound = (sample.labels["le"] ?? sample.labels["quantile"]).flatMap(parseValue) ?? -.infinity
        let rank: Int
        switch sample.name {
        case family + "_sum": rank = 2
        case family + "_count": rank = 3
        case family + "_bucket": rank = 1
        default: rank = 0
        }
        return SortKey(series: series, rank: rank, bound: bound, name: sample.name)
    }

    private static func lessThan(_ a: SortKey, _ b: SortKey) -> Bool {
        if a.series != b.series { return a.series.lexicographicallyPrecedes(b.series) }
        if a.rank != b.rank { return a.rank < b.rank }
        if a.bound != b.bound { return a.bound < b.bound }
        return a.name < b.name
    }

    // MARK: - Parsing

    private static let knownTypes: Set<String> = ["counter", "gauge", "histogram", "summary", "untyped"]

    /// The family a sample name belongs to: its own, or for `_bucket`/`_sum`/`_count` the histogram or summary
    /// already declared under the shorter name.
    private static func owningFamilyName(of name: String, in index: [String: Int], _ families: [PrometheusFamily]) -> String {
        if index[name] != nil { return name }
        for (suffix, types) in [("_bucket", ["histogram"]), ("_sum", ["histogram", "summary"]), ("_count", ["histogram", "summary"])]
        where name.hasSuffix(suffix) {
            let base = String(name.dropLast(suffix.count))
            if let position = index[base], types.contains(families[position].type) { return base }
        }
        return name
    }

    private static func parseSample(_ line: inout Scanner) -> PrometheusSample? {
        let name = line.word(stoppingAt: UInt8(ascii: "{"))
        guard isMetricName(name) else { return nil }
        var labels: [String: String] = [:]
        line.skipBlanks()
        if line.peek == UInt8(ascii: "{") {
            line.advance()
            while true {
                line.skipBlanks()
                if line.peek == UInt8(ascii: "}") { line.advance(); break }
                let label = line.word(stoppingAt: UInt8(ascii: "="))
                guard !label.isEmpty else { return nil }
                line.skipBlanks()
                guard line.peek == UInt8(ascii: "=") else { return nil }
                line.advance()
                line.skipBlanks()
                guard let value = line.quoted() else { return nil }
                labels[label] = value
                line.skipBlanks()
                if line.peek == UInt8(ascii: ",") { line.advance(); continue }
                guard line.peek == UInt8(ascii: "}") else { return nil }
                line.advance()
                break
            }
        }
        line.skipBlanks()
        guard let value = parseValue(line.word()) else { return nil }
        return PrometheusSample(name: name, labels: labels, value: value)
    }

    private static func parseValue(_ text: String) -> Double? {
        switch text {
        case "+Inf", "Inf": return .infinity
        case "-Inf": return -.infinity
        case "NaN": return .nan
        default:
            guard !text.isEmpty, text.lowercased() != "inf", text.lowercased() != "nan" else { return nil }
            return Double(text)
        }
    }

    private static func isMetricName(_ name: String) -> Bool {
        guard let first = name.utf8.first, !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first) else { return false }
        return name.utf8.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ":")
        }
    }

    // MARK: - Escapes

    private static func unescapeHelp(_ text: [UInt8]) -> String {
        var out: [UInt8] = []
        var iterator = text.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "\\") else { out.append(byte); continue }
            switch iterator.next() {
            case UInt8(ascii: "n"): out.append(UInt8(ascii: "\n"))
            case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\"))
            case let other?: out.append(contentsOf: [UInt8(ascii: "\\"), other])
            case nil: out.append(UInt8(ascii: "\\"))
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func escapeHelp(_ text: String) -> String {
        escape(text, quotes: false)
    }

    private static func escapeLabelValue(_ text: String) -> String {
        escape(text, quotes: true)
    }

    /// Backslash, newline and (in label values) the double quote get a backslash; on the UTF-8 bytes, so a CR LF
    /// pair is not one character here.
    private static func escape(_ text: String, quotes: Bool) -> String {
        let special: (UInt8) -> Bool = { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\n") || (quotes && $0 == UInt8(ascii: "\"")) }
        guard text.utf8.contains(where: special) else { return text }
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count + 8)
        for byte in text.utf8 {
            if special(byte) { out.append(UInt8(ascii: "\\")) }
            out.append(byte == UInt8(ascii: "\n") ? UInt8(ascii: "n") : byte)
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// A cursor over one line's bytes.
    private struct Scanner {
        var bytes: [UInt8]
        var position = 0

        init(_ bytes: [UInt8]) { self.bytes = bytes }

        var atEnd: Bool { position >= bytes.count }
        var peek: UInt8? { atEnd ? nil : bytes[position] }
        mutating func advance() { position += 1 }

        mutating func skipBlanks() {
            while let byte = peek, byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\r") { advance() }
        }

        /// The bytes up to the next blank (or `stop`), as a string.
        mutating func word(stoppingAt stop: UInt8? = nil) -> String {
            let start = position
            while let byte = peek, byte != UInt8(ascii: " "), byte != UInt8(ascii: "\t"), byte != UInt8(ascii: "\r"), byte != stop {
                advance()
            }
            return String(decoding: bytes[start..<position], as: UTF8.self)
        }

        /// Everything left on the line, without trailing blanks.
        mutating func rest() -> [UInt8] {
            var tail = Array(bytes[min(position, bytes.count)...])
            while let last = tail.last, last == UInt8(ascii: " ") || last == UInt8(ascii: "\t") || last == UInt8(ascii: "\r") {
                tail.removeLast()
            }
            position = bytes.count
            return tail
        }

        /// A double-quoted label value with its escapes undone, or nil when the quotes do not close.
        mutating func quoted() -> String? {
            guard peek == UInt8(ascii: "\"") else { return nil }
            advance()
            var out: [UInt8] = []
            while let byte = peek {
                advance()
                switch byte {
                case UInt8(ascii: "\""):
                    return String(decoding: out, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    guard let escaped = peek else { return nil }
                    advance()
                    switch escaped {
                    case UInt8(ascii: "n"): out.append(UInt8(ascii: "\n"))
                    case UInt8(ascii: "\\"), UInt8(ascii: "\""): out.append(escaped)
                    default: out.append(contentsOf: [UInt8(ascii: "\\"), escaped])
                    }
                default:
                    out.append(byte)
                }
            }
            return nil
        }
    }
}
