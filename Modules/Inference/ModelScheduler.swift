import CoreMetrics
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import DequeModule
import KernelCore
import Logging
import NIOCore

/// How a model's requests are queued and joined into batches.
public struct SchedulingPolicy: Sendable {
    /// Largest batch (rows along dimension 0); 0 means the model does not batch.
    public var maxBatchSize: Int
    /// Whether requests are joined at all (`dynamic_batching` present and `max_batch_size` > 0).
    public var dynamicBatching: Bool
    /// How long the first request of a batch may wait for others.
    public var maxQueueDelayNanoseconds: UInt64
    /// Batch sizes dispatched as soon as they can be formed; at the delay's end the largest one formable is taken.
    public var preferredBatchSizes: [Int]
    /// Requests waiting at most (0: unlimited); more are answered 503 at once.
    public var maxQueue: Int
    /// How long a request may wait before it starts (0: no limit); then it is answered 504 and never run.
    public var timeoutNanoseconds: UInt64

    public init(maxBatchSize: Int = 0, dynamicBatching: Bool = false, maxQueueDelayNanoseconds: UInt64 = 0,
                preferredBatchSizes: [Int] = [], maxQueue: Int = 0, timeoutNanoseconds: UInt64 = 0) {
        self.maxBatchSize = maxBatchSize
        self.dynamicBatching = dynamicBatching && maxBatchSize > 0
        self.maxQueueDelayNanoseconds = maxQueueDelayNanoseconds
        self.preferredBatchSizes = preferredBatchSizes.filter { $0 > 0 && $0 <= maxBatchSize }.sorted()
        self.maxQueue = maxQueue
        self.timeoutNanoseconds = timeoutNanoseconds
    }
}

/// Queues a model's requests, joins compatible ones along dimension 0, and runs them on one thread per instance.
///
/// Inference never runs on an event loop: each runner has its own thread, which takes batches from the shared
/// queue. Results complete the request's promise, whose callbacks run on the request's event loop.
///
/// A batch starts with the oldest request and takes, in arrival order, the requests whose inputs agree with it on
/// every dimension but the first, while the rows fit `max_batch_size`. It is dispatched when it is full, when it
/// reaches the largest preferred size, or when the oldest request has waited `max_queue_delay`; then the largest
/// preferred size that a prefix of it forms is taken, else all of it. Outputs are split back by each request's rows,
/// so every caller receives exactly the rows an unbatched run gives.
public final class ModelScheduler: @unchecked Sendable {
    public let modelName: String
    public let policy: SchedulingPolicy
    private let runners: [any ModelRunner]
    private let logger: Logger

    /// Guards everything below; its condition wakes the instance threads.
    private let lock = QueueLock()
    private var queue = Deque<InferenceJob>()
    /// Requests taken from the queue whose results are not yet delivered.
    private var running = 0
    private var stopping = false
    private var threads: [pthread_t] = []
    private var statistics = ModelStatistics()
    private let metrics: ModelMetrics

    /// One runner per instance; threads start at once. The model's metrics go to `metricsFactory`.
    public init(modelName: String, policy: SchedulingPolicy, runners: [any ModelRunner], logger: Logger,
                metricsFactory: any MetricsFactory = MetricsSystem.factory) {
        precondition(!runners.isEmpty)
        self.modelName = modelName
        self.policy = policy
        self.runners = runners
        self.logger = logger
        metrics = ModelMetrics(model: modelName, factory: metricsFactory)
        for runner in runners {
            threads.append(startThread { [self] in self.workLoop(runner: runner) })
        }
    }

