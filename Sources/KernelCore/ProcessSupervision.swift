import Logging
import NIOConcurrencyHelpers
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// What the rest of the kernel may ask of the process group it runs in: which worker this is, to be replaced
/// (recycling, harakiri), the answers of every process to a named query (metrics, stats and the status page
/// aggregate across workers this way), and the table of worker processes.
///
/// A single process (`processes: 0`) has `StandaloneSupervision`; worker processes started by a master have an
/// implementation that talks to the master over the control channel it inherited.
public protocol ProcessSupervision: Sendable {
    /// This worker's number, 1-based; 0 for the single process of `processes: 0`; -1 in a master.
    var workerNumber: Int { get }
    /// Whether a master starts a replacement when this process asks for one or dies.
    var isSupervised: Bool { get }
    /// Asks the master to replace this worker (max_requests, reload_on_rss, harakiri ...). Returns at once. The
    /// master starts a new worker and, once that one serves, sends this one a graceful stop (SIGQUIT), which it
    /// must finish within `worker_reload_mercy`. Asking again while a replacement is under way does nothing.
    func requestReplacement(reason: String)
    /// Runs the query named `query` in every live process of the group that has a responder for it (the master
    /// included) and returns their answers; a process that does not answer within `timeout` is left out.
    func gather(_ query: String, timeout: TimeAmount) async -> [ProcessAnswer]
    /// The worker processes of the group as the master sees them (one entry, this process, when standalone).
    func workers() async -> [WorkerProcessInfo]
    /// Runs `command` (a command query: its name, a space, its argument; see `ProcessQueryRegistry.registerCommand`)
    /// in every live process of this process's configuration generation, as `gather` runs a query, and has the master
    /// remember it under `key` as `memory` says (after the commands shared under that key before it, instead of
    /// them, or not at all): a worker of the same generation started later (a respawn, a recycle) runs the
    /// remembered commands in order before it serves (`replaySharedCommands`), so that state changed at run time (a
    /// model loaded through the API) is the same in every worker. The master delivers shared commands one after
    /// the other, so every process runs them in the same order. A reload starts a generation with nothing
    /// remembered.
    func share(_ command: String, key: String, memory: SharedCommandMemory, timeout: TimeAmount) async -> [ProcessAnswer]
    /// Runs in this process, oldest first, the commands its generation's workers shared before it could receive
    /// them, until none is left; from then on it receives every new one. `KernelServer` calls it once the
    /// services have started and before the listeners open.
    func replaySharedCommands() async
}

/// How the master remembers a shared command for the worker processes that start after it (`ProcessSupervision.share`).
public enum SharedCommandMemory: UInt8, Sendable {
    /// After the commands shared under its key before it (loads of one model, each on top of the last).
    case after = 0
    /// Instead of them (a setting's new value, an unload).
    case instead = 1
    /// Not at all, and the key's earlier commands are forgotten: a process that runs none of them is in the state
    /// this command leaves (an unregister undoes the register before it).
    case forgetting = 2

    /// The value a control frame carries; an unknown one is read as `after`, which loses nothing.
    public static func read(_ value: UInt8) -> SharedCommandMemory { SharedCommandMemory(rawValue: value) ?? .after }
}

/// Limits of what processes send each other.
public enum ProcessSharing {
    /// The longest command `share` carries (a control frame holds it, with room for its other fields).
    public static let maximumCommandLength = 60 << 20
}

/// One process's answer to a gathered query.
public struct ProcessAnswer: Sendable {
    /// Who answered.
    public enum Source: Sendable, Hashable {
        case master
        /// A worker by its number (0 for the single process of `processes: 0`).
        case worker(Int)
    }

    public var source: Source
    public var pid: Int32
    /// What the responder returned; its format belongs to whoever registered the query.
    public var body: [UInt8]

    public init(source: Source, pid: Int32, body: [UInt8]) {
        self.source = source
        self.pid = pid
        self.body = body
    }
}

/// A worker process as the master sees it.
public struct WorkerProcessInfo: Sendable, Codable, Equatable {
    /// The worker's number in its pool, 1-based (0 for the single process of `processes: 0`).
    public var number: Int
    public var pid: Int32
    /// The pool the worker belongs to (its role name when the master runs several pools).
    public var pool: String
    /// When the current process of this slot was started, in seconds since the epoch.
    public var spawnedAt: Double
    /// How many times this slot's process has been started again (after a death or a recycle).
    public var respawns: Int
    /// `starting`, `serving` or `draining`.
    public var state: String

