import Foundation
import KernelConfig
import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import XCTest
@testable import HTTP

/// A far end that records how the listener drove it: the bytes handed over with `start`, the bytes read after,
/// and whether it was cancelled. Its tunnel ends when the test completes `end`.
final class RecordingUpgrade: ConnectionUpgrade, @unchecked Sendable {
    var started = false
    var cancelled = false
    var buffered: String?
    var received = ""
    var end: EventLoopPromise<ConnectionUpgradeEnd>?

    func start(client: any Channel, buffered: ByteBuffer?) -> EventLoopFuture<ConnectionUpgradeEnd> {
        started = true
        self.buffered = buffered.map { String(buffer: $0) }
        try! client.pipeline.syncOperations.addHandler(TunnelRecorder(upgrade: self))
        let end = client.eventLoop.makePromise(of: ConnectionUpgradeEnd.self)
        self.end = end
        return end.futureResult
    }

    func cancel() { cancelled = true }
}

final class TunnelRecorder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let upgrade: RecordingUpgrade
    init(upgrade: RecordingUpgrade) { self.upgrade = upgrade }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        upgrade.received += String(buffer: unwrapInboundIn(data))
    }
}

/// `/ws` answers `101` with the test's upgrade; everything else 404.
struct UpgradeRouter: RequestRouter {
    let upgrade: RecordingUpgrade
    let accessLog: AccessLog

    func route(_ request: KernelRequest) -> RouteDecision {
        let upgrade = self.upgrade
        let handler: any RequestHandler
        if request.path == "/ws" {
            handler = ClosureHandler { _, context in
                var response = KernelResponse(status: 101, headers: ["Upgrade": "websocket", "Sec-WebSocket-Accept": "abc"])
                response.upgrade = upgrade
                return context.eventLoop.makeSucceededFuture(response)
            }
        } else {
            handler = StaticResponseHandler(.error(404, "not found"))
        }
        return RouteDecision(route: RouteInfo(), handler: handler, maxBodySize: 1 << 20, accessLog: accessLog)
    }
}

/// The HTTP connection's side of an upgrade: the `101` head, the hand-over of the connection, the access log.
final class HTTPUpgradeTests: XCTestCase {
    private var runtime: KernelRuntime!
    private var channel: EmbeddedChannel!
    private let upgrade = RecordingUpgrade()
    private var accessLogPath = ""
    private var errorLogPath = ""

