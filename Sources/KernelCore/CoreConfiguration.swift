import KernelConfig
import NIOCore
import Logging

/// The `kernel:` section: process-wide settings owned by the core.
public struct CoreConfiguration: Sendable {
    /// Event-loop threads (nginx `worker_processes`); `auto` is one per core.
    public var eventLoopThreads: Int
    /// The pid file `kernel -s SIGNAL` reads (nginx `pid`).
    public var pidFile: String
    /// Where the error log goes (`stderr` or a path) and its minimum level.
    public var errorLogPath: String
    public var errorLogLevel: Logger.Level
    /// How long a graceful stop (`-s quit`) waits for open requests (nginx `worker_shutdown_timeout`).
    public var shutdownTimeout: ConfigDuration
    /// The soft limit on open files (nginx `worker_rlimit_nofile`); nil raises it to the hard limit.
    public var openFileLimit: Int?

    // MARK: Processes (master and worker processes)
    /// `processes` (nginx `worker_processes`, uWSGI `workers`): one process (`.single`, the default) or a master that
    /// runs pools of worker processes.
    public var processes: ProcessPlan = .single
    /// `lazy`: whether the workers of a start or reload load their models all at once (true, uWSGI's lazy-apps)
    /// or one after another, the next starting once the previous serves (false).
    public var lazy: Bool = true
    /// `worker_reload_mercy` (uWSGI's name): how long a worker being replaced may take to finish its requests
    /// before the master kills it.
    public var workerReloadMercy: ConfigDuration = .seconds(60)
    /// `shutdown_delay`: how long SIGTERM keeps the process serving, reported not ready, before it drains.
    public var shutdownDelay: ConfigDuration = ConfigDuration(milliseconds: 0)

    public static let key = "kernel"

    /// Where request bodies are spooled when a location sets no `client_body_temp_path`: `client_body_temp`
    /// beside the pid file (the kernel's run directory, as nginx keeps it under its prefix).
    public var defaultClientBodyTempPath: String {
        ConfigPath.directory(of: pidFile) + "/client_body_temp"
    }

    public init(eventLoopThreads: Int = System.coreCount, pidFile: String = "/run/kernel.pid",
                errorLogPath: String = "stderr", errorLogLevel: Logger.Level = .notice,
                shutdownTimeout: ConfigDuration = .seconds(30)) {
        self.eventLoopThreads = eventLoopThreads
        self.pidFile = pidFile
        self.errorLogPath = errorLogPath
        self.errorLogLevel = errorLogLevel
        self.shutdownTimeout = shutdownTimeout
    }

    /// Decodes `kernel:`; absent means defaults. Relative paths resolve against `directory`.
    public static func decode(_ value: ConfigValue?, directory: String) throws -> CoreConfiguration {
        var configuration = CoreConfiguration()
        guard let value else { return configuration }
        let mapping = try value.mapping()
        if let threads = mapping.optional("event_loop_threads") {
            if threads.node.scalarText == "auto" {
                configuration.eventLoopThreads = System.coreCount
            } else {
                configuration.eventLoopThreads = try threads.int(in: 1...1024, what: "auto or a thread count 1-1024")
            }
        }
        if let pid = mapping.optional("pid") {
            configuration.pidFile = ConfigPath.resolve(try pid.nonEmptyString(), in: directory)
        }
        if let log = mapping.optional("error_log") {
            let fields = try log.mapping()
            if let path = fields.optional("path") {
                let text = try path.nonEmptyString()
                configuration.errorLogPath = text == "stderr" || text == "stdout" ? text : ConfigPath.resolve(text, in: directory)
            }
            if let level = fields.optional("level") {
                let name = try level.oneOf(["debug", "info", "notice", "warn", "error", "crit", "alert", "emerg"])
                configuration.errorLogLevel = ErrorLogHandler.level(named: name)!
            }
            try fields.finish()
        }
        if let timeout = mapping.optional("shutdown_timeout") {
            configuration.shutdownTimeout = try timeout.duration()
        }
        if let limit = mapping.optional("worker_rlimit_nofile") {
            configuration.openFileLimit = try limit.int(in: 1...Int(Int32.max), what: "a number of files 1-\(Int32.max)")
        }
        try decodeProcesses(mapping, directory: directory, into: &configuration)
        try mapping.finish()
        return configuration
    }
}


// MARK: Processes (master and worker processes)

