import KernelConfig
import Logging
import NIOConcurrencyHelpers
#if canImport(Glibc)
import Glibc
#endif

/// A log destination: `stderr`, `stdout` or a file opened for appending, reopened on `kernel -s reopen`
/// (SIGUSR1) so that log rotation works as with nginx.
public final class LogFile: Sendable {
    public let path: String
    private let descriptor: NIOLockedValueBox<Int32>

    /// Opens `path` (creating it, mode 0644); `stderr` and `stdout` name the process's streams.
    public init(path: String) throws {
        self.path = path
        descriptor = NIOLockedValueBox(try LogFile.open(path))
    }

    private static func open(_ path: String) throws -> Int32 {
        switch path {
        case "stderr": return 2
        case "stdout": return 1
        default:
            do {
                try ParentDirectories.create(for: path)
            } catch {
                throw LogFileError(description: "cannot open log file \"\(path)\": \(error)")
            }
            let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                throw LogFileError(description: "cannot open log file \"\(path)\": \(String(cString: strerror(errno)))")
            }
            return fd
        }
    }

    /// Writes one line (a newline is appended). One `write(2)` per line keeps lines whole with O_APPEND.
    public func write(line: String) {
        var text = line
        text.append("\n")
        descriptor.withLockedValue { fd in
            text.withUTF8 { bytes in
                var offset = 0
                while offset < bytes.count {
                    let written = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                    if written < 0 { if errno == EINTR { continue }; return }
                    offset += written
                }
            }
        }
    }

    /// Reopens the file by name (after rotation); the old descriptor is closed.
    public func reopen() throws {
        guard path != "stderr", path != "stdout" else { return }
        let fresh = try LogFile.open(path)
        descriptor.withLockedValue { fd in
            close(fd)
            fd = fresh
        }
    }

    deinit {
        let fd = descriptor.withLockedValue { $0 }
        if fd > 2 { close(fd) }
    }
}

public struct LogFileError: Error, CustomStringConvertible {
    public var description: String
}

/// Creates the missing directories above a file the kernel writes (pid file, logs, temporary files), as
/// `mkdir -p` with mode 0755 would, so that a configuration naming `run/kernel.pid` works in a fresh checkout.
public enum ParentDirectories {
    /// Creates every missing directory on the way to `path`'s parent. Throws nginx's `mkdir()` line naming the
    /// directory that could not be made.
    public static func create(for path: String) throws {
        let parent = ConfigPath.directory(of: path)
        guard !parent.isEmpty, parent != "." else { return }
        var info = stat()
        if stat(parent, &info) == 0 { return }
        var prefix = parent.hasPrefix("/") ? "/" : ""
        for component in parent.split(separator: "/", omittingEmptySubsequences: true) {
            prefix += component
            if mkdir(prefix, 0o755) != 0, errno != EEXIST {
                throw ParentDirectoryError(description: "mkdir() \"\(prefix)\" failed (\(errno): \(String(cString: strerror(errno))))")
            }
            prefix += "/"
        }
    }
}

/// A directory above a file the kernel writes that could not be created.
public struct ParentDirectoryError: Error, CustomStringConvertible {
    public var description: String
}

/// Every log file the process has open, by path, so that `reopen` reaches all of them and two logs naming one
/// file share one descriptor.
public final class LogFileRegistry: Sendable {
    private struct State {
        var files: [String: LogFile] = [:]
        /// Paths asked for since `markUse`: what the configuration being loaded uses.
        var used: Set<String> = []
    }
    private let state = NIOLockedValueBox(State())

    public init() {}

    public func file(_ path: String) throws -> LogFile {
        try state.withLockedValue { state in
            state.used.insert(path)
            if let file = state.files[path] { return file }
            let file = try LogFile(path: path)
            state.files[path] = file
            return file
        }
    }

    /// Starts recording which paths a configuration being loaded asks for.
    public func markUse() { state.withLockedValue { $0.used = [] } }

    /// Forgets the files not asked for since `markUse`: `reopen` no longer recreates them, and each closes when the
    /// last log holding it (an old generation's) is gone.
    public func dropUnused() {
        state.withLockedValue { state in
            state.files = state.files.filter { state.used.contains($0.key) || $0.key == "stderr" || $0.key == "stdout" }
        }
    }

    /// Reopens every file; returns the errors of those that failed (they keep their old descriptor).
    public func reopenAll() -> [String] {
        var failures: [String] = []
        for file in state.withLockedValue({ Array($0.files.values) }) {
            do { try file.reopen() } catch { failures.append("\(error)") }
        }
        return failures
    }
}

/// Formats wall-clock times for logs, caching the text of the current second.
public enum LogTime {
    private struct Cache {
        var second: Int = -1
        var errorLog = ""
        var accessLog = ""
        var iso = ""
    }
    private static let cache = NIOLockedValueBox(Cache())

