import ArgumentParser
import KernelConfig
import KernelCore
import KernelProcesses
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle
#if canImport(Glibc)
import Glibc
#endif

extension KernelRole: ExpressibleByArgument {}

/// `-s` signal names and what they mean (nginx's).
enum ControlSignal: String, ExpressibleByArgument, CaseIterable {
    /// Re-read the configuration (SIGHUP).
    case reload
    /// Reopen log files (SIGUSR1).
    case reopen
    /// Graceful stop: finish open requests (SIGQUIT).
    case quit
    /// Fast stop (SIGTERM).
    case stop

    var number: Int32 {
        switch self {
        case .reload: return SIGHUP
        case .reopen: return SIGUSR1
        case .quit: return SIGQUIT
        case .stop: return SIGTERM
        }
    }
}

@main
struct KernelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernel",
        abstract: "HTTP/uwsgi front end, balancer and ONNX model server in one binary.",
        version: KernelVersion.string
    )

    @Option(help: "What this process does: edge, worker or both.")
    var role: KernelRole = .both

    @Option(name: [.customShort("c"), .long], help: "The configuration file.")
    var config: String = "etc/kernel.yaml"

    @Flag(name: [.customShort("t"), .long], help: "Check the configuration and exit (0 when valid), like nginx -t.")
    var check = false

    @Option(name: [.short, .long], help: "Send a signal to the running kernel: reload, reopen, quit, stop.")
    var signal: ControlSignal?

    func run() async throws {
        let loader = ConfigurationLoader(modules: compiledModules, role: role)
        if let signal {
            throw ExitCode(sendSignal(signal, loader: loader))
        }
        if check {
            throw ExitCode(checkConfiguration(loader: loader))
        }
        try await serve(loader: loader)
    }

    private func emerg(_ message: String) {
        writeStandardError("kernel: [emerg] \(message)\n")
    }

    private func sendSignal(_ signal: ControlSignal, loader: ConfigurationLoader) -> Int32 {
        let core: CoreConfiguration
        do {
            core = try loader.coreConfiguration(file: config)
        } catch {
            emerg("\(error)")
            return 1
        }
        guard let file = fopen(core.pidFile, "r") else {
            writeStandardError("kernel: [error] open() \"\(core.pidFile)\" failed (\(errno): \(String(cString: strerror(errno))))\n")
            return 1
        }
        var buffer = [CChar](repeating: 0, count: 32)
        let line = fgets(&buffer, 32, file).map { String(cString: $0) } ?? ""
        fclose(file)
        guard let pid = pid_t(line.trimmingCharacters(in: " \n")), pid > 0 else {
            writeStandardError("kernel: [error] invalid PID number \"\(line.trimmingCharacters(in: " \n"))\" in \"\(core.pidFile)\"\n")
            return 1
        }
        if kill(pid, signal.number) != 0 {
            writeStandardError("kernel: [error] kill(\(pid), \(signal.rawValue)) failed (\(errno): \(String(cString: strerror(errno))))\n")
            return 1
        }
        return 0
    }

    private func checkConfiguration(loader: ConfigurationLoader) -> Int32 {
        let runtime = KernelRuntime.standalone(threads: 1, level: .warning)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        do {
            let generation = try loader.load(file: config, runtime: runtime, mode: .check, number: 1)
            // Under a master every pool's role is checked, with the listeners each pool takes.
            if case .pools = generation.core.processes {
                _ = try PoolPlan.load(file: config, modules: compiledModules, role: role, runtime: runtime)
            }
        } catch {
            emerg("\(error)")
            writeStandardError("kernel: configuration file \(config) test failed\n")
            return 1
        }
        writeStandardError("kernel: the configuration file \(config) syntax is ok\n")
        writeStandardError("kernel: configuration file \(config) test is successful\n")
        return 0
    }

    private func serve(loader: ConfigurationLoader) async throws {
        // Read first: a worker started by a master finds who it is, and its inherited sockets, in the environment.
        let worker = WorkerIdentity.takeFromEnvironment()
        let inherited = InheritedListeners.takeFromEnvironment()
        // The core section first: it decides threads and the error log before anything else logs.
        let core: CoreConfiguration
        do {
            core = try loader.coreConfiguration(file: config)
        } catch {
            emerg("\(error)")
            throw ExitCode(1)
        }
        let logFiles = LogFileRegistry()
        let destination: ErrorLogHandler.Destination
        do {
            destination = ErrorLogHandler.Destination(file: try logFiles.file(core.errorLogPath), level: core.errorLogLevel)
        } catch {
            emerg("\(error)")
            throw ExitCode(1)
        }
        LoggingSystem.bootstrap { _ in ErrorLogHandler(destination: destination) }
        let logger = Logger(label: "kernel")
        if worker == nil, case .pools = core.processes {
            try await serveAsMaster(core: core, logFiles: logFiles, destination: destination, logger: logger, inherited: inherited)
            return
        }
        if worker == nil, let inherited {
            // Sockets from an old master (a binary upgrade to a file with `processes: 0`): one process binds its own.
            logger.warning("kernel.processes is 0: the \(inherited.descriptors.count) listening socket(s) inherited from the old master are closed; this process binds its own")
            for fd in inherited.descriptors.values { close(fd) }
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: core.eventLoopThreads)
        let runtime: KernelRuntime
        var placement = KernelServer.Placement.standalone
        var workerSupervision: WorkerSupervision?
        if let worker {
            let supervision = NIOLockedValueBox<WorkerSupervision?>(nil)
            runtime = KernelRuntime(eventLoopGroup: group, logger: logger, logFiles: logFiles, errorLog: destination,
                                    supervision: { queries in
                                        let made = WorkerSupervision(identity: worker, queries: queries, logger: logger)
                                        supervision.withLockedValue { $0 = made }
                                        return made
                                    })
            let made = supervision.withLockedValue { $0 }!
            workerSupervision = made
            // The control channel first: a master that dies while this worker loads its models is seen at once.
            do {
                try await made.connect(group: group)
            } catch {
                emerg("control channel to the master: \(error)")
                throw ExitCode(1)
            }
            placement = .worker(inheritedListeners: inherited?.descriptors ?? [:], serving: { made.reportServing() })
        } else {
            runtime = KernelRuntime(eventLoopGroup: group, logger: logger, logFiles: logFiles, errorLog: destination)
        }
        let failed = { (error: any Error) async throws -> Never in
            if core.errorLogPath != "stderr" { logger.critical("\(error)") }
            emerg("\(error)")
            workerSupervision?.close()
            try? await group.shutdownGracefully()
            throw ExitCode(1)
        }
        let generation: KernelGeneration
        do {
            generation = try loader.load(file: config, runtime: runtime, mode: .run, number: 1)
        } catch {
            try await failed(error)
        }
        // With a shutdown_delay, SIGTERM is the server's to handle (report not ready, serve, then drain); without
        // one it is nginx's fast stop, a cancellation of the service group.
        let delayedStop = core.shutdownDelay.milliseconds > 0
        // The server starts the generation inside the service group, whose signal handlers are in place by then:
        // `-s quit` or `-s stop` while models load stops the start and removes the pid file.
        let server = KernelServer(runtime: runtime, loader: loader, configurationFile: config, firstGeneration: generation,
                                  placement: placement, trapsTermination: delayedStop)
        let serviceGroup = ServiceGroup(configuration: .init(
            // `run` returns when the kernel has stopped, or did not start (`startupFailure` says which): either way
            // the group is done, which is not an error of its own.
            services: [.init(service: server, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigquit],
            cancellationSignals: delayedStop ? [.sigint] : [.sigterm, .sigint],
            logger: Logger(label: "kernel.lifecycle", factory: { _ in SwiftLogNoOpLogHandler() })
        ))
        try await serviceGroup.run()
        if let failure = server.startupFailure { try await failed(failure) }
        workerSupervision?.close()
        try? await group.shutdownGracefully()
    }

    /// `kernel.processes` other than 0: this process is the master; it never serves a request itself.
    private func serveAsMaster(core: CoreConfiguration, logFiles: LogFileRegistry, destination: ErrorLogHandler.Destination,
                               logger: Logger, inherited: InheritedListeners?) async throws {
        // The master's own event loop carries only the control channels.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let supervision = MasterSupervision(logger: logger)
        let runtime = KernelRuntime(eventLoopGroup: group, logger: logger, logFiles: logFiles, errorLog: destination,
                                    supervision: { _ in supervision })
        let checkRuntime = KernelRuntime(eventLoopGroup: group, logger: logger, logFiles: LogFileRegistry(), errorLog: destination)
        // Services of the master itself (a stats server over every worker) are made here.
        let settings = MasterSettings(executable: ProcessSpawner.currentExecutable(), configurationFile: absolutePath(config),
                                      role: role, modules: compiledModules, services: { _, _ in [] })
        // Sockets inherited from an old master (binary upgrade) are adopted by identity.
        let master = MasterProcess(settings: settings, core: core, runtime: runtime, checkRuntime: checkRuntime,
                                   inherited: inherited)
        supervision.attach(master)
        let code = await master.run()
        try? await group.shutdownGracefully()
        if code != 0 { throw ExitCode(code) }
    }

    private func absolutePath(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        guard let directory = getcwd(nil, 0) else { return path }
        defer { free(directory) }
        return String(cString: directory) + "/" + path
    }
}

/// The version `--version` prints and `GET /v2` reports.
enum KernelVersion {
    static let string = KernelCore.kernelVersion
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}

/// Writes to standard error without touching the C `stderr` global (not concurrency-safe in Swift 6).
func writeStandardError(_ text: String) {
    var text = text
    text.withUTF8 { bytes in _ = write(2, bytes.baseAddress, bytes.count) }
}
