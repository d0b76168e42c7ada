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
    /// Requests waiting at most in each priority level's queue (0: unlimited); more are answered `queueFullStatus`.
    public var maxQueue: Int
    /// How long a request may wait before it starts (0: no limit); then it is answered 504 and never run.
    public var timeoutNanoseconds: UInt64
    /// Triton's `priority_levels`: that many queues, level 1 the highest, batched first; 0 is one queue.
    public var priorityLevels: Int
    /// Triton's `default_priority_level`: the level of a request without a priority (or with one above
    /// `priorityLevels`, as Triton does); 0 with `priorityLevels` 0.
    public var defaultPriorityLevel: Int
    /// The status a full queue answers: 503 (Triton's, the default) or 429.
    public var queueFullStatus: Int

    public init(maxBatchSize: Int = 0, dynamicBatching: Bool = false, maxQueueDelayNanoseconds: UInt64 = 0,
                preferredBatchSizes: [Int] = [], maxQueue: Int = 0, timeoutNanoseconds: UInt64 = 0,
                priorityLevels: Int = 0, defaultPriorityLevel: Int = 0, queueFullStatus: Int = 503) {
        self.maxBatchSize = maxBatchSize
        self.dynamicBatching = dynamicBatching && maxBatchSize > 0
        self.maxQueueDelayNanoseconds = maxQueueDelayNanoseconds
        self.preferredBatchSizes = preferredBatchSizes.filter { $0 > 0 && $0 <= maxBatchSize }.sorted()
        self.maxQueue = maxQueue
        self.timeoutNanoseconds = timeoutNanoseconds
        self.priorityLevels = max(0, priorityLevels)
        self.defaultPriorityLevel = self.priorityLevels == 0 ? 0 : min(max(1, defaultPriorityLevel), self.priorityLevels)
        self.queueFullStatus = queueFullStatus
    }

    /// The queue (0 the highest) of a request with Triton's `priority`: 0, or a level above `priorityLevels`, is
    /// the default level, as Triton's `InferenceRequest::SetPriority` takes it.
    func queueIndex(priority: Int) -> Int {
        guard priorityLevels > 0 else { return 0 }
        let level = priority <= 0 || priority > priorityLevels ? defaultPriorityLevel : priority
        return level - 1
    }
}

/// Queues a model's requests, joins compatible ones along dimension 0, and runs them on one thread per instance.
///
/// Inference never runs on an event loop: each runner has its own thread, which takes batches from the shared
/// queues. Results complete the request's promise (or run its callback) on the request's event loop.
///
/// There is one queue per priority level (one without `priority_levels`). A batch starts with the oldest request
/// of the highest level that has one and takes, level by level from there and in arrival order within a level,
/// the requests whose inputs agree with it on every dimension but the first, while the rows fit
/// `max_batch_size`. It is dispatched when it is full, when it reaches the largest preferred size, or when its
/// oldest request has waited `max_queue_delay`; then the largest preferred size that a prefix of it forms is
/// taken, else all of it. Outputs are split back by each request's rows, so every caller receives exactly the rows
/// an unbatched run gives.
///
/// A queued request leaves its queue without running when its deadline passes (a timer on its event loop: 504 at
/// the deadline, whatever the running batch does) or when its client leaves (`SubmitOptions.cancellation`).
public final class ModelScheduler: @unchecked Sendable {
    public let modelName: String
    public let policy: SchedulingPolicy
    private let runners: [any ModelRunner]
    private let logger: Logger

