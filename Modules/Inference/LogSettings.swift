import Atomics
import KernelCore
import Logging

/// Triton's logging extension (`GET`/`POST /v2/logging`) over the kernel's error log, whose one threshold level
/// (`error_log.level`) stands for Triton's separate switches:
///
/// | threshold | `log_verbose_level` | `log_info` | `log_warning` | `log_error` |
/// |---|---:|---|---|---|
/// | `debug` | 1 | true | true | true |
/// | `info` | 0 | true | true | true |
/// | `notice` (nginx's, between info and warn) | 0 | false | true | true |
/// | `warn` | 0 | false | true | true |
/// | `error` | 0 | false | false | true |
/// | `crit` and above | 0 | false | false | false |
///
/// A `null` member changes nothing, as in Triton. A switch turned on turns on the more severe kinds the request
/// does not name (`log_verbose_level: 1` alone means debug, info and the rest), one turned off the less severe
/// ones; switches named in one request that one threshold cannot hold together (`log_info: true` with
/// `log_error: false`) are refused, where Triton would keep them apart.
struct LogSettings: Equatable {
    var level: Logger.Level
    /// The error log's path as `error_log` names it; Triton's `log_file` is empty for the console.
    var file: String
    /// Triton's verbose level as last set (every level above 0 is `debug`): read back while the level is `debug`.
    var verbosity: UInt32 = 1

    /// This process's verbose level, as the last change set it (the error log's level is the process's too).
    static let processVerbosity = ManagedAtomic<UInt32>(1)

    /// The settings of `errorLog`, with this process's verbose level.
    static func current(_ errorLog: ErrorLogHandler.Destination) -> LogSettings {
        LogSettings(level: errorLog.level, file: errorLog.path, verbosity: processVerbosity.load(ordering: .relaxed))
    }

    /// The answer's JSON object, with Triton's members in Triton's order.
    func json(into writer: inout JSONWriter) {
        func flag(_ on: Bool) { if on { writer.raw("true") } else { writer.raw("false") } }
        writer.raw("{\"log_file\":")
        writer.string(file == "stderr" || file == "stdout" ? "" : file)
        writer.raw(",\"log_info\":")
        flag(level <= .info)
        writer.raw(",\"log_warning\":")
        flag(level <= .warning)
        writer.raw(",\"log_error\":")
        flag(level <= .error)
        writer.raw(",\"log_verbose_level\":")
        writer.integer(level <= .debug ? max(verbosity, 1) : 0)
        writer.raw(",\"log_format\":\"default\"}")
    }

    /// The settings after `request` (the parsed body: nil or an object), or the error in Triton's status and words.
    func applying(_ request: JSONValue?) throws -> LogSettings {
        guard let request else { return self }
        func flag(_ name: String) throws -> Bool? {
            guard let value = request[name], !value.isNull else { return nil }
            guard let flag = value.boolValue else {
                throw KernelHTTPError(400, "attempt to access JSON non-boolean as boolean")
            }
            return flag
        }
        if let file = request["log_file"], !file.isNull {
            throw KernelHTTPError(501, "log file location can not be updated through network protocol")
        }
        // The kinds from the least severe: verbose (debug), info, warning, error.
        var asked: [Bool?] = [nil, try flag("log_info"), try flag("log_warning"), try flag("log_error")]
        var verbose = verbosity
        if let value = request["log_verbose_level"], !value.isNull {
            guard case .number(let number) = value, let verbosity = number.int64, verbosity >= 0, verbosity <= UInt32.max else {
                throw KernelHTTPError(400, "attempt to access JSON non-unsigned-integer as unsigned-integer")
            }
            asked[0] = verbosity > 0
            if verbosity > 0 { verbose = UInt32(verbosity) }
        }
        if let value = request["log_format"], !value.isNull {
            guard let format = value.stringValue else { throw KernelHTTPError(400, "attempt to access JSON non-string as string") }
            guard format == "default" else {
                // An unknown format is Triton's 503 (UNAVAILABLE); ISO8601, which Triton has, is refused as a request
                // this server cannot follow.
                if format == "ISO8601" {
                    throw KernelHTTPError(400, "log_format ISO8601 is not available: the error log is written in nginx's format (\"default\")")
                }
                throw KernelHTTPError(503, "invalid argument for --log_format, got: \(format)")
            }
        }
        // One threshold: a kind turned on turns on the more severe kinds not named, one turned off the less
        // severe ones; named switches that contradict each other are refused.
        var on = [level <= .debug, level <= .info, level <= .warning, level <= .error]
        for (kind, value) in asked.enumerated() {
            guard let value else { continue }
            on[kind] = value
            for other in on.indices where asked[other] == nil && (value ? other > kind : other < kind) { on[other] = value }
        }
        for kind in on.indices.dropFirst() where on[kind - 1] && !on[kind] {
            throw KernelHTTPError(400, "the error log has one threshold level (error_log level): messages of a kind cannot be on while more severe ones are off (asked: log_verbose_level \(on[0] ? 1 : 0), log_info \(on[1]), log_warning \(on[2]), log_error \(on[3]))")
        }
        var next = self
        next.verbosity = verbose
        if on[0] {
            next.level = .debug
        } else if on[1] {
            next.level = .info
        } else if on[2] {
            // Info turned off keeps nginx's notices, which the kernel writes between info and warn.
            next.level = level <= .info ? .notice : min(level, .warning)
        } else if on[3] {
            next.level = .error
        } else {
            next.level = max(level, .critical)
        }
        return next
    }
}

extension LogSettings {
    /// The command query shared with every worker process (`ProcessSupervision.share`): its argument is the new
    /// level's nginx name and the verbose level (`debug 2`).
    static let commandName = "inference.logging"

    /// The command's argument for these settings.
    var commandArgument: String { "\(ErrorLogHandler.name(level)) \(verbosity)" }

    /// Sets these settings' level and verbose level in this process.
    func apply(to errorLog: ErrorLogHandler.Destination) {
        Self.processVerbosity.store(verbosity, ordering: .relaxed)
        errorLog.setLevel(level)
    }

    /// Runs a shared level change in this process; answers `ok`, or why not.
    static func respond(to argument: Substring, errorLog: ErrorLogHandler.Destination) -> [UInt8] {
        let parts = argument.split(separator: " ")
        guard let name = parts.first, let level = ErrorLogHandler.level(named: String(name)) else {
            return Array("unknown level \(argument)".utf8)
        }
        let verbosity = parts.count > 1 ? UInt32(parts[1]) ?? 1 : 1
        LogSettings(level: level, file: errorLog.path, verbosity: verbosity).apply(to: errorLog)
        return Array("ok".utf8)
    }
}

extension JSONValue {
    var isNull: Bool {
        if case .null = self { return true }
        return false
    }
}
