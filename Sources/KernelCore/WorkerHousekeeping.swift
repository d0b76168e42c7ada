import NIOConcurrencyHelpers
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// The once-a-second work of a serving process: it samples the accept queues of its listeners
/// (`ListenQueueMonitor`) and checks `max_worker_lifetime`. It also answers two gathered queries: `"stats"`
/// (this worker's object for the stats server, `WorkerStatsReport`) and `"metrics.listen"` (the listen-queue
/// metrics in the Prometheus text format, for the `/metrics` endpoint to add to this process's `"metrics"`).
public final class WorkerHousekeeping: Sendable {
    public let listenQueues: ListenQueueMonitor
    private let runtime: KernelRuntime
    private let listeners: ListenerManager
    private let task = NIOLockedValueBox<RepeatedTask?>(nil)
    /// When this process started, in seconds since the epoch (the worker's `last_spawn`).
    private let startedAt = Double(KernelClock.wallClockMilliseconds()) / 1000

    /// The name of the gathered query answered with the listen-queue metrics.
    public static let metricsQuery = "metrics.listen"

    init(runtime: KernelRuntime, listeners: ListenerManager) {
        self.runtime = runtime
        self.listeners = listeners
        listenQueues = ListenQueueMonitor(logger: runtime.logger)
    }

    /// Registers the queries and starts the tick.
    func start() {
        let runtime = self.runtime, listenQueues = self.listenQueues, startedAt = self.startedAt
        let listeners = self.listeners
        runtime.processQueries.register("stats") {
            // The queues as they are now, and sockets opened since the last tick (a reload), in the answer.
            await listenQueues.sample(listeners.listeningSockets(), counting: false)
            return WorkerStatsReport.render(runtime: runtime, listenQueues: listenQueues, startedAt: startedAt)
        }
        runtime.processQueries.register(Self.metricsQuery) {
            Array(listenQueues.metricsText(worker: runtime.supervision.workerNumber).utf8)
        }
        let loop = runtime.eventLoopGroup.next()
        let repeated = loop.scheduleRepeatedAsyncTask(initialDelay: .seconds(1), delay: .seconds(1)) { [self] _ in
            let promise = loop.makePromise(of: Void.self)
            promise.completeWithTask { await self.tick() }
            return promise.futureResult
        }
        task.withLockedValue { $0 = repeated }
    }

    /// One pass: sample the listen queues, check the worker's lifetime.
    func tick() async {
        await listenQueues.sample(listeners.listeningSockets())
        if let core = runtime.currentGeneration?.core {
            runtime.worker.recycler.tick(limits: core.recycling)
        }
    }

    func stop() {
        task.withLockedValue { value in
            value?.cancel()
            value = nil
        }
    }
}
