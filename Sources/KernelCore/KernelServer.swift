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
    /// Where the server runs: alone, or as one worker process of a master.
    public enum Placement: Sendable {
        /// The only process (`processes: 0`): it writes the pid file and binds its listeners.
        case standalone
        /// A worker process: the master holds the pid file and opened the listening sockets, which the worker
        /// inherited (by listener identity); `serving` is called once the worker accepts on them.
        case worker(inheritedListeners: [String: CInt], serving: @Sendable () -> Void)
    }

    public let runtime: KernelRuntime
    public let loader: ConfigurationLoader
    public let configurationFile: String
    public let listeners: ListenerManager
    /// Listen-queue sampling, `max_worker_lifetime` and the `"stats"` answer of this process.
    public let housekeeping: WorkerHousekeeping
    /// The stats server of a process that runs alone (a master starts its own).
    private let statsServer = NIOLockedValueBox<StatsServer?>(nil)
    private let generationCounter = GenerationCounter()
    private let firstGeneration: KernelGeneration?
    private let failure = NIOLockedValueBox<(any Error)?>(nil)
    private let placement: Placement
    private let trapsTermination: Bool

    /// `firstGeneration`, when given, is started by `run`. `trapsTermination`: SIGTERM is this server's to handle
    /// (the service group does not cancel on it), for `kernel.shutdown_delay`: it then reports not ready, serves
    /// for the delay and drains; without a delay it stops fast, as a cancellation does.
    public init(runtime: KernelRuntime, loader: ConfigurationLoader, configurationFile: String,
                firstGeneration: KernelGeneration? = nil, placement: Placement = .standalone,
                trapsTermination: Bool = false) {
        self.runtime = runtime
        self.loader = loader
        self.configurationFile = configurationFile
        self.firstGeneration = firstGeneration
        self.placement = placement
        self.trapsTermination = trapsTermination
        if case .worker(let inherited, _) = placement {
            listeners = ListenerManager(runtime: runtime, inherited: inherited)
        } else {
            listeners = ListenerManager(runtime: runtime)
        }
        runtime.listenerManager.set(listeners)
        housekeeping = WorkerHousekeeping(runtime: runtime, listeners: listeners)
    }

    private var isWorker: Bool {
        if case .worker = placement { return true }
        return false
    }

    /// The pid file this process writes and removes: none in a worker (the master's pid is the one signalled).
    private func ownPidFile(_ core: CoreConfiguration) -> String? {
        isWorker ? nil : core.pidFile
    }

    private func removePidFile(_ core: CoreConfiguration) {
        if let path = ownPidFile(core) { unlink(path) }
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
        if let path = ownPidFile(generation.core) { try PidFile.write(path) }
        do {
            try await generation.startServices(logger: runtime.logger)
        } catch {
            removePidFile(generation.core)
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
            removePidFile(generation.core)
            runtime.logger.notice("exiting")
            return false
        }
        // A respawned or recycled worker takes on what its siblings changed at run time (models loaded through
        // the API) before it serves.
        await runtime.supervision.replaySharedCommands()
        _ = runtime.makeCurrent(generation)
        do {
            let (opened, _) = try await listeners.apply(generation.listeners)
            try await startStatsServer(generation.core)
            await listeners.activate(opened)
        } catch {
            await listeners.shutdown(timeout: .zero)
            await generation.stopServices()
            removePidFile(generation.core)
            throw error
        }
        housekeeping.start()
        let modules = generation.activeModules.joined(separator: ", ")
        if case .worker(_, let serving) = placement {
            // "kernel started" is the master's line, once all its workers serve.
            runtime.logger.notice("worker process \(runtime.supervision.workerNumber) started: role \(loader.role), modules [\(modules)], \(generation.core.eventLoopThreads) event-loop thread(s), pid \(getpid())")
            serving()
        } else {
            runtime.logger.notice("kernel started: role \(loader.role), modules [\(modules)], \(generation.core.eventLoopThreads) event-loop thread(s), pid \(getpid())")
            SystemdNotify.ready(logger: runtime.logger)
        }
        return true
    }

    /// How the wait for a stop ended.
    private enum StopRequest {
        /// SIGQUIT (the service group's graceful shutdown): drain.
        case graceful
        /// SIGTERM, SIGINT (cancellation): close at once.
        case fast
        /// SIGTERM trapped for `shutdown_delay`: report not ready, serve for the delay, then drain.
        case delayed
    }

    public func run() async throws {
        // Trapped before the first generation starts, so that a reload or reopen asked for while models load waits
        // for the start (SIGHUP's default action would end the process).
        let signals = await UnixSignalsSequence(trapping: trapsTermination ? [.sighup, .sigusr1, .sigterm] : [.sighup, .sigusr1])
        if let firstGeneration {
            do {
                guard try await start(firstGeneration) else { return }
            } catch {
                failure.withLockedValue { $0 = error }
                return
            }
        }
        let request = await withTaskGroup(of: StopRequest?.self) { group in
            group.addTask {
                for await signal in signals {
                    switch signal {
                    case .sighup: await self.reload()
                    case .sigusr1: self.reopenLogs()
                    case .sigterm: return .delayed
                    default: break
                    }
                }
                return nil
            }
            group.addTask {
                do {
                    try await gracefulShutdown()
                    return .graceful
                } catch {
                    return .fast  // cancelled: fast stop
                }
            }
            var request = StopRequest.fast
            while let next = await group.next() {
                if let next {
                    request = next
                    break
                }
            }
            group.cancelAll()
            return request
        }
        switch request {
        case .graceful: await stop(graceful: true)
        case .fast: await stop(graceful: false)
        case .delayed: await stopAfterDelay()
        }
    }

    /// SIGTERM with `kernel.shutdown_delay` (Kubernetes' stop signal): readiness turns false at once, the process
    /// keeps serving for the delay (while endpoints are removed from load balancers), then drains as on quit.
    /// Without a delay SIGTERM is nginx's fast stop. SIGINT during the delay stops fast.
    private func stopAfterDelay() async {
        let delay = runtime.currentGeneration?.core.shutdownDelay ?? ConfigDuration(milliseconds: 0)
        guard delay.milliseconds > 0 else {
            await stop(graceful: false)
            return
        }
        runtime.stopping.markStopping()
        runtime.logger.notice("SIGTERM: reporting not ready, serving for shutdown_delay \(delay) before draining")
        do {
            try await Task.sleep(nanoseconds: UInt64(delay.nanoseconds))
        } catch {
            await stop(graceful: false)
            return
        }
        await stop(graceful: true)
    }

    /// Re-reads the configuration file; on any error the running configuration stays and the error is logged.
    public func reload() async {
        let logger = runtime.logger
        if isWorker {
            // A worker does not re-read the file on its own (it would serve a configuration the master did not
            // check): as in uWSGI, SIGHUP to one worker gracefully reloads that worker only. The master starts its
            // replacement and, once that serves, drains this one; `kernel -s reload` (the master) reloads all.
            logger.notice("SIGHUP: asking the master (pid \(getppid())) to replace this worker process")
            runtime.supervision.requestReplacement(reason: "SIGHUP to worker process \(getpid())")
            return
        }
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
        if let old = runtime.currentGeneration, old.core.stats != generation.core.stats {
            logger.warning("kernel.stats changed: takes effect after a restart")
        }
        runtime.applyErrorLog(generation.core)
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
        if !isWorker { SystemdNotify.stopping(logger: runtime.logger) }  // a worker's stop is not the service's
        let generation = runtime.currentGeneration
        let timeout = graceful ? TimeAmount.milliseconds(generation?.core.shutdownTimeout.milliseconds ?? 30_000) : .zero
        runtime.stopping.markStopping()
        runtime.logger.notice(graceful ? "graceful shutdown: draining connections" : "fast shutdown")
        housekeeping.stop()
        await statsServer.withLockedValue { $0 }?.stop()
        await listeners.shutdown(timeout: timeout)
        await generation?.stopServices(fast: !graceful)
        if let generation { removePidFile(generation.core) }
        runtime.logger.notice("exiting")
    }

    /// `kernel.stats` in a process that runs alone; a master runs the group's stats server itself.
    private func startStatsServer(_ core: CoreConfiguration) async throws {
        guard let address = core.stats, !runtime.supervision.isSupervised else { return }
        let server = StatsServer(address: address, supervision: runtime.supervision,
                                 eventLoopGroup: runtime.eventLoopGroup, logger: runtime.logger)
        try await server.start()
        statsServer.withLockedValue { $0 = server }
    }
}

/// `kernel.worker_rlimit_nofile`: the soft `RLIMIT_NOFILE` the process runs with. Each connection (and each
/// connection to an upstream) holds a descriptor, and the soft limit a shell hands down is often 1024.
package enum OpenFileLimit {
    private static let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)

    /// Sets the soft limit to `configured`, or raises it to the hard limit when nil, and logs the figure.
    /// A limit that cannot be set is logged in nginx's words and the process goes on with the one it has.
    package static func apply(_ configured: Int?, logger: Logger) {
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
