import Logging
import NIOConcurrencyHelpers
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// What a request is doing right now, in words for the harakiri log line: "waiting for upstream
/// \"http://127.0.0.1:9000\"", "queued or running in model \"demo\"". Handlers and the upstream engine note it as
/// they go; it exists only when `kernel.harakiri` is set (`RequestContext.activity` is nil otherwise).
public final class RequestActivity: Sendable {
    private let text = NIOLockedValueBox<String?>(nil)

    public init() {}

    /// Records what the request does from now on.
    public func note(_ what: String) { text.withLockedValue { $0 = what } }

    /// The latest note, nil when nothing was noted.
    public var current: String? { text.withLockedValue { $0 } }
}

/// The harakiri timer of one exchange (uWSGI `harakiri`): armed when the handler starts (the body has been read),
/// on the connection's event loop. If the handler has not answered when it fires, the client gets the 504 the
/// kernel answers for timeouts, the request is logged with what it was doing, and the worker is replaced; the
/// handler's late answer is dropped. The stuck-loop watchdog (`HarakiriWatchdog`) holds a ticket meanwhile.
final class HarakiriWatch {
    private var answered = false
    private var task: Scheduled<Void>?
    private var ticket: HarakiriWatchdog.Ticket?
    private let watchdog: HarakiriWatchdog

    private init(watchdog: HarakiriWatchdog) { self.watchdog = watchdog }

    /// Arms the timer for `inFlight` when its generation sets `harakiri`; nil otherwise.
    static func arm<Connection: DrivenConnection>(_ inFlight: InFlightExchange, for owner: Connection,
                                                  context: ChannelHandlerContext) -> HarakiriWatch? {
        let exchange = inFlight.exchange
        guard let limit = exchange.generation.core.recycling.harakiri else { return nil }
        let worker = exchange.worker
        let watch = HarakiriWatch(watchdog: worker.watchdog)
        let request = inFlight.request
        let serial = inFlight.serial
        let stuck = StuckRequest(request: request, route: exchange.decision.route, activity: exchange.context.activity,
                                 limit: limit.milliseconds)
        let start = {
            guard !watch.answered else { return }
            watch.ticket = worker.watchdog.register(stuck, overdueAfter: limit.milliseconds + HarakiriWatchdog.graceMilliseconds)
            watch.task = context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(limit.milliseconds)) {
                guard !watch.answered else { return }
                watch.answered = true
                watch.releaseTicket()
                worker.harakiri(stuck, logger: exchange.context.logger)
                _ = owner.exchangeResponded(.error(504, "gateway timeout"), serial: serial, context: context)
            }
        }
        // uWSGI counts harakiri once the request has been read: a body streamed to the handler while it arrives
        // (`*_request_buffering off`) starts the count when its last byte is in, so a slow upload is not taken
        // for a stuck request. A buffered body is complete before the handler starts.
        if case .stream(let stream) = request.bodySource {
            stream.whenReceived(start)
        } else {
            start()
        }
        return watch
    }

    /// The handler answered: true when its response may go out (the timer had not fired), false when the
    /// harakiri 504 went out instead.
    func handlerAnswered() -> Bool {
        guard !answered else { return false }
        answered = true
        task?.cancel()
        task = nil
        releaseTicket()
        return true
    }

    private func releaseTicket() {
        if let ticket { watchdog.unregister(ticket) }
        ticket = nil
    }
}

/// A request under harakiri watch, as the log lines describe it.
struct StuckRequest: Sendable {
    let request: KernelRequest
    let route: RouteInfo
    let activity: RequestActivity?
    /// The configured harakiri, in milliseconds.
    let limit: Int64

    /// `while waiting for upstream "...", client: 127.0.0.1, server: , request: "GET / HTTP/1.1", location: "/", host: "..."`.
    var description: String {
        var text = "while " + (activity?.current ?? "running the handler of location \"\(route.location)\"")
        text += ", client: \(request.connection.remoteIP), server: \(route.serverName), request: \"\(request.requestLine)\""
        text += ", location: \"\(route.location)\""
        if let host = request.headers["Host"] { text += ", host: \"\(host)\"" }
        return text
    }

    /// `2s`, `1500ms`.
    var limitText: String { limit % 1000 == 0 ? "\(limit / 1000)s" : "\(limit)ms" }
}

/// The watchdog outside the event loops: a thread that wakes every half second and looks for requests whose
/// harakiri timer should have fired `graceMilliseconds` ago. One that is still there means its event loop is
/// stuck (the 504 cannot be written), so in a worker process the watchdog ends the process with SIGKILL, as uWSGI's
/// master kills a worker past its harakiri, and the master starts another. A process without a master logs it.
final class HarakiriWatchdog: Sendable {
    /// How long past its harakiri a request's event loop may be late before it counts as stuck.
    static let graceMilliseconds: Int64 = 3000

