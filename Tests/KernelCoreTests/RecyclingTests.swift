import Foundation
@testable import KernelConfig
@testable import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import XCTest

/// A process group that records the replacements asked for.
private final class RecordingSupervision: ProcessSupervision {
    let supervised: Bool
    let replacements = NIOLockedValueBox<[String]>([])
    init(supervised: Bool) { self.supervised = supervised }
    var workerNumber: Int { 3 }
    var isSupervised: Bool { supervised }
    func requestReplacement(reason: String) { replacements.withLockedValue { $0.append(reason) } }
    func gather(_ query: String, timeout: TimeAmount) async -> [ProcessAnswer] { [] }
    func workers() async -> [WorkerProcessInfo] { [] }
    func share(_ command: String, key: String, memory: SharedCommandMemory, timeout: TimeAmount) async -> [ProcessAnswer] { [] }
    func replaySharedCommands() async {}
    var asked: [String] { replacements.withLockedValue { $0 } }
}

/// Keeps every line logged.
private struct LineRecorder: LogHandler {
    let lines: NIOLockedValueBox<[String]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) { lines.withLockedValue { $0.append("\(event.message)") } }
}

private func recordingLogger() -> (Logger, NIOLockedValueBox<[String]>) {
    let lines = NIOLockedValueBox<[String]>([])
    return (Logger(label: "test") { _ in LineRecorder(lines: lines) }, lines)
}

/// The driver's view of a connection: the responses it was handed.
private final class ResponseRecorder: ChannelInboundHandler, DrivenConnection {
    typealias InboundIn = ByteBuffer
    var context: ChannelHandlerContext!
    var responses: [(status: Int, body: String)] = []
    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func exchangeResponded(_ response: KernelResponse, serial: UInt64, context: ChannelHandlerContext) -> Bool {
        var body = ""
        if case .buffer(let buffer) = response.body { body = String(buffer: buffer) }
        responses.append((response.status, body))
        return true
    }
    func responsePartArrived(_ part: Result<ByteBuffer?, any Error>, serial: UInt64, context: ChannelHandlerContext) {}
    func responsePartWritten(_ result: Result<Void, any Error>, serial: UInt64, context: ChannelHandlerContext) {}
    func watchedWriteCompleted(context: ChannelHandlerContext) {}
    func connectionTimerFired(context: ChannelHandlerContext) {}
    func lingeringStarted(context: ChannelHandlerContext) {}
}

/// Answers when the test completes `promise`, after noting what it waits for.
private struct WaitingHandler: RequestHandler {
    let promise: EventLoopPromise<KernelResponse>
    func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        context.activity?.note("waiting for upstream \"http://127.0.0.1:9\"")
        return promise.futureResult
    }
}

private struct OneRoute: RequestRouter {
    let handler: any RequestHandler
    func route(_ request: KernelRequest) -> RouteDecision {
        RouteDecision(route: RouteInfo(serverName: "api", location: "/slow"), handler: handler, maxBodySize: nil,
                      accessLog: nil, bodyBuffering: RequestBodyBuffering(bufferSize: 16, tempPath: NSTemporaryDirectory()))
    }
}

final class RecyclingTests: XCTestCase {
    // MARK: - Configuration

    private func core(_ lines: String) throws -> CoreConfiguration {
        let root = try YAMLParser().parse("kernel:\n" + lines, file: "k.yaml")
        return try CoreConfiguration.decode(try ConfigValue(node: root, path: "").mapping().optional("kernel"), directory: "/etc/kernel")
    }

    func testRecyclingKeysDecodeWithUWSGIsUnits() throws {
        let configuration = try core("  harakiri: 30\n  max_requests: 1000\n  max_worker_lifetime: 1h\n  reload_on_rss: 200m\n")
        XCTAssertEqual(configuration.recycling, RecyclingConfiguration(harakiri: .seconds(30), maxRequests: 1000,
                                                                       maxWorkerLifetime: ConfigDuration(milliseconds: 3_600_000),
                                                                       reloadOnRSS: ByteSize(bytes: 200 << 20)))
        XCTAssertEqual(try core("  reload_on_rss: 200\n").recycling.reloadOnRSS?.bytes, 200 << 20, "a bare number is megabytes, as uWSGI reads it")
        XCTAssertEqual(try core("  harakiri: 1500ms\n").recycling.harakiri?.milliseconds, 1500)
        XCTAssertEqual(try core("  pid: k.pid\n").recycling, RecyclingConfiguration(), "all off by default")
    }

