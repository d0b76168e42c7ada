import Atomics
import KernelConfig
import Logging
import NIOConcurrencyHelpers
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// uWSGI's recycling and watchdog options in the `kernel:` section: `harakiri`, `max_requests`,
/// `max_worker_lifetime`, `reload_on_rss`. Each is off when absent.
public struct RecyclingConfiguration: Sendable, Equatable {
    /// A request whose handler has not answered this long after its body was read is answered 504 and its worker
    /// replaced (uWSGI `harakiri`; a bare number is seconds).
    public var harakiri: ConfigDuration?
    /// A worker is replaced after this many requests (uWSGI `max-requests`).
    public var maxRequests: Int?
    /// A worker is replaced once it has run this long (uWSGI `max-worker-lifetime`).
    public var maxWorkerLifetime: ConfigDuration?
    /// A worker is replaced when its resident memory reaches this after a request (uWSGI `reload-on-rss`; a bare
    /// number is megabytes, as uWSGI reads it).
    public var reloadOnRSS: ByteSize?

    public init(harakiri: ConfigDuration? = nil, maxRequests: Int? = nil, maxWorkerLifetime: ConfigDuration? = nil,
                reloadOnRSS: ByteSize? = nil) {
        self.harakiri = harakiri
        self.maxRequests = maxRequests
        self.maxWorkerLifetime = maxWorkerLifetime
        self.reloadOnRSS = reloadOnRSS
    }

    /// Reads the four keys from the `kernel:` mapping (the caller finishes the mapping).
    static func decode(from mapping: ConfigMapping) throws -> RecyclingConfiguration {
        var configuration = RecyclingConfiguration()
        if let value = mapping.optional("harakiri") {
            configuration.harakiri = try positiveDuration(value)
        }
        if let value = mapping.optional("max_requests") {
            configuration.maxRequests = try value.int(in: 1...Int(Int32.max), what: "a number of requests 1-\(Int32.max)")
        }
        if let value = mapping.optional("max_worker_lifetime") {
            configuration.maxWorkerLifetime = try positiveDuration(value)
        }
        if let value = mapping.optional("reload_on_rss") {
            if let megabytes = Int(value.node.scalarText ?? "") {
                guard megabytes > 0, megabytes < 1 << 40 else { throw value.expected("a size such as 200m, or megabytes") }
                configuration.reloadOnRSS = ByteSize(bytes: megabytes << 20)
            } else {
                let size = try value.size()
                guard size.bytes > 0 else { throw value.expected("a size such as 200m, or megabytes") }
                configuration.reloadOnRSS = size
            }
        }
        return configuration
    }

    private static func positiveDuration(_ value: ConfigValue) throws -> ConfigDuration {
        let duration = try value.duration()
        guard duration.milliseconds > 0 else { throw value.expected("a duration above zero, such as 30s") }
        return duration
    }
}

/// This process's request figures, for the stats server's worker object and the recycling checks, counted in
/// `RequestExchange.finish`. Each thread counts into its own cell (found through a thread-specific variable), so
/// the event loops never contend for a cache line on the request path; a reading sums the cells.
public final class WorkerRequestCounters: Sendable {
    /// One thread's counts: written by that thread only, read by whoever sums them.
    private final class Cell: Sendable {
        let requests = ManagedAtomic<Int>(0)
        let bytesSent = ManagedAtomic<Int>(0)
        /// Requests answered 500 (a handler that failed: uWSGI's `exceptions`).
        let failures = ManagedAtomic<Int>(0)
        /// Time spent in timed requests, and how many were timed (only those whose start was read: see
        /// `RequestExchange`), for uWSGI's `running_time` and `avg_rt`.
        let timedNanoseconds = ManagedAtomic<UInt64>(0)
        let timed = ManagedAtomic<Int>(0)
    }

    private let cells = NIOLockedValueBox<[Cell]>([])
    private let local = ThreadSpecificVariable<Cell>()
    private let harakiris = ManagedAtomic<Int>(0)
    /// The request count at the last stats answer, for `delta_requests`.
    private let requestsAtLastReport = ManagedAtomic<Int>(0)

    public init() {}

    private var cell: Cell {
        if let cell = local.currentValue { return cell }
        let cell = Cell()
        local.currentValue = cell
        cells.withLockedValue { $0.append(cell) }
        return cell
    }

    /// Counts one finished request.
    func finished(status: Int, bytesSent sent: Int, nanoseconds: UInt64?) {
        let cell = self.cell
        cell.requests.wrappingIncrement(ordering: .relaxed)
        if sent > 0 { cell.bytesSent.wrappingIncrement(by: sent, ordering: .relaxed) }
        if status == 500 { cell.failures.wrappingIncrement(ordering: .relaxed) }
        if let nanoseconds {
            cell.timedNanoseconds.wrappingIncrement(by: nanoseconds, ordering: .relaxed)
            cell.timed.wrappingIncrement(ordering: .relaxed)
        }
    }

    func harakiriHappened() { harakiris.wrappingIncrement(ordering: .relaxed) }

    /// The requests this process has finished.
    public var requests: Int { cells.withLockedValue { $0.reduce(0) { $0 + $1.requests.load(ordering: .relaxed) } } }