    override func setUpWithError() throws {
        accessLogPath = NSTemporaryDirectory() + "kernel-http-upgrade-\(getpid())-\(UUID().uuidString).log"
        errorLogPath = accessLogPath + ".error"
        let destination = ErrorLogHandler.Destination(file: try LogFile(path: errorLogPath), level: .info)
        runtime = KernelRuntime(eventLoopGroup: MultiThreadedEventLoopGroup(numberOfThreads: 1),
                                logger: Logger(label: "kernel") { _ in ErrorLogHandler(destination: destination) },
                                logFiles: LogFileRegistry(), errorLog: destination)
        let accessLog = AccessLog(file: try LogFile(path: accessLogPath), format: .combined)
        runtime.install(KernelGeneration(router: UpgradeRouter(upgrade: upgrade, accessLog: accessLog), runtime: runtime))
        let configuration = HTTPConfiguration(listen: [HTTPListenAddress(text: "127.0.0.1:8080", address: .tcp(host: "127.0.0.1", port: 8080))])
        channel = EmbeddedChannel()
        let settings = HTTPConnectionSettings(configuration: configuration, listener: "127.0.0.1:8080")
        try channel.pipeline.syncOperations.addHandler(HTTPConnectionHandler(settings: settings, runtime: runtime))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40000)).wait()
    }

    override func tearDown() {
        _ = try? channel.finish()
        try? FileManager.default.removeItem(atPath: accessLogPath)
        try? FileManager.default.removeItem(atPath: errorLogPath)
        try? runtime.eventLoopGroup.syncShutdownGracefully()
    }

    private func output() throws -> String {
        var text = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { text += String(buffer: buffer) }
        return text.components(separatedBy: "\r\n").map { $0.hasPrefix("Date: ") ? "Date: -" : $0 }.joined(separator: "\r\n")
    }

    private func accessLog() -> String { (try? String(contentsOfFile: accessLogPath, encoding: .utf8)) ?? "" }

    func testA101IsWrittenAndTheConnectionGoesToTheTunnel() throws {
        try channel.writeInbound(ByteBuffer(string: "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nearly"))
        XCTAssertEqual(try output(), "HTTP/1.1 101 Switching Protocols\r\nServer: kernel/\(kernelVersion)\r\nDate: -\r\nSec-WebSocket-Accept: abc\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
        XCTAssertTrue(upgrade.started)
        XCTAssertEqual(upgrade.buffered, "early", "bytes behind the request head go to the tunnel")
        XCTAssertThrowsError(try channel.pipeline.syncOperations.handler(type: HTTPConnectionHandler.self),
                             "the HTTP handler left the pipeline")
        // What follows is the tunnel's, never parsed as HTTP.
        try channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n"))
        XCTAssertEqual(upgrade.received, "GET / HTTP/1.1\r\n\r\n")
        XCTAssertEqual(try output(), "")
        XCTAssertEqual(accessLog(), "", "the exchange lasts as long as the tunnel")
        upgrade.end?.succeed(ConnectionUpgradeEnd(bytesToClient: 42, bytesFromClient: 7))
        let logged = accessLog()
        XCTAssertTrue(logged.contains("\"GET /ws HTTP/1.1\" 101 42 "), logged)
    }

    func testAnHTTP10RequestCannotBeUpgraded() throws {
        try channel.writeInbound(ByteBuffer(string: "GET /ws HTTP/1.0\r\nUpgrade: websocket\r\n\r\n"))
        let written = try output()
        XCTAssertTrue(written.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"), written)
        XCTAssertTrue(upgrade.cancelled)
        XCTAssertFalse(upgrade.started)
        let errors = (try? String(contentsOfFile: errorLogPath, encoding: .utf8)) ?? ""
        XCTAssertTrue(errors.contains("upstream answered 101 to a request that cannot be upgraded"), errors)
    }

    func testAHeadRequestCannotBeUpgraded() throws {
        try channel.writeInbound(ByteBuffer(string: "HEAD /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"))
        XCTAssertTrue(try output().hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"))
        XCTAssertTrue(upgrade.cancelled)
    }
}

/// `HTTPConnectionStateMachine.upgradeReady`: when a connection may become a tunnel.
final class HTTPUpgradeStateTests: XCTestCase {
    typealias Machine = HTTPConnectionStateMachine

    private func processing(method: String = "GET", version: ProtocolVersion = .http1_1, streamedBody: Bool = false) -> Machine {
        var machine = Machine(keepaliveRequests: 100)
        _ = machine.channelActive()
        _ = machine.headReceived()
        _ = machine.requestRouted(Machine.RoutedHead(
            keepAliveWanted: true, isHead: method == "HEAD", version: version, contentLength: streamedBody ? 10 : 0,
            chunked: false, expectContinue: false, bodyAdmitted: true, handlerStreamsBody: streamedBody, inputPending: false))
        return machine
    }

    func testAProcessedHTTP11RequestBecomesATunnel() {
        var machine = processing()
        XCTAssertEqual(machine.upgradeReady(), true)
        XCTAssertEqual(machine.phase, .tunnelled)
        XCTAssertFalse(machine.acceptsInput)
        XCTAssertEqual(machine.nextStep(inputAvailable: true, writable: true), .stop(dropInput: false))
        XCTAssertEqual(machine.channelInactive(), .none, "the tunnel, not the connection, ends the exchange")
    }

    func testWhatCannotBeUpgraded() {
        var old = processing(version: .http1_0)
        XCTAssertEqual(old.upgradeReady(), false)
        var head = processing(method: "HEAD")
        XCTAssertEqual(head.upgradeReady(), false)
        var streaming = processing(streamedBody: true)
        XCTAssertEqual(streaming.upgradeReady(), false)
        var stopping = processing()
        _ = stopping.quiesce(requestBytesSeen: false)
        XCTAssertEqual(stopping.upgradeReady(), false)
        var idle = Machine(keepaliveRequests: 100)
        XCTAssertNil(idle.upgradeReady(), "no response is awaited")
    }
}