    func testRecyclingKeysRejectZeroAndNonsense() throws {
        let cases = [
            ("  harakiri: 0\n", "k.yaml:2:13: kernel.harakiri: expected a duration above zero, such as 30s, found \"0\""),
            ("  max_requests: 0\n", "k.yaml:2:17: kernel.max_requests: expected a number of requests 1-2147483647, found \"0\""),
            ("  reload_on_rss: lots\n", "k.yaml:2:18: kernel.reload_on_rss: expected a size such as 512, 64k, 100m or 1g, found \"lots\""),
            ("  reload_on_rss: 0\n", "k.yaml:2:18: kernel.reload_on_rss: expected a size such as 200m, or megabytes, found \"0\""),
            ("  listen_backlog: 0\n", "k.yaml:2:19: kernel.listen_backlog: expected an integer 1-65535, found \"0\""),
            ("  stats: \"nowhere:\"\n", "k.yaml:2:10: kernel.stats: expected an address such as 127.0.0.1:9191 or unix:/run/kernel-stats.sock, found \"nowhere:\""),
        ]
        for (text, message) in cases {
            XCTAssertThrowsError(try core(text)) { XCTAssertEqual("\($0)", message) }
        }
    }

    func testListenBacklogDefaultsTo1024AndStatsTakesTCPAndUnixAddresses() throws {
        XCTAssertEqual(try core("  pid: k.pid\n").listenBacklog, 1024)
        XCTAssertNil(try core("  pid: k.pid\n").stats)
        XCTAssertEqual(try core("  listen_backlog: 4096\n").listenBacklog, 4096)
        XCTAssertEqual(try core("  stats: 127.0.0.1:9191\n").stats, .tcp(host: "127.0.0.1", port: 9191))
        XCTAssertEqual(try core("  stats: unix:run/stats.sock\n").stats, .unix(path: "/etc/kernel/run/stats.sock"),
                       "relative to the file's directory")
    }

    func testAListenerWithoutItsOwnBacklogTakesTheKernelOne() throws {
        let runtime = KernelRuntime.standalone()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let registrar = Registrar(role: .both, mode: .check, configurationFile: "-", runtime: runtime)
        let initialize: @Sendable (any Channel, KernelRuntime) -> EventLoopFuture<Void> = { channel, _ in channel.eventLoop.makeSucceededVoidFuture() }
        registrar.addListener(ListenerSpec(protocolName: "http", address: .tcp(host: "127.0.0.1", port: 1), initializeConnection: initialize))
        registrar.addListener(ListenerSpec(protocolName: "http", address: .tcp(host: "127.0.0.1", port: 2), backlog: 64, initializeConnection: initialize))
        var configuration = CoreConfiguration()
        configuration.listenBacklog = 2048
        let generation = KernelGeneration(number: 1, core: configuration, registrar: registrar, activeModules: [])
        XCTAssertEqual(generation.listenerSpecs.map(\.backlog), [2048, 64])
    }

    func testABacklogAboveSomaxconnIsWarnedAbout() {
        let (logger, lines) = recordingLogger()
        ListenBacklog.warnIfCapped(1024, listener: "http 127.0.0.1:8080", logger: logger, maximum: 4096)
        XCTAssertTrue(lines.withLockedValue { $0.isEmpty })
        ListenBacklog.warnIfCapped(8192, listener: "http 127.0.0.1:8080", logger: logger, maximum: 4096)
        XCTAssertEqual(lines.withLockedValue { $0 }, ["listen backlog 8192 of http 127.0.0.1:8080 is larger than net.core.somaxconn (4096): the system caps the accept queue at 4096 (raise it with sysctl net.core.somaxconn=8192)"])
        XCTAssertNotNil(ListenBacklog.systemMaximum(), "Linux has /proc/sys/net/core/somaxconn")
    }

