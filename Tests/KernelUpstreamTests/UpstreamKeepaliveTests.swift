import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest
@testable import KernelUpstream

/// What a keep-alive peer does with one request: answer (and keep the connection), answer and close, close
/// without answering, or answer only part of a head and close.
enum PeerReply: Sendable {
    case answer(String)
    case answerAndClose(String)
    case close
}

/// A peer that reads fake requests one after another on each connection, as a keep-alive server does. `reply`
/// is given the connection's number (from 1) and the request's number on it (from 1).
final class KeepAlivePeer: Sendable {
    let server: any Channel
    private let opened = NIOLockedValueBox(0)
    private let closed = NIOLockedValueBox(0)
    private let received = NIOLockedValueBox<[String]>([])

    var address: PeerAddress { .tcp(host: "127.0.0.1", port: server.localAddress!.port!) }
    var connections: Int { opened.withLockedValue { $0 } }
    var closedConnections: Int { closed.withLockedValue { $0 } }
    var requests: [String] { received.withLockedValue { $0 } }

    init(group: any EventLoopGroup, reply: @escaping @Sendable (_ connection: Int, _ request: Int, _ head: String) -> PeerReply) throws {
        let opened = self.opened
        let closed = self.closed
        let received = self.received
        server = try ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                let number = opened.withLockedValue { $0 += 1; return $0 }
                channel.closeFuture.whenComplete { _ in closed.withLockedValue { $0 += 1 } }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(KeepAlivePeerHandler { head, index in
                        received.withLockedValue { $0.append(head) }
                        return reply(number, index, head)
                    })
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
    }

    func close() { try? server.close().wait() }
}

final class KeepAlivePeerHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private var input = ByteBuffer()
    private var head: String?
    private var length = 0
    private var count = 0
    private let onRequest: (String, Int) -> PeerReply

    init(onRequest: @escaping (String, Int) -> PeerReply) { self.onRequest = onRequest }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var part = unwrapInboundIn(data)
        input.writeBuffer(&part)
        while true {
            if head == nil {
                guard let newline = input.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else { return }
                let line = input.readString(length: newline - input.readerIndex)!
                input.moveReaderIndex(forwardBy: 1)
                head = line
                length = Int(line.split(separator: " ").last!) ?? 0
            }
            guard let current = head, input.readableBytes >= length else { return }
            input.moveReaderIndex(forwardBy: length)
            head = nil
            count += 1
            switch onRequest(current, count) {
            case .answer(let text):
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
            case .answerAndClose(let text):
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text))).assumeIsolated().whenComplete { _ in
                    context.close(promise: nil)
                }
            case .close:
                context.close(promise: nil)
                return
            }
        }
    }
}

/// A group that leases the peer a request's `X-Peer` header names (by index).
final class PickingGroup: UpstreamGroup, Sendable {
    let peers: [PeerAddress]
    init(_ peers: [PeerAddress]) { self.peers = peers }
    var name: String { "picked" }
    var maxTries: Int { 1 }
    func begin(_ request: KernelRequest, excluding excluded: [PeerAddress]) -> PeerLease? {
        let index = Int(request.headers["X-Peer"] ?? "0") ?? 0
        return excluded.contains(peers[index]) ? nil : PeerLease(peer: peers[index])
    }
}

/// A group with a keepalive pool over another group.
final class KeptGroup: UpstreamGroup, Sendable {
    let inner: any UpstreamGroup
    let keepalive: UpstreamKeepalive?

    init(_ inner: any UpstreamGroup, keepalive: UpstreamKeepalive) {
        self.inner = inner
        self.keepalive = keepalive
    }

    var name: String { inner.name }
    var peers: [PeerAddress] { inner.peers }
    var maxTries: Int { inner.maxTries }
    func begin(_ request: KernelRequest, excluding excluded: [PeerAddress]) -> PeerLease? { inner.begin(request, excluding: excluded) }
}

