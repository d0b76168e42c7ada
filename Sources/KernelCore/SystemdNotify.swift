import Logging
#if canImport(Glibc)
import Glibc
#endif

/// systemd's readiness protocol (`sd_notify(3)`), for a `Type=notify` service: the process tells the service
/// manager when it is ready (its listeners are open), when a reload starts and ends, and when it stops, by sending
/// newline-separated `KEY=VALUE` lines in one datagram to the unix socket named by `$NOTIFY_SOCKET`.
///
/// Written here rather than linking libsystemd: the protocol is one datagram, and the binary stays free of a
/// library that containers do not have. Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.
///
/// Only the process systemd started (the master, or the single process of `processes: 0`) notifies: systemd takes
/// `STOPPING=1` from any process it accepts messages from for the service's own stop, so a worker process never
/// calls these, and a master best hands its workers an environment without `NOTIFY_SOCKET` (`environmentVariable`).
/// A new master started for a binary upgrade keeps it and announces itself with `MAINPID=` in its `READY=1` (the
/// unit then needs `NotifyAccess=all`).
public struct SystemdNotify: Sendable, Equatable {
    /// The environment variable systemd sets for a `Type=notify` service.
    public static let environmentVariable = "NOTIFY_SOCKET"

    /// One state of the notification protocol.
    public enum State: Sendable, Equatable {
        /// `READY=1`: start-up (or a reload) is finished and the service serves.
        case ready
        /// `RELOADING=1` with `MONOTONIC_USEC=` (the `CLOCK_MONOTONIC` time the reload started, in µs), which
        /// systemd 253 and later require to accept the reload; followed by `.ready` once it is over.
        case reloading(monotonicMicroseconds: UInt64)
        /// `STOPPING=1`: a stop has begun.
        case stopping
        /// `MAINPID=`: the pid systemd should watch as the service's main process.
        case mainPID(Int32)
        /// `STATUS=`: a one-line status text (`systemctl status` shows it); newlines are replaced by spaces.
        case status(String)

        /// The protocol's lines for this state.
        var lines: [String] {
            switch self {
            case .ready: return ["READY=1"]
            case .reloading(let microseconds): return ["RELOADING=1", "MONOTONIC_USEC=\(microseconds)"]
            case .stopping: return ["STOPPING=1"]
            case .mainPID(let pid): return ["MAINPID=\(pid)"]
            case .status(let text): return ["STATUS=" + String(text.map { $0.isNewline ? " " : $0 })]
            }
        }
    }

    /// A notification socket address that cannot be used.
    public struct AddressError: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    /// The socket, as systemd writes it: an absolute path, or `@name` for a name in the abstract namespace.
    public let socketAddress: String

    /// A notifier sending to `socketAddress`; throws when it is neither an absolute path nor `@name`, or does not
    /// fit a unix socket address.
    public init(socketAddress: String) throws {
        guard let first = socketAddress.utf8.first, first == UInt8(ascii: "/") || first == UInt8(ascii: "@") else {
            throw AddressError(description: "\(Self.environmentVariable) \"\(socketAddress)\" is neither an absolute path nor @name")
        }
        let capacity = MemoryLayout.size(ofValue: sockaddr_un().sun_path)
        // A path needs its terminating NUL inside sun_path; an abstract name does not.
        guard socketAddress.utf8.count + (first == UInt8(ascii: "/") ? 1 : 0) <= capacity, socketAddress.utf8.count > 1 else {
            throw AddressError(description: "\(Self.environmentVariable) \"\(socketAddress)\" does not fit a unix socket address")
        }
        self.socketAddress = socketAddress
    }

    /// The notifier of this process: `$NOTIFY_SOCKET` as it was when first asked for; nil when the process was not
    /// started by systemd as a notify service, or when the variable holds no usable address.
    public static let process: SystemdNotify? = {
        guard let value = getenv(environmentVariable).map({ String(cString: $0) }), !value.isEmpty else { return nil }
        return try? SystemdNotify(socketAddress: value)
    }()

    /// The datagram for `states`: their lines, newline-separated, as `sd_notify` takes them.
    public static func message(_ states: [State]) -> String {
        states.flatMap(\.lines).joined(separator: "\n")
    }

    /// `CLOCK_MONOTONIC` now, in microseconds: the clock `MONOTONIC_USEC=` is read against.
    public static func monotonicMicroseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1_000
    }

    /// Sends `states` in one datagram. Throws the system call's error (the socket gone, a full queue ...).
    public func send(_ states: [State]) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemCallError(call: "socket()", errno: errno) }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(socketAddress.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }  // the abstract namespace: a leading NUL, and no terminating one
        withUnsafeMutableBytes(of: &address.sun_path) { path in
            path.copyBytes(from: bytes)
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count + (abstract ? 0 : 1))
        var text = Self.message(states)
        let sent = text.withUTF8 { message in
            withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                    sendto(fd, message.baseAddress, message.count, Int32(MSG_NOSIGNAL), socketAddress, length)
                }
            }
        }
        guard sent >= 0 else { throw SystemCallError(call: "sendto() \"\(socketAddress)\"", errno: errno) }
    }

    /// A failed system call, in nginx's words: `sendto() "/run/systemd/notify" failed (111: Connection refused)`.
    public struct SystemCallError: Error, CustomStringConvertible {
        public var call: String
        public var errno: Int32
        public var description: String { "\(call) failed (\(errno): \(String(cString: strerror(errno))))" }
    }

    // The calls the lifecycle makes; each does nothing outside systemd and logs a failure at `alert` (read as
    // `crit`), since systemd then never learns the state and may time the service out.

    /// `READY=1` with `MAINPID=` this process: once the listeners are open, and at the end of every reload.
    public static func ready(logger: Logger) {
        notify([.ready, .mainPID(getpid())], logger: logger)
    }

    /// `RELOADING=1` with the monotonic time: as a reload begins; `ready` follows when it is over, whatever the
    /// outcome (a refused configuration leaves the running one serving).
    public static func reloading(logger: Logger) {
        notify([.reloading(monotonicMicroseconds: monotonicMicroseconds())], logger: logger)
    }

    /// `STOPPING=1`: as a stop (graceful or fast) begins.
    public static func stopping(logger: Logger) {
        notify([.stopping], logger: logger)
    }

    private static func notify(_ states: [State], logger: Logger) {
        guard let process else { return }
        do {
            try process.send(states)
        } catch {
            logger.critical("sd_notify: \(error)")
        }
    }
}