    // MARK: - Recycling

    func testAWorkerAsksForItsReplacementOnceWithUWSGIsGoodbye() {
        let supervision = RecordingSupervision(supervised: true)
        let (logger, lines) = recordingLogger()
        let recycler = WorkerRecycler(supervision: supervision, logger: logger)
        let limits = RecyclingConfiguration(maxRequests: 3, reloadOnRSS: ByteSize(bytes: 1))
        recycler.requestFinished(count: 2, limits: RecyclingConfiguration(maxRequests: 3))
        XCTAssertEqual(supervision.asked, [])
        XCTAssertFalse(recycler.isRecycling)
        recycler.requestFinished(count: 3, limits: limits)
        recycler.requestFinished(count: 4, limits: limits)
        XCTAssertEqual(supervision.asked, ["max_requests"], "once, whatever limit comes next")
        XCTAssertTrue(recycler.isRecycling)
        XCTAssertEqual(lines.withLockedValue { $0 }, ["max requests reached (3 >= 3): ...The work of process \(getpid()) is done. Seeya!"])
    }

    func testResidentMemoryAndLifetimeLimits() {
        let supervision = RecordingSupervision(supervised: true)
        let (logger, lines) = recordingLogger()
        let recycler = WorkerRecycler(supervision: supervision, logger: logger)
        recycler.requestFinished(count: 1, limits: RecyclingConfiguration(reloadOnRSS: ByteSize(bytes: 1 << 40)))
        recycler.tick(limits: RecyclingConfiguration(maxWorkerLifetime: .seconds(60)), now: recycler.startedAt + 59_000_000_000)
        XCTAssertEqual(supervision.asked, [])
        recycler.tick(limits: RecyclingConfiguration(maxWorkerLifetime: .seconds(60)), now: recycler.startedAt + 61_000_000_000)
        XCTAssertEqual(supervision.asked, ["max_worker_lifetime"])
        XCTAssertEqual(lines.withLockedValue { $0.first }, "worker 3 lifetime reached, it was running for 61 second(s): ...The work of process \(getpid()) is done. Seeya!")

        let other = RecordingSupervision(supervised: true)
        let rss = WorkerRecycler(supervision: other, logger: logger)
        rss.requestFinished(count: 1, limits: RecyclingConfiguration(reloadOnRSS: ByteSize(bytes: 1 << 20)))
        XCTAssertEqual(other.asked, ["reload_on_rss"], "a test process is larger than 1 MB")
    }

    func testAProcessWithoutAMasterLogsEachLimitOnceAndKeepsAccepting() {
        let supervision = RecordingSupervision(supervised: false)
        let (logger, lines) = recordingLogger()
        let recycler = WorkerRecycler(supervision: supervision, logger: logger)
        recycler.requestFinished(count: 5, limits: RecyclingConfiguration(maxRequests: 5))
        recycler.requestFinished(count: 6, limits: RecyclingConfiguration(maxRequests: 5))
        recycler.recycle(cause: "harakiri", detail: "harakiri on worker 0")
        XCTAssertEqual(supervision.asked, ["max_requests", "harakiri"])
        XCTAssertEqual(lines.withLockedValue { $0 }, ["max requests reached (5 >= 5)", "harakiri on worker 0"])
        XCTAssertFalse(recycler.isRecycling, "nobody replaces it: it goes on accepting")
    }

    func testStatmFieldsAreBytes() {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let parsed = ProcessMemory.parse(ArraySlice("1000 250 100 1 0 300 0\n".utf8))
        XCTAssertEqual(parsed?.virtual, 1000 * page)
        XCTAssertEqual(parsed?.resident, 250 * page)
        XCTAssertNil(ProcessMemory.parse(ArraySlice("garbage".utf8)))
        XCTAssertGreaterThan(ProcessMemory.residentBytes() ?? 0, 0)
    }