    /// Queues `inputs` (model input order, already validated) and answers with the outputs of its rows and where
    /// its time went.
    ///
    /// Fails with a `KernelHTTPError` 503 when the queue is full or the model is stopping, 504 when the request did
    /// not start before its deadline (the earlier of the model's `timeout` and `options.deadline`, the time its
    /// client still waits as an edge forwards it): it is then never run, because nobody would read its answer;
    /// 500 when the runtime reports an error.
    public func submit(_ inputs: [Tensor], options: SubmitOptions = SubmitOptions(),
                       on eventLoop: any EventLoop) -> EventLoopFuture<InferenceResult> {
        let deadline = options.deadline
        let promise = eventLoop.makePromise(of: InferenceResult.self)
        let job = InferenceJob(inputs: inputs, promise: promise, enqueued: KernelClock.monotonicNanoseconds(),
                               batchDimension: policy.maxBatchSize > 0)
        lock.lock()
        if stopping {
            lock.unlock()
            promise.fail(KernelHTTPError(503, "model '\(modelName)' is being unloaded"))
            return promise.futureResult
        }
        if policy.maxQueue > 0, queue.count >= policy.maxQueue {
            statistics.queueRejections.saturatingAdd(1)
            lock.unlock()
            metrics.failures.increment()
            promise.fail(KernelHTTPError(503, "inference request for model '\(modelName)' rejected: the queue is full (max_queue \(policy.maxQueue))"))
            return promise.futureResult
        }
        if let expiry = QueueExpiry.earliest(timeoutNanoseconds: policy.timeoutNanoseconds, deadline: deadline) {
            if expiry.at <= .now() {
                // Its client has given up already: never queued.
                statistics.timeouts.saturatingAdd(1)
                lock.unlock()
                metrics.failures.increment()
                promise.fail(expiry.error(modelName: modelName, policy: policy))
                return promise.futureResult
            }
            job.expiry = expiry
            job.timer = eventLoop.scheduleTask(deadline: expiry.at) { [self] in self.expire(job) }
        }
        queue.append(job)
        metrics.queueDepth.record(queue.count + running)
        lock.signal()
        lock.unlock()
        return promise.futureResult
    }

    /// Answers a request that is still queued at its deadline with 504; it is then never run.
    private func expire(_ job: InferenceJob) {
        lock.lock()
        guard job.state == .queued else {
            lock.unlock()
            return
        }
        job.state = .expired
        if let index = queue.firstIndex(where: { $0 === job }) { queue.remove(at: index) }
        statistics.timeouts.saturatingAdd(1)
        let now = KernelClock.monotonicNanoseconds()
        statistics.failure.add(now > job.enqueued ? now - job.enqueued : 0)
        metrics.queueDepth.record(queue.count + running)
        lock.unlock()
        metrics.failures.increment()
        job.promise.fail((job.expiry ?? .timeout(at: .now())).error(modelName: modelName, policy: policy))
    }

    /// Stops taking requests, lets the threads finish what is queued (or, with `discardingQueued`, fails it with 503
    /// at once: a fast stop has closed the connections that waited for it), and joins the threads.
    public func stop(discardingQueued: Bool = false) {
        lock.lock()
        stopping = true
        var discarded: [InferenceJob] = []
        if discardingQueued {
            discarded = queue.filter { $0.state == .queued }
            for job in discarded { job.state = .expired }
            queue.removeAll()
            metrics.queueDepth.record(running)
        }
        let joining = threads
        threads = []
        lock.broadcast()
        lock.unlock()
        for job in discarded {
            job.timer?.cancel()
            job.promise.fail(KernelHTTPError(503, "the kernel is stopping: inference request for model '\(modelName)' dropped"))
        }
        for thread in joining { pthread_join(thread, nil) }
    }

    /// The requests of this model queued or running now: what a worker reports to an edge's `least_queue`.
    public var depth: Int {
        lock.lock()
        defer { lock.unlock() }
        return queue.count + running
    }

    /// A snapshot of the counters.
    public var currentStatistics: ModelStatistics {
        lock.lock()
        defer { lock.unlock() }
        return statistics
    }

    // MARK: - Instance threads

    private func workLoop(runner: any ModelRunner) {
        lock.lock()
        while true {
            if queue.isEmpty {
                if stopping { break }
                lock.wait()
                continue
            }
            let now = KernelClock.monotonicNanoseconds()
            switch nextBatch(now: now) {
            case .wait(let until):
                lock.wait(untilMonotonicNanoseconds: until)
            case .run(let jobs):
                for job in jobs { job.state = .started }
                running += jobs.count
                lock.unlock()
                execute(jobs, runner: runner, dequeued: now)
                lock.lock()
            }
        }
        lock.unlock()
    }

    enum BatchDecision {
        case run([InferenceJob])
        case wait(until: UInt64)
    }

