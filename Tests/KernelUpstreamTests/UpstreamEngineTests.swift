import Foundation
import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest
@testable import KernelUpstream

/// The engine with a fake protocol against fake peers on loopback sockets.
final class UpstreamEngineTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private var peers: [FakePeer] = []
    private let messages = NIOLockedValueBox<[String]>([])

    override func setUp() {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    override func tearDown() {
        for peer in peers { peer.close() }
        try? group.syncShutdownGracefully()
    }

    private var log: [String] { messages.withLockedValue { $0 } }

    private func peer(answer: [String]) throws -> FakePeer {
        let peer = try FakePeer(group: group, answer: answer)
        peers.append(peer)
        return peer
    }

    private func peer(reads: Bool = true, onRequest: @escaping @Sendable (any Channel, ByteBuffer) -> Void) throws -> FakePeer {
        let peer = try FakePeer(group: group, reads: reads, onRequest: onRequest)
        peers.append(peer)
        return peer
    }

    private func engine(_ upstreams: any UpstreamGroup, connectTimeout: TimeAmount = .seconds(5),
                        sendTimeout: TimeAmount = .seconds(5), readTimeout: TimeAmount = .seconds(5),
                        nextUpstream: NextUpstreamConditions = .default,
                        resolver: any PeerAddressResolver = PeerAddressBook()) -> UpstreamEngine<FakeProtocol> {
        UpstreamEngine(configuration: UpstreamConfiguration(group: upstreams, connectTimeout: connectTimeout,
                                                            sendTimeout: sendTimeout, readTimeout: readTimeout,
                                                            nextUpstream: nextUpstream, resolver: resolver),
                       protocol: FakeProtocol())
    }

    private func proxy(_ engine: UpstreamEngine<FakeProtocol>, _ request: KernelRequest = makeRequest()) throws -> KernelResponse {
        let logger = Logger(label: "test") { _ in RecordingLogHandler(messages: self.messages) }
        let context = RequestContext(eventLoop: group.next(), logger: logger, route: RouteInfo(serverName: "edge"))
        return try engine.proxy(request, context: context).wait()
    }

    // MARK: answers and framing

    func testLengthDelimitedAnswerIsPassedOnWithItsReport() throws {
        let peer = try peer(answer: ["201 len:5\nX-App: yes\nX-Secret: no\nConnection: close\nDate: x\n\nhello"])
        let upstreams = RecordingGroup([peer.address])
        let response = try proxy(engine(upstreams))
        XCTAssertEqual(response.status, 201)
        XCTAssertEqual(response.headers["X-App"], "yes")
        XCTAssertNil(response.headers["X-Secret"], "a header the protocol hides")
        XCTAssertNil(response.headers["Connection"], "hop-by-hop")
        XCTAssertNil(response.headers["Date"])
        XCTAssertEqual(try collectBody(response.body), "hello")
        XCTAssertEqual(peer.requests, ["FAKE GET /work?a=1 0"])
        let report = try XCTUnwrap(response.upstream)
        XCTAssertEqual(report.group, "backend")
        XCTAssertEqual(report.attempts.map(\.address), [peer.address.description])
        XCTAssertEqual(report.attempts.first?.status, 201)
        XCTAssertNotNil(report.attempts.first?.connectTime)
        XCTAssertNotNil(report.attempts.first?.headerTime)
    }

    func testAnExchangeThatWatchesForTheClientLeavingIsReleasedOnceAnswered() throws {
        // The exchange holds its context, which holds the cancellation and its callbacks: a strong reference back
        // from the callback would keep every exchange alive (a leak per proxied request).
        let peer = try peer(answer: ["200 len:2\n\nok"])
        weak var watched: RequestCancellation?
        try {
            let cancellation = RequestCancellation()
            watched = cancellation
            let context = RequestContext(eventLoop: group.next(), logger: Logger(label: "test"), route: RouteInfo(),
                                         cancellation: cancellation)
            let response = try engine(RecordingGroup([peer.address])).proxy(makeRequest(), context: context).wait()
            XCTAssertEqual(try collectBody(response.body), "ok")
        }()
        // The engine lets go of the exchange on its event loop: wait for a turn of it.
        try group.next().submit {}.wait()
        XCTAssertNil(watched, "the exchange, its context and its cancellation are gone")
    }

    func testAClientLeavingBeforeTheHeadClosesTheAttemptAndBlamesNoPeer() throws {
        let closed = NIOLockedValueBox(false)
        let peer = try peer { channel, _ in
            // Never answers; notes when the edge closes the connection.
            channel.closeFuture.whenComplete { _ in closed.withLockedValue { $0 = true } }
        }
        let upstreams = RecordingGroup([peer.address])
        let cancellation = RequestCancellation()
        let logger = Logger(label: "test") { _ in RecordingLogHandler(messages: self.messages) }
        let context = RequestContext(eventLoop: group.next(), logger: logger, route: RouteInfo(), cancellation: cancellation)
        let answer = engine(upstreams, readTimeout: .seconds(30)).proxy(makeRequest(), context: context)
        let deadline = Date().addingTimeInterval(5)
        while peer.requests.isEmpty, Date() < deadline { usleep(10_000) }
        cancellation.cancel("client prematurely closed connection")
        XCTAssertEqual(try answer.wait().status, 499)
        while !closed.withLockedValue({ $0 }), Date() < deadline { usleep(10_000) }
        XCTAssertTrue(closed.withLockedValue { $0 }, "the upstream connection is closed at once")
        while upstreams.finished.isEmpty, Date() < deadline { usleep(10_000) }
        let outcome = try XCTUnwrap(upstreams.finished.first?.1)
        XCTAssertTrue(outcome.clientClosed && outcome.failure == nil, "a client close, not the peer's failure")
        XCTAssertTrue(log.contains { $0.contains("client prematurely closed connection, so upstream connection is closed too while reading response header from upstream") }, "\(log)")
    }

    func testARepeatedContentTypeKeepsItsLastValue() throws {
        // nginx holds one content type per answer, the last the upstream sent; two would leave the client to choose.
        let peer = try peer(answer: ["200 len:2\nContent-Type: text/plain\nX-A: 1\ncontent-type: application/json\n\nok"])
        let response = try proxy(engine(RecordingGroup([peer.address])))
        XCTAssertEqual(response.headers.values("Content-Type"), ["application/json"])
        XCTAssertEqual(response.headers["X-A"], "1")
        XCTAssertEqual(try collectBody(response.body), "ok")
    }

    func testAWorkersQueueDepthGoesToTheBalancerNotTheClient() throws {
        let peer = try peer(answer: ["200 len:2\nX-Kernel-Queue-Depth: 7\nX-App: yes\n\nok"])
        let upstreams = RecordingGroup([peer.address])
        let response = try proxy(engine(upstreams))
        XCTAssertNil(response.headers[KernelQueueDepth.headerName])
        XCTAssertEqual(response.headers["X-App"], "yes")
        XCTAssertEqual(try collectBody(response.body), "ok")
        XCTAssertEqual(upstreams.finished.first?.1.queueDepth, 7)
        XCTAssertEqual(KernelQueueDepth.parse("12"), 12)
        for bad in [nil, "", "-1", "1.5", " 3", "99999999999999999999"] { XCTAssertNil(KernelQueueDepth.parse(bad)) }
    }

    func testChunkedAnswerIsDecodedThroughTheProtocolsDecoder() throws {
        let peer = try peer(answer: ["200 chunked\n\n5\r\nhel", "lo\r\n6\r\n world\r\n", "0\r\n\r\n"])
        let response = try proxy(engine(RecordingGroup([peer.address])))
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(try collectBody(response.body), "hello world")
    }

    func testCloseDelimitedAnswerEndsWhenThePeerCloses() throws {
        let peer = try peer(answer: ["200 close\n\nall of ", "this until the end"])
        let upstreams = RecordingGroup([peer.address])
        let response = try proxy(engine(upstreams))
        XCTAssertEqual(try collectBody(response.body), "all of this until the end")
        XCTAssertEqual(upstreams.finished.count, 1)
        XCTAssertNil(upstreams.finished.first?.1.failure)
    }

    func testEmptyAnswerGetsAZeroLength() throws {
        let peer = try peer(answer: ["200 none\n\n"])
        let response = try proxy(engine(RecordingGroup([peer.address])))
        XCTAssertEqual(response.headers["Content-Length"], "0")
        XCTAssertEqual(try collectBody(response.body), "")
    }

    func testBodyIsSentAfterTheProtocolsHead() throws {
        let seen = NIOLockedValueBox("")
        let peer = try peer { channel, body in
            seen.withLockedValue { $0 = String(buffer: body) }
            channel.writeAndFlush(buffer("200 len:2\n\nok")).whenComplete { _ in channel.close(promise: nil) }
        }
        let response = try proxy(engine(RecordingGroup([peer.address])), makeRequest("POST", body: buffer("payload")))
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(peer.requests, ["FAKE POST /work?a=1 7"])
        XCTAssertEqual(seen.withLockedValue { $0 }, "payload")
    }

    func testSpooledRequestBodyIsSentFromItsFile() throws {
        let seen = NIOLockedValueBox("")
        let peer = try peer { channel, body in
            seen.withLockedValue { $0 = String(buffer: body) }
            channel.writeAndFlush(buffer("200 len:2\n\nok")).whenComplete { _ in channel.close(promise: nil) }
        }
        let directory = NSTemporaryDirectory() + "kernel-upstream-spool-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let sink = RequestBodySink(buffering: RequestBodyBuffering(bufferSize: 4), tempDirectory: directory,
                                   logger: Logger(label: "test"), allocator: ByteBufferAllocator())
        let payload = String(repeating: "0123456789", count: 60_000)
        try sink.append(buffer(payload))
        let file = try XCTUnwrap(sink.finish().file)
        var request = makeRequest("PUT")
        request.bodySource = .file(file)
        let response = try proxy(engine(RecordingGroup([peer.address])), request)
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(peer.requests, ["FAKE PUT /work?a=1 600000"])
        XCTAssertEqual(seen.withLockedValue { $0 }, payload)
    }

    func testStreamedRequestBodyIsSentWhileItArrives() throws {
        let seen = NIOLockedValueBox("")
        let peer = try peer { channel, body in
            seen.withLockedValue { $0 = String(buffer: body) }
            channel.writeAndFlush(buffer("200 len:2\n\nok")).whenComplete { _ in channel.close(promise: nil) }
        }
        let loop = group.next()
        let stream = RequestBodyStream(length: 6, eventLoop: loop)
        var request = makeRequest("PUT")
        request.bodySource = .stream(stream)
        let logger = Logger(label: "test") { _ in RecordingLogHandler(messages: self.messages) }
        let future = engine(RecordingGroup([peer.address])).proxy(request, context: RequestContext(eventLoop: loop, logger: logger, route: RouteInfo()))
        try loop.submit { stream.push(buffer("abc")) }.wait()
        try loop.submit { stream.push(buffer("def")); stream.finish() }.wait()
        XCTAssertEqual(try future.wait().status, 200)
        XCTAssertEqual(seen.withLockedValue { $0 }, "abcdef")
    }

    func testInvalidHeadIs502WithTheProtocolsMessage() throws {
        let peer = try peer(answer: ["nonsense here now\n\n"])
        let upstreams = RecordingGroup([peer.address])
        let response = try proxy(engine(upstreams))
        XCTAssertEqual(response.status, 502)
        XCTAssertTrue(log.contains { $0.contains("fake upstream sent invalid status line \"nonsense here now\" while reading response header from upstream") }, "\(log)")
        XCTAssertEqual(upstreams.finished.first?.1.failure, .invalidHeader)
    }

    func testRefusedRequestIs502WithoutContactingAPeer() throws {
        let upstreams = RecordingGroup([.tcp(host: "127.0.0.1", port: 9)])
        let response = try proxy(engine(upstreams), makeRequest(headers: ["X-Refuse": "1"]))
        XCTAssertEqual(response.status, 502)
        XCTAssertEqual(upstreams.leases, 0)
        XCTAssertTrue(log.contains { $0.contains("fake request refused, client: 127.0.0.5, server: edge, request: \"GET /work?a=1 HTTP/1.1\"") }, "\(log)")
    }

    // MARK: errors, timeouts, retries

    func testConnectErrorIs502WithNginxsLine() throws {
        let dead = try closedPort(group: group)
        let upstreams = RecordingGroup([dead])
        let response = try proxy(engine(upstreams), makeRequest(headers: ["Host": "edge.test"]))
        XCTAssertEqual(response.status, 502)
        XCTAssertEqual(try collectBody(response.body), "{\"error\":\"bad gateway\"}")
        XCTAssertTrue(log.contains("[error] connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.5, server: edge, request: \"GET /work?a=1 HTTP/1.1\", upstream: \"fake://\(dead)\", host: \"edge.test\""), "\(log)")
        XCTAssertEqual(response.upstream?.attempts.map(\.address), [dead.description])
        // nginx's $upstream_status shows the 502 the failure stands for; the balancer hears of no status.
        XCTAssertEqual(response.upstream?.attempts.first?.status, 502)
        XCTAssertEqual(upstreams.finished.map(\.1.failure), [.error])
        XCTAssertEqual(upstreams.finished.map(\.1.status), [nil])
    }

    func testConnectErrorGoesOnToTheNextPeer() throws {
        let dead = try closedPort(group: group)
        let live = try peer(answer: ["200 len:2\n\nok"])
        let upstreams = RecordingGroup([dead, live.address])
        let response = try proxy(engine(upstreams))
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(upstreams.finished.map { "\($0.0)" }, [dead.description, live.address.description])
        XCTAssertEqual(upstreams.finished.map(\.1.isFailure), [true, false])
        XCTAssertEqual(response.upstream?.attempts.map(\.status), [502, 200])
    }

    func testAPostIsRetriedAfterAConnectErrorSinceNothingWasSent() throws {
        let dead = try closedPort(group: group)
        let live = try peer(answer: ["200 len:2\n\nok"])
        let response = try proxy(engine(RecordingGroup([dead, live.address])), makeRequest("POST", body: buffer("x")))
        XCTAssertEqual(response.status, 200)
    }

    func testEveryPeerFailingIs502AfterMaxTries() throws {
        let dead = try (0..<3).map { _ in try closedPort(group: group) }
        let upstreams = RecordingGroup(dead, maxTries: 2)
        let response = try proxy(engine(upstreams))
        XCTAssertEqual(response.status, 502)
        XCTAssertEqual(upstreams.finished.count, 2)
        XCTAssertEqual(response.upstream?.attempts.count, 2)
    }

    func testNoPeerAtAllIs502NoLiveUpstreams() throws {
        let response = try proxy(engine(RecordingGroup([])))
        XCTAssertEqual(response.status, 502)
        XCTAssertTrue(log.contains { $0.contains("no live upstreams while connecting to upstream") }, "\(log)")
    }

    func testReadTimeoutIs504WithNginxsLine() throws {
        let silent = try peer { _, _ in }
        let upstreams = RecordingGroup([silent.address])
        let response = try proxy(engine(upstreams, readTimeout: .milliseconds(200)))
        XCTAssertEqual(response.status, 504)
        XCTAssertEqual(try collectBody(response.body), "{\"error\":\"gateway timeout\"}")
        XCTAssertTrue(log.contains { $0.contains("upstream timed out (110: Connection timed out) while reading response header from upstream, client: 127.0.0.5") }, "\(log)")
        XCTAssertEqual(upstreams.finished.map(\.1.failure), [.timeout])
        XCTAssertNotNil(response.upstream?.attempts.first?.connectTime)
        XCTAssertEqual(response.upstream?.attempts.first?.status, 504)
    }

    func testReadTimeoutGoesOnToTheNextPeer() throws {
        let silent = try peer { _, _ in }
        let live = try peer(answer: ["200 len:2\n\nok"])
        let upstreams = RecordingGroup([silent.address, live.address])
        let response = try proxy(engine(upstreams, readTimeout: .milliseconds(200)))
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(upstreams.finished.map(\.1.failure), [.timeout, nil])
        XCTAssertEqual(live.connections, 1)
    }

    func testASentPostIsNotRetried() throws {
        let silent = try peer { _, _ in }
        let live = try peer(answer: ["200 len:2\n\nok"])
        let upstreams = RecordingGroup([silent.address, live.address])
        let response = try proxy(engine(upstreams, readTimeout: .milliseconds(200)), makeRequest("POST", body: buffer("x")))
        XCTAssertEqual(response.status, 504)
        XCTAssertEqual(live.connections, 0)
        XCTAssertEqual(upstreams.finished.count, 1)
    }

    func testASentPostIsRetriedWithNonIdempotent() throws {
        let silent = try peer { _, _ in }
        let live = try peer(answer: ["200 len:2\n\nok"])
        let upstreams = RecordingGroup([silent.address, live.address])
        let response = try proxy(engine(upstreams, readTimeout: .milliseconds(200), nextUpstream: [.error, .timeout, .nonIdempotent]),
                                 makeRequest("POST", body: buffer("x")))
        XCTAssertEqual(response.status, 200)
    }

    func testAStreamedBodyOnceSentIsNotRetried() throws {
        let silent = try peer { _, _ in }
        let live = try peer(answer: ["200 len:2\n\nok"])
        let loop = group.next()
        let stream = RequestBodyStream(length: 1, eventLoop: loop)
        var request = makeRequest("PUT")
        request.bodySource = .stream(stream)
        let logger = Logger(label: "test") { _ in RecordingLogHandler(messages: self.messages) }
        let future = engine(RecordingGroup([silent.address, live.address]), readTimeout: .milliseconds(200))
            .proxy(request, context: RequestContext(eventLoop: loop, logger: logger, route: RouteInfo()))
        try loop.submit { stream.push(buffer("x")); stream.finish() }.wait()
        XCTAssertEqual(try future.wait().status, 504)
        XCTAssertEqual(live.connections, 0)
    }

    func testRetryIsOffWithAnEmptySet() throws {
        let dead = try closedPort(group: group)
        let live = try peer(answer: ["200 len:2\n\nok"])
        let response = try proxy(engine(RecordingGroup([dead, live.address]), nextUpstream: []))
        XCTAssertEqual(response.status, 502)
        XCTAssertEqual(live.connections, 0)
    }

    func testA503GoesOnToTheNextPeerWhenConfigured() throws {
        let busy = try peer(answer: ["503 len:4\n\nbusy"])
        let live = try peer(answer: ["200 len:2\n\nok"])
        let upstreams = RecordingGroup([busy.address, live.address])
        let response = try proxy(engine(upstreams, nextUpstream: [.error, .timeout, .http503]))
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(upstreams.finished.map(\.1.failure), [.status(503), nil])
        XCTAssertEqual(response.upstream?.attempts.map(\.status), [503, 200])
    }

    func testTheLast503IsPassedOnWhenNoPeerIsLeft() throws {
        let busy = try peer(answer: ["503 len:4\n\nbusy"])
        let response = try proxy(engine(RecordingGroup([busy.address]), nextUpstream: [.error, .timeout, .http503]))
        XCTAssertEqual(response.status, 503)
        XCTAssertEqual(try collectBody(response.body), "busy")
    }

    func testA503IsPassedOnByDefault() throws {
        let busy = try peer(answer: ["503 len:4\n\nbusy"])
        let live = try peer(answer: ["200 len:2\n\nok"])
        let response = try proxy(engine(RecordingGroup([busy.address, live.address])))
        XCTAssertEqual(response.status, 503)
        XCTAssertEqual(live.connections, 0)
    }

    func testSendTimeoutIs504WhenThePeerStopsReading() throws {
        let stuck = try peer(reads: false) { _, _ in }
        let body = ByteBuffer(repeating: UInt8(ascii: "x"), count: 64 << 20)
        let upstreams = RecordingGroup([stuck.address])
        let response = try proxy(engine(upstreams, sendTimeout: .milliseconds(300)), makeRequest("POST", body: body))
        XCTAssertEqual(response.status, 504)
        XCTAssertTrue(log.contains { $0.contains("upstream timed out (110: Connection timed out) while sending request to upstream") }, "\(log)")
        XCTAssertEqual(upstreams.finished.map(\.1.failure), [.timeout])
    }

    func testConnectTimeoutIs504() throws {
        // A listener whose accept queue is full and that never accepts: the kernel drops further SYNs, so a
        // connect neither succeeds nor fails until the timeout.
        let full = try ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 0)
            .serverChannelOption(.autoRead, value: false)
            .bind(host: "127.0.0.1", port: 0).wait()
        defer { try? full.close().wait() }
        let address = full.localAddress!
        var fillers: [any Channel] = []
        defer { for filler in fillers { try? filler.close().wait() } }
        for _ in 0..<2 {
            if let filler = try? ClientBootstrap(group: group).connectTimeout(.milliseconds(300)).connect(to: address).wait() {
                fillers.append(filler)
            }
        }
        let upstreams = RecordingGroup([.tcp(host: "127.0.0.1", port: address.port!)])
        let response = try proxy(engine(upstreams, connectTimeout: .milliseconds(200)))
        XCTAssertEqual(response.status, 504)
        XCTAssertTrue(log.contains { $0.contains("upstream timed out (110: Connection timed out) while connecting to upstream") }, "\(log)")
        XCTAssertEqual(upstreams.finished.map(\.1.failure), [.timeout])
        XCTAssertNil(response.upstream?.attempts.first?.connectTime)
    }

    func testConnectFailuresInNginxsWords() {
        let timeout = UpstreamFailure.connectFailure(ChannelError.connectTimeout(.seconds(1)))
        XCTAssertEqual(timeout.response.status, 504)
        XCTAssertEqual(timeout.message, "upstream timed out (110: Connection timed out)")
        let refused = UpstreamFailure.connectFailure(IOError(errnoCode: ECONNREFUSED, reason: "connect"))
        XCTAssertEqual(refused.response.status, 502)
        XCTAssertEqual(refused.message, "connect() failed (111: Connection refused)")
    }

    func testUnixSocketPeer() throws {
        let path = NSTemporaryDirectory() + "kernel-upstream-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let server = try ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(FakePeerHandler { _, _ in
                        channel.writeAndFlush(buffer("200 len:4\n\nunix")).whenComplete { _ in channel.close(promise: nil) }
                    })
                }
            }
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).wait()
        defer { try? server.close().wait(); unlink(path) }
        let response = try proxy(engine(RecordingGroup([.unix(path: path)])))
        XCTAssertEqual(try collectBody(response.body), "unix")
        XCTAssertEqual(response.upstream?.attempts.first?.address, "unix:\(path)")
    }

    // MARK: leases: once, at the body's end

    /// A peer that sends the head and the first half of a 10-byte body, and the rest when `release` succeeds.
    private func halfwayPeer(release: EventLoopFuture<Void>) throws -> FakePeer {
        try peer { channel, _ in
            channel.writeAndFlush(buffer("200 len:10\n\nfirst")).whenComplete { _ in
                release.whenComplete { _ in
                    channel.writeAndFlush(buffer("-half")).whenComplete { _ in channel.close(promise: nil) }
                }
            }
        }
    }

    func testTheLeaseIsFinishedOnceWhenTheBodyEnds() throws {
        let release = group.next().makePromise(of: Void.self)
        let peer = try halfwayPeer(release: release.futureResult)
        let ended = expectation(description: "lease finished")
        let upstreams = RecordingGroup([peer.address]) { _ in ended.fulfill() }
        let response = try proxy(engine(upstreams))
        guard case .stream(let stream) = response.body else { return XCTFail("expected a streamed body") }
        XCTAssertEqual(upstreams.finished.count, 0, "not finished at the head")
        XCTAssertEqual(try stream.next().wait().map { String(buffer: $0) }, "first")
        XCTAssertEqual(upstreams.finished.count, 0, "not finished mid-body")
        release.succeed(())
        XCTAssertEqual(try stream.next().wait().map { String(buffer: $0) }, "-half")
        XCTAssertNil(try stream.next().wait())
        wait(for: [ended], timeout: 10)
        XCTAssertEqual(upstreams.finished.count, 1)
        let outcome = try XCTUnwrap(upstreams.finished.first?.1)
        XCTAssertEqual(outcome.status, 200)
        XCTAssertEqual(outcome.bytesReceived, 10)
        XCTAssertNil(outcome.failure)
        XCTAssertFalse(outcome.clientClosed)
        XCTAssertGreaterThan(outcome.durationNanoseconds, 0)
    }

    func testTheResponseTimeOfAStreamedAnswerRunsToTheEndOfItsBody() throws {
        let release = group.next().makePromise(of: Void.self)
        let peer = try halfwayPeer(release: release.futureResult)
        let response = try proxy(engine(RecordingGroup([peer.address])))
        guard case .stream(let stream) = response.body else { return XCTFail("expected a streamed body") }
        let report = try XCTUnwrap(response.upstream)
        let atHead = try XCTUnwrap(report.finalAttempts.last?.responseTime)
        XCTAssertNil(report.bodyTiming?.responseTime, "the body has not ended")
        XCTAssertEqual(try stream.next().wait().map { String(buffer: $0) }, "first")
        // The peer holds the rest back until released: the body ends strictly after the head was handed over.
        Thread.sleep(forTimeInterval: 0.05)
        release.succeed(())
        XCTAssertEqual(try stream.next().wait().map { String(buffer: $0) }, "-half")
        XCTAssertNil(try stream.next().wait())
        let atEnd = try XCTUnwrap(report.finalAttempts.last?.responseTime)
        XCTAssertGreaterThan(atEnd, atHead)
        XCTAssertEqual(report.finalAttempts.last?.headerTime, report.attempts.last?.headerTime)
    }

    func testAClientLeavingMidBodyFinishesTheLeaseOnceWithoutFailure() throws {
        let release = group.next().makePromise(of: Void.self)
        defer { release.succeed(()) }
        let peer = try halfwayPeer(release: release.futureResult)
        let ended = expectation(description: "lease finished")
        let upstreams = RecordingGroup([peer.address]) { _ in ended.fulfill() }
        let response = try proxy(engine(upstreams))
        guard case .stream(let stream) = response.body else { return XCTFail("expected a streamed body") }
        XCTAssertEqual(try stream.next().wait().map { String(buffer: $0) }, "first")
        stream.cancel()
        wait(for: [ended], timeout: 10)
        stream.cancel()
        XCTAssertEqual(upstreams.finished.count, 1)
        let outcome = try XCTUnwrap(upstreams.finished.first?.1)
        XCTAssertTrue(outcome.clientClosed)
        XCTAssertNil(outcome.failure)
        XCTAssertEqual(outcome.bytesReceived, 5)
    }

    func testAStreamNobodyReadsFinishesTheLeaseWhenItGoes() throws {
        let release = group.next().makePromise(of: Void.self)
        defer { release.succeed(()) }
        let peer = try halfwayPeer(release: release.futureResult)
        let ended = expectation(description: "lease finished")
        let upstreams = RecordingGroup([peer.address]) { _ in ended.fulfill() }
        do {
            let response = try proxy(engine(upstreams))
            guard case .stream = response.body else { return XCTFail("expected a streamed body") }
            XCTAssertEqual(upstreams.finished.count, 0)
        }
        wait(for: [ended], timeout: 10)
        XCTAssertEqual(upstreams.finished.count, 1)
        XCTAssertEqual(upstreams.finished.first?.1.clientClosed, true)
    }

    func testAPeerClosingMidBodyFinishesTheLeaseAsAFailure() throws {
        let peer = try peer(answer: ["200 len:10\n\nshort"])
        let ended = expectation(description: "lease finished")
        let upstreams = RecordingGroup([peer.address]) { _ in ended.fulfill() }
        let response = try proxy(engine(upstreams))
        XCTAssertThrowsError(try collectBody(response.body))
        wait(for: [ended], timeout: 10)
        XCTAssertEqual(upstreams.finished.map(\.1.failure), [.error])
        XCTAssertTrue(log.contains { $0.contains("upstream prematurely closed connection (5 of 10 body bytes) while reading upstream") }, "\(log)")
    }

    func testLeaseFinishIsIdempotent() {
        let count = NIOLockedValueBox(0)
        let lease = PeerLease(peer: .unix(path: "/x")) { _ in count.withLockedValue { $0 += 1 } }
        lease.finish(PeerLeaseOutcome(status: 200, bytesReceived: 0, durationNanoseconds: 1))
        lease.finish(PeerLeaseOutcome(status: 500, bytesReceived: 0, durationNanoseconds: 1))
        XCTAssertEqual(count.withLockedValue { $0 }, 1)
        XCTAssertTrue(lease.isFinished)
    }

    func testSinglePeerGroupLeasesItsPeerOnce() {
        let single = SinglePeerGroup(.tcp(host: "127.0.0.1", port: 1))
        XCTAssertEqual(single.begin(makeRequest(), excluding: [])?.peer, single.peer)
        XCTAssertNil(single.begin(makeRequest(), excluding: [single.peer]))
        XCTAssertEqual(single.peers, [single.peer])
    }
}
