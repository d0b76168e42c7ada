import KernelConfig
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle
import UnixSignals
#if canImport(Glibc)
import Glibc
#endif

/// The running kernel: starts the first generation, reloads on SIGHUP, reopens logs on SIGUSR1, and drains on a
/// graceful shutdown (SIGQUIT) or closes at once on cancellation (SIGTERM, SIGINT), as nginx does.
///
/// Run by a swift-service-lifecycle `ServiceGroup`, which traps SIGQUIT, SIGTERM and SIGINT before `run` starts:
/// the first generation starts inside `run`, so a stop asked for while models load (the pid file is already
/// written) is handled rather than left to the signal's default action. Order of start: pid file, services of the
/// generation (models load and warm up), then listeners. Order of stop: listeners stop accepting, connections
/// drain, services stop in reverse, the pid file goes.
public final class KernelServer: Service, Sendable {
    public let runtime: KernelRuntime
    public let loader: ConfigurationLoader
    public let configurationFile: String
    public let listeners: ListenerManager
    private let generationCounter = GenerationCounter()
    private let firstGeneration: KernelGeneration?
    private let failure = NIOLockedValueBox<(any Error)?>(nil)

    /// `firstGeneration`, when given, is started by `run`.
    public init(runtime: KernelRuntime, loader: ConfigurationLoader, configurationFile: String,
                firstGeneration: KernelGeneration? = nil) {
        self.runtime = runtime
        self.loader = loader
        self.configurationFile = configurationFile
        self.firstGeneration = firstGeneration
        listeners = ListenerManager(runtime: runtime)
    }

    /// Why the first generation did not start, once `run` has returned; nil when it started (or was stopped while
    /// starting, which is not a failure).
    public var startupFailure: (any Error)? { failure.withLockedValue { $0 } }

    /// Whether a stop (graceful or fast) has been asked for.
    private var stopRequested: Bool { Task.isCancelled || Task.isShuttingDownGracefully }

    /// Starts the first configuration: pid file, services (models load), listeners. Throws when any step fails,
    /// having undone the steps before it. Returns false, with everything undone, when a stop was asked for while the
    /// services started: the listeners are then never opened.
    @discardableResult
    public func start(_ generation: KernelGeneration) async throws -> Bool {
        OpenFileLimit.apply(generation.core.openFileLimit, logger: runtime.logger)
        try writePidFile(generation.core.pidFile)
        do {
            try await generation.startServices(logger: runtime.logger)
        } catch {
            unlink(generation.core.pidFile)
            if stopRequested {
                runtime.logger.notice("stopped while starting: \(error)")
                runtime.logger.notice("exiting")
                return false
            }
            throw error
        }
        if stopRequested {
            runtime.logger.notice(Task.isCancelled ? "fast shutdown while starting" : "graceful shutdown while starting")
            await generation.stopServices(fast: Task.isCancelled)
            unlink(generation.core.pidFile)
            runtime.logger.notice("exiting")
            return false
        }
        _ = runtime.makeCurrent(generation)
        do {
            let (opened, _) = try await listeners.apply(generation.listeners)
            await listeners.activate(opened)
        } catch {
            await generation.stopServices()
            unlink(generation.core.pidFile)
            throw error
        }
        runtime.logger.notice("kernel started: role \(loader.role), modules [\(generation.activeModules.joined(separator: ", "))], \(generation.core.eventLoopThreads) event-loop thread(s), pid \(getpid())")
        SystemdNotify.ready(logger: runtime.logger)
        return true
    }