/// The keepalive pool: which connections are kept, reused, closed, and the stale-connection retry.
final class UpstreamKeepaliveTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private var peers: [KeepAlivePeer] = []
    private var engines: [UpstreamEngine<FakeProtocol>] = []
    private let messages = NIOLockedValueBox<[String]>([])

    override func setUp() {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    }

    override func tearDown() {
        for engine in engines { engine.pool?.closeIdle() }
        for peer in peers { peer.close() }
        try? group.syncShutdownGracefully()
    }

    private var log: [String] { messages.withLockedValue { $0 } }

    private func peer(reply: @escaping @Sendable (Int, Int, String) -> PeerReply) throws -> KeepAlivePeer {
        let peer = try KeepAlivePeer(group: group, reply: reply)
        peers.append(peer)
        return peer
    }

    private func engine(_ upstreams: RecordingGroup, connections: Int = 4, timeout: TimeAmount = .seconds(30),
                        requests: Int = 1000) -> UpstreamEngine<FakeProtocol> {
        let kept = KeptGroup(upstreams, keepalive: UpstreamKeepalive(connections: connections, timeout: timeout, requests: requests))
        let engine = UpstreamEngine(configuration: UpstreamConfiguration(group: kept, connectTimeout: .seconds(5),
                                                                         sendTimeout: .seconds(5), readTimeout: .seconds(5)),
                                    protocol: FakeProtocol())
        engines.append(engine)
        return engine
    }

    private func proxy(_ engine: UpstreamEngine<FakeProtocol>, _ request: KernelRequest = makeRequest(),
                       on loop: (any EventLoop)? = nil) throws -> (KernelResponse, String) {
        let logger = Logger(label: "test") { _ in RecordingLogHandler(messages: self.messages) }
        let eventLoop = loop ?? group.next()
        let context = RequestContext(eventLoop: eventLoop, logger: logger, route: RouteInfo(serverName: "edge"))
        let response = try engine.proxy(request, context: context).wait()
        return (response, try collectBody(response.body))
    }

    /// The idle connections `engine` keeps on `loop`, asked on the loop.
    private func idle(_ engine: UpstreamEngine<FakeProtocol>, on loop: any EventLoop) throws -> Int {
        let cache = engine.pool!.cache(on: loop)
        return try loop.submit { cache.count }.wait()
    }

    /// Waits (bounded) until `condition` holds.
    private func waitUntil(_ what: String, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(10)
        while try !condition() {
            guard Date() < deadline else { return XCTFail("timed out waiting until \(what)") }
            usleep(5_000)
        }
    }

    private static let kept = "200 len:2\nReuse: yes\n\nok"

    func testAReusableAnswerLeavesItsConnectionForTheNextRequestOnTheSameLoop() throws {
        let peer = try peer { _, _, _ in .answer(Self.kept) }
        let upstreams = RecordingGroup([peer.address])
        let engine = engine(upstreams)
        let loop = group.next()
        for _ in 0..<3 {
            let (response, body) = try proxy(engine, on: loop)
            XCTAssertEqual(response.status, 200)
            XCTAssertEqual(body, "ok")
        }
        XCTAssertEqual(peer.connections, 1)
        XCTAssertEqual(peer.requests.count, 3)
        XCTAssertEqual(try idle(engine, on: loop), 1)
        XCTAssertEqual(upstreams.finished.count, 3)
        XCTAssertTrue(upstreams.finished.allSatisfy { $0.1.failure == nil })
    }

    func testEachEventLoopKeepsItsOwnConnections() throws {
        let peer = try peer { _, _, _ in .answer(Self.kept) }
        let engine = engine(RecordingGroup([peer.address]))
        let first = group.next()
        let second = group.next()
        XCTAssertFalse(first === second)
        _ = try proxy(engine, on: first)
        _ = try proxy(engine, on: second)
        _ = try proxy(engine, on: first)
        _ = try proxy(engine, on: second)
        XCTAssertEqual(peer.connections, 2)
        XCTAssertEqual(try idle(engine, on: first), 1)
        XCTAssertEqual(try idle(engine, on: second), 1)
    }

    func testAnAnswerThatIsNotReusableClosesItsConnection() throws {
        let peer = try peer { _, _, _ in .answer("200 len:2\n\nok") }
        let engine = engine(RecordingGroup([peer.address]))
        let loop = group.next()
        _ = try proxy(engine, on: loop)
        _ = try proxy(engine, on: loop)
        XCTAssertEqual(peer.connections, 2)
        XCTAssertEqual(try idle(engine, on: loop), 0)
    }

    func testABodyNotReadToItsEndClosesItsConnection() throws {
        // The first connection's answer stops halfway; the client leaves before its end.
        let peer = try peer { connection, _, _ in
            connection == 1 ? .answer("200 len:10\nReuse: yes\n\nhello") : .answer(Self.kept)
        }
        let engine = engine(RecordingGroup([peer.address]))
        let loop = group.next()
        let logger = Logger(label: "test") { _ in RecordingLogHandler(messages: self.messages) }
        let context = RequestContext(eventLoop: loop, logger: logger, route: RouteInfo(serverName: "edge"))
        let response = try engine.proxy(makeRequest(), context: context).wait()
        guard case .stream(let stream) = response.body else { return XCTFail("expected a streamed body") }
        XCTAssertEqual(try stream.next().wait().map { String(buffer: $0) }, "hello")
        stream.cancel()
        try waitUntil("the unfinished connection closed") { peer.closedConnections == 1 }
        XCTAssertEqual(try idle(engine, on: loop), 0)
        let (second, body) = try proxy(engine, on: loop)
        XCTAssertEqual(second.status, 200)
        XCTAssertEqual(body, "ok")
        XCTAssertEqual(peer.connections, 2)
    }

    func testAChunkedBodyReadToItsEndKeepsItsConnection() throws {
        let peer = try peer { _, _, _ in .answer("200 chunked\nReuse: yes\n\n2\r\nab\r\n0\r\n\r\n") }
        let engine = engine(RecordingGroup([peer.address]))
        let loop = group.next()
        for _ in 0..<2 {
            let (response, body) = try proxy(engine, on: loop)
            XCTAssertEqual(response.status, 200)
            XCTAssertEqual(body, "ab")
        }
        XCTAssertEqual(peer.connections, 1)
    }

    func testBytesBeyondTheFramedAnswerCloseTheConnection() throws {
        let peer = try peer { _, _, _ in .answer(Self.kept + "junk") }
        let engine = engine(RecordingGroup([peer.address]))
        let loop = group.next()
        let (response, body) = try proxy(engine, on: loop)
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(body, "ok")
        try waitUntil("the connection closed") { peer.closedConnections == 1 }
        XCTAssertEqual(try idle(engine, on: loop), 0)
    }

    func testTheRequestsLimitClosesTheConnection() throws {
        let peer = try peer { _, _, _ in .answer(Self.kept) }
        let engine = engine(RecordingGroup([peer.address]), requests: 2)
        let loop = group.next()
        for _ in 0..<3 { _ = try proxy(engine, on: loop) }
        // Two requests on the first connection, the third on a new one.
        XCTAssertEqual(peer.connections, 2)
        try waitUntil("the first connection closed") { peer.closedConnections == 1 }
    }

    func testTheIdleTimeoutClosesAPooledConnection() throws {
        let peer = try peer { _, _, _ in .answer(Self.kept) }
        let engine = engine(RecordingGroup([peer.address]), timeout: .milliseconds(100))
        let loop = group.next()
        _ = try proxy(engine, on: loop)
        try waitUntil("the idle connection closed") { peer.closedConnections == 1 }
        XCTAssertEqual(try idle(engine, on: loop), 0)
        _ = try proxy(engine, on: loop)
        XCTAssertEqual(peer.connections, 2)
    }

    func testAPeerClosingAnIdleConnectionTakesItOutOfThePool() throws {
        // The peer says the connection may be reused, then closes it (its own keep-alive timeout).
        let peer = try peer { _, _, _ in .answerAndClose(Self.kept) }
        let upstreams = RecordingGroup([peer.address])
        let engine = engine(upstreams)
        let loop = group.next()
        _ = try proxy(engine, on: loop)
        try waitUntil("the closed connection left the pool") { try idle(engine, on: loop) == 0 && peer.closedConnections == 1 }
        let (response, _) = try proxy(engine, on: loop)
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(peer.connections, 2)
        XCTAssertFalse(log.contains { $0.contains("kept-alive connection") }, "\(log)")
    }

    func testTheOldestIdleConnectionGoesWhenThePoolIsFull() throws {
        let first = try peer { _, _, _ in .answer(Self.kept) }
        let second = try peer { _, _, _ in .answer(Self.kept) }
        let loop = group.next()
        let picking = PickingGroup([first.address, second.address])
        let engine = UpstreamEngine(configuration: UpstreamConfiguration(group: KeptGroup(picking, keepalive: UpstreamKeepalive(connections: 1, timeout: .seconds(30), requests: 100))),
                                    protocol: FakeProtocol())
        engines.append(engine)
        func to(_ index: Int) -> KernelRequest { makeRequest(headers: ["Host": "edge", "X-Peer": "\(index)"]) }
        _ = try proxy(engine, to(0), on: loop)
        _ = try proxy(engine, to(1), on: loop)
        // The pool holds one: the first peer's connection was closed to keep the second's.
        try waitUntil("the oldest idle connection closed") { first.closedConnections == 1 }
        _ = try proxy(engine, to(1), on: loop)
        XCTAssertEqual(second.connections, 1)
        _ = try proxy(engine, to(0), on: loop)
        XCTAssertEqual(first.connections, 2)
    }

    func testAStalePostIsRetriedOnANewConnectionBeforeAnyByteOfTheAnswer() throws {
        // The second request on the first connection meets a peer that closes it without answering: the
        // keep-alive race. Nothing was processed, so even a POST goes again, on a new connection.
        let peer = try peer { connection, request, _ in
            connection == 1 && request == 2 ? .close : .answer(Self.kept)
        }
        let upstreams = RecordingGroup([peer.address])
        let engine = engine(upstreams)
        let loop = group.next()
        _ = try proxy(engine, on: loop)
        let (response, body) = try proxy(engine, makeRequest("POST", body: buffer("payload")), on: loop)
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(body, "ok")
        XCTAssertEqual(peer.connections, 2)
        XCTAssertEqual(peer.requests, ["FAKE GET /work?a=1 0", "FAKE POST /work?a=1 7", "FAKE POST /work?a=1 7"])
        // Neither a failure of the peer nor another try.
        XCTAssertEqual(upstreams.finished.count, 2)
        XCTAssertTrue(upstreams.finished.allSatisfy { $0.1.failure == nil })
        XCTAssertEqual(upstreams.leases, 2)
        XCTAssertEqual(response.upstream?.attempts.count, 1)
        XCTAssertTrue(log.contains { $0.contains("upstream closed a kept-alive connection before answering") }, "\(log)")
    }

    func testNoStaleRetryOnceAByteOfTheAnswerArrived() throws {
        let peer = try peer { connection, request, _ in
            connection == 1 && request == 2 ? .answerAndClose("200 le") : .answer(Self.kept)
        }
        let upstreams = RecordingGroup([peer.address])
        let engine = engine(upstreams)
        let loop = group.next()
        _ = try proxy(engine, on: loop)
        let (response, _) = try proxy(engine, on: loop)
        XCTAssertEqual(response.status, 502)
        XCTAssertEqual(peer.connections, 1)
        XCTAssertEqual(upstreams.finished.last?.1.failure, .error)
        XCTAssertFalse(log.contains { $0.contains("kept-alive connection") }, "\(log)")
    }

    func testAFreshConnectionFailingIsNotRetriedAsStale() throws {
        let peer = try peer { _, _, _ in .close }
        let upstreams = RecordingGroup([peer.address])
        let (response, _) = try proxy(engine(upstreams))
        XCTAssertEqual(response.status, 502)
        XCTAssertEqual(peer.connections, 1)
        XCTAssertEqual(upstreams.finished.first?.1.failure, .error)
    }

    func testOneGroupObjectSharesOnePool() throws {
        let peer = try peer { _, _, _ in .answer(Self.kept) }
        let kept = KeptGroup(RecordingGroup([peer.address]), keepalive: UpstreamKeepalive(connections: 2, timeout: .seconds(30), requests: 100))
        let a = UpstreamEngine(configuration: UpstreamConfiguration(group: kept), protocol: FakeProtocol())
        let b = UpstreamEngine(configuration: UpstreamConfiguration(group: kept), protocol: FakeProtocol())
        engines += [a, b]
        XCTAssertTrue(a.pool === b.pool)
        let loop = group.next()
        _ = try proxy(a, on: loop)
        _ = try proxy(b, on: loop)
        XCTAssertEqual(peer.connections, 1)
    }
}