/// What `kernel.processes` asks for.
public enum ProcessPlan: Sendable, Equatable {
    /// `0` (or absent): one process serves, as the kernel always has.
    case single
    /// A master process that supervises these pools of worker processes.
    case pools([WorkerPool])

    /// The pools of a master; empty for `.single`.
    public var pools: [WorkerPool] {
        if case .pools(let pools) = self { return pools }
        return []
    }
}

/// One pool of identical worker processes: its name (the role's, or `main`), the role its workers run, how many,
/// and which of the role's listeners they accept on.
public struct WorkerPool: Sendable, Equatable {
    public var name: String
    /// The role of the workers; nil for `processes: N`, whose workers run the role given with `--role`.
    public var role: KernelRole?
    public var count: Int
    /// The listeners the pool's workers get, each a protocol name (`http`, `uwsgi`) or an address as written in
    /// a `listen` (`127.0.0.1:8080`, `unix:/run/kernel.sock`); nil: every listener of the role.
    public var listen: [String]?
    /// The configuration file the pool's workers run (resolved); nil: the master's own file.
    public var configurationFile: String?
    /// Where the pool is configured, for errors about its `listen`.
    public var mark: SourceMark?

    public init(name: String, role: KernelRole?, count: Int, listen: [String]? = nil, configurationFile: String? = nil,
                mark: SourceMark? = nil) {
        self.name = name
        self.role = role
        self.count = count
        self.listen = listen
        self.configurationFile = configurationFile
        self.mark = mark
    }

    /// Whether the pool's workers get the listener `spec`.
    public func takes(_ spec: ListenerSpec) -> Bool {
        guard let listen else { return true }
        return listen.contains { entry in
            entry == spec.protocolName || entry == spec.identity || ListenAddress(parsing: entry) == spec.address
        }
    }
}

extension CoreConfiguration {
    /// The names `processes` goes by: nginx's `worker_processes` and uWSGI's `workers` mean the same here.
    static let processesKeys = ["processes", "worker_processes", "workers"]

    /// `processes: auto|N|0` or pools, `processes: {edge: N, worker: {count: N, listen: [uwsgi], config: FILE}}`; `lazy`,
    /// `worker_reload_mercy`, `shutdown_delay`.
    static func decodeProcesses(_ mapping: ConfigMapping, directory: String, into configuration: inout CoreConfiguration) throws {
        let given = processesKeys.compactMap { key in mapping.optional(key).map { (key, $0) } }
        if given.count > 1 {
            throw given[1].1.error("\(given[0].0) and \(given[1].0) are the same setting: give one")
        }
        if let (_, value) = given.first {
            if case .mapping = value.node {
                let pools = try value.mapping()
                var list: [WorkerPool] = []
                for role in KernelRole.allCases {
                    guard let pool = pools.optional(role.rawValue) else { continue }
                    var number: Int
                    var listen: [String]?
                    var file: String?
                    if case .mapping = pool.node {
                        let fields = try pool.mapping()
                        number = try processCount(try fields.required("count"), allowZero: true)
                        if let selection = fields.optional("listen") {
                            listen = try selection.list(allowScalar: true).map { try $0.nonEmptyString() }
                        }
                        if let config = fields.optional("config") {
                            file = ConfigPath.resolve(try config.nonEmptyString(), in: directory)
                        }
                        try fields.finish()
                    } else {
                        number = try processCount(pool, allowZero: true)
                    }
                    if number > 0 {
                        list.append(WorkerPool(name: role.rawValue, role: role, count: number, listen: listen,
                                               configurationFile: file, mark: pool.mark))
                    }
                }
                try pools.finish()
                guard !list.isEmpty else { throw value.error("no pool has a worker process: give edge, worker or both a count") }
                configuration.processes = .pools(list)
            } else {
                let count = try processCount(value, allowZero: true)
                configuration.processes = count == 0 ? .single : .pools([WorkerPool(name: "main", role: nil, count: count)])
            }
        }
        if let lazy = mapping.optional("lazy") {
            configuration.lazy = try lazy.bool()
        }
        if let mercy = mapping.optional("worker_reload_mercy") {
            configuration.workerReloadMercy = try mercy.duration()
        }
        if let delay = mapping.optional("shutdown_delay") {
            configuration.shutdownDelay = try delay.duration()
        }
    }

    private static func processCount(_ value: ConfigValue, allowZero: Bool) throws -> Int {
        if value.node.scalarText == "auto" { return System.coreCount }
        return try value.int(in: (allowZero ? 0 : 1)...1024, what: "auto or a number of processes 0-1024")
    }
}