    func testCountersGiveUWSGIsFigures() async {
        let counters = WorkerRequestCounters()
        counters.finished(status: 200, bytesSent: 100, nanoseconds: 2_000_000)
        counters.finished(status: 500, bytesSent: 50, nanoseconds: 4_000_000)
        // Another thread counts into its own cell; readings sum them.
        await Task.detached { counters.finished(status: 200, bytesSent: 0, nanoseconds: nil) }.value
        XCTAssertEqual(counters.requests, 3)
        counters.harakiriHappened()
        XCTAssertEqual(counters.snapshot, WorkerRequestCounters.Snapshot(requests: 3, bytesSent: 150, failures: 1, harakiris: 1,
                                                                          runningMicroseconds: 6000, averageMicroseconds: 3000))
        XCTAssertEqual(counters.takeDelta(), 3)
        counters.finished(status: 200, bytesSent: 1, nanoseconds: nil)
        XCTAssertEqual(counters.takeDelta(), 1)
    }

    // MARK: - Harakiri

    private func harakiriExchange(supervision: RecordingSupervision, logger: Logger, harakiri: ConfigDuration?)
        throws -> (EmbeddedChannel, ResponseRecorder, KernelRuntime, EventLoopPromise<KernelResponse>, InFlightExchange) {
        let channel = EmbeddedChannel()
        let recorder = ResponseRecorder()
        try channel.pipeline.syncOperations.addHandler(recorder)
        let file = try LogFile(path: "stderr")
        let runtime = KernelRuntime(eventLoopGroup: MultiThreadedEventLoopGroup(numberOfThreads: 1), logger: logger,
                                    logFiles: LogFileRegistry(), errorLog: ErrorLogHandler.Destination(file: file, level: .critical),
                                    supervision: { _ in supervision })
        let promise = channel.eventLoop.makePromise(of: KernelResponse.self)
        var configuration = CoreConfiguration()
        configuration.recycling.harakiri = harakiri
        runtime.install(KernelGeneration(router: OneRoute(handler: WaitingHandler(promise: promise)), runtime: runtime, core: configuration))
        var headers = HeaderFields()
        headers.add("Host", "api.example")
        let request = KernelRequest(method: "GET", uri: "/slow?x=1", path: "/slow", query: "x=1", version: .http1_1, headers: headers,
                                    connection: ConnectionInfo(protocolName: "http", listener: "-",
                                                               remoteAddress: try SocketAddress(ipAddress: "10.0.0.7", port: 5000), localAddress: nil))
        let inFlight = ExchangeDriver.begin(request, serial: 1, runtime: runtime, on: channel.eventLoop)
        return (channel, recorder, runtime, promise, inFlight)
    }