    /// Chooses the next batch (and removes it from the queue), or how long to wait for more requests.
    /// Called with `lock` held and a non-empty queue.
    func nextBatch(now: UInt64) -> BatchDecision {
        let head = queue[0]
        guard policy.dynamicBatching else {
            queue.removeFirst()
            return .run([head])
        }
        var members: [Int] = [0]     // queue indices, in arrival order
        var prefixRows: [Int] = [head.rows]
        var total = head.rows
        var full = total >= policy.maxBatchSize
        if !full {
            for index in 1..<queue.count where queue[index].isCompatible(with: head) {
                let rows = queue[index].rows
                if total + rows > policy.maxBatchSize { full = true; break }
                total += rows
                members.append(index)
                prefixRows.append(total)
                if total == policy.maxBatchSize { full = true; break }
            }
        }
        let largestPreferred = policy.preferredBatchSizes.last
        let reachedPreferred = largestPreferred.map { prefixRows.contains($0) } ?? false
        let deadline = head.enqueued &+ policy.maxQueueDelayNanoseconds
        guard full || reachedPreferred || now >= deadline || stopping else {
            return .wait(until: deadline)
        }
        var taken = members.count
        if !full, !policy.preferredBatchSizes.isEmpty,
           let last = prefixRows.lastIndex(where: { policy.preferredBatchSizes.contains($0) }) {
            taken = last + 1
        }
        let chosen = Array(members.prefix(taken))
        let jobs = chosen.map { queue[$0] }
        for index in chosen.reversed() { queue.remove(at: index) }
        return .run(jobs)
    }

    private func execute(_ jobs: [InferenceJob], runner: any ModelRunner, dequeued: UInt64) {
        // Rows of a batch are at most max_batch_size; a lone request's rows are its own (any Int).
        let rows = TensorSize.total(jobs.map(\.rows)) ?? Int.max
        let started = KernelClock.monotonicNanoseconds()
        let result: Result<BatchRun, Error>
        do {
            result = .success(try runner.runBatch(jobs.map(\.inputs), rows: jobs.map(\.rows)))
        } catch let error as KernelHTTPError {
            result = .failure(error)
        } catch {
            result = .failure(KernelHTTPError(500, "inference failed for model '\(modelName)': \(error)"))
        }
        let finished = KernelClock.monotonicNanoseconds()

        lock.lock()
        statistics.record(batchSize: rows, requests: jobs, computeNanoseconds: finished &- started,
                          dequeued: dequeued, finished: finished, succeeded: (try? result.get()) != nil)
        // Before the results go out, so an answer's depth report does not count its own request.
        running -= jobs.count
        metrics.queueDepth.record(queue.count + running)
        lock.unlock()
        metrics.batchSize.record(rows)
        metrics.computeDuration.recordNanoseconds(Int64(clamping: finished &- started))
        for job in jobs { metrics.queueDuration.recordNanoseconds(Int64(clamping: dequeued > job.enqueued ? dequeued - job.enqueued : 0)) }
        if (try? result.get()) == nil { metrics.failures.increment(by: jobs.count) }
        logger.debug("model '\(modelName)': batch of \(rows) row(s) from \(jobs.count) request(s) in \((finished - started) / 1000) us")

        // One task per event loop completes all of its requests: a wake-up per loop, not per request.
        var byLoop: [ObjectIdentifier: (loop: any EventLoop, completions: [(InferenceJob, Result<InferenceResult, Error>)])] = [:]
        for (index, job) in jobs.enumerated() {
            job.timer?.cancel()
            let outcome: Result<InferenceResult, Error> = result.map { run in
                InferenceResult(outputs: run.outputs[index],
                                timing: InferenceTiming(queueNanoseconds: dequeued > job.enqueued ? dequeued - job.enqueued : 0,
                                                        batchSize: rows, compute: run.timing))
            }
            let loop = job.promise.futureResult.eventLoop
            byLoop[ObjectIdentifier(loop), default: (loop, [])].completions.append((job, outcome))
        }
        for (_, group) in byLoop {
            let completions = group.completions
            if completions.count == 1 {
                completions[0].0.promise.completeWith(completions[0].1)
                continue
            }
            group.loop.execute {
                for (job, outcome) in completions { job.promise.completeWith(outcome) }
            }
        }
    }
}

