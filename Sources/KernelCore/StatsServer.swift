import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// uWSGI's stats server (`kernel.stats: 127.0.0.1:9191`, or `unix:/path`): each connection gets one JSON document
/// and is closed, as `uwsgi --stats` does, so `uwsgitop 127.0.0.1:9191` and other uWSGI tools read it. The document
/// is built from the process group's worker table (`ProcessSupervision.workers()`) and every worker's answer to the
/// gathered `"stats"` query (`WorkerStatsReport`).
///
/// It runs in the process that owns the group: the single process of `processes: 0`, or the master, which has no
/// listeners of its own, so it needs only an event loop group, the supervision and a logger.
public final class StatsServer: KernelService {
    public var name: String { "stats" }
    public let address: ListenAddress
    private let supervision: any ProcessSupervision
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    private let channel = NIOLockedValueBox<(any Channel)?>(nil)
    /// How long the server waits for the workers' answers.
    private let gatherTimeout: TimeAmount

    public init(address: ListenAddress, supervision: any ProcessSupervision, eventLoopGroup: any EventLoopGroup,
                logger: Logger, gatherTimeout: TimeAmount = .seconds(1)) {
        self.address = address
        self.supervision = supervision
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.gatherTimeout = gatherTimeout
    }

    /// The address the server is bound to (the port a `:0` address got), once started.
    public var boundAddress: SocketAddress? { channel.withLockedValue { $0?.localAddress } }

    /// Binds the address and starts answering; logs `listening on stats ADDRESS (CONFIGURED)`.
    public func start() async throws {
        let server = self
        let bootstrap = ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.backlog, value: 128)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(StatsConnectionHandler(server: server))
                }
            }
        let bound: any Channel
        do {
            switch address {
            case .tcp(let host, let port):
                // SO_REUSEPORT: the new master of a binary upgrade binds the address while the old one still runs.
                bound = try await bootstrap.serverChannelOption(ChannelOptions.Types.SocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_REUSEPORT)), value: 1)
                    .bind(host: host, port: port).get()
            case .unix(let path):
                try removeSocketFile(path)
                bound = try await bootstrap.bind(unixDomainSocketPath: path).get()
            }
        } catch let error as ListenerError {
            throw ListenerError("stats server: \(error.description)")
        } catch {
            let text = (error as? IOError).map { "\($0.errnoCode): \(String(cString: strerror($0.errnoCode)))" } ?? "\(error)"
            throw ListenerError("stats server: bind() to \(address) failed (\(text))")
        }
        channel.withLockedValue { $0 = bound }
        let shown = bound.localAddress.map(describe) ?? address.description
        logger.notice("listening on stats \(shown) (\(address))")
    }

    /// Stops answering.
    public func stop() async {
        guard let bound = channel.withLockedValue({ value -> (any Channel)? in defer { value = nil }; return value }) else { return }
        try? await bound.close()
    }

    /// The stats document now.
    public func document() async -> [UInt8] {
        async let table = supervision.workers()
        async let answers = supervision.gather("stats", timeout: gatherTimeout)
        return StatsDocument.render(workers: await table, answers: await answers, processID: getpid())
    }
}