    struct Ticket: Hashable, Sendable { let id: UInt64 }

    private struct Entry: Sendable {
        let stuck: StuckRequest
        /// Monotonic nanoseconds.
        let overdueAt: UInt64
    }

    private struct Table: Sendable {
        var next: UInt64 = 0
        var entries: [UInt64: Entry] = [:]
        var threadStarted = false
    }

    private let table = NIOLockedValueBox(Table())
    private let supervision: any ProcessSupervision
    private let logger: Logger

    init(supervision: any ProcessSupervision, logger: Logger) {
        self.supervision = supervision
        self.logger = logger
    }

    /// Watches `stuck` until `unregister`; overdue `overdueAfter` milliseconds from now. Starts the thread the first
    /// time.
    func register(_ stuck: StuckRequest, overdueAfter milliseconds: Int64,
                  now: UInt64 = KernelClock.monotonicNanoseconds()) -> Ticket {
        let (ticket, start) = table.withLockedValue { table -> (Ticket, Bool) in
            table.next &+= 1
            table.entries[table.next] = Entry(stuck: stuck, overdueAt: now &+ UInt64(milliseconds) * 1_000_000)
            let start = !table.threadStarted
            table.threadStarted = true
            return (Ticket(id: table.next), start)
        }
        if start { startThread() }
        return ticket
    }

    func unregister(_ ticket: Ticket) {
        _ = table.withLockedValue { $0.entries.removeValue(forKey: ticket.id) }
    }

    /// The requests overdue at `now`, taken out of the table (each is reported once).
    func takeOverdue(now: UInt64 = KernelClock.monotonicNanoseconds()) -> [StuckRequest] {
        table.withLockedValue { table in
            let due = table.entries.filter { $0.value.overdueAt <= now }
            for id in due.keys { table.entries[id] = nil }
            return due.values.map(\.stuck)
        }
    }

    /// How many requests are watched.
    var watched: Int { table.withLockedValue { $0.entries.count } }

    /// One pass of the thread: what to do about the overdue requests.
    func check(now: UInt64 = KernelClock.monotonicNanoseconds()) {
        let overdue = takeOverdue(now: now)
        guard let first = overdue.first else { return }
        let worker = supervision.workerNumber
        let late = "HARAKIRI on worker \(worker) (pid: \(getpid())): the event loop did not answer the request stuck past harakiri \(first.limitText) within \(HarakiriWatchdog.graceMilliseconds / 1000)s more (\(overdue.count) request(s)), \(first.description)"
        if supervision.isSupervised {
            logger.critical("\(late): the event loop is stuck, ending the process (SIGKILL) for the master to start another")
            kill(getpid(), SIGKILL)
        } else {
            logger.critical("\(late): the event loop is stuck, and with kernel.processes: 0 nobody replaces the process")
        }
    }

    private func startThread() {
        let body: @Sendable () -> Void = { [self] in
            while true {
                usleep(500_000)
                check()
            }
        }
        switch PosixThread.start(body) {
        case .success(let thread):
            pthread_detach(thread)
        case .failure(let error):
            logger.critical("cannot start the harakiri watchdog thread (\(error)): a stuck event loop will not be detected")
        }
    }
}

/// What this process counts and checks about itself: its request figures (stats), the recycling limits, and
/// harakiri with its watchdog. One per process, held by `KernelRuntime`.
public final class WorkerWatch: Sendable {
    public let counters = WorkerRequestCounters()
    public let recycler: WorkerRecycler
    let watchdog: HarakiriWatchdog
    private let supervision: any ProcessSupervision

    init(supervision: any ProcessSupervision, logger: Logger) {
        self.supervision = supervision
        recycler = WorkerRecycler(supervision: supervision, logger: logger)
        watchdog = HarakiriWatchdog(supervision: supervision, logger: logger)
    }

    /// A request's harakiri fired: logged as uWSGI's `HARAKIRI ON WORKER` line with the request, counted, and the
    /// worker replaced.
    func harakiri(_ stuck: StuckRequest, logger: Logger) {
        counters.harakiriHappened()
        let worker = supervision.workerNumber
        logger.error("HARAKIRI on worker \(worker) (pid: \(getpid())): request stuck for \(stuck.limitText) (harakiri \(stuck.limitText)), answered 504, \(stuck.description)")
        recycler.recycle(cause: "harakiri", detail: "harakiri on worker \(worker) (pid: \(getpid()))")
    }

    /// After each request: the counters and the recycling checks of `limits`.
    func requestFinished(status: Int, bytesSent: Int, nanoseconds: UInt64?, limits: RecyclingConfiguration) {
        counters.finished(status: status, bytesSent: bytesSent, nanoseconds: nanoseconds)
        if limits.maxRequests != nil || limits.reloadOnRSS != nil {
            recycler.requestFinished(count: counters.requests, limits: limits)
        }
    }
}
