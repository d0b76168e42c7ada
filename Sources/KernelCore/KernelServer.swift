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
/// Run by a swift-service-lifecycle `ServiceGroup`. Order of start: services of the generation (models load and
/// warm up), then listeners. Order of stop: listeners stop accepting, connections drain, services stop in reverse.
public final class KernelServer: Service, Sendable {
    public let runtime: KernelRuntime
    public let loader: ConfigurationLoader
    public let configurationFile: String
    public let listeners: ListenerManager
    private let generationCounter = GenerationCounter()

    public init(runtime: KernelRuntime, loader: ConfigurationLoader, configurationFile: String) {
        self.runtime = runtime
        self.loader = loader
        self.configurationFile = configurationFile
        listeners = ListenerManager(runtime: runtime)
    }

    /// Starts the first configuration: pid file, services (models load), listeners. Throws when any step fails,
    /// having undone the steps before it.
    public func start(_ generation: KernelGeneration) async throws {
        try writePidFile(generation.core.pidFile)
        do {
            try await generation.startServices(logger: runtime.logger)
        } catch {
            unlink(generation.core.pidFile)
            throw error
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
    }

    public func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup, .sigusr1)
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
        guard let file = fopen(path, "w") else {
            throw ListenerError("cannot write pid file \"\(path)\": \(String(cString: strerror(errno)))")
        }
        fputs(text, file)
        fclose(file)
    }
}

/// Numbers the configuration generations (the first is 1).
final class GenerationCounter: Sendable {
    private let value = NIOLockedValueBox(1)
    func next() -> Int { value.withLockedValue { $0 += 1; return $0 } }
}