    /// Guards everything below; its condition wakes the instance threads.
    private let lock = QueueLock()
    /// One queue per priority level, the highest first.
    private var queues: [Deque<InferenceJob>]
    /// Requests in all the queues.
    private var queued = 0
    /// Requests taken from the queue whose results are not yet delivered.
    private var running = 0
    private var stopping = false
    /// Instance threads blocked on the condition, and how many of them a signal is already waking: a submit signals
    /// only when some waiting thread is not being woken yet, so a burst of requests costs one wake-up, not one each.
    private var waiting = 0
    /// Instance threads yielding in `spinForWork` before they wait.
    private var spinning = 0
    private var pendingWakes = 0
    /// Since when an event loop task is about to wake an instance thread (nil: none is): submissions of one event
    /// loop tick are queued without a signal and the task, which runs after the tick's reads, wakes a thread once
    /// for all of them.
    private var wakeScheduledSince: UInt64?
    private var threads: [pthread_t] = []
    private var statistics = ModelStatistics()
    /// Recent runs, for the `Retry-After` of a full queue.
    private var recentRuns = RecentRuns()
    private let metrics: ModelMetrics

    /// One runner per instance; threads start at once. The model's metrics go to `metricsFactory`, labelled with
    /// `modelName` and `modelVersion`.
    public init(modelName: String, modelVersion: String = "1", policy: SchedulingPolicy, runners: [any ModelRunner],
                logger: Logger, metricsFactory: any MetricsFactory = MetricsSystem.factory) {
        precondition(!runners.isEmpty)
        self.modelName = modelName
        self.policy = policy
        self.runners = runners
        self.logger = logger
        queues = Array(repeating: Deque(), count: max(1, policy.priorityLevels))
        metrics = ModelMetrics(model: modelName, version: modelVersion, factory: metricsFactory)
        for runner in runners {
            threads.append(startThread { [self] in self.workLoop(runner: runner) })
        }
    }

    /// Queues `inputs` (model input order, already validated) and answers with the outputs of its rows and where
    /// its time went.
    ///
    /// Fails with a `KernelHTTPError`: 503 when the model is stopping; `queue_full_status` (503 or 429, with
    /// `Retry-After`) when the request's queue is full; 504 when the request did not start before its deadline
    /// (the earlier of the model's `timeout` and `options.deadline`, the time its client still waits as an edge
    /// forwards it): it is then never run, because nobody would read its answer; 499 when its client left while
    /// it was queued (never run either); 500 when the runtime reports an error.
    public func submit(_ inputs: [Tensor], options: SubmitOptions = SubmitOptions(),
                       on eventLoop: any EventLoop) -> EventLoopFuture<InferenceResult> {
        let promise = eventLoop.makePromise(of: InferenceResult.self)
        enqueue(inputs, options: options, on: eventLoop, completion: .promise(promise))
        return promise.futureResult
    }

    /// `submit(_:options:on:)` without a future: `completion` runs once, on `eventLoop`, with what the future would
    /// have completed with (the same errors). The serving path uses it: no promise and no future callbacks per
    /// request between the batch and the response.
    public func submit(_ inputs: [Tensor], options: SubmitOptions = SubmitOptions(), on eventLoop: any EventLoop,
                       completion: @escaping @Sendable (Result<InferenceResult, any Error>) -> Void) {
        enqueue(inputs, options: options, on: eventLoop, completion: .callback(completion))
    }

