import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import XCTest
@testable import KernelUpstream

/// A fake upgraded peer: answers the first request with `101` and `greeting` right behind the head, then echoes
/// what it receives; when its input ends it sends `bye` and closes.
final class UpgradingPeerHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private var upgraded = false
    private var input = ByteBuffer()

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var part = unwrapInboundIn(data)
        if upgraded {
            context.writeAndFlush(wrapOutboundOut(part), promise: nil)
            return
        }
        input.writeBuffer(&part)
        guard let newline = input.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else { return }
        input.moveReaderIndex(to: newline + 1)
        upgraded = true
        context.write(wrapOutboundOut(ByteBuffer(string: "101 none\nUpgrade: fake\nX-Kept: yes\n\nhello ")), promise: nil)
        if input.readableBytes > 0 { context.write(wrapOutboundOut(input), promise: nil) }
        context.flush()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let event = event as? ChannelEvent, event == .inputClosed else { return }
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: " bye"))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }
}

/// Collects what a test client receives, until its connection closes.
final class CollectingHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let received = NIOLockedValueBox("")

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let text = String(buffer: unwrapInboundIn(data))
        received.withLockedValue { $0 += text }
    }
}

/// The `101` path: the upgrade a proxied response carries and the tunnel it makes.
final class UpstreamTunnelTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private var channels: [any Channel] = []
    private let messages = NIOLockedValueBox<[String]>([])

    override func setUp() {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    override func tearDown() {
        for channel in channels { try? channel.close().wait() }
        try? group.syncShutdownGracefully()
    }

    private var log: [String] { messages.withLockedValue { $0 } }

    private func waitUntil(_ what: String, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(10)
        while try !condition() {
            guard Date() < deadline else { return XCTFail("timed out waiting until \(what)") }
            usleep(5_000)
        }
    }

    /// A loopback server whose accepted connection stands for the client's (its HTTP handler gone), and a test
    /// client connected to it.
    private func clientPair() throws -> (client: any Channel, accepted: any Channel, collected: CollectingHandler) {
        let accepted = group.next().makePromise(of: (any Channel).self)
        let front = try ServerBootstrap(group: group)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { channel in
                accepted.succeed(channel)
                return channel.eventLoop.makeSucceededVoidFuture()
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        channels.append(front)
        let collected = CollectingHandler()
        let client = try ClientBootstrap(group: group)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collected) }
            }
            .connect(to: front.localAddress!).wait()
        channels.append(client)
        return (client, try accepted.futureResult.wait(), collected)
    }

    private func upgradingPeer() throws -> PeerAddress {
        let server = try ServerBootstrap(group: group)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(UpgradingPeerHandler()) }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        channels.append(server)
        return .tcp(host: "127.0.0.1", port: server.localAddress!.port!)
    }

    private func proxy(_ upstreams: RecordingGroup, on eventLoop: any EventLoop,
                       readTimeout: TimeAmount = .seconds(5)) throws -> KernelResponse {
        let engine = UpstreamEngine(configuration: UpstreamConfiguration(group: upstreams, readTimeout: readTimeout),
                                    protocol: FakeProtocol())
        let logger = Logger(label: "test") { _ in RecordingLogHandler(messages: self.messages) }
        let context = RequestContext(eventLoop: eventLoop, logger: logger, route: RouteInfo(serverName: "edge"))
        return try engine.proxy(makeRequest(headers: ["Host": "edge", "Upgrade": "fake"]), context: context).wait()
    }

    func testA101JoinsTheClientToTheUpstreamBothWaysWithHalfClose() throws {
        let peer = try upgradingPeer()
        let (client, accepted, collected) = try clientPair()
        let upstreams = RecordingGroup([peer])
        let response = try proxy(upstreams, on: accepted.eventLoop)
        XCTAssertEqual(response.status, 101)
        XCTAssertEqual(response.headers["Upgrade"], "fake")
        XCTAssertEqual(response.headers["X-Kept"], "yes")
        XCTAssertEqual(response.upstream?.attempts.first?.status, 101)
        guard let upgrade = response.upgrade else { return XCTFail("a 101 carries its upgrade") }
        XCTAssertTrue(upstreams.finished.isEmpty, "the lease lasts as long as the tunnel")

        // Bytes the client sent behind its request head go first; the upstream's bytes behind its 101 come through.
        let ended = try accepted.eventLoop.submit {
            upgrade.start(client: accepted, buffered: ByteBuffer(string: "early"))
        }.wait()
        try waitUntil("the greeting and the early bytes came back") { collected.received.withLockedValue { $0 } == "hello early" }
        try client.writeAndFlush(ByteBuffer(string: " ping")).wait()
        try waitUntil("the echo came back") { collected.received.withLockedValue { $0 } == "hello early ping" }

        // The client ends its side: the upstream sees its input end, answers, and both close.
        try client.close(mode: .output).wait()
        let end = try ended.wait()
        try waitUntil("the client saw the upstream's last bytes") { collected.received.withLockedValue { $0 } == "hello early ping bye" }
        XCTAssertEqual(end.bytesFromClient, "early ping".utf8.count)
        XCTAssertEqual(end.bytesToClient, "hello early ping bye".utf8.count)
        XCTAssertEqual(upstreams.finished.count, 1)
        XCTAssertEqual(upstreams.finished.first?.1.status, 101)
        XCTAssertNil(upstreams.finished.first?.1.failure)
        XCTAssertFalse(accepted.isActive)
    }

    func testTheClientClosingClosesTheUpstream() throws {
        let peer = try upgradingPeer()
        let (client, accepted, collected) = try clientPair()
        let upstreams = RecordingGroup([peer])
        let response = try proxy(upstreams, on: accepted.eventLoop)
        let ended = try accepted.eventLoop.submit { response.upgrade!.start(client: accepted, buffered: nil) }.wait()
        try waitUntil("the greeting came") { collected.received.withLockedValue { $0 } == "hello " }
        try client.close().wait()
        _ = try ended.wait()
        XCTAssertEqual(upstreams.finished.count, 1)
    }

    func testAnIdleTunnelClosesAfterTheReadTimeout() throws {
        let peer = try upgradingPeer()
        let (client, accepted, _) = try clientPair()
        let upstreams = RecordingGroup([peer])
        let response = try proxy(upstreams, on: accepted.eventLoop, readTimeout: .milliseconds(200))
        let ended = try accepted.eventLoop.submit { response.upgrade!.start(client: accepted, buffered: nil) }.wait()
        _ = try ended.wait()
        XCTAssertFalse(accepted.isActive)
        _ = client
        XCTAssertTrue(log.contains { $0.contains("upstream timed out (110: Connection timed out) while proxying upgraded connection") }, "\(log)")
    }

    func testAnUpgradeNeverStartedClosesTheUpstreamAndFinishesTheLease() throws {
        let peer = try upgradingPeer()
        let upstreams = RecordingGroup([peer])
        let response = try proxy(upstreams, on: group.next())
        response.upgrade!.cancel()
        try waitUntil("the lease finished") { upstreams.finished.count == 1 }
        XCTAssertEqual(upstreams.finished.first?.1.clientClosed, true)
    }

    // MARK: - The tunnel on embedded channels

    /// Counts the reads a side asks of its socket.
    final class ReadCounter: ChannelOutboundHandler, @unchecked Sendable {
        typealias OutboundIn = ByteBuffer
        var reads = 0
        func read(context: ChannelHandlerContext) {
            reads += 1
            context.read()
        }
    }

    private func embeddedTunnel(idle: TimeAmount = .seconds(60)) throws -> (UpstreamTunnel, EmbeddedChannel, EmbeddedChannel, ReadCounter, ReadCounter, EmbeddedEventLoop) {
        let loop = EmbeddedEventLoop()
        let clientReads = ReadCounter()
        let upstreamReads = ReadCounter()
        let client = EmbeddedChannel(handler: clientReads, loop: loop)
        let upstream = EmbeddedChannel(handler: upstreamReads, loop: loop)
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try upstream.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        let logger = Logger(label: "test") { _ in RecordingLogHandler(messages: self.messages) }
        let tunnel = UpstreamTunnel(idleTimeout: idle, eventLoop: loop, logger: logger, suffix: "")
        tunnel.join(client: client, upstream: upstream, clientBytes: nil, upstreamBytes: [])
        return (tunnel, client, upstream, clientReads, upstreamReads, loop)
    }

    func testBytesGoAcrossInBothDirections() throws {
        let (_, client, upstream, _, _, _) = try embeddedTunnel()
        try client.writeInbound(ByteBuffer(string: "up"))
        XCTAssertEqual(try upstream.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) }, "up")
        try upstream.writeInbound(UpstreamResponsePart.body(ByteBuffer(string: "down")))
        XCTAssertEqual(try client.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) }, "down")
    }

    func testASideIsNotReadWhileTheOtherTakesNoWrites() throws {
        let (_, client, upstream, _, upstreamReads, _) = try embeddedTunnel()
        let before = upstreamReads.reads
        client.isWritable = false
        client.pipeline.fireChannelWritabilityChanged()
        try upstream.writeInbound(UpstreamResponsePart.body(ByteBuffer(string: "a lot")))
        upstream.pipeline.fireChannelReadComplete()
        XCTAssertEqual(upstreamReads.reads, before, "no read of the upstream while the client is not writable")
        client.isWritable = true
        client.pipeline.fireChannelWritabilityChanged()
        XCTAssertEqual(upstreamReads.reads, before + 1, "the held read goes on once the client takes writes")
    }

    func testBothInputsEndingClosesBoth() throws {
        let (tunnel, client, upstream, _, _, _) = try embeddedTunnel()
        client.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        upstream.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        XCTAssertFalse(client.isActive)
        XCTAssertFalse(upstream.isActive)
        _ = tunnel
    }

    func testAGracefulStopClosesTheTunnel() throws {
        let (tunnel, client, upstream, _, _, _) = try embeddedTunnel()
        client.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        XCTAssertFalse(client.isActive)
        XCTAssertFalse(upstream.isActive)
        _ = tunnel
    }

    func testTheIdleTimerClosesBothAndSaysSo() throws {
        let (tunnel, client, upstream, _, _, loop) = try embeddedTunnel(idle: .seconds(10))
        loop.advanceTime(by: .seconds(9))
        try client.writeInbound(ByteBuffer(string: "still here"))
        loop.advanceTime(by: .seconds(9))
        XCTAssertTrue(client.isActive, "a byte restarts the idle timer")
        loop.advanceTime(by: .seconds(2))
        XCTAssertFalse(client.isActive)
        XCTAssertFalse(upstream.isActive)
        XCTAssertTrue(log.contains { $0.contains("while proxying upgraded connection") }, "\(log)")
        _ = tunnel
    }
}