    func testAStuckRequestIsAnswered504LoggedWithWhatItWaitedForAndItsWorkerReplaced() throws {
        let supervision = RecordingSupervision(supervised: false)
        let (logger, lines) = recordingLogger()
        let (channel, recorder, runtime, promise, inFlight) = try harakiriExchange(supervision: supervision, logger: logger, harakiri: .seconds(2))
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        ExchangeDriver.start(inFlight, for: recorder, context: recorder.context)
        XCTAssertEqual(runtime.worker.watchdog.watched, 1)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1999))
        XCTAssertTrue(recorder.responses.isEmpty)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        XCTAssertEqual(recorder.responses.map(\.status), [504])
        XCTAssertEqual(recorder.responses.first?.body, "{\"error\":\"gateway timeout\"}", "the kernel's 504 body")
        XCTAssertEqual(supervision.asked, ["harakiri"])
        XCTAssertEqual(runtime.worker.counters.snapshot.harakiris, 1)
        XCTAssertEqual(runtime.worker.watchdog.watched, 0, "the loop answered: nothing for the watchdog")
        XCTAssertEqual(lines.withLockedValue { $0.first },
                       "HARAKIRI on worker 3 (pid: \(getpid())): request stuck for 2s (harakiri 2s), answered 504, while waiting for upstream \"http://127.0.0.1:9\", client: 10.0.0.7, server: api, request: \"GET /slow?x=1 HTTP/1.1\", location: \"/slow\", host: \"api.example\"")
        promise.succeed(.text(200, "too late"))
        channel.embeddedEventLoop.run()
        XCTAssertEqual(recorder.responses.map(\.status), [504], "the handler's late answer is dropped")
    }

    func testAnAnswerInTimeDisarmsTheTimer() throws {
        let supervision = RecordingSupervision(supervised: false)
        let (logger, _) = recordingLogger()
        let (channel, recorder, runtime, promise, inFlight) = try harakiriExchange(supervision: supervision, logger: logger, harakiri: .seconds(2))
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        ExchangeDriver.start(inFlight, for: recorder, context: recorder.context)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        promise.succeed(.text(200, "in time"))
        channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        XCTAssertEqual(recorder.responses.map(\.status), [200])
        XCTAssertEqual(supervision.asked, [])
        XCTAssertEqual(runtime.worker.watchdog.watched, 0)
    }

    func testWithoutHarakiriNothingIsArmedAndNoActivityIsKept() throws {
        let supervision = RecordingSupervision(supervised: false)
        let (logger, _) = recordingLogger()
        let (channel, recorder, runtime, promise, inFlight) = try harakiriExchange(supervision: supervision, logger: logger, harakiri: nil)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        XCTAssertNil(inFlight.exchange.context.activity)
        ExchangeDriver.start(inFlight, for: recorder, context: recorder.context)
        XCTAssertEqual(runtime.worker.watchdog.watched, 0)
        channel.embeddedEventLoop.advanceTime(by: .seconds(3600))
        XCTAssertTrue(recorder.responses.isEmpty)
        promise.succeed(.text(200, "whenever"))
        channel.embeddedEventLoop.run()
        XCTAssertEqual(recorder.responses.map(\.status), [200])
    }

    func testTheWatchdogReportsARequestWhoseLoopNeverFiredItsTimer() {
        let supervision = RecordingSupervision(supervised: false)
        let (logger, lines) = recordingLogger()
        let watchdog = HarakiriWatchdog(supervision: supervision, logger: logger)
        let request = KernelRequest(method: "POST", uri: "/v2/models/m/infer", path: "/v2/models/m/infer", query: "", version: .http1_1,
                                    headers: HeaderFields(), connection: ConnectionInfo(protocolName: "http", listener: "-", remoteAddress: nil, localAddress: nil))
        let activity = RequestActivity()
        activity.note("queued or running in model \"m\" (queue depth 1)")
        let stuck = StuckRequest(request: request, route: RouteInfo(location: "/v2/"), activity: activity, limit: 1000)
        let ticket = watchdog.register(stuck, overdueAfter: 4000, now: 0)
        _ = watchdog.register(stuck, overdueAfter: 9000, now: 0)
        XCTAssertTrue(watchdog.takeOverdue(now: 3_999_000_000).isEmpty)
        watchdog.unregister(ticket)
        watchdog.check(now: 5_000_000_000)
        XCTAssertTrue(lines.withLockedValue { $0.isEmpty }, "the first one was answered")
        watchdog.check(now: 9_000_000_000)
        XCTAssertEqual(lines.withLockedValue { $0 }, ["HARAKIRI on worker 3 (pid: \(getpid())): the event loop did not answer the request stuck past harakiri 1s within 3s more (1 request(s)), while queued or running in model \"m\" (queue depth 1), client: -, server: , request: \"POST /v2/models/m/infer HTTP/1.1\", location: \"/v2/\": the event loop is stuck, and with kernel.processes: 0 nobody replaces the process"])
        XCTAssertEqual(watchdog.watched, 0, "reported once")
    }

    // MARK: - Listen queues

    func testAFullAcceptQueueIsLoggedCountedAndExposed() {
        let (logger, lines) = recordingLogger()
        let monitor = ListenQueueMonitor(logger: logger)
        monitor.record(name: "http 127.0.0.1:8080", queue: 3, maxQueue: 100)
        XCTAssertTrue(lines.withLockedValue { $0.isEmpty })
        monitor.record(name: "http 127.0.0.1:8080", queue: 101, maxQueue: 100)
        monitor.record(name: "uwsgi 127.0.0.1:3031", queue: 0, maxQueue: 1024)
        XCTAssertEqual(lines.withLockedValue { $0 }, ["*** listen queue of socket \"http 127.0.0.1:8080\" full !!! (101/100) *** (1 time(s) so far: raise its backlog, or add workers)"])
        XCTAssertEqual(monitor.totalQueue, 101)
        XCTAssertEqual(monitor.totalOverflows, 1)
        XCTAssertEqual(monitor.metricsText(worker: 2), """
            # HELP kernel_listen_queue Connections waiting in the accept queue of a listener at the last sample.
            # TYPE kernel_listen_queue gauge
            kernel_listen_queue{listener="127.0.0.1:8080",worker="2"} 101
            kernel_listen_queue{listener="127.0.0.1:3031",worker="2"} 0
            # HELP kernel_listen_overflows_total Samples that found the accept queue of a listener full.
            # TYPE kernel_listen_overflows_total counter
            kernel_listen_overflows_total{listener="127.0.0.1:8080",worker="2"} 1
            kernel_listen_overflows_total{listener="127.0.0.1:3031",worker="2"} 0

            """)
        XCTAssertEqual(ListenQueueMonitor.label("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"")
    }

    func testTheSamplerReadsAListeningSocketsQueueThroughTCPInfo() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 8)
            .serverChannelOption(.autoRead, value: false)  // nothing is accepted: connections wait in the queue
            .bind(host: "127.0.0.1", port: 0).get()
        let port = server.localAddress!.port!
        var clients: [Int32] = []
        defer { clients.forEach { close($0) } }
        for _ in 0..<3 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            XCTAssertEqual(connected, 0)
            clients.append(fd)
        }
        let (logger, _) = recordingLogger()
        let monitor = ListenQueueMonitor(logger: logger)
        await monitor.sample([.channel(protocolName: "http", server)])
        XCTAssertEqual(monitor.current, [ListenQueueMonitor.Socket(name: "http 127.0.0.1:\(port)", queue: 3, maxQueue: 8, overflows: 0)])

        // A worker samples the socket it inherited by its descriptor: here one listening with a backlog of 2, full.
        let raw = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(raw) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(raw, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        XCTAssertEqual(listen(raw, 2), 0)
        var bound = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(raw, $0, &length) } }
        let rawPort = Int(UInt16(bigEndian: bound.sin_port))
        for _ in 0..<3 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            clients.append(fd)
            _ = withUnsafePointer(to: &bound) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        // The handshakes complete on loopback without waiting; the sampler is asked until it sees them.
        var sampled: ListenQueueMonitor.Socket?
        for _ in 0..<100 {
            await monitor.sample([.descriptor(protocolName: "uwsgi", raw)])
            sampled = monitor.current.first
            if sampled?.queue == 3 { break }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        XCTAssertEqual(sampled?.name, "uwsgi 127.0.0.1:\(rawPort)")
        XCTAssertEqual(sampled?.maxQueue, 2)
        XCTAssertEqual(sampled?.queue, 3, "Linux queues backlog + 1")
        XCTAssertGreaterThanOrEqual(sampled?.overflows ?? 0, 1)
        try await server.close()
        try await group.shutdownGracefully()
    }

    // MARK: - Stats

    func testTheFlatObjectReaderKeepsRawValuesInOrder() {
        let fields = FlatJSONObject.fields(of: Array(#" {"id":1, "apps":[{"a":"x,}"}], "s":"q\"uote", "o":{"k":[1,2]} } "#.utf8))
        XCTAssertEqual(fields?.map(\.key), ["id", "apps", "s", "o"])
        XCTAssertEqual(fields?.map(\.value), ["1", #"[{"a":"x,}"}]"#, #""q\"uote""#, #"{"k":[1,2]}"#])
        XCTAssertNil(FlatJSONObject.fields(of: Array(#"{"id":1"#.utf8)))
        XCTAssertNil(FlatJSONObject.fields(of: Array(#"[1]"#.utf8)))
        XCTAssertNil(FlatJSONObject.fields(of: Array(#"{"id":1} x"#.utf8)))
        XCTAssertEqual(FlatJSONObject.fields(of: Array("{}".utf8))?.count, 0)
    }

    func testTheDocumentLaysTheMastersTableOverTheWorkersAnswers() throws {
        let runtime = KernelRuntime.standalone()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let (logger, _) = recordingLogger()
        let queues = ListenQueueMonitor(logger: logger)
        queues.record(name: "http 127.0.0.1:8080", queue: 2, maxQueue: 1024)
        runtime.worker.counters.finished(status: 200, bytesSent: 10, nanoseconds: 1000)
        let own = WorkerStatsReport.render(runtime: runtime, listenQueues: queues, startedAt: 1000)
        let table = [WorkerProcessInfo(number: 1, pid: getpid(), pool: "main", spawnedAt: 1234.5, respawns: 2, state: "serving"),
                     WorkerProcessInfo(number: 2, pid: 999_999, pool: "main", spawnedAt: 1300, respawns: 0, state: "starting")]
        let bytes = StatsDocument.render(workers: table, answers: [ProcessAnswer(source: .worker(1), pid: getpid(), body: own)], processID: 42)
        let document = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        for key in ["version", "listen_queue", "listen_queue_errors", "load", "pid", "uid", "gid", "cwd", "sockets", "workers"] {
            XCTAssertNotNil(document[key], key)
        }
        XCTAssertEqual(document["pid"] as? Int, 42)
        XCTAssertEqual(document["listen_queue"] as? Int, 2)
        let sockets = try XCTUnwrap(document["sockets"] as? [[String: Any]])
        XCTAssertEqual(sockets.first?["name"] as? String, "127.0.0.1:8080")
        XCTAssertEqual(sockets.first?["proto"] as? String, "http")
        XCTAssertEqual(sockets.first?["max_queue"] as? Int, 1024)
        let workers = try XCTUnwrap(document["workers"] as? [[String: Any]])
        XCTAssertEqual(workers.count, 2)
        XCTAssertEqual(workers[0]["id"] as? Int, 0, "the worker's own number")
        XCTAssertEqual(workers[0]["requests"] as? Int, 1)
        XCTAssertEqual(workers[0]["tx"] as? Int, 10)
        XCTAssertEqual(workers[0]["status"] as? String, "idle")
        XCTAssertEqual(workers[0]["respawn_count"] as? Int, 3, "from the master's table: started 3 times")
        XCTAssertEqual(workers[0]["last_spawn"] as? Int, 1234)
        XCTAssertGreaterThan(workers[0]["rss"] as? Int ?? 0, 0)
        XCTAssertNil(workers[0]["sockets"], "folded into the top level")
        XCTAssertNil(workers[0]["in_flight"])
        XCTAssertEqual(workers[1]["pid"] as? Int, 999_999)
        XCTAssertEqual(workers[1]["status"] as? String, "starting", "no answer: the table's state")
        XCTAssertEqual(workers[1]["requests"] as? Int, 0)
    }

    func testTheStatsServerWritesOneDocumentAndCloses() async throws {
        let runtime = KernelRuntime.standalone()
        runtime.processQueries.register("stats") { Array(#"{"id":0,"pid":\#(getpid()),"requests":5,"status":"idle"}"#.utf8) }
        let server = StatsServer(address: .tcp(host: "127.0.0.1", port: 0), supervision: runtime.supervision,
                                 eventLoopGroup: runtime.eventLoopGroup, logger: runtime.logger)
        try await server.start()
        let port = try XCTUnwrap(server.boundAddress?.port)
        let received = try await Task.detached { () -> Data in
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard connected == 0 else { throw POSIXError(.ECONNREFUSED) }
            var data = Data()
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = read(fd, &chunk, chunk.count)
                if count <= 0 { break }
                data.append(contentsOf: chunk[0..<count])
            }
            return data
        }.value
        await server.stop()
        try await runtime.eventLoopGroup.shutdownGracefully()
        let document = try XCTUnwrap(try JSONSerialization.jsonObject(with: received) as? [String: Any])
        let workers = try XCTUnwrap(document["workers"] as? [[String: Any]])
        XCTAssertEqual(workers.map { $0["requests"] as? Int }, [5])
        XCTAssertEqual(workers.first?["respawn_count"] as? Int, 1)
    }
}
