#if canImport(Glibc)
import Glibc
#endif

/// The environment variables a master hands its children, as systemd's `LISTEN_FDS` and nginx's `NGINX` do:
/// which inherited descriptor is which listening socket, and, for a worker, who it is and where its control
/// channel is.
public enum ProcessEnvironmentKeys {
    /// `3=http 127.0.0.1:8080;4=uwsgi unix:/run/kernel.sock`: inherited listening sockets by listener identity
    /// (`%` and `;` in an identity are written `%25` and `%3B`). Given to workers and to a new master started by
    /// a binary upgrade.
    public static let listeners = "KERNEL_LISTEN_FDS"
    /// `pool:number:fd`: set only in a worker process: its pool, its 1-based number and its control channel.
    public static let worker = "KERNEL_WORKER"
}

/// Listening sockets inherited from the process that started this one, by listener identity.
public struct InheritedListeners: Sendable, Equatable {
    public var descriptors: [String: CInt]

    public init(_ descriptors: [String: CInt]) {
        self.descriptors = descriptors
    }

    /// The value of `KERNEL_LISTEN_FDS` for `descriptors` (sorted by descriptor).
    public var environmentValue: String {
        descriptors.sorted { $0.value < $1.value }.map { "\($0.value)=\(Self.escape($0.key))" }.joined(separator: ";")
    }

    /// Parses `KERNEL_LISTEN_FDS`; nil when it is malformed.
    public init?(environmentValue text: String) {
        var descriptors: [String: CInt] = [:]
        for entry in text.split(separator: ";") {
            guard let equals = entry.firstIndex(of: "="), let fd = CInt(entry[..<equals]), fd >= 0 else { return nil }
            descriptors[Self.unescape(String(entry[entry.index(after: equals)...]))] = fd
        }
        self.descriptors = descriptors
    }

    /// The listeners this process inherited, read from (and removed from) the environment, so that processes it
    /// starts do not see descriptors they do not have. Nil when there are none; a malformed value is ignored.
    public static func takeFromEnvironment() -> InheritedListeners? {
        guard let value = getenv(ProcessEnvironmentKeys.listeners).map({ String(cString: $0) }) else { return nil }
        unsetenv(ProcessEnvironmentKeys.listeners)
        guard let listeners = InheritedListeners(environmentValue: value) else { return nil }
        for fd in listeners.descriptors.values { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return listeners
    }

    private static func escape(_ text: String) -> String {
        var result = ""
        for character in text {
            switch character {
            case "%": result += "%25"
            case ";": result += "%3B"
            default: result.append(character)
            }
        }
        return result
    }

    private static func unescape(_ text: String) -> String {
        var result = ""
        var rest = Substring(text)
        while let first = rest.first {
            if rest.hasPrefix("%25") {
                result += "%"
                rest = rest.dropFirst(3)
            } else if rest.hasPrefix("%3B") {
                result += ";"
                rest = rest.dropFirst(3)
            } else {
                result.append(first)
                rest = rest.dropFirst()
            }
        }
        return result
    }
}

/// Who a worker process is, as its master told it in `KERNEL_WORKER`.
public struct WorkerIdentity: Sendable, Equatable {
    public var pool: String
    public var number: Int
    public var controlDescriptor: CInt

    public init(pool: String, number: Int, controlDescriptor: CInt) {
        self.pool = pool
        self.number = number
        self.controlDescriptor = controlDescriptor
    }

    public var environmentValue: String { "\(pool):\(number):\(controlDescriptor)" }

    public init?(environmentValue text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, let number = Int(parts[1]), number > 0, let fd = CInt(parts[2]), fd >= 0 else {
            return nil
        }
        self.init(pool: String(parts[0]), number: number, controlDescriptor: fd)
    }

    /// This process's identity when a master started it as a worker (removed from the environment).
    public static func takeFromEnvironment() -> WorkerIdentity? {
        guard let value = getenv(ProcessEnvironmentKeys.worker).map({ String(cString: $0) }) else { return nil }
        unsetenv(ProcessEnvironmentKeys.worker)
        guard let identity = WorkerIdentity(environmentValue: value) else { return nil }
        _ = fcntl(identity.controlDescriptor, F_SETFD, FD_CLOEXEC)
        return identity
    }
}
