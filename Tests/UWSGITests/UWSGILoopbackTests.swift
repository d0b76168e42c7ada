import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest
@testable import UWSGI

/// The edge's `uwsgi_pass` client against the worker's uwsgi listener (and against misbehaving peers) over real
/// loopback sockets.
final class UWSGILoopbackTests: XCTestCase {
    private var runtime: KernelRuntime!
    private var servers: [any Channel] = []

    override func setUp() {
        runtime = makeRuntime(maxBodySize: nil)
    }

    override func tearDown() {
        for server in servers { try? server.close().wait() }
        try? runtime.eventLoopGroup.syncShutdownGracefully()
    }

    private func startWorker(unixPath: String? = nil) throws -> PeerAddress {
        let settings = UWSGIListenerSettings(listener: "test")
        let runtime = self.runtime!
        let bootstrap = ServerBootstrap(group: runtime.eventLoopGroup)
            .childChannelInitializer { channel in settings.configure(channel, runtime: runtime) }
        if let unixPath {
            servers.append(try bootstrap.bind(unixDomainSocketPath: unixPath, cleanupExistingSocketFile: true).wait())
            return .unix(path: unixPath)
        }
        let server = try bootstrap.bind(host: "127.0.0.1", port: 0).wait()
        servers.append(server)
        return .tcp(host: "127.0.0.1", port: server.localAddress!.port!)
    }

    /// A peer that reads the request and answers with `answer` (nil: never answers), then closes.
    private func startFakePeer(answer: String?) throws -> PeerAddress {
        let server = try ServerBootstrap(group: runtime.eventLoopGroup)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(FakePeerHandler(answer: answer))
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        servers.append(server)
        return .tcp(host: "127.0.0.1", port: server.localAddress!.port!)
    }

    private func request(_ method: String = "GET", _ uri: String = "/v1/parse?a=1", headers: HeaderFields = ["Host": "edge"],
                         body: ByteBuffer? = nil) -> KernelRequest {
        let split = KernelRequest.splitTarget(uri)!
        var headers = headers
        if let body { headers.add("Content-Length", String(body.readableBytes)) }
        return KernelRequest(method: method, uri: uri, path: split.path, query: split.query, version: .http1_1, headers: headers,
                             body: body, connection: ConnectionInfo(protocolName: "http", listener: "x",
                                                                    remoteAddress: try! SocketAddress(ipAddress: "127.0.0.5", port: 1234),
                                                                    localAddress: nil))
    }

    private func pass(_ request: KernelRequest, to peer: PeerAddress, readTimeout: TimeAmount = .seconds(10)) throws -> (KernelResponse, [UInt8]) {
        var configuration = UWSGIPassConfiguration(group: SinglePeerGroup(peer))
        configuration.readTimeout = readTimeout
        let eventLoop = runtime.eventLoopGroup.next()
        let context = RequestContext(eventLoop: eventLoop, logger: runtime.logger, route: RouteInfo(serverName: "edge"))
        let response = try UWSGIPassHandler(configuration: configuration).handle(request, context: context).wait()
        var bytes: [UInt8] = []
        switch response.body {
        case .empty: break
        case .buffer(let buffer): bytes = Array(buffer.readableBytesView)
        case .stream(let stream):
            while let part = try stream.next().wait() { bytes += Array(part.readableBytesView) }
        }
        return (response, bytes)
    }

    func testEdgeToWorkerRoundTrip() throws {
        let peer = try startWorker()
        let (response, body) = try pass(request(headers: HeaderFields([("Host", "edge"), ("X-Multi", "1"), ("X-Multi", "2")])), to: peer)
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(response.headers["Content-Type"], "text/plain")
        let text = String(decoding: body, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("GET /v1/parse ?a=1 HTTP/1.1 http 127.0.0.5\n"), text)
        XCTAssertTrue(text.contains("Host: edge\n"), text)
        XCTAssertTrue(text.contains("X-Multi: 1, 2\n"), text)
    }

