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

    // Recycling, watchdogs, listen queues and the stats server (WorkerRecycling.swift, Harakiri.swift,
    // ListenQueue.swift, StatsServer.swift).
    /// `harakiri`, `max_requests`, `max_worker_lifetime`, `reload_on_rss`.
    public var recycling = RecyclingConfiguration()
    /// The accept queue length of every listener that sets no `backlog` of its own (uWSGI `listen`).
    public var listenBacklog: Int32 = CoreConfiguration.defaultListenBacklog
    public static let defaultListenBacklog: Int32 = 1024
    /// Where the stats server listens (uWSGI `stats`), nil for none.
    public var stats: ListenAddress?

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
        configuration.recycling = try RecyclingConfiguration.decode(from: mapping)
        if let backlog = mapping.optional("listen_backlog") {
            configuration.listenBacklog = Int32(try backlog.int(in: 1...65535, what: "an integer 1-65535"))
        }
        if let stats = mapping.optional("stats") {
            let text = try stats.nonEmptyString()
            guard let address = ListenAddress(parsing: text) else {
                throw stats.expected("an address such as 127.0.0.1:9191 or unix:/run/kernel-stats.sock")
            }
            if case .unix(let path) = address {
                configuration.stats = .unix(path: ConfigPath.resolve(path, in: directory))
            } else {
                configuration.stats = address
            }
        }
        try mapping.finish()
        return configuration
    }
}