    private func enqueue(_ inputs: [Tensor], options: SubmitOptions, on eventLoop: any EventLoop,
                         completion: InferenceJob.Completion) {
        let job = InferenceJob(inputs: inputs, eventLoop: eventLoop, completion: completion,
                               enqueued: KernelClock.monotonicNanoseconds(), batchDimension: policy.maxBatchSize > 0,
                               level: policy.queueIndex(priority: options.priority))
        lock.lock()
        if stopping {
            lock.unlock()
            job.completeOnItsLoop(.failure(KernelHTTPError(503, "model '\(modelName)' is being unloaded")))
            return
        }
        if policy.maxQueue > 0, queues[job.level].count >= policy.maxQueue {
            // Triton's words first ("Exceeds maximum queue size"): clients match them.
            statistics.queueRejections.saturatingAdd(1)
            let retryAfter = recentRuns.secondsToDrain(queued: queuedAhead(ofLevel: job.level), instances: runners.count)
            lock.unlock()
            metrics.failures.increment()
            job.completeOnItsLoop(.failure(KernelHTTPError(policy.queueFullStatus,
                                                           "Exceeds maximum queue size: inference request for model '\(modelName)' rejected: the queue is full (max_queue \(policy.maxQueue))",
                                                           headers: ["Retry-After": String(retryAfter)])))
            return
        }
        if let expiry = QueueExpiry.earliest(timeoutNanoseconds: policy.timeoutNanoseconds, deadline: options.deadline) {
            if expiry.at <= .now() {
                // Its client has given up already: never queued.
                statistics.timeouts.saturatingAdd(1)
                lock.unlock()
                metrics.failures.increment()
                job.completeOnItsLoop(.failure(expiry.error(modelName: modelName, policy: policy)))
                return
            }
            job.expiry = expiry
            // On the request's event loop, not an instance thread: it fires at the deadline even while every
            // instance is busy with a long batch.
            job.timer = eventLoop.scheduleTask(deadline: expiry.at) { [self] in self.expire(job) }
        }
        queues[job.level].append(job)
        queued += 1
        metrics.queueDepth.record(queued + running)
        var scheduleWake = false
        if waiting > pendingWakes || spinning > 0 {
            if waiting <= pendingWakes {
                // Only spinning threads: they take it after the tick's wake task, with the rest of the tick.
                if eventLoop.inEventLoop, wakeScheduledSince == nil {
                    wakeScheduledSince = job.enqueued
                    scheduleWake = true
                }
            } else if !eventLoop.inEventLoop {
                // Not on its event loop (a test, a tool): no tick to wait for.
                pendingWakes += 1
                lock.signal()
            } else if let since = wakeScheduledSince, since &+ 1_000_000 > job.enqueued {
                // A task of this tick (or of another loop's) wakes a thread soon.
            } else {
                // None scheduled, or one that should have run by now (its event loop gone): schedule this one.
                wakeScheduledSince = job.enqueued
                scheduleWake = true
            }
        }
        lock.unlock()
        if scheduleWake {
            // Runs after the requests this tick has read are queued: the thread wakes once and batches them all.
            eventLoop.execute { [self] in self.wakeInstance() }
        }
        // Outside the lock: a cancellation that has already fired runs the callback at once.
        options.cancellation?.whenCancelled { [weak self] _ in self?.cancel(job) }
    }

    /// Wakes a waiting instance thread for what the tick queued.
    private func wakeInstance() {
        lock.lock()
        wakeScheduledSince = nil
        if queued > 0, waiting > pendingWakes {
            pendingWakes += 1
            lock.signal()
        }
        lock.unlock()
    }

    /// Yields the processor a bounded number of times before the thread sleeps, so that requests arriving right
    /// after a batch are taken without a futex wake-up. Returns with `lock` held, early when a tick's requests are
    /// all queued (`wakeScheduledSince` nil again) or the scheduler stops. Called with `lock` held.
    private func spinForWork() {
        spinning += 1
        defer { spinning -= 1 }
        for _ in 0..<32 {
            lock.unlock()
            sched_yield()
            lock.lock()
            if stopping || (queued > 0 && wakeScheduledSince == nil) { return }
        }
    }

    /// Blocks on the condition (until `deadline` when given), counted in `waiting`. Called with `lock` held.
    private func waitForWork(untilMonotonicNanoseconds deadline: UInt64? = nil) {
        waiting += 1
        if let deadline { lock.wait(untilMonotonicNanoseconds: deadline) } else { lock.wait() }
        waiting -= 1
        // A spurious or timed-out wake-up may take another's pending wake: then a later submit signals once more.
        if pendingWakes > 0 { pendingWakes -= 1 }
    }

    /// The requests that run before a new request of queue `level`: its level's and the higher ones' (a lower
    /// level's never do), so a high level's `Retry-After` does not count a low level's backlog. Called with `lock`
    /// held.
    private func queuedAhead(ofLevel level: Int) -> Int {
        queues[...level].reduce(0) { $0 + $1.count }
    }