    public init(number: Int, pid: Int32, pool: String, spawnedAt: Double, respawns: Int, state: String) {
        self.number = number
        self.pid = pid
        self.pool = pool
        self.spawnedAt = spawnedAt
        self.respawns = respawns
        self.state = state
    }
}

/// Produces this process's answer to a named query.
public typealias ProcessQueryResponder = @Sendable () async -> [UInt8]

/// Produces this process's answer to a command query (a name and an argument): the argument is what follows the
/// name's space.
public typealias ProcessCommandResponder = @Sendable (_ argument: Substring) async -> [UInt8]

/// The responders this process has for gathered queries, by name. A module registers its responder when it loads
/// (again on each reload: the newest registration of a name wins).
public final class ProcessQueryRegistry: Sendable {
    private let responders = NIOLockedValueBox<[String: ProcessQueryResponder]>([:])
    private let commands = NIOLockedValueBox<[String: ProcessCommandResponder]>([:])

    public init() {}

    /// Sets the responder for `query`, replacing an earlier one.
    public func register(_ query: String, _ responder: @escaping ProcessQueryResponder) {
        responders.withLockedValue { $0[query] = responder }
    }

    /// The names of the queries registered that start with `prefix`, sorted.
    public func queryNames(withPrefix prefix: String) -> [String] {
        responders.withLockedValue { $0.keys.filter { $0.hasPrefix(prefix) } }.sorted()
    }

    /// The responder for `query`, if any.
    public func responder(for query: String) -> ProcessQueryResponder? {
        responders.withLockedValue { $0[query] }
    }

    /// Sets the responder for the command queries named `name` (`"<name> <argument>"`), replacing an earlier one.
    /// `name` has no space.
    public func registerCommand(_ name: String, _ responder: @escaping ProcessCommandResponder) {
        precondition(!name.contains(" "), "a command name has no space")
        commands.withLockedValue { $0[name] = responder }
    }

    /// Runs the responder for `query` in this process: a query's by its whole text, else a command's by the text
    /// before the first space, given the rest. Nil when there is none.
    public func answer(_ query: String) async -> [UInt8]? {
        if let responder = responder(for: query) { return await responder() }
        guard let space = query.firstIndex(of: " ") else { return nil }
        let name = String(query[..<space])
        guard let command = commands.withLockedValue({ $0[name] }) else { return nil }
        return await command(query[query.index(after: space)...])
    }
}

/// The supervision of a process that runs alone (`processes: 0`): it is the only worker, nobody replaces it, and a
/// gathered query is answered by this process only.
public final class StandaloneSupervision: ProcessSupervision {
    private let queries: ProcessQueryRegistry
    private let logger: Logger
    private let startedAt: Double

    public init(queries: ProcessQueryRegistry, logger: Logger) {
        self.queries = queries
        self.logger = logger
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        startedAt = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    public var workerNumber: Int { 0 }
    public var isSupervised: Bool { false }

    public func requestReplacement(reason: String) {
        // With no master there is nobody to start the replacement; stopping would end the service.
        logger.warning("worker replacement asked for (\(reason)), but the kernel runs as one process (kernel.processes: 0): it keeps running")
    }

    public func gather(_ query: String, timeout: TimeAmount) async -> [ProcessAnswer] {
        guard let body = await queries.answer(query) else { return [] }
        return [ProcessAnswer(source: .worker(0), pid: getpid(), body: body)]
    }

    /// The one process runs the command; nothing is remembered, since no worker starts after it (a reload starts
    /// a new generation, which remembers nothing either).
    public func share(_ command: String, key: String, memory: SharedCommandMemory, timeout: TimeAmount) async -> [ProcessAnswer] {
        await gather(command, timeout: timeout)
    }

    public func replaySharedCommands() async {}

    public func workers() async -> [WorkerProcessInfo] {
        [WorkerProcessInfo(number: 0, pid: getpid(), pool: "main", spawnedAt: startedAt, respawns: 0, state: "serving")]
    }
}

/// Whether this process is on its way out: set when a stop begins (SIGTERM with `shutdown_delay`, SIGQUIT, a
/// recycle), before it stops accepting, so readiness endpoints (`/healthz`, `/v2/health/ready`) turn false first
/// and load balancers and Kubernetes take the process out of rotation while it still serves.
public final class StoppingFlag: Sendable {
    private let value = NIOLockedValueBox(false)

    public init() {}

    /// True once a stop has begun.
    public var isStopping: Bool { value.withLockedValue { $0 } }

    /// Marks the process as stopping; it never turns back.
    public func markStopping() { value.withLockedValue { $0 = true } }
}