    public func run() async throws {
        // Trapped before the first generation starts, so that a reload or reopen asked for while models load waits
        // for the start (SIGHUP's default action would end the process).
        let signals = await UnixSignalsSequence(trapping: .sighup, .sigusr1)
        if let firstGeneration {
            do {
                guard try await start(firstGeneration) else { return }
            } catch {
                failure.withLockedValue { $0 = error }
                return
            }
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await signal in signals {
                    switch signal {
                    case .sighup: await self.reload()
                    case .sigusr1: self.reopenLogs()
                    default: break
                    }
                }
            }
            var graceful = true
            do {
                try await gracefulShutdown()
            } catch {
                graceful = false  // cancelled: fast stop
            }
            group.cancelAll()
            await self.stop(graceful: graceful)
        }
    }

    /// Re-reads the configuration file; on any error the running configuration stays and the error is logged.
    public func reload() async {
        let logger = runtime.logger
        SystemdNotify.reloading(logger: logger); defer { SystemdNotify.ready(logger: logger) }
        logger.notice("reloading configuration \(configurationFile)")
        let generation: KernelGeneration
        runtime.logFiles.markUse()
        do {
            generation = try loader.load(file: configurationFile, runtime: runtime, mode: .run, number: generationCounter.next())
        } catch {
            logger.error("reload failed, keeping the running configuration: \(error)")
            return
        }
        do {
            try await generation.startServices(logger: logger)
        } catch {
            logger.error("reload failed, keeping the running configuration: \(error)")
            return
        }
        let opened: [BoundListener], removed: [BoundListener]
        do {
            (opened, removed) = try await listeners.apply(generation.listeners)
        } catch {
            logger.error("reload failed, keeping the running configuration: \(error)")
            await generation.stopServices()
            return
        }
        if let old = runtime.currentGeneration, old.core.eventLoopThreads != generation.core.eventLoopThreads {
            logger.warning("kernel.event_loop_threads changed: takes effect after a restart")
        }
        applyErrorLog(generation.core)
        OpenFileLimit.apply(generation.core.openFileLimit, logger: logger)
        let previous = runtime.makeCurrent(generation)
        await listeners.activate(opened)
        await listeners.retire(removed)
        // Log files the new configuration no longer names close once the old generation's last request is done.
        runtime.logFiles.dropUnused()
        if let previous {
            previous.retire {
                Task { await previous.stopServices() }
            }
        }
        logger.notice("configuration reloaded (generation \(generation.number))")
    }

    /// Reopens the error log and every access log (after log rotation).
    public func reopenLogs() {
        let failures = runtime.logFiles.reopenAll()
        for failure in failures { runtime.logger.error("reopen: \(failure)") }
        runtime.logger.notice("log files reopened")
    }

    private func stop(graceful: Bool) async {
        SystemdNotify.stopping(logger: runtime.logger)
        let generation = runtime.currentGeneration
        let timeout = graceful ? TimeAmount.milliseconds(generation?.core.shutdownTimeout.milliseconds ?? 30_000) : .zero
        runtime.logger.notice(graceful ? "graceful shutdown: draining connections" : "fast shutdown")
        await listeners.shutdown(timeout: timeout)
        await generation?.stopServices(fast: !graceful)
        if let pid = generation?.core.pidFile { unlink(pid) }
        runtime.logger.notice("exiting")
    }

    private func applyErrorLog(_ core: CoreConfiguration) {
        do {
            runtime.errorLog.update(file: try runtime.logFiles.file(core.errorLogPath), level: core.errorLogLevel)
        } catch {
            runtime.logger.error("\(error)")
        }
    }

    private func writePidFile(_ path: String) throws {
        let text = "\(getpid())\n"
        do {
            try ParentDirectories.create(for: path)
        } catch {
            throw ListenerError("cannot write pid file \"\(path)\": \(error)")
        }
        guard let file = fopen(path, "w") else {
            throw ListenerError("cannot write pid file \"\(path)\": \(String(cString: strerror(errno)))")
        }
        fputs(text, file)
        fclose(file)
    }
}

/// `kernel.worker_rlimit_nofile`: the soft `RLIMIT_NOFILE` the process runs with. Each connection (and each
/// connection to an upstream) holds a descriptor, and the soft limit a shell hands down is often 1024.
enum OpenFileLimit {
    private static let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)

    /// Sets the soft limit to `configured`, or raises it to the hard limit when nil, and logs the figure.
    /// A limit that cannot be set is logged in nginx's words and the process goes on with the one it has.
    static func apply(_ configured: Int?, logger: Logger) {
        var limit = rlimit()
        guard getrlimit(resource, &limit) == 0 else {
            logger.critical("getrlimit(RLIMIT_NOFILE) failed (\(errno): \(String(cString: strerror(errno))))")
            return
        }
        let before = limit.rlim_cur
        let wanted = configured.map { rlim_t($0) } ?? limit.rlim_max
        if wanted == before {
            logger.info("RLIMIT_NOFILE: \(before) open files (hard limit \(limit.rlim_max))")
            return
        }
        limit.rlim_cur = wanted
        // Above the hard limit only a privileged process can go; it then raises both, as nginx sets both.
        if wanted > limit.rlim_max { limit.rlim_max = wanted }
        guard setrlimit(resource, &limit) == 0 else {
            logger.critical("setrlimit(RLIMIT_NOFILE, \(wanted)) failed (\(errno): \(String(cString: strerror(errno)))), keeping \(before)")
            return
        }
        logger.info("RLIMIT_NOFILE: \(wanted) open files (was \(before), hard limit \(limit.rlim_max))")
    }
}

/// Numbers the configuration generations (the first is 1).
final class GenerationCounter: Sendable {
    private let value = NIOLockedValueBox(1)
    func next() -> Int { value.withLockedValue { $0 += 1; return $0 } }
}
