import KernelConfig
import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import UnixSignals
#if canImport(Glibc)
import Glibc
#endif

/// What a master needs to know to start its workers.
public struct MasterSettings: Sendable {
    /// The executable's absolute path, read at start: workers and a binary upgrade start the file found there.
    public var executable: String
    /// The configuration file, absolute (workers and a new master read it too).
    public var configurationFile: String
    /// `--role`: the role of the workers of `processes: N`.
    public var role: KernelRole
    public var modules: [ModuleDescriptor]
    /// The services the master itself runs (not its workers), made from its runtime and the configuration's core
    /// section at start: a service that reports on the whole process group, such as a stats server, uses
    /// `runtime.supervision.workers()` and `gather`. Started before the workers, stopped after them.
    public var services: @Sendable (KernelRuntime, CoreConfiguration) -> [any KernelService]

    public init(executable: String, configurationFile: String, role: KernelRole, modules: [ModuleDescriptor],
                services: @escaping @Sendable (KernelRuntime, CoreConfiguration) -> [any KernelService] = { _, _ in [] }) {
        self.executable = executable
        self.configurationFile = configurationFile
        self.role = role
        self.modules = modules
        self.services = services
    }
}

/// The master process of `kernel.processes`, as nginx's and uWSGI's: it reads and checks the configuration, opens
/// every listening socket, starts the worker processes (`posix_spawn` of the same binary, which inherit the
/// sockets and one end of a control channel), respawns a worker that dies, replaces one that asks, and turns
/// signals into operations across the workers: reload (SIGHUP: new workers with the new configuration, then the
/// old ones drain), graceful (SIGQUIT) and fast (SIGTERM, SIGINT) stop, log reopening (SIGUSR1) and binary
/// upgrade (SIGUSR2). It never accepts a connection and never loads a model.
public actor MasterProcess {
    /// One worker process, from its start to its exit.
    final class Worker {
        enum State: String { case starting, serving, draining }

        let pid: pid_t
        let pool: String
        let number: Int
        let spawnedAt: Double
        let startedAt: NIODeadline
        var respawns: Int
        /// The configuration generation it was started for: shared commands go to the workers of one generation.
        let generation: Int
        var state = State.starting
        /// Whether it has caught up with its generation's shared commands (`listShared` found none left), so that
        /// new ones are sent to it even while it starts.
        var receivesShared = false
        var connection: ControlConnection?
        /// When the master kills it (SIGKILL) if it has not exited: its drain's mercy.
        var killAt: NIODeadline?
        var exit: ExitStatus?

        init(pid: pid_t, pool: String, number: Int, respawns: Int, generation: Int) {
            self.pid = pid
            self.pool = pool
            self.number = number
            self.respawns = respawns
            self.generation = generation
            spawnedAt = wallClock()
            startedAt = .now()
        }
    }

    /// One place in a pool (`pool` worker `number`) and the process that fills it.
    struct Slot {
        var worker: Worker?
        /// A process starting to take this slot's place (a replacement asked for): it takes over once it serves.
        var replacement: Worker?
        var respawns = 0
        /// Deaths in a row soon after start: the respawn back-off doubles with each.
        var quickDeaths = 0
        var respawnAt: NIODeadline?
    }

    struct SlotKey: Hashable {
        var pool: String
        var number: Int
    }

    enum StopKind: Equatable { case graceful, fast, delayed }

    private let settings: MasterSettings
    private let runtime: KernelRuntime
    /// A runtime for checking configurations: modules that register query responders while they load register
    /// them here, not over the master's own.
    private let checkRuntime: KernelRuntime
    private var logger: Logger { runtime.logger }
    private var core: CoreConfiguration
    private var plans: [PoolPlan] = []
    private var sockets: [String: ListeningSocket] = [:]
    private var slots: [SlotKey: Slot] = [:]
    private var workers: [pid_t: Worker] = [:]
    private var restarts: [String: [String: Int]] = [:]
    private var generation = 1
    private var started = false
    private var stopping: StopKind?
    private var stopDeadline = NIODeadline.distantFuture
    private var reloading = false
    private var reloadAgain = false
    /// The new master of a binary upgrade, while it runs.
    private var upgradeChild: pid_t?
    /// The master's own services, running.
    private var services: [any KernelService] = []
    private let workerReplies = PendingReplies()
    /// What workers shared (`ProcessSupervision.share`), for the workers of their generation started later.
    private var sharedCommands = SharedCommandLog()
    /// The last shared command's delivery: each waits for the one before it, so that every process runs the
    /// shared commands in the order the master remembers them (two settings shared at once from two workers
    /// otherwise reach the processes in different orders, and each keeps a different last one).
    private var lastShareDelivery: Task<Void, Never>?
    private let exitCode = AsyncStream<Int32>.makeStream()

    /// Listening sockets inherited from an old master (binary upgrade), taken over at start.
    private let inherited: InheritedListeners?
    /// The old master of a binary upgrade (this process's parent when it started with inherited sockets).
    private let oldMaster: pid_t?

    public init(settings: MasterSettings, core: CoreConfiguration, runtime: KernelRuntime, checkRuntime: KernelRuntime,
                inherited: InheritedListeners?) {
        self.inherited = inherited
        oldMaster = inherited == nil ? nil : getppid()
        self.settings = settings
        self.core = core
        self.runtime = runtime
        self.checkRuntime = checkRuntime
    }

    /// Runs the master until it stops; returns the process's exit code.
    public func run() async -> Int32 {
        let signals = await UnixSignalsSequence(trapping: .sighup, .sigusr1, .sigusr2, .sigquit, .sigterm, .sigint)
        Task {
            for await signal in signals { await self.handle(signal) }
        }
        Task {
            while self.tick() {
                try? await Task.sleep(nanoseconds: 50_000_000)
            }
        }
        runtime.processQueries.register("metrics") { [self] in Array(await metricsText().utf8) }
        do {
            try await start()
        } catch {
            if stopping == nil {
                if core.errorLogPath != "stderr" { logger.critical("\(error)") }
                writeStandardError("kernel: [emerg] \(error)\n")
                await stop(.fast, code: 1)
            }
        }
        for await code in exitCode.stream { return code }
        return 0
    }

    // MARK: - Start

    private func start() async throws {
        let plans = try loadPlans(file: settings.configurationFile).plans
        try openSockets(for: plans, inherited: inherited)
        try PidFile.write(core.pidFile)
        self.plans = plans
        try await startMasterServices()
        let first = try await startWorkers(plans, generation: generation)
        if stopping != nil { return }
        for (key, worker) in first { slots[key] = Slot(worker: worker) }
        started = true
        let pools = plans.map { "\($0.pool.name): \($0.pool.count) (role \($0.role))" }.joined(separator: ", ")
        logger.notice("kernel started: master process, worker pools [\(pools)], pid \(getpid())")
        // The master is the service's main process for systemd (`Type=notify`): ready once every worker serves.
        SystemdNotify.ready(logger: logger)
    }

    /// The one place where services of the master itself start (`MasterSettings.services`, not a worker's).
    private func startMasterServices() async throws {
        for service in settings.services(runtime, core) {
            try await service.start()
            services.append(service)
            logger.info("master service \(service.name) started")
        }
    }

    private func loadPlans(file: String) throws -> (core: CoreConfiguration, plans: [PoolPlan]) {
        try PoolPlan.load(file: file, modules: settings.modules, role: settings.role, runtime: checkRuntime)
    }

    /// Opens the listening sockets `plans` need and the master does not have yet (taking inherited ones over in a
    /// binary upgrade); returns the ones it opened. On a failure it closes those and throws.
    @discardableResult
    private func openSockets(for plans: [PoolPlan], inherited: InheritedListeners? = nil) throws -> [ListeningSocket] {
        var opened: [ListeningSocket] = []
        var remaining = inherited?.descriptors ?? [:]
        let log: (String) -> Void = { [logger] in logger.notice("\($0)") }
        do {
            for plan in plans {
                for spec in plan.listeners where sockets[spec.identity] == nil {
                    let socket: ListeningSocket
                    if let fd = remaining.removeValue(forKey: spec.identity) {
                        socket = try ListeningSocket.adopt(spec, descriptor: fd, log: log)
                    } else {
                        socket = try ListeningSocket.open(spec, log: log, warn: { [logger] in logger.warning("\($0)") })
                    }
                    sockets[spec.identity] = socket
                    opened.append(socket)
                }
            }
        } catch {
            for socket in opened {
                sockets[socket.identity] = nil
                socket.close(unlinkPath: false)
            }
            throw error
        }
        // Inherited sockets the configuration no longer has.
        for fd in remaining.values { close(fd) }
        return opened
    }

    /// Starts one worker for every slot of `plans` and waits until all serve. With `lazy: false` each starts once
    /// the one before serves. Throws (having stopped the ones it started) when one exits before it serves.
    private func startWorkers(_ plans: [PoolPlan], generation: Int) async throws -> [SlotKey: Worker] {
        var started: [SlotKey: Worker] = [:]
        do {
            for plan in plans {
                for number in 1...plan.pool.count {
                    let worker = try await spawnWorker(plan, number: number, respawns: 0, generation: generation)
                    started[SlotKey(pool: plan.pool.name, number: number)] = worker
                    if !core.lazy { try await waitUntilServing([worker]) }
                }
            }
            try await waitUntilServing(Array(started.values))
        } catch {
            for worker in started.values where worker.exit == nil {
                worker.state = .draining  // its exit is expected, not a death
                kill(worker.pid, SIGTERM)
            }
            throw error
        }
        return started
    }

    private func waitUntilServing(_ list: [Worker]) async throws {
        while true {
            if let failed = list.first(where: { $0.exit != nil }) {
                throw SpawnError("worker process \(failed.pid) \(failed.exit!) before it served")
            }
            if stopping != nil { throw SpawnError("stopped while worker processes started") }
            if list.allSatisfy({ $0.state != .starting }) { return }
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
    }

    private func spawnWorker(_ plan: PoolPlan, number: Int, respawns: Int, generation: Int) async throws -> Worker {
        var pair: [CInt] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw SpawnError("socketpair() failed (\(errno): \(String(cString: strerror(errno))))")
        }
        let masterEnd = pair[0]
        let workerEnd: CInt
        do {
            workerEnd = try ProcessSpawner.park(pair[1])
        } catch {
            close(pair[0])
            close(pair[1])
            throw error
        }
        // The worker's descriptors: its listeners from 3 on, then the control channel.
        var handed: [(source: CInt, target: CInt)] = []
        var inherited: [String: CInt] = [:]
        for (index, spec) in plan.listeners.enumerated() {
            guard let socket = sockets[spec.identity] else { continue }
            let target = CInt(3 + index)
            handed.append((socket.descriptor, target))
            inherited[spec.identity] = target
        }
        let control = CInt(3 + plan.listeners.count)
        handed.append((workerEnd, control))
        let identity = WorkerIdentity(pool: plan.pool.name, number: number, controlDescriptor: control)
        let environment = ProcessSpawner.inheritableEnvironment() + [
            "\(ProcessEnvironmentKeys.listeners)=\(InheritedListeners(inherited).environmentValue)",
            "\(ProcessEnvironmentKeys.worker)=\(identity.environmentValue)",
        ]
        let pid: pid_t
        do {
            pid = try ProcessSpawner.spawn(
                executable: settings.executable,
                arguments: [settings.executable, "--role", plan.role.rawValue, "--config", plan.configurationFile],
                environment: environment, descriptors: handed)
        } catch {
            close(masterEnd)
            close(workerEnd)
            throw error
        }
        close(workerEnd)
        let worker = Worker(pid: pid, pool: plan.pool.name, number: number, respawns: respawns, generation: generation)
        workers[pid] = worker
        logger.notice("start worker process \(pid) (pool \(plan.pool.name), worker \(number), role \(plan.role))")
        do {
            worker.connection = try await ControlConnection.adopt(
                descriptor: masterEnd, group: runtime.eventLoopGroup, logger: logger,
                received: { message in Task { await self.received(message, from: pid) } },
                closed: {})
        } catch {
            close(masterEnd)
            logger.critical("control channel of worker process \(pid): \(error)")
            kill(pid, SIGKILL)
        }
        return worker
    }

    // MARK: - Control messages

    private func received(_ message: ControlMessage, from pid: pid_t) async {
        guard let worker = workers[pid] else { return }
        switch message {
        case .ready:
            if worker.state == .starting { worker.state = .serving }
            promoteReplacement(worker)
        case .replace(let reason):
            await replace(worker, reason: reason)
        case .gather(let id, let query, let timeout):
            let connection = worker.connection
            Task {
                let answers = await self.gatherAll(query, timeout: .milliseconds(Int64(timeout)))
                connection?.send(.gathered(id: id, answers: answers.map(GatheredAnswer.init)))
            }
        case .answer(let id, _):
            workerReplies.resolve(id, with: message)
        case .listWorkers(let id):
            worker.connection?.send(.workers(id: id, workerTable()))
        case .share(let id, let key, let command, let memory, let timeout):
            // Remembered and sent in one step of the actor, so that a worker of the generation that is catching up
            // either finds it in its list or receives it.
            sharedCommands.remember(command, key: key, memory: memory, generation: worker.generation)
            let targets = workers.values.filter {
                $0.generation == worker.generation && $0.exit == nil && ($0.state != .starting || $0.receivesShared)
            }
            let connection = worker.connection
            let previous = lastShareDelivery
            lastShareDelivery = Task {
                await previous?.value
                let answers = await self.gather(command, from: targets, timeout: .milliseconds(Int64(timeout)))
                connection?.send(.gathered(id: id, answers: answers.map(GatheredAnswer.init)))
            }
        case .listShared(let id, let after):
            let (commands, through) = sharedCommands.commands(after: after, generation: worker.generation,
                                                              atMost: ProcessSharing.maximumCommandLength)
            if commands.isEmpty { worker.receivesShared = true }
            worker.connection?.send(.shared(id: id, commands: commands, through: through))
        case .gathered, .query, .workers, .shared:
            logger.error("control channel: unexpected \(message) from worker process \(pid)")
        }
    }

    /// A replacement that now serves takes its slot; the worker it replaces drains.
    private func promoteReplacement(_ worker: Worker) {
        guard let key = slots.first(where: { $0.value.replacement === worker })?.key else { return }
        let old = slots[key]?.worker
        slots[key]?.replacement = nil
        slots[key]?.worker = worker
        slots[key]?.respawns += 1
        worker.respawns = slots[key]?.respawns ?? 0
        if let old { drain(old, why: "replaced by worker process \(worker.pid)") }
    }

    /// `requestReplacement` from a worker: a new worker for its slot, and once that serves, this one drains.
    private func replace(_ worker: Worker, reason: String) async {
        guard stopping == nil, let key = slots.first(where: { $0.value.worker === worker })?.key,
              slots[key]?.replacement == nil, let plan = plans.first(where: { $0.pool.name == worker.pool }) else { return }
        logger.notice("worker process \(worker.pid) asks to be replaced (\(reason)): starting its replacement")
        let cause = reason.hasPrefix("harakiri") ? "harakiri" : "recycle"
        restarts[worker.pool, default: [:]][cause, default: 0] += 1
        do {
            slots[key]?.replacement = try await spawnWorker(plan, number: worker.number, respawns: worker.respawns,
                                                                generation: worker.generation)
        } catch {
            logger.critical("cannot start a replacement for worker process \(worker.pid): \(error)")
        }
    }

    /// Sends `worker` a graceful stop (SIGQUIT): it stops accepting and finishes its requests; past
    /// `worker_reload_mercy` the master kills it.
    private func drain(_ worker: Worker, why: String) {
        guard worker.exit == nil, worker.state != .draining else { return }
        worker.state = .draining
        worker.killAt = .now() + .milliseconds(core.workerReloadMercy.milliseconds)
        logger.notice("worker process \(worker.pid) drains: \(why)")
        kill(worker.pid, SIGQUIT)
    }

    // MARK: - Supervision

    /// Reaps exited children, kills workers past their mercy and respawns empty slots; false once stopped.
    private func tick() -> Bool {
        var status: Int32 = 0
        while true {
            let pid = waitpid(-1, &status, WNOHANG)
            guard pid > 0 else { break }
            exited(pid, ExitStatus(waitStatus: status))
        }
        let now = NIODeadline.now()
        for worker in workers.values {
            guard let killAt = worker.killAt, now >= killAt else { continue }
            worker.killAt = nil
            logger.critical("worker process \(worker.pid) did not exit within worker_reload_mercy (\(core.workerReloadMercy)): killing it (SIGKILL)")
            kill(worker.pid, SIGKILL)
        }
        guard stopping == nil else { return true }
        for (key, slot) in slots {
            guard let due = slot.respawnAt, now >= due else { continue }
            slots[key]?.respawnAt = nil
            Task { await self.respawn(key) }
        }
        return true
    }

    private func exited(_ pid: pid_t, _ status: ExitStatus) {
        if pid == upgradeChild {
            upgradeChild = nil
            logger.log(level: status == .exited(code: 0) ? .notice : .critical, "new binary process \(pid) \(status)")
            // As nginx: the upgrade failed, this master stays the one the pid file names.
            if rename(core.pidFile + ".oldbin", core.pidFile) != 0 {
                logger.critical("rename() \"\(core.pidFile).oldbin\" back to \"\(core.pidFile)\" failed (\(errno): \(String(cString: strerror(errno))))")
            }
            // The new master may have told systemd it is the main process (`MAINPID=`): this one is again.
            if stopping == nil { SystemdNotify.ready(logger: logger) }
            return
        }
        guard let worker = workers.removeValue(forKey: pid) else { return }
        worker.exit = status
        worker.connection?.close()
        let expected = (worker.state == .draining || stopping != nil) && status == .exited(code: 0)
        logger.log(level: expected ? .notice : .critical, "worker process \(pid) \(status)")
        guard stopping == nil else { return }
        for (key, slot) in slots {
            if slot.replacement === worker {
                slots[key]?.replacement = nil
                logger.critical("the replacement of worker process \(slot.worker?.pid ?? 0) did not start: the worker keeps serving")
            }
            guard slot.worker === worker else { continue }
            slots[key]?.worker = nil
            let cause: String
            if case .signalled = status { cause = "signal" } else { cause = "exit" }
            restarts[worker.pool, default: [:]][cause, default: 0] += 1
            if slot.replacement != nil { continue }  // the replacement under way takes the slot
            let lived = NIODeadline.now() - worker.startedAt
            let quick = lived < .seconds(10) ? slot.quickDeaths + 1 : 1
            slots[key]?.quickDeaths = quick
            let delay = Self.respawnDelay(quickDeaths: quick)
            if delay > .zero {
                logger.warning("worker \(key.number) of pool \(key.pool) exited soon after it started \(quick) times in a row: respawning in \(Double(delay.nanoseconds) / 1e9)s")
            }
            slots[key]?.respawnAt = .now() + delay
        }
    }

    /// The wait before a slot's worker is started again: none after one death, then 0.5 s doubling with each
    /// further death soon after start, up to 30 s.
    public static func respawnDelay(quickDeaths: Int) -> TimeAmount {
        guard quickDeaths > 1 else { return .zero }
        let exponent = min(quickDeaths - 2, 6)
        return min(.milliseconds(500 << exponent), .seconds(30))
    }

    private func respawn(_ key: SlotKey) async {
        guard stopping == nil, let slot = slots[key], slot.worker == nil,
              let plan = plans.first(where: { $0.pool.name == key.pool }) else { return }
        do {
            let worker = try await spawnWorker(plan, number: key.number, respawns: slot.respawns + 1, generation: generation)
            slots[key]?.worker = worker
            slots[key]?.respawns += 1
        } catch {
            logger.critical("cannot respawn worker \(key.number) of pool \(key.pool): \(error)")
            let quick = slot.quickDeaths + 1
            slots[key]?.quickDeaths = quick
            slots[key]?.respawnAt = .now() + max(Self.respawnDelay(quickDeaths: quick), .milliseconds(500))
        }
    }

    // MARK: - Signals

    private func handle(_ signal: UnixSignal) async {
        switch signal {
        case .sighup:
            Task { await self.reload() }
        case .sigusr1:
            for failure in runtime.logFiles.reopenAll() { logger.error("reopen: \(failure)") }
            logger.notice("log files reopened; asking the worker processes to reopen theirs")
            for worker in workers.values { kill(worker.pid, SIGUSR1) }
        case .sigusr2:
            upgrade()
        case .sigquit:
            Task { await self.stop(.graceful) }
        case .sigterm:
            Task { await self.stop(self.core.shutdownDelay.milliseconds > 0 ? .delayed : .fast) }
        case .sigint:
            Task { await self.stop(.fast) }
        default:
            break
        }
    }

    // MARK: - Reload

    /// SIGHUP: re-reads and checks the configuration; on an error the running one stays. Otherwise it opens the new
    /// listeners, starts a whole new set of workers with the new configuration and, once all of them serve, lets
    /// the old ones drain. A new worker that exits before it serves fails the reload and the old set keeps serving.
    private func reload() async {
        guard stopping == nil else { return }
        guard started else {
            logger.warning("reload ignored: the master is still starting its workers")
            return
        }
        if reloading {
            reloadAgain = true
            return
        }
        reloading = true
        defer { reloading = false }
        repeat {
            reloadAgain = false
            await reloadOnce()
        } while reloadAgain && stopping == nil
    }

    private func reloadOnce() async {
        logger.notice("reloading configuration \(settings.configurationFile)")
        SystemdNotify.reloading(logger: logger)
        defer { SystemdNotify.ready(logger: logger) }
        let loaded: (core: CoreConfiguration, plans: [PoolPlan])
        let opened: [ListeningSocket]
        do {
            runtime.logFiles.markUse()
            loaded = try loadPlans(file: settings.configurationFile)
            opened = try openSockets(for: loaded.plans)
        } catch {
            logger.error("reload failed, keeping the running configuration: \(error)")
            return
        }
        let previousCore = core
        // The new workers drain and respawn by the new configuration's rules.
        core = loaded.core
        let fresh: [SlotKey: Worker]
        do {
            fresh = try await startWorkers(loaded.plans, generation: generation + 1)
        } catch {
            core = previousCore
            for socket in opened {
                sockets[socket.identity] = nil
                socket.close(unlinkPath: false)
            }
            if stopping == nil { logger.error("reload failed, keeping the running configuration: \(error)") }
            return
        }
        let old = slots
        plans = loaded.plans
        slots = [:]
        for (key, worker) in fresh { slots[key] = Slot(worker: worker) }
        generation += 1
        sharedCommands.forget(before: generation)
        for slot in old.values {
            if let worker = slot.worker { drain(worker, why: "configuration reloaded") }
            if let replacement = slot.replacement { drain(replacement, why: "configuration reloaded") }
        }
        // Sockets no new listener has: the old workers hold their own copies until they exit.
        let wanted = Set(plans.flatMap { $0.listeners.map(\.identity) })
        let wantedPaths = Set(plans.flatMap { $0.listeners.compactMap(\.address.unixPath) })
        for (identity, socket) in sockets where !wanted.contains(identity) {
            sockets[identity] = nil
            socket.close(unlinkPath: socket.address.unixPath.map { !wantedPaths.contains($0) } ?? false)
            logger.notice("closed listener \(identity)")
        }
        runtime.applyErrorLog(core)
        runtime.logFiles.dropUnused()
        logger.notice("configuration reloaded (generation \(generation))")
    }

    // MARK: - Binary upgrade

    /// SIGUSR2, nginx's binary upgrade: the pid file becomes `<pid>.oldbin` and the executable (the file at the
    /// path this master started from, perhaps replaced since) starts as a new master that inherits every listening
    /// socket. The operator then sends this master SIGQUIT (its pid is in the `.oldbin` file).
    private func upgrade() {
        guard stopping == nil else { return }
        guard started else {
            logger.warning("binary upgrade ignored: the master is still starting its workers")
            return
        }
        if let upgradeChild {
            logger.critical("the changing binary signal is ignored: new binary process \(upgradeChild) runs; quit one of the masters first")
            return
        }
        let oldbin = core.pidFile + ".oldbin"
        guard rename(core.pidFile, oldbin) == 0 else {
            logger.critical("rename() \"\(core.pidFile)\" to \"\(oldbin)\" failed (\(errno): \(String(cString: strerror(errno)))): binary upgrade abandoned")
            return
        }
        var handed: [(source: CInt, target: CInt)] = []
        var inherited: [String: CInt] = [:]
        for (index, socket) in sockets.values.sorted(by: { $0.identity < $1.identity }).enumerated() {
            let target = CInt(3 + index)
            handed.append((socket.descriptor, target))
            inherited[socket.identity] = target
        }
        let environment = ProcessSpawner.inheritableEnvironment() + [
            "\(ProcessEnvironmentKeys.listeners)=\(InheritedListeners(inherited).environmentValue)",
        ]
        do {
            let pid = try ProcessSpawner.spawn(
                executable: settings.executable,
                arguments: [settings.executable, "--role", settings.role.rawValue, "--config", settings.configurationFile],
                environment: environment, descriptors: handed)
            upgradeChild = pid
            logger.notice("started new binary process \(pid) (\(settings.executable)); the old master's pid is in \(oldbin)")
        } catch {
            logger.critical("\(error): binary upgrade abandoned")
            _ = rename(oldbin, core.pidFile)
        }
    }

    // MARK: - Stop

    /// Stops every worker (SIGQUIT for a graceful stop, SIGTERM else: with `shutdown_delay` each worker reports not
    /// ready and serves for the delay before it drains), waits for them, kills what outlives the deadline, then
    /// closes the sockets, removes the pid file and ends `run` with `code`.
    private func stop(_ kind: StopKind, code: Int32 = 0) async {
        if let current = stopping {
            // A fast stop asked for during a graceful one cuts it short, as in nginx.
            if kind == .fast, current != .fast {
                stopping = .fast
                logger.notice("fast shutdown")
                for worker in workers.values { kill(worker.pid, SIGTERM) }
                stopDeadline = min(stopDeadline, .now() + .seconds(5))
            }
            return
        }
        stopping = kind
        runtime.stopping.markStopping()
        // After a binary upgrade the new master is the service (it sent `MAINPID=`): the old one's stop is not the
        // service's, so systemd must not hear `STOPPING=1` from it.
        if upgradeChild == nil { SystemdNotify.stopping(logger: logger) }
        let timeout = TimeAmount.milliseconds(core.shutdownTimeout.milliseconds)
        let delay = TimeAmount.milliseconds(core.shutdownDelay.milliseconds)
        switch kind {
        case .graceful:
            logger.notice("graceful shutdown: the worker processes drain")
            stopDeadline = .now() + timeout + .seconds(5)
        case .delayed:
            logger.notice("SIGTERM: the worker processes report not ready, serve for shutdown_delay \(core.shutdownDelay), then drain")
            stopDeadline = .now() + delay + timeout + .seconds(5)
        case .fast:
            logger.notice("fast shutdown")
            stopDeadline = .now() + .seconds(5)
        }
        let signal = kind == .graceful ? SIGQUIT : SIGTERM
        for worker in workers.values { kill(worker.pid, signal) }
        while !workers.isEmpty && NIODeadline.now() < stopDeadline {
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        if !workers.isEmpty {
            for worker in workers.values {
                logger.critical("worker process \(worker.pid) did not exit in time: killing it (SIGKILL)")
                kill(worker.pid, SIGKILL)
            }
            let reaped = NIODeadline.now() + .seconds(2)
            while !workers.isEmpty && NIODeadline.now() < reaped {
                try? await Task.sleep(nanoseconds: 20_000_000)
            }
        }
        for service in services.reversed() { await service.stop() }
        services = []
        // After a binary upgrade the sockets (unix paths too) and the pid file belong to the new master; a new
        // master that ends while its old master still runs (going back) leaves the inherited socket files to it.
        let handedOver = upgradeChild != nil
        let oldMasterRuns = oldMaster.map { $0 == getppid() } ?? false
        for socket in sockets.values { socket.close(unlinkPath: !handedOver && !(socket.inherited && oldMasterRuns)) }
        sockets = [:]
        unlink(handedOver ? core.pidFile + ".oldbin" : core.pidFile)
        logger.notice("exiting")
        exitCode.continuation.yield(code)
        exitCode.continuation.finish()
    }

    // MARK: - Queries

    /// The worker table: every worker process alive (serving, starting, draining).
    func workerTable() -> [WorkerProcessInfo] {
        workers.values.sorted { ($0.pool, $0.number, $0.pid) < ($1.pool, $1.number, $1.pid) }.map {
            WorkerProcessInfo(number: $0.number, pid: $0.pid, pool: $0.pool, spawnedAt: $0.spawnedAt,
                              respawns: $0.respawns, state: $0.state.rawValue)
        }
    }

    /// Runs `query` in the master and in every worker that serves or drains; a worker that does not answer within
    /// `timeout` is left out.
    func gatherAll(_ query: String, timeout: TimeAmount) async -> [ProcessAnswer] {
        await gather(query, from: workers.values.filter { $0.state != .starting && $0.exit == nil }, timeout: timeout)
    }

    /// Runs `query` in the master and in each of `workers`; one that does not answer within `timeout` is left out.
    private func gather(_ query: String, from workers: [Worker], timeout: TimeAmount) async -> [ProcessAnswer] {
        var answers: [ProcessAnswer] = []
        if let body = await runtime.processQueries.answer(query) {
            answers.append(ProcessAnswer(source: .master, pid: getpid(), body: body))
        }
        let targets = workers.compactMap { worker in worker.connection.map { (worker.pid, worker.number, $0) } }
        let replies = workerReplies
        let fromWorkers = await withTaskGroup(of: ProcessAnswer?.self) { group in
            for (pid, number, connection) in targets {
                group.addTask {
                    let reply = await replies.ask(timeout: timeout) { id in connection.send(.query(id: id, query: query)) }
                    guard case .answer(_, let body?) = reply else { return nil }
                    return ProcessAnswer(source: .worker(number), pid: pid, body: body)
                }
            }
            var collected: [ProcessAnswer] = []
            for await answer in group { if let answer { collected.append(answer) } }
            return collected
        }
        return answers + fromWorkers.sorted { $0.pid < $1.pid }
    }

    /// The master's `metrics` answer: `kernel_worker_restarts_total{pool,cause}` and `kernel_workers{pool,state}`.
    func metricsText() -> String {
        var pools = plans.map(\.pool.name)
        for worker in workers.values where !pools.contains(worker.pool) { pools.append(worker.pool) }
        return WorkerMetrics.render(pools: pools, restarts: restarts, workers: workerTable())
    }
}

/// The master's metrics in Prometheus text format 0.0.4: every pool gets every cause and state, zeros included,
/// so that the series exist from the start (a counter that appears only at its first increment breaks `rate`).
public enum WorkerMetrics {
    /// Restart causes of `kernel_worker_restarts_total`: a death by exit status or by signal, a replacement asked
    /// for (`recycle`), or for a stuck request (`harakiri`).
    public static let causes = ["exit", "signal", "recycle", "harakiri"]
    public static let states = ["starting", "serving", "draining"]

    public static func render(pools: [String], restarts: [String: [String: Int]], workers: [WorkerProcessInfo]) -> String {
        var text = "# HELP kernel_worker_restarts_total Worker processes started again, by pool and cause.\n"
        text += "# TYPE kernel_worker_restarts_total counter\n"
        for pool in pools {
            for cause in causes {
                text += "kernel_worker_restarts_total{pool=\"\(pool)\",cause=\"\(cause)\"} \(restarts[pool]?[cause] ?? 0)\n"
            }
        }
        text += "# HELP kernel_workers Worker processes, by pool and state.\n"
        text += "# TYPE kernel_workers gauge\n"
        for pool in pools {
            for state in states {
                let count = workers.filter { $0.pool == pool && $0.state == state }.count
                text += "kernel_workers{pool=\"\(pool)\",state=\"\(state)\"} \(count)\n"
            }
        }
        return text
    }
}

/// The supervision of the master process itself: it is no worker; its gathered queries and worker table are the
/// master's own.
public final class MasterSupervision: ProcessSupervision {
    private let master = NIOLockedValueBox<MasterProcess?>(nil)
    private let logger: Logger

    public init(logger: Logger) {
        self.logger = logger
    }

    /// Set once the master exists (it needs the runtime this supervision is part of).
    public func attach(_ master: MasterProcess) {
        self.master.withLockedValue { $0 = master }
    }

    public var workerNumber: Int { -1 }
    public var isSupervised: Bool { false }

    public func requestReplacement(reason: String) {
        logger.warning("replacement asked for the master process (\(reason)): a master is never replaced")
    }

    public func gather(_ query: String, timeout: TimeAmount) async -> [ProcessAnswer] {
        guard let master = master.withLockedValue({ $0 }) else { return [] }
        return await master.gatherAll(query, timeout: timeout)
    }

    public func workers() async -> [WorkerProcessInfo] {
        guard let master = master.withLockedValue({ $0 }) else { return [] }
        return await master.workerTable()
    }

    /// The master serves no requests and so changes no shared state: a command is gathered, not remembered.
    public func share(_ command: String, key: String, memory: SharedCommandMemory, timeout: TimeAmount) async -> [ProcessAnswer] {
        await gather(command, timeout: timeout)
    }

    public func replaySharedCommands() async {}
}

private func wallClock() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

/// Writes to standard error without the C `stderr` global.
func writeStandardError(_ text: String) {
    var text = text
    text.withUTF8 { bytes in _ = write(2, bytes.baseAddress, bytes.count) }
}

/// A worker pool as a configuration has it: the role its workers run and the listeners they get.
public struct PoolPlan: Sendable {
    public var pool: WorkerPool
    public var role: KernelRole
    public var listeners: [ListenerSpec]
    /// The file the pool's workers run: the pool's `config`, else the master's.
    public var configurationFile: String

    /// Loads `file` (or a pool's own `config`) in check mode for every pool's role (nothing starts, no model loads,
    /// but every error a worker would meet in the file is found) and gives each pool its listeners. Used by the master at start and reload,
    /// and by `kernel -t`. `role` is the command line's, for `processes: N`.
    public static func load(file: String, modules: [ModuleDescriptor], role commandRole: KernelRole,
                            runtime: KernelRuntime) throws -> (core: CoreConfiguration, plans: [PoolPlan]) {
        let core = try ConfigurationLoader(modules: modules, role: commandRole).coreConfiguration(file: file)
        guard case .pools(let pools) = core.processes else {
            throw MasterError("kernel.processes is 0: a master cannot become a single process without a restart")
        }
        var plans: [PoolPlan] = []
        for pool in pools {
            let role = pool.role ?? commandRole
            let poolFile = pool.configurationFile ?? file
            let loader = ConfigurationLoader(modules: modules, role: role)
            let generation = try loader.load(file: poolFile, runtime: runtime, mode: .check, number: 0)
            var seen = Set<String>()
            let declared = generation.listenerSpecs.filter { seen.insert($0.identity).inserted }
            for entry in pool.listen ?? [] {
                let single = WorkerPool(name: pool.name, role: role, count: 1, listen: [entry])
                guard declared.contains(where: single.takes) else {
                    let place = pool.mark.map { ", in \($0)" } ?? ""
                    throw MasterError("the \(pool.name) pool's listen \"\(entry)\" names no listener of role \(role)\(place)")
                }
            }
            let listeners = declared.filter { pool.takes($0) }
            if listeners.isEmpty {
                runtime.logger.warning("the \(pool.name) pool (role \(role)) has no listener: its workers accept nothing")
            }
            plans.append(PoolPlan(pool: pool, role: role, listeners: listeners, configurationFile: poolFile))
        }
        return (core, plans)
    }
}

/// A configuration a master cannot run.
public struct MasterError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
