#if canImport(Glibc)
import Glibc
#endif

/// The pid file `kernel -s SIGNAL` reads (nginx's `pid`): the single process's, or the master's.
public enum PidFile {
    /// Writes this process's pid to `path`, creating its directory.
    public static func write(_ path: String) throws {
        do {
            try ParentDirectories.create(for: path)
        } catch {
            throw PidFileError("cannot write pid file \"\(path)\": \(error)")
        }
        guard let file = fopen(path, "w") else {
            throw PidFileError("cannot write pid file \"\(path)\": \(String(cString: strerror(errno)))")
        }
        fputs("\(getpid())\n", file)
        fclose(file)
    }
}

/// The pid file could not be written.
public struct PidFileError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

extension KernelRuntime {
    /// Points the error log at `core.error_log` (after a reload); a file that cannot be opened keeps the old one
    /// and is logged.
    public func applyErrorLog(_ core: CoreConfiguration) {
        do {
            errorLog.update(file: try logFiles.file(core.errorLogPath), level: core.errorLogLevel)
        } catch {
            logger.error("\(error)")
        }
    }
}