/// One queued request.
final class InferenceJob: @unchecked Sendable {
    enum State { case queued, started, expired }
    let inputs: [Tensor]
    let promise: EventLoopPromise<InferenceResult>
    let enqueued: UInt64
    /// Rows along dimension 0 when the model batches (at most `max_batch_size`, checked by the codec); 1 otherwise,
    /// as Triton counts a request to a model without a batch dimension as one inference.
    let rows: Int
    /// Guarded by the scheduler's mutex.
    var state = State.queued
    /// Set under the scheduler's mutex before any thread can see the job; cancelled when the job completes.
    var timer: Scheduled<Void>?
    /// When and why `timer` fires; set with it.
    var expiry: QueueExpiry?

    init(inputs: [Tensor], promise: EventLoopPromise<InferenceResult>, enqueued: UInt64, batchDimension: Bool) {
        self.inputs = inputs
        self.promise = promise
        self.enqueued = enqueued
        rows = batchDimension ? inputs.first?.rows ?? 1 : 1
    }

    /// Same element types and the same dimensions after the first on every input: rows can be stacked.
    func isCompatible(with other: InferenceJob) -> Bool {
        guard inputs.count == other.inputs.count else { return false }
        for (a, b) in zip(inputs, other.inputs) {
            guard a.dataType == b.dataType, a.shape.count == b.shape.count, !a.shape.isEmpty,
                  a.shape.dropFirst() == b.shape.dropFirst() else { return false }
        }
        return true
    }
}

/// When a queued request is answered 504 without being run: the model's `timeout` after it was queued, or the
/// deadline its client sent, whichever comes first.
enum QueueExpiry: Equatable {
    case timeout(at: NIODeadline)
    case clientDeadline(at: NIODeadline)

    var at: NIODeadline {
        switch self {
        case .timeout(let at), .clientDeadline(let at): return at
        }
    }

    /// The earlier of the two, from now; nil when neither is set. A tie goes to the model's timeout.
    static func earliest(timeoutNanoseconds: UInt64, deadline: NIODeadline?, now: NIODeadline = .now()) -> QueueExpiry? {
        let timeout = timeoutNanoseconds > 0 ? now + .nanoseconds(Int64(clamping: timeoutNanoseconds)) : nil
        switch (timeout, deadline) {
        case (nil, nil): return nil
        case (let timeout?, nil): return .timeout(at: timeout)
        case (nil, let deadline?): return .clientDeadline(at: deadline)
        case (let timeout?, let deadline?): return deadline < timeout ? .clientDeadline(at: deadline) : .timeout(at: timeout)
        }
    }

    func error(modelName: String, policy: SchedulingPolicy) -> KernelHTTPError {
        switch self {
        case .timeout:
            let seconds = Double(policy.timeoutNanoseconds) / 1e9
            return KernelHTTPError(504, "inference request for model '\(modelName)' timed out after \(seconds)s in the queue")
        case .clientDeadline:
            return KernelHTTPError(504, "inference request for model '\(modelName)' dropped from the queue: its deadline passed, the client has given up")
        }
    }
}

/// A pthread mutex and a condition variable on the monotonic clock, at addresses that never move.
///
/// pthread objects must stay where they were initialised, and `&storedProperty` of a class gives no such address in
/// Swift (it may be a temporary copy), so both live in memory allocated here, as NIO's `NIOLock` keeps its mutex.
private final class QueueLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        mutex.initialize(to: pthread_mutex_t())
        condition.initialize(to: pthread_cond_t())
        precondition(pthread_mutex_init(mutex, nil) == 0, "pthread_mutex_init failed")
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        precondition(pthread_cond_init(condition, &attributes) == 0, "pthread_cond_init failed")
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deinitialize(count: 1)
        mutex.deinitialize(count: 1)
        condition.deallocate()
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
    func signal() { pthread_cond_signal(condition) }
    func broadcast() { pthread_cond_broadcast(condition) }

    /// Waits for a signal; the mutex must be held.
    func wait() { pthread_cond_wait(condition, mutex) }

    /// Waits for a signal or until the monotonic clock reaches `deadline`; the mutex must be held.
    func wait(untilMonotonicNanoseconds deadline: UInt64) {
        var time = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        pthread_cond_timedwait(condition, mutex, &time)
    }
}

/// Starts a joinable POSIX thread running `body`.
private func startThread(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    switch PosixThread.start(body) {
    case .success(let thread): return thread
    case .failure(let error): preconditionFailure("cannot start a model instance thread (\(error))")
    }
}
