import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// Reads every process's metrics once a second (the gathered `metrics` query) and the worker table, keeps the
/// history and the latest report: the service behind the status locations of one configuration.
///
/// Added only when a location writes `status`, so a kernel without a status page gathers nothing. Every process
/// that serves the page samples on its own, so whichever worker a request lands on has the whole group's history.
final class StatusSampler: KernelService {
    let name = "status page sampler"
    private let supervision: any ProcessSupervision
    private let queries: ProcessQueryRegistry
    private let logger: Logger
    private let interval: TimeAmount
    private let state: NIOLockedValueBox<State>
    private let loop = NIOLockedValueBox<Task<Void, Never>?>(nil)
    /// The process's `status.history` responders before this sampler's, put back if it stops while still the
    /// process's newest (its configuration failed to start: the running one's history must stay the answer).
    private let replaced = NIOLockedValueBox<(history: ProcessQueryResponder?, owner: ProcessQueryResponder?)>((nil, nil))
    /// Which sampler answers `status.history` in this process: `StatusHistoryTransfer.ownerQuery` answers it.
    let ownerToken = Array(String(UInt64.random(in: .min ... .max), radix: 16).utf8)

    private struct State {
        var history: StatusHistory
        var sequence = 0
        /// The latest report, rendered: what every request for the JSON gets until the next reading.
        var latest: String?
    }

    /// How long a reading waits for the processes' answers; a process slower than that is left out once.
    private var gatherTimeout: TimeAmount { .nanoseconds(interval.nanoseconds * 8 / 10) }

    init(supervision: any ProcessSupervision, queries: ProcessQueryRegistry, logger: Logger, history: TimeAmount,
         interval: TimeAmount = .seconds(1)) {
        self.supervision = supervision
        self.queries = queries
        self.logger = logger
        self.interval = interval
        let capacity = max(1, Int(history.nanoseconds / interval.nanoseconds))
        state = NIOLockedValueBox(State(history: StatusHistory(capacity: capacity)))
    }

    func start() async throws {
        // The history of this process's previous configuration, if it had a status page: taken over below. Then
        // this sampler answers for the process (the newest registration of a query wins).
        let previous = queries.responder(for: StatusHistoryTransfer.query)
        replaced.withLockedValue { $0 = (previous, queries.responder(for: StatusHistoryTransfer.ownerQuery)) }
        queries.register(StatusHistoryTransfer.query) { [self] in
            StatusHistoryTransfer.encode(state.withLockedValue { $0.history.points })
        }
        let token = ownerToken
        queries.register(StatusHistoryTransfer.ownerQuery) { token }
        let task = Task { [self] in
            await adoptEarlierHistory(previous: previous)
            // A fixed cadence (not "sleep one second after each reading"), so points stay one interval apart.
            let clock = ContinuousClock()
            let step = Duration.nanoseconds(interval.nanoseconds)
            var next = clock.now
            while !Task.isCancelled {
                await sample()
                next = next.advanced(by: step)
                if next < clock.now { next = clock.now.advanced(by: step) }
                do { try await clock.sleep(until: next) } catch { return }
            }
        }
        loop.withLockedValue { $0 = task }
    }

    func stop() async {
        let task = loop.withLockedValue { task -> Task<Void, Never>? in
            defer { task = nil }
            return task
        }
        task?.cancel()
        await task?.value
        let replaced = self.replaced.withLockedValue { replaced in
            defer { replaced = (nil, nil) }
            return replaced
        }
        if let history = replaced.history, let owner = replaced.owner,
           await queries.answer(StatusHistoryTransfer.ownerQuery) == ownerToken {
            queries.register(StatusHistoryTransfer.query, history)
            queries.register(StatusHistoryTransfer.ownerQuery, owner)
        }
    }

    /// The JSON document of the latest reading; the first request before any reading takes one.
    func reportJSON() async -> String {
        if let latest = state.withLockedValue({ $0.latest }) { return latest }
        return await sample()
    }

    /// Takes one reading: asks every process for its metrics and the master for its workers, adds a point to
    /// the history and renders the report.
    @discardableResult
    func sample() async -> String {
        let answers = await supervision.gather("metrics", timeout: gatherTimeout)
        let workers = await supervision.workers()
        let processes = answers.map(ProcessMetrics.init)
        let counters = Dictionary(processes.map { ($0.pid, $0.counters) }, uniquingKeysWith: { first, _ in first })
        let monotonic = Double(KernelClock.monotonicNanoseconds()) / 1e9
        let wall = Self.wallClock()
        let interval = Double(self.interval.nanoseconds) / 1e9
        return state.withLockedValue { state in
            state.history.record(counters, monotonic: monotonic, wall: wall)
            state.sequence += 1
            let report = StatusReport(sequence: state.sequence, time: wall, intervalSeconds: interval,
                                      history: state.history, processes: processes, workers: workers)
            let json = report.json
            state.latest = json
            return json
        }
    }

    /// Takes over the points kept before this sampler started: the previous configuration's in this process, or
    /// else the longest history among the other processes (this worker was just started).
    private func adoptEarlierHistory(previous: ProcessQueryResponder?) async {
        var candidates: [[StatusPoint]] = []
        if let previous {
            candidates.append(StatusHistoryTransfer.decode(await previous()) ?? [])
        }
        if candidates.allSatisfy(\.isEmpty) {
            let own = getpid()
            for answer in await supervision.gather(StatusHistoryTransfer.query, timeout: gatherTimeout) where answer.pid != own {
                guard let points = StatusHistoryTransfer.decode(answer.body) else {
                    logger.warning("status: the history answered by process \(answer.pid) does not parse; not taken over")
                    continue
                }
                candidates.append(points)
            }
        }
        guard let longest = candidates.max(by: { $0.count < $1.count }), !longest.isEmpty else { return }
        let now = Self.wallClock()
        let interval = Double(self.interval.nanoseconds) / 1e9
        state.withLockedValue { _ = $0.history.adopt(longest, now: now, interval: interval) }
    }

    private static func wallClock() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}