/// Answers one stats connection: the document, then close; whatever the client sends is ignored.
private final class StatsConnectionHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    private let server: StatsServer

    init(server: StatsServer) { self.server = server }

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        let server = self.server
        Task {
            let bytes = await server.document()
            try? await channel.writeAndFlush(channel.allocator.buffer(bytes: bytes)).get()
            try? await channel.close()
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// The uWSGI stats document: version, listen_queue, listen_queue_errors, signal_queue, load, pid, uid, gid, cwd,
/// locks, sockets, workers. Each worker object is the worker's own answer, with the master's view of the slot
/// (`respawn_count`, `last_spawn`) laid over it; a worker in the table that did not answer (starting, or
/// too busy) is shown with its table entry and zero counts.
enum StatsDocument {
    static func render(workers table: [WorkerProcessInfo], answers: [ProcessAnswer], processID: Int32) -> [UInt8] {
        var byPID: [Int32: [(key: String, value: String)]] = [:]
        for answer in answers {
            guard case .worker = answer.source, let fields = FlatJSONObject.fields(of: answer.body) else { continue }
            byPID[answer.pid] = fields
        }
        var workers: [[(key: String, value: String)]] = []
        var listenQueue = 0, listenQueueErrors = 0, load = 0
        var sockets: String?
        func absorb(_ fields: [(key: String, value: String)]) -> [(key: String, value: String)] {
            var kept: [(key: String, value: String)] = []
            for (key, value) in fields {
                switch key {
                // Workers that share an inherited socket each see its whole queue: the largest is the queue.
                case "listen_queue": listenQueue = max(listenQueue, Int(value) ?? 0)
                case "listen_queue_errors": listenQueueErrors = max(listenQueueErrors, Int(value) ?? 0)
                case "sockets": if sockets == nil || sockets == "[]" { sockets = value }
                case "in_flight": load += Int(value) ?? 0
                default: kept.append((key, value))
                }
            }
            return kept
        }
        var answered: Set<Int32> = []
        for info in table.sorted(by: { $0.number < $1.number }) {
            var fields: [(key: String, value: String)]
            if let own = byPID[info.pid] {
                answered.insert(info.pid)
                fields = absorb(own)
            } else {
                fields = WorkerStatsReport.placeholder(info)
            }
            set(&fields, "respawn_count", "\(info.respawns + 1)")
            set(&fields, "last_spawn", "\(Int(info.spawnedAt))")
            workers.append(fields)
        }
        // Answers of processes the table does not list (a worker the master is draining): shown as they are.
        for answer in answers where !answered.contains(answer.pid) {
            if let own = byPID[answer.pid] { workers.append(absorb(own)) }
        }
        var text = "{\"version\":\(JSONText.quoted(kernelVersion))"
        text += ",\"listen_queue\":\(listenQueue),\"listen_queue_errors\":\(listenQueueErrors),\"signal_queue\":0"
        text += ",\"load\":\(load),\"pid\":\(processID),\"uid\":\(getuid()),\"gid\":\(getgid())"
        text += ",\"cwd\":\(JSONText.quoted(currentDirectory())),\"locks\":[]"
        text += ",\"sockets\":\(sockets ?? "[]"),\"workers\":["
        text += workers.map { fields in
            "{" + fields.map { "\(JSONText.quoted($0.key)):\($0.value)" }.joined(separator: ",") + "}"
        }.joined(separator: ",")
        text += "]}"
        return Array(text.utf8)
    }

    private static func set(_ fields: inout [(key: String, value: String)], _ key: String, _ value: String) {
        if let index = fields.firstIndex(where: { $0.key == key }) { fields[index].value = value }
        else { fields.append((key, value)) }
    }

    private static func currentDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return "" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// This process's worker object for the gathered `"stats"` query, in uWSGI's shape (id, pid, accepting, requests,
/// delta_requests, exceptions, harakiri_count, signals, signal_queue, status, rss, vsz, running_time, last_spawn,
/// respawn_count, tx, avg_rt, apps, cores), followed by what the stats server folds into the document's top level
/// and removes from the worker: `listen_queue`, `listen_queue_errors`, `sockets` and `in_flight`.
public enum WorkerStatsReport {
    /// Renders the object for `runtime`; `listenQueues` are this process's sampled listeners.
    public static func render(runtime: KernelRuntime, listenQueues: ListenQueueMonitor, startedAt: Double) -> [UInt8] {
        let figures = runtime.worker.counters.snapshot
        let delta = runtime.worker.counters.takeDelta()
        let memory = ProcessMemory.read()
        let inFlight = runtime.currentGeneration?.requestsInFlight ?? 0
        let accepting = !runtime.stopping.isStopping && !runtime.worker.recycler.isRecycling
        let sockets = listenQueues.current
        var text = "{\"id\":\(runtime.supervision.workerNumber),\"pid\":\(getpid()),\"accepting\":\(accepting ? 1 : 0)"
        text += ",\"requests\":\(figures.requests),\"delta_requests\":\(delta),\"exceptions\":\(figures.failures)"
        text += ",\"harakiri_count\":\(figures.harakiris),\"signals\":0,\"signal_queue\":0"
        text += ",\"status\":\"\(inFlight > 0 ? "busy" : "idle")\""
        text += ",\"rss\":\(memory?.resident ?? 0),\"vsz\":\(memory?.virtual ?? 0)"
        text += ",\"running_time\":\(figures.runningMicroseconds),\"last_spawn\":\(Int(startedAt)),\"respawn_count\":1"
        text += ",\"tx\":\(figures.bytesSent),\"avg_rt\":\(figures.averageMicroseconds)"
        text += ",\"apps\":[{\"id\":0,\"modifier1\":0,\"mountpoint\":\"\",\"startup_time\":0,\"requests\":\(figures.requests),\"exceptions\":\(figures.failures),\"chdir\":\"\"}]"
        text += ",\"cores\":[{\"id\":0,\"requests\":\(figures.requests),\"static_requests\":0,\"routed_requests\":0,\"offloaded_requests\":0,\"write_errors\":0,\"read_errors\":0,\"in_request\":\(inFlight > 0 ? 1 : 0),\"vars\":[],\"req_info\":{}}]"
        text += ",\"listen_queue\":\(listenQueues.totalQueue),\"listen_queue_errors\":\(listenQueues.totalOverflows)"
        text += ",\"sockets\":[" + sockets.map { socket in
            let parts = socket.name.split(separator: " ", maxSplits: 1).map(String.init)
            let name = parts.count == 2 ? parts[1] : socket.name
            let proto = parts.count == 2 ? parts[0] : ""
            return "{\"name\":\(JSONText.quoted(name)),\"proto\":\(JSONText.quoted(proto)),\"queue\":\(socket.queue),\"max_queue\":\(socket.maxQueue),\"shared\":0,\"can_offload\":0}"
        }.joined(separator: ",") + "]"
        text += ",\"in_flight\":\(inFlight)}"
        return Array(text.utf8)
    }

    /// The fields of a worker in the table that gave no answer.
    static func placeholder(_ info: WorkerProcessInfo) -> [(key: String, value: String)] {
        let status = info.state == "serving" ? "idle" : info.state
        return [("id", "\(info.number)"), ("pid", "\(info.pid)"), ("accepting", info.state == "serving" ? "1" : "0"),
                ("requests", "0"), ("delta_requests", "0"), ("exceptions", "0"), ("harakiri_count", "0"),
                ("signals", "0"), ("signal_queue", "0"), ("status", JSONText.quoted(status)), ("rss", "0"), ("vsz", "0"),
                ("running_time", "0"), ("last_spawn", "0"), ("respawn_count", "1"), ("tx", "0"), ("avg_rt", "0"),
                ("apps", "[]"), ("cores", "[]")]
    }
}

/// The top-level members of a JSON object as (key, raw value text), in order: enough for the stats server to lay
/// the master's fields over a worker's answer without a JSON library. Keys with escapes, or anything that is not
/// one object, give nil.
enum FlatJSONObject {
    static func fields(of bytes: [UInt8]) -> [(key: String, value: String)]? {
        var index = 0
        func skipSpace() { while index < bytes.count, [0x20, 0x0A, 0x0D, 0x09].contains(bytes[index]) { index += 1 } }
        /// Skips a string starting at `index` (a quote); false when it does not end.
        func skipString() -> Bool {
            index += 1
            while index < bytes.count {
                switch bytes[index] {
                case UInt8(ascii: "\\"): index += 2
                case UInt8(ascii: "\""): index += 1; return true
                default: index += 1
                }
            }
            return false
        }
        skipSpace()
        guard index < bytes.count, bytes[index] == UInt8(ascii: "{") else { return nil }
        index += 1
        var fields: [(key: String, value: String)] = []
        while true {
            skipSpace()
            guard index < bytes.count else { return nil }
            if bytes[index] == UInt8(ascii: "}") { index += 1; break }
            if !fields.isEmpty {
                guard bytes[index] == UInt8(ascii: ",") else { return nil }
                index += 1
                skipSpace()
            }
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { return nil }
            let keyStart = index + 1
            guard skipString() else { return nil }
            let key = bytes[keyStart..<(index - 1)]
            guard !key.contains(UInt8(ascii: "\\")) else { return nil }
            skipSpace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { return nil }
            index += 1
            skipSpace()
            let valueStart = index
            var depth = 0
            scan: while index < bytes.count {
                switch bytes[index] {
                case UInt8(ascii: "\""): guard skipString() else { return nil }; continue scan
                case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    if depth == 0 { break scan }
                    depth -= 1
                case UInt8(ascii: ","): if depth == 0 { break scan }
                default: break
                }
                index += 1
            }
            guard depth == 0, index > valueStart else { return nil }
            var valueEnd = index
            while valueEnd > valueStart, [0x20, 0x0A, 0x0D, 0x09].contains(bytes[valueEnd - 1]) { valueEnd -= 1 }
            fields.append((String(decoding: key, as: UTF8.self), String(decoding: bytes[valueStart..<valueEnd], as: UTF8.self)))
        }
        skipSpace()
        return index == bytes.count ? fields : nil
    }
}
