import KernelConfig
import KernelCore

/// What Triton's trace extension records of a sampled request: its timestamps, its tensors, or both.
public struct TraceLevel: OptionSet, Sendable, Hashable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    /// Triton's bits.
    public static let timestamps = TraceLevel(rawValue: 0x4)
    public static let tensors = TraceLevel(rawValue: 0x8)

    /// Triton's names, in Triton's order: `["OFF"]` for none.
    var names: [String] {
        guard !isEmpty else { return ["OFF"] }
        return (contains(.timestamps) ? ["TIMESTAMPS"] : []) + (contains(.tensors) ? ["TENSORS"] : [])
    }

    /// Reads Triton's names (`OFF` alone, or `TIMESTAMPS` and/or `TENSORS`).
    static func named(_ names: [String]) throws -> TraceLevel {
        var level = TraceLevel()
        for name in names {
            switch name {
            case "OFF":
                guard names.count == 1 else { throw KernelHTTPError(400, "Expect only one trace level 'OFF' is specified") }
            case "TIMESTAMPS": level.insert(.timestamps)
            case "TENSORS": level.insert(.tensors)
            default: throw KernelHTTPError(400, "unknown trace level '\(name)': expected OFF, TIMESTAMPS or TENSORS")
            }
        }
        return level
    }
}

/// One set of trace settings (Triton's `trace_level`, `trace_rate`, `trace_count`, `log_frequency`, `trace_file`).
public struct TraceSettings: Sendable, Equatable {
    public var level = TraceLevel()
    /// Every `rate`-th request is traced (0: none).
    public var rate = 1000
    /// How many more requests are traced; -1 for no limit.
    public var count = -1
    /// Every this many traces go to a file of their own (`<file>.<n>`); 0 writes them to `file` when the settings
    /// change or the kernel stops.
    public var logFrequency = 0
    /// Where traces go; set only in the configuration (Triton refuses to change it through the protocol).
    public var file = ""

    public init() {}

    /// Whether requests are traced at all under these settings.
    var samples: Bool { !level.isEmpty && rate > 0 && count != 0 && !file.isEmpty }

    /// Triton's answer: every value a string, `trace_level` a list.
    func json(into writer: inout JSONWriter) {
        writer.raw("{\"trace_level\":[")
        for (index, name) in level.names.enumerated() {
            if index > 0 { writer.byte(UInt8(ascii: ",")) }
            writer.string(name)
        }
        writer.raw("],\"trace_rate\":")
        writer.string(String(rate))
        writer.raw(",\"trace_count\":")
        writer.string(String(count))
        writer.raw(",\"log_frequency\":")
        writer.string(String(logFrequency))
        writer.raw(",\"trace_file\":")
        writer.string(file)
        writer.raw(",\"trace_mode\":\"triton\"}")
    }

    /// `inference.trace` (Triton's `--trace-config` options): `file`, `level`, `rate`, `count`, `log_frequency`.
    static func decode(_ value: ConfigValue, resolvePath: (String) -> String) throws -> TraceSettings {
        let mapping = try value.mapping()
        var settings = TraceSettings()
        if let file = mapping.optional("file") { settings.file = resolvePath(try file.nonEmptyString()) }
        if let level = mapping.optional("level") {
            let names: [String]
            if case .scalar = level.node { names = [try level.nonEmptyString().uppercased()] } else {
                names = try level.list().map { try $0.nonEmptyString().uppercased() }
            }
            do {
                settings.level = try TraceLevel.named(names)
            } catch let error as KernelHTTPError {
                throw level.error(error.message)
            }
        }
        func integer(_ key: String, from least: Int) throws -> Int? {
            guard let value = mapping.optional(key) else { return nil }
            guard let number = Int(try value.nonEmptyString()), number >= least, number <= Int(Int32.max) else {
                throw value.expected("an integer from \(least) to \(Int32.max)")
            }
            return number
        }
        settings.rate = try integer("rate", from: 0) ?? settings.rate
        settings.count = try integer("count", from: -1) ?? settings.count
        settings.logFrequency = try integer("log_frequency", from: 0) ?? settings.logFrequency
        if !settings.level.isEmpty, settings.file.isEmpty {
            throw (mapping.optional("level") ?? value).error("a trace level needs a trace file (file: PATH)")
        }
        try mapping.finish()
        return settings
    }
}