    /// `queuedAhead(ofLevel:)` for tests.
    func requestsAhead(ofLevel level: Int) -> Int {
        lock.lock()
        defer { lock.unlock() }
        return queuedAhead(ofLevel: level)
    }

    /// Takes a still queued `job` out of its queue; false when it has started or ended already. Called with
    /// `lock` held.
    private func dequeue(_ job: InferenceJob, as state: InferenceJob.State) -> Bool {
        guard job.state == .queued else { return false }
        job.state = state
        if let index = queues[job.level].firstIndex(where: { $0 === job }) { queues[job.level].remove(at: index) }
        queued -= 1
        let now = KernelClock.monotonicNanoseconds()
        statistics.failure.add(now > job.enqueued ? now - job.enqueued : 0)
        metrics.queueDepth.record(queued + running)
        return true
    }

    /// Answers a request that is still queued at its deadline with 504; it is then never run.
    private func expire(_ job: InferenceJob) {
        lock.lock()
        guard dequeue(job, as: .expired) else {
            lock.unlock()
            return
        }
        statistics.timeouts.saturatingAdd(1)
        lock.unlock()
        metrics.failures.increment()
        job.completeOnItsLoop(.failure((job.expiry ?? .timeout(at: .now())).error(modelName: modelName, policy: policy)))
    }

    /// Drops a request whose client left while it was queued: it never runs. Its answer (499, nginx's status for
    /// a client that closed the connection) goes nowhere; the connection logs the 499.
    private func cancel(_ job: InferenceJob) {
        lock.lock()
        guard dequeue(job, as: .cancelled) else {
            lock.unlock()
            return
        }
        statistics.cancellations.saturatingAdd(1)
        lock.unlock()
        job.timer?.cancel()
        metrics.failures.increment()
        job.completeOnItsLoop(.failure(KernelHTTPError(499, "inference request for model '\(modelName)' dropped from the queue: the client closed the connection")))
    }

    /// Stops taking requests, lets the threads finish what is queued (or, with `discardingQueued`, fails it with 503
    /// at once: a fast stop has closed the connections that waited for it), and joins the threads.
    public func stop(discardingQueued: Bool = false) {
        lock.lock()
        stopping = true
        var discarded: [InferenceJob] = []
        if discardingQueued {
            for level in queues.indices {
                discarded += queues[level].filter { $0.state == .queued }
                queues[level].removeAll()
            }
            for job in discarded { job.state = .expired }
            queued = 0
            metrics.queueDepth.record(running)
        }
        let joining = threads
        threads = []
        lock.broadcast()
        lock.unlock()
        for job in discarded {
            job.timer?.cancel()
            job.completeOnItsLoop(.failure(KernelHTTPError(503, "the kernel is stopping: inference request for model '\(modelName)' dropped")))
        }
        for thread in joining { pthread_join(thread, nil) }
    }

    /// The requests of this model queued or running now: what a worker reports to an edge's `least_queue`.
    public var depth: Int {
        lock.lock()
        defer { lock.unlock() }
        return queued + running
    }

    /// The requests of this model queued and not yet running (Triton's `nv_inference_pending_request_count`).
    public var pending: Int {
        lock.lock()
        defer { lock.unlock() }
        return queued
    }