    /// The figures now.
    public var snapshot: Snapshot {
        let all = cells.withLockedValue { $0 }
        func sum(_ field: (Cell) -> ManagedAtomic<Int>) -> Int { all.reduce(0) { $0 + field($1).load(ordering: .relaxed) } }
        let count = sum(\.timed)
        let total = all.reduce(UInt64(0)) { $0 &+ $1.timedNanoseconds.load(ordering: .relaxed) }
        return Snapshot(requests: sum(\.requests), bytesSent: sum(\.bytesSent), failures: sum(\.failures),
                        harakiris: harakiris.load(ordering: .relaxed),
                        runningMicroseconds: total / 1000, averageMicroseconds: count == 0 ? 0 : total / 1000 / UInt64(count))
    }

    /// Requests since the previous call (uWSGI's `delta_requests`, reset at each stats report).
    func takeDelta() -> Int {
        let now = requests
        return now - requestsAtLastReport.exchange(now, ordering: .relaxed)
    }

    public struct Snapshot: Sendable, Equatable {
        public var requests: Int
        public var bytesSent: Int
        public var failures: Int
        public var harakiris: Int
        public var runningMicroseconds: UInt64
        public var averageMicroseconds: UInt64
    }
}

/// Asks for this worker's replacement when a recycling limit is reached (`max_requests`, `reload_on_rss` after a
/// request, `max_worker_lifetime` on the housekeeping tick, harakiri), logging the reason in uWSGI's words. The
/// master starts a new worker and drains this one; a worker asks once. A process without a master
/// (`processes: 0`) cannot be replaced: it logs each limit once, with the supervision's warning, and keeps serving.
public final class WorkerRecycler: Sendable {
    private let supervision: any ProcessSupervision
    private let logger: Logger
    /// The causes already logged (the first one asked for the replacement).
    private let causes = NIOLockedValueBox<Set<String>>([])
    /// When this process started (monotonic nanoseconds), for `max_worker_lifetime`.
    let startedAt = KernelClock.monotonicNanoseconds()

    init(supervision: any ProcessSupervision, logger: Logger) {
        self.supervision = supervision
        self.logger = logger
    }

    /// Whether this worker asked to be replaced (and so stops taking new work once the master drains it).
    public var isRecycling: Bool { supervision.isSupervised && !causes.withLockedValue { $0.isEmpty } }

    /// The checks made after each request, with the process's request count so far.
    func requestFinished(count: Int, limits: RecyclingConfiguration) {
        if let limit = limits.maxRequests, count >= limit {
            recycle(cause: "max_requests", detail: "max requests reached (\(count) >= \(limit))")
        }
        if let limit = limits.reloadOnRSS, let resident = ProcessMemory.residentBytes(), resident >= limit.bytes {
            recycle(cause: "reload_on_rss", detail: "reload-on-rss reached (\(resident) >= \(limit.bytes) bytes)")
        }
    }

    /// The periodic check of `max_worker_lifetime`.
    func tick(limits: RecyclingConfiguration, now: UInt64 = KernelClock.monotonicNanoseconds()) {
        guard let lifetime = limits.maxWorkerLifetime else { return }
        let ran = (now &- startedAt) / 1_000_000
        if ran >= UInt64(lifetime.milliseconds) {
            recycle(cause: "max_worker_lifetime",
                    detail: "worker \(supervision.workerNumber) lifetime reached, it was running for \(ran / 1000) second(s)")
        }
    }

    /// Logs `detail` and asks the master for a replacement: uWSGI's goodbye line, once per worker. `cause` is what
    /// the master counts (`harakiri`, or a recycle: `max_requests`, `reload_on_rss`, `max_worker_lifetime`).
    func recycle(cause: String, detail: String) {
        let (first, new) = causes.withLockedValue { causes -> (Bool, Bool) in
            let first = causes.isEmpty
            return (first, causes.insert(cause).inserted)
        }
        if supervision.isSupervised {
            guard first else { return }
            logger.notice("\(detail): ...The work of process \(getpid()) is done. Seeya!")
        } else {
            guard new else { return }
            logger.notice("\(detail)")
        }
        supervision.requestReplacement(reason: cause)
    }
}

/// The process's memory as `/proc/self/statm` gives it (what uWSGI's `reload-on-rss` reads after a request).
public enum ProcessMemory {
    private static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
    /// Kept open: each read is one `pread`, which the recycling check makes after every request.
    private static let statm: Int32 = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)

    /// Resident memory in bytes, nil where `/proc` is not there.
    public static func residentBytes() -> Int? { read()?.resident }

    /// Virtual size in bytes, nil where `/proc` is not there.
    public static func virtualBytes() -> Int? { read()?.virtual }

    /// (virtual, resident) in bytes from the first two fields of statm.
    static func read() -> (virtual: Int, resident: Int)? {
        guard statm >= 0 else { return nil }
        var bytes = [UInt8](repeating: 0, count: 128)
        let count = bytes.withUnsafeMutableBytes { pread(statm, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return nil }
        return parse(bytes[..<count])
    }

    /// `size resident shared ...` in pages.
    static func parse(_ text: ArraySlice<UInt8>) -> (virtual: Int, resident: Int)? {
        let fields = text.split(separator: UInt8(ascii: " "), maxSplits: 2)
        guard fields.count >= 2, let size = Int(String(decoding: fields[0], as: UTF8.self)),
              let resident = Int(String(decoding: fields[1], as: UTF8.self)) else { return nil }
        return (size * pageSize, resident * pageSize)
    }
}
