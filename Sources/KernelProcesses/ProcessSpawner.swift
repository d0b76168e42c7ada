#if canImport(Glibc)
import Glibc
#endif

/// Starts a program with `posix_spawn`: the master has event-loop threads, and `fork` in a threaded process copies
/// only the calling thread with whatever locks the others held, so it is never used.
public enum ProcessSpawner {
    /// The lowest descriptor number a descriptor handed to a child is kept at in the parent, above every number a
    /// child receives it at: `dup2` of one handed descriptor can then never overwrite another before it is handed.
    public static let parkingFloor: CInt = 1000

    /// Moves `fd` to a number at or above `parkingFloor`, close-on-exec (children get it only through `dup2`),
    /// and closes the old number. Returns the new number.
    public static func park(_ fd: CInt) throws -> CInt {
        guard fd < parkingFloor else {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            return fd
        }
        let parked = fcntl(fd, F_DUPFD_CLOEXEC, parkingFloor)
        guard parked >= 0 else { throw SpawnError("fcntl(F_DUPFD_CLOEXEC) failed (\(errno): \(String(cString: strerror(errno))))") }
        close(fd)
        return parked
    }

    /// The absolute path of the running executable, read once at start (as nginx keeps `argv[0]`): a binary
    /// upgrade starts whatever file is at that path then.
    public static func currentExecutable() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return CommandLine.arguments[0] }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Starts `executable` with `arguments` (argv[0] included) and `environment`; each `(source, target)` of
    /// `descriptors` is the child's descriptor `target`. The child starts with default signal dispositions and
    /// an empty signal mask, whatever the parent traps.
    public static func spawn(executable: String, arguments: [String], environment: [String],
                             descriptors: [(source: CInt, target: CInt)]) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (source, target) in descriptors {
            let result = posix_spawn_file_actions_adddup2(&actions, source, target)
            guard result == 0 else { throw SpawnError("posix_spawn_file_actions_adddup2() failed (\(result): \(String(cString: strerror(result))))") }
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t()
        sigfillset(&all)
        sigdelset(&all, SIGKILL)
        sigdelset(&all, SIGSTOP)
        posix_spawnattr_setsigdefault(&attributes, &all)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else {
            throw SpawnError("posix_spawn() \"\(executable)\" failed (\(result): \(String(cString: strerror(result))))")
        }
        return pid
    }

    /// This process's environment without the variables a master sets for its children.
    public static func inheritableEnvironment() -> [String] {
        var result: [String] = []
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if !text.hasPrefix(ProcessEnvironmentKeys.listeners + "=") && !text.hasPrefix(ProcessEnvironmentKeys.worker + "=") {
                result.append(text)
            }
            pointer += 1
        }
        return result
    }
}

/// A child process that could not be started.
public struct SpawnError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// How a child process ended, from `waitpid`'s status, in nginx's words.
public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
    case exited(code: Int32)
    case signalled(signal: Int32)

    public init(waitStatus status: Int32) {
        // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift does not import.
        let signal = status & 0x7f
        self = signal == 0 ? .exited(code: (status >> 8) & 0xff) : .signalled(signal: signal)
    }

    /// `exited with code 1`, `exited on signal 9`.
    public var description: String {
        switch self {
        case .exited(let code): return "exited with code \(code)"
        case .signalled(let signal): return "exited on signal \(signal)"
        }
    }
}