/// A model's own trace settings: each set one replaces the global one; nil follows it.
struct TraceOverrides: Sendable, Equatable {
    var level: TraceLevel?
    var rate: Int?
    var count: Int?
    var logFrequency: Int?

    var isEmpty: Bool { level == nil && rate == nil && count == nil && logFrequency == nil }

    func applied(to global: TraceSettings) -> TraceSettings {
        var settings = global
        if let level { settings.level = level }
        if let rate { settings.rate = rate }
        if let count { settings.count = count }
        if let logFrequency { settings.logFrequency = logFrequency }
        return settings
    }
}

/// A `POST .../trace/setting` body: each member absent (unchanged), `null` (cleared: back to the global value for
/// a model, to the configured one for the global settings) or a value, checked with Triton's words.
struct TraceUpdate: Sendable, Equatable {
    enum Change<Value: Sendable & Equatable>: Sendable, Equatable {
        case unchanged
        case clear
        case set(Value)

        /// `value` after the change; cleared, it is `cleared`.
        func applied(to value: Value, cleared: Value) -> Value {
            switch self {
            case .unchanged: return value
            case .clear: return cleared
            case .set(let new): return new
            }
        }

        /// An override after the change; cleared, there is none.
        func applied(to value: Value?) -> Value? {
            switch self {
            case .unchanged: return value
            case .clear: return nil
            case .set(let new): return new
            }
        }
    }

    var level = Change<TraceLevel>.unchanged
    var rate = Change<Int>.unchanged
    var count = Change<Int>.unchanged
    var logFrequency = Change<Int>.unchanged

    init() {}

    init(_ body: JSONValue?) throws {
        guard let body else { return }
        if body["trace_file"] != nil {
            throw KernelHTTPError(501, "trace file location can not be updated through network protocol")
        }
        func string(_ key: String, _ value: JSONValue) throws -> String {
            guard let text = value.stringValue else {
                throw KernelHTTPError(400, "attempt to access JSON non-string as string (\(key) takes a string, as \"10\")")
            }
            return text
        }
        if let value = body["trace_level"] {
            if value.isNull {
                level = .clear
            } else {
                guard let items = value.arrayValue else { throw KernelHTTPError(400, "attempt to access JSON non-array as array (trace_level)") }
                level = .set(try TraceLevel.named(items.map { try string("trace_level", $0) }))
            }
        }
        /// A numeric setting, sent as a string as Triton takes it, refused in Triton's words (its range text for
        /// the unsigned ones names the unsigned range, as Triton's does).
        func integer(_ key: String, from least: Int) throws -> Change<Int> {
            guard let value = body[key] else { return .unchanged }
            if value.isNull { return .clear }
            let text = try string(key, value)
            guard let number = Int(text) ?? (text.utf8.allSatisfy { $0 == UInt8(ascii: "-") || ($0 &- 48) < 10 } && !text.isEmpty ? Int.max : nil) else {
                throw KernelHTTPError(400, "Unable to parse '\(key)', got: \(text)")
            }
            if least == -1, number < -1 {
                throw KernelHTTPError(400, "Unable to parse '\(key)'. Expecting value >= -1, got:\(text)")
            }
            guard number >= least, number <= Int(Int32.max) else {
                let range = least == -1 ? "[ -1, \(Int32.max) ]" : "[ 0, \(UInt32.max) ]"
                throw KernelHTTPError(400, "Unable to parse '\(key)', value is out of range \(range), got: \(text)")
            }
            return .set(number)
        }
        rate = try integer("trace_rate", from: 0)
        count = try integer("trace_count", from: -1)
        logFrequency = try integer("log_frequency", from: 0)
    }

    /// The global settings after the update; `configured` is what a cleared member goes back to.
    func applied(to settings: TraceSettings, configured: TraceSettings) -> TraceSettings {
        var next = settings
        next.level = level.applied(to: settings.level, cleared: configured.level)
        next.rate = rate.applied(to: settings.rate, cleared: configured.rate)
        next.count = count.applied(to: settings.count, cleared: configured.count)
        next.logFrequency = logFrequency.applied(to: settings.logFrequency, cleared: configured.logFrequency)
        return next
    }

    /// A model's overrides after the update.
    func applied(to overrides: TraceOverrides) -> TraceOverrides {
        TraceOverrides(level: level.applied(to: overrides.level), rate: rate.applied(to: overrides.rate),
                       count: count.applied(to: overrides.count), logFrequency: logFrequency.applied(to: overrides.logFrequency))
    }
}
