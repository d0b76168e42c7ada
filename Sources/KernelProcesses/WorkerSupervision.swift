import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// The supervision of a worker process: it talks to its master over the control channel it inherited. The master
/// answers gathered queries (asking every worker and itself), keeps the worker table and replaces this worker
/// when it asks.
///
/// When the control channel closes the master is gone (killed, crashed): the worker stops at once rather than
/// serve on unsupervised, so no orphan is left.
public final class WorkerSupervision: ProcessSupervision {
    public let identity: WorkerIdentity
    private let queries: ProcessQueryRegistry
    private let logger: Logger
    private let connection = NIOLockedValueBox<ControlConnection?>(nil)
    private let replies = PendingReplies()
    private let replacementAsked = NIOLockedValueBox(false)
    private let closing = NIOLockedValueBox(false)

    public init(identity: WorkerIdentity, queries: ProcessQueryRegistry, logger: Logger) {
        self.identity = identity
        self.queries = queries
        self.logger = logger
    }

    public var workerNumber: Int { identity.number }
    public var isSupervised: Bool { true }

    /// Opens the control channel on the inherited descriptor.
    public func connect(group: any EventLoopGroup) async throws {
        let opened = try await ControlConnection.adopt(
            descriptor: identity.controlDescriptor, group: group, logger: logger,
            received: { [self] message in received(message) },
            closed: { [self] in masterGone() })
        connection.withLockedValue { $0 = opened }
    }

    /// Closes the control channel as this worker exits (its closing then means nothing).
    public func close() {
        closing.withLockedValue { $0 = true }
        connection.withLockedValue { $0 }?.close()
    }

    /// Tells the master this worker accepts on its listeners.
    public func reportServing() {
        send(.ready)
    }

    public func requestReplacement(reason: String) {
        let first = replacementAsked.withLockedValue { asked -> Bool in
            defer { asked = true }
            return !asked
        }
        guard first else { return }
        logger.notice("worker process \(identity.number) asks to be replaced: \(reason)")
        send(.replace(reason: reason))
    }

    public func gather(_ query: String, timeout: TimeAmount) async -> [ProcessAnswer] {
        let milliseconds = UInt32(clamping: max(timeout.nanoseconds / 1_000_000, 0))
        // The master waits `timeout` for the workers; the reply itself gets a little longer to arrive.
        let reply = await replies.ask(timeout: timeout + .milliseconds(500)) { id in
            send(.gather(id: id, query: query, timeoutMilliseconds: milliseconds))
        }
        guard case .gathered(_, let answers) = reply else {
            // No master to ask: this process's own answer is all there is.
            guard let body = await queries.answer(query) else { return [] }
            return [ProcessAnswer(source: .worker(identity.number), pid: getpid(), body: body)]
        }
        return answers.map(\.processAnswer)
    }

    public func workers() async -> [WorkerProcessInfo] {
        let reply = await replies.ask(timeout: .seconds(5)) { id in send(.listWorkers(id: id)) }
        guard case .workers(_, let table) = reply else { return [] }
        return table
    }

    public func share(_ command: String, key: String, memory: SharedCommandMemory, timeout: TimeAmount) async -> [ProcessAnswer] {
        guard command.utf8.count + key.utf8.count <= ProcessSharing.maximumCommandLength else {
            // A frame the master would refuse closes the channel, and this worker with it.
            logger.error("a shared command of \(command.utf8.count) bytes is longer than \(ProcessSharing.maximumCommandLength): not sent")
            return []
        }
        let milliseconds = UInt32(clamping: max(timeout.nanoseconds / 1_000_000, 0))
        let reply = await replies.ask(timeout: timeout + .milliseconds(500)) { id in
            send(.share(id: id, key: key, command: command, memory: memory, timeoutMilliseconds: milliseconds))
        }
        // No reply: the master is gone (and this worker stops). The command is not run here alone, since the
        // master may have had it run everywhere already.
        guard case .gathered(_, let answers) = reply else { return [] }
        return answers.map(\.processAnswer)
    }

    public func replaySharedCommands() async {
        var after: UInt64 = 0
        var replayed = 0
        while true {
            let reply = await replies.ask(timeout: .seconds(30)) { id in send(.listShared(id: id, after: after)) }
            guard case .shared(_, let commands, let through) = reply else {
                logger.error("worker process \(identity.number): the master did not send the shared commands to replay")
                return
            }
            // Empty: the master now sends this worker every new command itself.
            guard !commands.isEmpty else { break }
            for command in commands { _ = await queries.answer(command) }
            replayed += commands.count
            after = through
        }
        if replayed > 0 { logger.notice("worker process \(identity.number) replayed \(replayed) command(s) shared before it started") }
    }

    private func send(_ message: ControlMessage) {
        connection.withLockedValue { $0 }?.send(message)
    }

    private func received(_ message: ControlMessage) {
        switch message {
        case .query(let id, let query):
            Task {
                let body = await queries.answer(query)
                send(.answer(id: id, body: body))
            }
        case .gathered(let id, _), .workers(let id, _), .shared(let id, _, _):
            replies.resolve(id, with: message)
        default:
            logger.error("control channel: unexpected \(message) from the master")
        }
    }

    private func masterGone() {
        replies.cancelAll()
        guard !closing.withLockedValue({ $0 }) else { return }
        logger.critical("the master process is gone (its control channel closed): exiting")
        // SIGINT is a fast stop whatever shutdown_delay says: nobody supervises this process any more.
        kill(getpid(), SIGINT)
    }
}