    func testLargeBodyRoundTripOverAUnixSocket() throws {
        let path = "/tmp/uwsgi-test-\(getpid()).sock"
        defer { unlink(path) }
        let peer = try startWorker(unixPath: path)
        var payload = ByteBufferAllocator().buffer(capacity: 3 << 20)
        for index in 0 ..< (3 << 20) { payload.writeInteger(UInt8(truncatingIfNeeded: index &* 31)) }
        let (response, body) = try pass(request("POST", "/upload", body: payload), to: peer)
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(Array(body.suffix(3 << 20)), Array(payload.readableBytesView))
    }

    func testConnectionRefusedIs502() throws {
        let closed = try ServerBootstrap(group: runtime.eventLoopGroup).bind(host: "127.0.0.1", port: 0).wait()
        let port = closed.localAddress!.port!
        try closed.close().wait()
        let (response, body) = try pass(request(), to: .tcp(host: "127.0.0.1", port: port))
        XCTAssertEqual(response.status, 502)
        XCTAssertEqual(String(decoding: body, as: UTF8.self), "{\"error\":\"bad gateway\"}")
        // The engine's own error answer names the peer tried, for `$upstream_addr` and `$upstream_status`.
        XCTAssertEqual(response.upstream?.attempts.map(\.address), ["127.0.0.1:\(port)"])
        XCTAssertEqual(response.upstream?.attempts.map(\.status), [502])
    }

    func testNextPeerIsTriedAfterAConnectError() throws {
        let worker = try startWorker()
        let closed = try ServerBootstrap(group: runtime.eventLoopGroup).bind(host: "127.0.0.1", port: 0).wait()
        let dead = PeerAddress.tcp(host: "127.0.0.1", port: closed.localAddress!.port!)
        try closed.close().wait()
        let group = RecordingGroup(peers: [dead, worker])
        let context = RequestContext(eventLoop: runtime.eventLoopGroup.next(), logger: runtime.logger, route: RouteInfo())
        let response = try UWSGIPassHandler(configuration: UWSGIPassConfiguration(group: group)).handle(request(), context: context).wait()
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(group.reports.map { "\($0.0) \($0.1)" }, ["\(dead) failure", "\(worker) success"])
        XCTAssertEqual(response.upstream?.attempts.map(\.address), [dead.description, worker.description])
        XCTAssertEqual(response.upstream?.attempts.map(\.status), [502, 200])
    }

    func testEveryPeerRefusingIs502AfterMaxTries() throws {
        var peers: [PeerAddress] = []
        for _ in 0..<3 {
            let closed = try ServerBootstrap(group: runtime.eventLoopGroup).bind(host: "127.0.0.1", port: 0).wait()
            peers.append(.tcp(host: "127.0.0.1", port: closed.localAddress!.port!))
            try closed.close().wait()
        }
        let group = RecordingGroup(peers: peers, maxTries: 2)
        let context = RequestContext(eventLoop: runtime.eventLoopGroup.next(), logger: runtime.logger, route: RouteInfo())
        let response = try UWSGIPassHandler(configuration: UWSGIPassConfiguration(group: group)).handle(request(), context: context).wait()
        XCTAssertEqual(response.status, 502)
        XCTAssertEqual(group.reports.count, 2)
    }

    func testVarsBlockOver64kIs502WithoutConnecting() throws {
        let group = RecordingGroup(peers: [.tcp(host: "127.0.0.1", port: 9)])
        let context = RequestContext(eventLoop: runtime.eventLoopGroup.next(), logger: runtime.logger, route: RouteInfo())
        let big = request(headers: HeaderFields([("Host", "edge"), ("X-Big", String(repeating: "b", count: 70_000))]))
        let response = try UWSGIPassHandler(configuration: UWSGIPassConfiguration(group: group)).handle(big, context: context).wait()
        XCTAssertEqual(response.status, 502)
        XCTAssertTrue(group.reports.isEmpty)
    }

    func testMissingUnixSocketIs502() throws {
        let (response, _) = try pass(request(), to: .unix(path: "/tmp/no-such-uwsgi-\(getpid()).sock"))
        XCTAssertEqual(response.status, 502)
    }

    func testSilentPeerIs504AfterReadTimeout() throws {
        let peer = try startFakePeer(answer: nil)
        let (response, _) = try pass(request(), to: peer, readTimeout: .milliseconds(200))
        XCTAssertEqual(response.status, 504)
    }