    /// `2026/11/25 08:29:18` (error log), `25/Nov/2026:08:29:18 +0000` (`$time_local`), `2026-11-25T08:29:18+00:00`.
    public static func now() -> (errorLog: String, accessLog: String, iso: String) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let second = Int(ts.tv_sec)
        return cache.withLockedValue { cache in
            if cache.second != second {
                var t = time_t(second)
                var parts = tm()
                localtime_r(&t, &parts)
                let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
                let year = Int(parts.tm_year) + 1900, month = Int(parts.tm_mon) + 1, day = Int(parts.tm_mday)
                let hh = pad(Int(parts.tm_hour)), mm = pad(Int(parts.tm_min)), ss = pad(Int(parts.tm_sec))
                let offsetMinutes = Int(parts.tm_gmtoff) / 60
                let sign = offsetMinutes < 0 ? "-" : "+"
                let oh = pad(abs(offsetMinutes) / 60), om = pad(abs(offsetMinutes) % 60)
                cache.second = second
                cache.errorLog = "\(year)/\(pad(month))/\(pad(day)) \(hh):\(mm):\(ss)"
                cache.accessLog = "\(pad(day))/\(months[month - 1])/\(year):\(hh):\(mm):\(ss) \(sign)\(oh)\(om)"
                cache.iso = "\(year)-\(pad(month))-\(pad(day))T\(hh):\(mm):\(ss)\(sign)\(oh):\(om)"
            }
            return (cache.errorLog, cache.accessLog, cache.iso)
        }
    }

    private static func pad(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
}

/// The error log: swift-log lines in nginx's shape, `2026/11/25 08:29:18 [error] 1234#0: message, key: value`.
public struct ErrorLogHandler: LogHandler {
    /// Where lines go and the minimum level; swapped on reload.
    public final class Destination: Sendable {
        let state: NIOLockedValueBox<(file: LogFile, level: Logger.Level)>
        public init(file: LogFile, level: Logger.Level) { state = NIOLockedValueBox((file, level)) }
        public func update(file: LogFile, level: Logger.Level) { state.withLockedValue { $0 = (file, level) } }
        public var level: Logger.Level { state.withLockedValue { $0.level } }
        /// Sets the minimum level until the next reload or update (Triton's logging extension).
        public func setLevel(_ level: Logger.Level) { state.withLockedValue { $0.level = level } }
        /// The path of the file lines go to (`stderr` and `stdout` for the process's streams).
        public var path: String { file.path }
        var file: LogFile { state.withLockedValue { $0.file } }
    }

    public let destination: Destination
    public var metadata: Logger.Metadata = [:]
    private var explicitLevel: Logger.Level?

    public init(destination: Destination) { self.destination = destination }

    public var logLevel: Logger.Level {
        get { explicitLevel ?? destination.level }
        set { explicitLevel = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var text = "\(LogTime.now().errorLog) [\(ErrorLogHandler.name(event.level))] \(getpid())#0: \(event.message)"
        let all = event.metadata.map { metadata.merging($0) { $1 } } ?? metadata
        for (key, value) in all.sorted(by: { $0.key < $1.key }) { text += ", \(key): \(value)" }
        destination.file.write(line: ErrorLogHandler.escapingControlCharacters(text))
    }

    /// `text` with control characters written as `\xHH`, as nginx escapes its access log: a message quoting what a
    /// client sent (a decoded `%0A` in a path) stays one line and cannot forge another.
    package static func escapingControlCharacters(_ text: String) -> String {
        guard text.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) else { return text }
        var escaped = [UInt8]()
        escaped.reserveCapacity(text.utf8.count + 16)
        let hex = Array("0123456789ABCDEF".utf8)
        for byte in text.utf8 {
            if byte < 0x20 || byte == 0x7F {
                escaped.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "x"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
            } else {
                escaped.append(byte)
            }
        }
        return String(decoding: escaped, as: UTF8.self)
    }

    /// nginx's level names.
    public static func name(_ level: Logger.Level) -> String {
        switch level {
        case .trace, .debug: return "debug"
        case .info: return "info"
        case .notice: return "notice"
        case .warning: return "warn"
        case .error: return "error"
        case .critical: return "crit"
        }
    }

    /// Parses nginx's level names (`debug`, `info`, `notice`, `warn`, `error`, `crit`, `alert`, `emerg`).
    public static func level(named name: String) -> Logger.Level? {
        switch name {
        case "debug": return .debug
        case "info": return .info
        case "notice": return .notice
        case "warn", "warning": return .warning
        case "error": return .error
        case "crit", "alert", "emerg": return .critical
        default: return nil
        }
    }
}
