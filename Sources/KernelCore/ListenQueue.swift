import Logging
import NIOConcurrencyHelpers
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// The listen backlog against the system's limit: Linux silently caps a `listen(2)` backlog at
/// `net.core.somaxconn`, so a larger one is logged at start instead of being believed.
public enum ListenBacklog {
    /// `/proc/sys/net/core/somaxconn`, nil where it cannot be read.
    public static func systemMaximum(path: String = "/proc/sys/net/core/somaxconn") -> Int? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var line = [UInt8](repeating: 0, count: 32)
        guard fgets(&line, Int32(line.count), file) != nil else { return nil }
        return Int(String(decoding: line.prefix { $0 != 0 }, as: UTF8.self).filter { $0.isNumber })
    }

    /// The warning for `backlog` when it is above `net.core.somaxconn`, nil when it is not.
    public static func cappedWarning(_ backlog: Int32, listener: String, maximum: Int? = systemMaximum()) -> String? {
        guard let maximum, Int(backlog) > maximum else { return nil }
        return "listen backlog \(backlog) of \(listener) is larger than net.core.somaxconn (\(maximum)): the system caps the accept queue at \(maximum) (raise it with sysctl net.core.somaxconn=\(backlog))"
    }

    /// Logs `cappedWarning` at `warn`.
    static func warnIfCapped(_ backlog: Int32, listener: String, logger: Logger, maximum: Int? = systemMaximum()) {
        if let warning = cappedWarning(backlog, listener: listener, maximum: maximum) { logger.warning("\(warning)") }
    }
}

/// The accept queues of this process's TCP listeners, sampled about once a second as uWSGI's master samples
/// `listen_queue`: on Linux `TCP_INFO` of a listening socket gives the connections waiting to be accepted
/// (`tcpi_unacked`) and the queue's length (`tcpi_sacked`, the backlog as capped). A full queue is logged in
/// uWSGI's words and counted: new connections are being dropped by the system (a classic cause of random 502s
/// behind a proxy). Unix sockets are not sampled (Linux gives no such figure for them).
public final class ListenQueueMonitor: Sendable {
    /// One listening socket's figures.
    public struct Socket: Sendable, Equatable {
        /// `http 127.0.0.1:8080`: protocol and bound address.
        public var name: String
        /// Connections waiting to be accepted at the last sample.
        public var queue: Int
        /// The accept queue's length (the backlog as the system applies it).
        public var maxQueue: Int
        /// Samples that found the queue full.
        public var overflows: Int

        /// The bound address alone (`127.0.0.1:8080`): the `listener` label, as `kernel_connections_open` has it.
        public var address: String { name.split(separator: " ", maxSplits: 1).last.map(String.init) ?? name }
    }

    private let sockets = NIOLockedValueBox<[String: Socket]>([:])
    private let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    /// The sockets sampled so far, by name.
    public var current: [Socket] { sockets.withLockedValue { Array($0.values) }.sorted { $0.name < $1.name } }

    /// The sum of the queues now (uWSGI's top-level `listen_queue`).
    public var totalQueue: Int { current.reduce(0) { $0 + $1.queue } }

    /// The sum of the overflows (uWSGI's `listen_queue_errors`).
    public var totalOverflows: Int { current.reduce(0) { $0 + $1.overflows } }

    /// A listening socket to sample: a server channel of this process, or a socket a worker inherited.
    enum Listening {
        case channel(protocolName: String, any Channel)
        case descriptor(protocolName: String, CInt)
    }

    /// Samples each TCP listening socket in `sockets`. `counting` is false for a look between the periodic samples
    /// (a stats request): the figures are refreshed, but a full queue is neither logged nor counted again.
    func sample(_ sockets: [Listening], counting: Bool = true) async {
        var seen: Set<String> = []
        for socket in sockets {
            let name: String
            let info: tcp_info
            switch socket {
            case .channel(let protocolName, let channel):
                guard let local = channel.localAddress, local.protocol != .unix,
                      let provider = channel as? any SocketOptionProvider,
                      let read = try? await provider.getTCPInfo().get() else { continue }
                name = "\(protocolName) \(describe(local))"
                info = read
            case .descriptor(let protocolName, let fd):
                guard let address = describeBoundSocket(fd), !address.hasPrefix("unix:"), let read = Self.tcpInfo(fd) else { continue }
                name = "\(protocolName) \(address)"
                info = read
            }
            seen.insert(name)
            record(name: name, queue: Int(info.tcpi_unacked), maxQueue: Int(info.tcpi_sacked), counting: counting)
        }
        self.sockets.withLockedValue { $0 = $0.filter { seen.contains($0.key) } }
    }

    /// `TCP_INFO` of a listening socket by descriptor.
    static func tcpInfo(_ fd: CInt) -> tcp_info? {
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(fd, CInt(IPPROTO_TCP), TCP_INFO, &info, &length) == 0 else { return nil }
        return info
    }

    /// Records one sample; a queue at its length (the system drops connections beyond it) is an overflow.
    func record(name: String, queue: Int, maxQueue: Int, counting: Bool = true) {
        let full = counting && maxQueue > 0 && queue >= maxQueue
        let overflows = sockets.withLockedValue { sockets -> Int in
            var socket = sockets[name] ?? Socket(name: name, queue: 0, maxQueue: maxQueue, overflows: 0)
            socket.queue = queue
            socket.maxQueue = maxQueue
            if full { socket.overflows += 1 }
            sockets[name] = socket
            return socket.overflows
        }
        if full {
            logger.error("*** listen queue of socket \"\(name)\" full !!! (\(queue)/\(maxQueue)) *** (\(overflows) time(s) so far: raise its backlog, or add workers)")
        }
    }

    /// `kernel_listen_queue{listener,worker}` and `kernel_listen_overflows_total{listener,worker}` in the Prometheus
    /// text format (0.0.4). Both carry the `worker` label: workers that share an inherited socket each see its
    /// whole queue, so their samples must not sum.
    public func metricsText(worker: Int) -> String {
        let sockets = current
        var text = "# HELP kernel_listen_queue Connections waiting in the accept queue of a listener at the last sample.\n"
        text += "# TYPE kernel_listen_queue gauge\n"
        for socket in sockets {
            text += "kernel_listen_queue{listener=\(Self.label(socket.address)),worker=\"\(worker)\"} \(socket.queue)\n"
        }
        text += "# HELP kernel_listen_overflows_total Samples that found the accept queue of a listener full.\n"
        text += "# TYPE kernel_listen_overflows_total counter\n"
        for socket in sockets {
            text += "kernel_listen_overflows_total{listener=\(Self.label(socket.address)),worker=\"\(worker)\"} \(socket.overflows)\n"
        }
        return text
    }

    /// A label value in the exposition format: quoted, with `\`, `"` and newlines escaped.
    static func label(_ value: String) -> String {
        var text = "\""
        for character in value {
            switch character {
            case "\\": text += "\\\\"
            case "\"": text += "\\\""
            case "\n": text += "\\n"
            default: text.append(character)
            }
        }
        return text + "\""
    }
}