    /// Instance threads waiting for requests (tests wait for it before a burst of submissions).
    var waitingThreads: Int {
        lock.lock()
        defer { lock.unlock() }
        return waiting
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
            if queued == 0 {
                if stopping { break }
                spinForWork()
                if queued == 0, !stopping { waitForWork() }
                continue
            }
            let now = KernelClock.monotonicNanoseconds()
            switch nextBatch(now: now) {
            case .wait(let until):
                waitForWork(untilMonotonicNanoseconds: until)
            case .run(let jobs):
                for job in jobs { job.state = .started }
                running += jobs.count
                // A tick's submissions woke one thread: what this batch leaves is another waiting thread's.
                if queued > 0, waiting > pendingWakes {
                    pendingWakes += 1
                    lock.signal()
                }
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

    /// Chooses the next batch (and removes it from the queues), or how long to wait for more requests.
    /// Called with `lock` held and at least one request queued.
    func nextBatch(now: UInt64) -> BatchDecision {
        let headLevel = queues.firstIndex { !$0.isEmpty }!
        let head = queues[headLevel][0]
        guard policy.dynamicBatching else {
            queues[headLevel].removeFirst()
            queued -= 1
            return .run([head])
        }
        // Members by (level, index), in the order they join: the head's level first, then the lower ones.
        var members: [(level: Int, index: Int)] = [(headLevel, 0)]
        var prefixRows: [Int] = [head.rows]
        var total = head.rows
        var oldest = head.enqueued
        var full = total >= policy.maxBatchSize
        scan: for level in headLevel..<queues.count where !full {
            let queue = queues[level]
            for index in (level == headLevel ? 1 : 0)..<queue.count where queue[index].isCompatible(with: head) {
                let rows = queue[index].rows
                if total + rows > policy.maxBatchSize { full = true; break scan }
                total += rows
                members.append((level, index))
                prefixRows.append(total)
                oldest = min(oldest, queue[index].enqueued)
                if total == policy.maxBatchSize { full = true; break scan }
            }
        }
        let largestPreferred = policy.preferredBatchSizes.last
        let reachedPreferred = largestPreferred.map { prefixRows.contains($0) } ?? false
        // The delay runs from the batch's oldest request: a newer request of a higher level does not restart it.
        let deadline = oldest &+ policy.maxQueueDelayNanoseconds
        guard full || reachedPreferred || now >= deadline || stopping else {
            return .wait(until: deadline)
        }
        var taken = members.count
        if !full, !policy.preferredBatchSizes.isEmpty,
           let last = prefixRows.lastIndex(where: { policy.preferredBatchSizes.contains($0) }) {
            taken = last + 1
        }
        let chosen = members.prefix(taken)
        let jobs = chosen.map { queues[$0.level][$0.index] }
        // Within a level the indices rise, so removing from the last keeps the earlier ones valid.
        for member in chosen.reversed() { queues[member.level].remove(at: member.index) }
        queued -= jobs.count
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
        let succeeded: Bool
        let timing: ComputeTiming
        switch result {
        case .success(let run):
            succeeded = true
            timing = run.timing
        case .failure:
            succeeded = false
            timing = ComputeTiming(inferNanoseconds: finished &- started)
        }

        lock.lock()
        statistics.record(batchSize: rows, requests: jobs, timing: timing, dequeued: dequeued, finished: finished,
                          succeeded: succeeded)
        recentRuns.add(nanoseconds: finished &- started, requests: jobs.count)
        // Before the results go out, so an answer's depth report does not count its own request.
        running -= jobs.count
        metrics.queueDepth.record(queued + running)
        lock.unlock()
        metrics.batchSize.record(rows)
        metrics.computeDuration.recordNanoseconds(Int64(clamping: finished &- started))
        for job in jobs { metrics.queueDuration.recordNanoseconds(Int64(clamping: dequeued > job.enqueued ? dequeued - job.enqueued : 0)) }
        if !succeeded { metrics.failures.increment(by: jobs.count) }
        logger.debug("model '\(modelName)': batch of \(rows) row(s) from \(jobs.count) request(s) in \((finished &- started) / 1000) us")

        // One task per event loop completes all of its requests: a wake-up per loop, not per request. A batch has few
        // loops (at most the process's event loop threads), so each task walks the batch for its own requests.
        var loops: [any EventLoop] = []
        loops.reserveCapacity(2)
        for job in jobs where !loops.contains(where: { $0 === job.eventLoop }) { loops.append(job.eventLoop) }
        for loop in loops {
            loop.execute {
                for (index, job) in jobs.enumerated() where job.eventLoop === loop {
                    job.timer?.cancel()
                    switch result {
                    case .success(let run):
                        let queue = dequeued > job.enqueued ? dequeued - job.enqueued : 0
                        job.complete(.success(InferenceResult(outputs: run.outputs[index],
                                                              timing: InferenceTiming(queueNanoseconds: queue, batchSize: rows,
                                                                                      compute: run.timing))))
                    case .failure(let error):
                        job.complete(.failure(error))
                    }
                }
            }
        }
    }
}

/// The recent pace of a model's runs: how long one takes and how many requests it serves, as moving averages
/// (each run weighs 1/8), for the `Retry-After` a full queue answers with.
struct RecentRuns {
    private(set) var nanosecondsPerRun: Double = 0
    private(set) var requestsPerRun: Double = 1

    mutating func add(nanoseconds: UInt64, requests: Int) {
        guard nanosecondsPerRun > 0 else {
            nanosecondsPerRun = Double(nanoseconds)
            requestsPerRun = Double(max(1, requests))
            return
        }
        nanosecondsPerRun += (Double(nanoseconds) - nanosecondsPerRun) / 8
        requestsPerRun += (Double(max(1, requests)) - requestsPerRun) / 8
    }

    /// Whole seconds until `queued` requests would have run on `instances` at this pace: at least 1 (also before
    /// the first run), at most an hour.
    func secondsToDrain(queued: Int, instances: Int) -> Int {
        let runs = (Double(queued) / max(1, requestsPerRun)).rounded(.up)
        let seconds = (runs * nanosecondsPerRun / Double(max(1, instances)) / 1e9).rounded(.up)
        guard seconds.isFinite else { return 1 }
        return Int(min(3600, max(1, seconds)))
    }
}

/// One queued request.
final class InferenceJob: @unchecked Sendable {
    enum State { case queued, started, expired, cancelled }
    let inputs: [Tensor]
    /// Where the outcome goes: the promise `submit` returns the future of, or the caller's callback.
    enum Completion {
        case promise(EventLoopPromise<InferenceResult>)
        case callback(@Sendable (Result<InferenceResult, any Error>) -> Void)
    }
    let completion: Completion
    /// Where the request completes.
    let eventLoop: any EventLoop
    let enqueued: UInt64
    /// Rows along dimension 0 when the model batches (at most `max_batch_size`, checked by the codec); 1 otherwise,
    /// as Triton counts a request to a model without a batch dimension as one inference.
    let rows: Int
    /// The index of its priority level's queue (0 the highest).
    let level: Int
    /// Guarded by the scheduler's mutex.
    var state = State.queued
    /// Set under the scheduler's mutex before any thread can see the job; cancelled when the job completes.
    var timer: Scheduled<Void>?
    /// When and why `timer` fires; set with it.
    var expiry: QueueExpiry?

    init(inputs: [Tensor], eventLoop: any EventLoop, completion: Completion, enqueued: UInt64, batchDimension: Bool,
         level: Int = 0) {
        self.inputs = inputs
        self.eventLoop = eventLoop
        self.completion = completion
        self.enqueued = enqueued
        self.level = level
        rows = batchDimension ? inputs.first?.rows ?? 1 : 1
    }

    convenience init(inputs: [Tensor], promise: EventLoopPromise<InferenceResult>, enqueued: UInt64, batchDimension: Bool,
                     level: Int = 0) {
        self.init(inputs: inputs, eventLoop: promise.futureResult.eventLoop, completion: .promise(promise),
                  enqueued: enqueued, batchDimension: batchDimension, level: level)
    }

    /// Delivers the outcome; on `eventLoop`.
    func complete(_ outcome: Result<InferenceResult, any Error>) {
        switch completion {
        case .promise(let promise): promise.completeWith(outcome)
        case .callback(let callback): callback(outcome)
        }
    }

    /// Delivers the outcome from any thread: at once on `eventLoop`, else in a task there.
    func completeOnItsLoop(_ outcome: Result<InferenceResult, any Error>) {
        if eventLoop.inEventLoop {
            complete(outcome)
        } else {
            eventLoop.execute { self.complete(outcome) }
        }
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