    func testPeerThatStopsReadingTheBodyIs504AfterSendTimeout() throws {
        // A peer that accepts and never reads: the body stays queued once the socket buffers are full.
        let server = try ServerBootstrap(group: runtime.eventLoopGroup)
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.socketOption(.so_rcvbuf), value: 4096)
            .bind(host: "127.0.0.1", port: 0).wait()
        servers.append(server)
        var configuration = UWSGIPassConfiguration(group: SinglePeerGroup(.tcp(host: "127.0.0.1", port: server.localAddress!.port!)))
        configuration.sendTimeout = .milliseconds(300)
        let context = RequestContext(eventLoop: runtime.eventLoopGroup.next(), logger: runtime.logger, route: RouteInfo())
        let body = ByteBuffer(repeating: UInt8(ascii: "b"), count: 32 << 20)
        let response = try UWSGIPassHandler(configuration: configuration).handle(request("POST", body: body), context: context).wait()
        XCTAssertEqual(response.status, 504)
    }

    func testInvalidAnswerIs502() throws {
        let peer = try startFakePeer(answer: "HTTP/1.1 abc\r\n\r\n")
        XCTAssertEqual(try pass(request(), to: peer).0.status, 502)
    }

    func testPeerClosingWithoutAnswerIs502() throws {
        let peer = try startFakePeer(answer: "")
        XCTAssertEqual(try pass(request(), to: peer).0.status, 502)
    }

    func testUWSGIStyleAnswerIsPassedThrough() throws {
        let peer = try startFakePeer(answer: "HTTP/1.1 500 INTERNAL SERVER ERROR\r\nContent-Type: text/html\r\nServer: app\r\nX-Accel-Redirect: /x\r\n\r\noops, close-delimited")
        let (response, body) = try pass(request(), to: peer)
        XCTAssertEqual(response.status, 500)
        XCTAssertEqual(response.reason, "INTERNAL SERVER ERROR")
        XCTAssertNil(response.headers["Server"])
        XCTAssertNil(response.headers["X-Accel-Redirect"])
        XCTAssertEqual(String(decoding: body, as: UTF8.self), "oops, close-delimited")
    }

    func testTruncatedBodyFailsTheStream() throws {
        let peer = try startFakePeer(answer: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        var configuration = UWSGIPassConfiguration(group: SinglePeerGroup(peer))
        configuration.readTimeout = .seconds(10)
        let eventLoop = runtime.eventLoopGroup.next()
        let context = RequestContext(eventLoop: eventLoop, logger: runtime.logger, route: RouteInfo())
        let response = try UWSGIPassHandler(configuration: configuration).handle(request(), context: context).wait()
        XCTAssertEqual(response.status, 200)
        guard case .stream(let stream) = response.body else { return XCTFail("expected a stream") }
        var received: [UInt8] = []
        var failed = false
        while true {
            do {
                guard let part = try stream.next().wait() else { break }
                received += Array(part.readableBytesView)
            } catch {
                failed = true
                break
            }
        }
        XCTAssertTrue(failed)
        XCTAssertEqual(String(decoding: received, as: UTF8.self), "short")
    }
}

/// Reads a request head (whatever arrives first) and answers with fixed bytes, then closes.
final class FakePeerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let answer: String?
    private var answered = false
    init(answer: String?) { self.answer = answer }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered, let answer else { return }
        answered = true
        context.writeAndFlush(wrapOutboundOut(buffer(answer))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }
}

/// An upstream group over fixed peers, in order, recording how each lease ended.
final class RecordingGroup: UpstreamGroup, Sendable {
    let peers: [PeerAddress]
    let maxTries: Int
    private let recorded = NIOLockedValueBox<[(PeerAddress, String)]>([])
    init(peers: [PeerAddress], maxTries: Int? = nil) {
        self.peers = peers
        self.maxTries = maxTries ?? peers.count
    }
    var name: String { "test" }
    var reports: [(PeerAddress, String)] { recorded.withLockedValue { $0 } }
    func begin(_ request: KernelRequest, excluding excluded: [PeerAddress]) -> PeerLease? {
        guard let peer = peers.first(where: { !excluded.contains($0) }) else { return nil }
        return PeerLease(peer: peer) { [recorded] outcome in
            recorded.withLockedValue { $0.append((peer, outcome.isFailure ? "failure" : "success")) }
        }
    }
}
