import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import XCTest
@testable import KernelUpstream

/// The generic response decoder (framing) and the reading side's backpressure, on an `EmbeddedChannel`.
final class UpstreamStreamingTests: XCTestCase {
    private func decoderChannel(head: Bool = false) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(UpstreamResponseDecoder(parser: FakeParser(), isHeadRequest: head)))
        return channel
    }

    private func drain(_ channel: EmbeddedChannel) throws -> (heads: [Int], body: String, ends: Int, excess: [String]) {
        var heads: [Int] = [], body = "", ends = 0, excess: [String] = []
        while let part = try channel.readInbound(as: UpstreamResponsePart.self) {
            switch part {
            case .head(let head): heads.append(head.status)
            case .body(let part): body += String(buffer: part)
            case .end: ends += 1
            case .excess(let warning): excess.append(warning)
            }
        }
        return (heads, body, ends, excess)
    }

    func testLengthFramingStopsAtTheLength() throws {
        let channel = try decoderChannel()
        try channel.writeInbound(buffer("200 len:3\n\nabcEXTRA"))
        try channel.writeInbound(buffer("MORE"))
        let result = try drain(channel)
        XCTAssertEqual(result.heads, [200])
        XCTAssertEqual(result.body, "abc")
        XCTAssertEqual(result.ends, 1)
        XCTAssertEqual(result.excess, ["upstream sent more data than specified in \"Content-Length\" header"],
                       "nginx's warning, once however many reads follow")
    }

    func testNothingAfterTheEndIsNoExcess() throws {
        let channel = try decoderChannel()
        try channel.writeInbound(buffer("200 len:3\n\nabc"))
        XCTAssertEqual(try drain(channel).excess, [])
        let chunked = try decoderChannel()
        try chunked.writeInbound(buffer("200 chunked\n\n3\r\nabc\r\n0\r\n\r\nmore"))
        let result = try drain(chunked)
        XCTAssertEqual(result.body, "abc")
        XCTAssertEqual(result.excess, ["upstream sent data after final chunk"])
    }

    func testChunkedFramingAcrossReadsThroughTheProtocolsDecoder() throws {
        let channel = try decoderChannel()
        for part in ["200 chun", "ked\n\n3\r", "\nabc\r\n", "4\r\nd", "efg\r\n0\r", "\n\r\n"] {
            try channel.writeInbound(buffer(part))
        }
        let result = try drain(channel)
        XCTAssertEqual(result.body, "abcdefg")
        XCTAssertEqual(result.ends, 1)
        XCTAssertNoThrow(try channel.finish())
    }

    func testChunkedBodyCutShortIsAnError() throws {
        let channel = try decoderChannel()
        try channel.writeInbound(buffer("200 chunked\n\n5\r\nab"))
        XCTAssertThrowsError(try channel.finish()) { error in
            XCTAssertEqual(error as? UpstreamResponseError, .prematureCloseInEncodedBody)
        }
    }

    func testInvalidChunkIsAnInvalidAnswer() throws {
        let channel = try decoderChannel()
        XCTAssertThrowsError(try channel.writeInbound(buffer("200 chunked\n\nzz\r\n"))) { error in
            let invalid = error as? UpstreamInvalidResponse
            XCTAssertEqual(invalid?.inHead, false)
            XCTAssertEqual(invalid?.description, "fake upstream sent invalid chunk size")
        }
    }

    func testCloseFramingEndsAtTheClose() throws {
        let channel = try decoderChannel()
        try channel.writeInbound(buffer("200 close\n\nsome"))
        try channel.writeInbound(buffer(" more"))
        let before = try drain(channel)
        XCTAssertEqual(before.body, "some more")
        XCTAssertEqual(before.ends, 0, "no end before the close")
        XCTAssertNoThrow(try channel.finish())
        XCTAssertEqual(try drain(channel).ends, 1)
    }

    func testLengthBodyCutShortIsAnError() throws {
        let channel = try decoderChannel()
        try channel.writeInbound(buffer("200 len:10\n\nabc"))
        XCTAssertThrowsError(try channel.finish()) { error in
            XCTAssertEqual(error as? UpstreamResponseError, .prematureCloseInBody(received: 3, expected: 10))
        }
    }

    func testHeadRequestAnd204And304HaveNoBody() throws {
        let head = try decoderChannel(head: true)
        try head.writeInbound(buffer("200 len:10\n\n"))
        XCTAssertEqual(try drain(head).ends, 1)
        for status in [204, 304] {
            let channel = try decoderChannel()
            try channel.writeInbound(buffer("\(status) close\n\nignored"))
            let result = try drain(channel)
            XCTAssertEqual(result.body, "")
            XCTAssertEqual(result.ends, 1)
        }
    }

    func testCloseBeforeTheHeadIsAnError() throws {
        let channel = try decoderChannel()
        try channel.writeInbound(buffer("200 len"))
        XCTAssertThrowsError(try channel.finish()) { error in
            XCTAssertEqual(error as? UpstreamResponseError, .prematureCloseInHead)
        }
    }

    // MARK: backpressure

    func testTheNextUpstreamReadWaitsForTheClientsPull() throws {
        let channel = try decoderChannel()
        let handler = UpstreamConnectionHandler(readTimeout: .seconds(60), eventLoop: channel.eventLoop)
        try channel.pipeline.syncOperations.addHandler(handler)
        handler.startReading()
        XCTAssertEqual(handler.readsRequested, 1)
        handler.requestSent()

        try channel.writeInbound(buffer("200 len:9\n\nabc"))
        let head = try handler.headFuture.wait()
        XCTAssertEqual(head.status, 200)
        XCTAssertEqual(handler.readsRequested, 1, "nothing pulled yet: no further read")
        XCTAssertNil(handler.takeWholeBody(), "the body has not ended")

        let logger = Logger(label: "test")
        let first = handler.next(logger: logger, suffix: "")
        XCTAssertEqual(try first.wait().map { String(buffer: $0) }, "abc")
        XCTAssertEqual(handler.readsRequested, 1, "a held part is handed over without reading")

        let second = handler.next(logger: logger, suffix: "")
        XCTAssertEqual(handler.readsRequested, 2, "a pull with nothing held reads once")
        try channel.writeInbound(buffer("def"))
        XCTAssertEqual(try second.wait().map { String(buffer: $0) }, "def")
        XCTAssertEqual(handler.readsRequested, 2, "the read that delivered the part asks for no other")

        let third = handler.next(logger: logger, suffix: "")
        XCTAssertEqual(handler.readsRequested, 3)
        try channel.writeInbound(buffer("ghi"))
        XCTAssertEqual(try third.wait().map { String(buffer: $0) }, "ghi")
        XCTAssertNil(try handler.next(logger: logger, suffix: "").wait())
        XCTAssertEqual(handler.bodyBytesReceived, 9)
    }

    func testBodyEndIsObservedOnceAndOnlyAtTheEnd() throws {
        let channel = try decoderChannel()
        let handler = UpstreamConnectionHandler(readTimeout: .seconds(60), eventLoop: channel.eventLoop)
        try channel.pipeline.syncOperations.addHandler(handler)
        handler.startReading()
        try channel.writeInbound(buffer("200 len:4\n\nab"))
        _ = try handler.headFuture.wait()
        var ends: [String] = []
        handler.observeBodyEnd { end in
            if case .complete = end { ends.append("complete") } else { ends.append("other") }
        }
        XCTAssertEqual(ends, [])
        let logger = Logger(label: "test")
        _ = try handler.next(logger: logger, suffix: "").wait()
        let rest = handler.next(logger: logger, suffix: "")
        try channel.writeInbound(buffer("cd"))
        _ = try rest.wait()
        XCTAssertEqual(ends, ["complete"])
        handler.cancel()
        XCTAssertEqual(ends, ["complete"], "a cancel after the end changes nothing")
    }

    func testAKeptConnectionsReaderServesTheNextRequestUntouchedByThePreviousOnesStream() throws {
        // One reader for two requests on one connection, as a pooled connection has it.
        let slot = UpstreamDecoderSlot(UpstreamResponseDecoder(parser: FakeParser(), isHeadRequest: false))
        let channel = EmbeddedChannel()
        let watch = UpstreamKeepaliveHandler(readTimer: UpstreamReadTimer(eventLoop: channel.eventLoop, shared: true))
        let handler = UpstreamConnectionHandler(readTimeout: .seconds(60), eventLoop: channel.eventLoop, readTimer: watch.readTimer)
        try channel.pipeline.syncOperations.addHandlers([watch, ByteToMessageHandler(UpstreamConnectionDecoder(slot: slot)), handler])
        let peer = PeerAddress.tcp(host: "127.0.0.1", port: 1)
        let cache = IdleConnectionCache(settings: UpstreamKeepalive(connections: 1, timeout: .seconds(60), requests: 10),
                                        eventLoop: channel.eventLoop)
        let connection = UpstreamConnection(channel: channel, peer: peer, keepalive: watch, decoderSlot: slot, reader: handler,
                                            cache: cache)
        let logger = Logger(label: "test")
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()

        handler.keepAliveAtEnd = (connection, cache)
        handler.startReading()
        handler.requestFullySent = true
        handler.requestSent()
        try channel.writeInbound(buffer("200 len:4\nReuse: yes\n\nab"))
        XCTAssertEqual(try handler.headFuture.wait().status, 200)
        let first = handler.generation
        XCTAssertEqual(try handler.next(of: first, logger: logger, suffix: "").wait().map { String(buffer: $0) }, "ab")
        let rest = handler.next(of: first, logger: logger, suffix: "")
        try channel.writeInbound(buffer("cd"))
        XCTAssertEqual(try rest.wait().map { String(buffer: $0) }, "cd")

        XCTAssertEqual(cache.count, 1, "the ended answer left its connection in the pool")
        XCTAssertTrue(cache.take(peer) === connection)
        handler.beginRequest()
        slot.decoder = UpstreamResponseDecoder(parser: FakeParser(), isHeadRequest: false)
        XCTAssertNotEqual(handler.generation, first)
        handler.keepAliveAtEnd = (connection, cache)
        handler.startReading()
        handler.requestFullySent = true
        handler.requestSent()
        try channel.writeInbound(buffer("201 len:4\nReuse: yes\n\nef"))
        XCTAssertEqual(try handler.headFuture.wait().status, 201, "the second request's head, not the first's")
        let second = handler.generation
        // The first request's stream, dropped or pulled late, neither ends nor reads the second one's answer.
        handler.cancel(first)
        XCTAssertNil(try handler.next(of: first, logger: logger, suffix: "").wait())
        XCTAssertEqual(try handler.next(of: second, logger: logger, suffix: "").wait().map { String(buffer: $0) }, "ef")
        let end = handler.next(of: second, logger: logger, suffix: "")
        try channel.writeInbound(buffer("gh"))
        XCTAssertEqual(try end.wait().map { String(buffer: $0) }, "gh")
        XCTAssertNil(try handler.next(of: second, logger: logger, suffix: "").wait())
        XCTAssertEqual(handler.bodyBytesReceived, 4, "counted per request")
        XCTAssertTrue(channel.isActive)
        XCTAssertEqual(cache.count, 1, "kept again for a third request")
    }
}

/// The resolver seam: the engine reads named peers' addresses from a resolver object, never looking a name up
/// on its event loop.
final class PeerResolverTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private var servers: [any Channel] = []

    override func setUp() { group = MultiThreadedEventLoopGroup(numberOfThreads: 1) }

    override func tearDown() {
        for server in servers { try? server.close().wait() }
        try? group.syncShutdownGracefully()
    }

    /// A fake name service: `app.test` resolves to whatever port it is set to; every lookup is counted.
    final class FakeNames: Sendable {
        let port = NIOLockedValueBox(0)
        let lookups = NIOLockedValueBox(0)
        let threads = NIOLockedValueBox<[Bool]>([])

        func lookup(_ host: String, _ port: Int) throws -> SocketAddress {
            lookups.withLockedValue { $0 += 1 }
            threads.withLockedValue { $0.append(MultiThreadedEventLoopGroup.currentEventLoop != nil) }
            guard host == "app.test" else { throw FakeError(description: "no such host") }
            return try SocketAddress(ipAddress: "127.0.0.1", port: self.port.withLockedValue { $0 })
        }
    }

    private func answering(_ text: String) throws -> Int {
        let server = try ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(FakePeerHandler { _, _ in
                        channel.writeAndFlush(buffer("200 len:\(text.utf8.count)\n\n\(text)")).whenComplete { _ in channel.close(promise: nil) }
                    })
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        servers.append(server)
        return server.localAddress!.port!
    }

    private func get(_ engine: UpstreamEngine<FakeProtocol>, messages: NIOLockedValueBox<[String]> = .init([])) throws -> (Int, String) {
        let logger = Logger(label: "test") { _ in RecordingLogHandler(messages: messages) }
        let response = try engine.proxy(makeRequest(), context: RequestContext(eventLoop: group.next(), logger: logger, route: RouteInfo())).wait()
        return (response.status, try collectBody(response.body))
    }

    func testTheEngineConnectsToTheResolversCurrentAddress() throws {
        let names = FakeNames()
        names.port.withLockedValue { $0 = try! answering("first") }
        let book = PeerAddressBook(lookup: names.lookup)
        let peer = PeerAddress.tcp(host: "app.test", port: 6666)
        try book.resolve([peer, .tcp(host: "127.0.0.1", port: 1), .unix(path: "/x")])
        XCTAssertEqual(names.lookups.withLockedValue { $0 }, 1, "only the named peer is looked up")
        let engine = UpstreamEngine(configuration: UpstreamConfiguration(group: SinglePeerGroup(peer), resolver: book),
                                    protocol: FakeProtocol())
        XCTAssertEqual(try get(engine).1, "first")

        names.port.withLockedValue { $0 = try! answering("second") }
        XCTAssertEqual(try get(engine).1, "first", "no lookup per request")
        XCTAssertTrue(book.refresh().isEmpty)
        XCTAssertEqual(try get(engine).1, "second")
        XCTAssertEqual(names.lookups.withLockedValue { $0 }, 2)
        XCTAssertEqual(names.threads.withLockedValue { $0 }, [false, false], "never on an event loop")
    }

    func testAnUnresolvedNameIs502WithoutALookup() throws {
        let names = FakeNames()
        let book = PeerAddressBook(lookup: names.lookup)
        let engine = UpstreamEngine(configuration: UpstreamConfiguration(group: SinglePeerGroup(.tcp(host: "other.test", port: 1)), resolver: book),
                                    protocol: FakeProtocol())
        let messages = NIOLockedValueBox<[String]>([])
        XCTAssertEqual(try get(engine, messages: messages).0, 502)
        XCTAssertEqual(names.lookups.withLockedValue { $0 }, 0)
        XCTAssertTrue(messages.withLockedValue { $0 }.contains { $0.contains("other.test could not be resolved (3: Host not found) while connecting to upstream") })
    }

    func testALoadTimeLookupFailureNamesThePeer() {
        let book = PeerAddressBook(lookup: FakeNames().lookup)
        XCTAssertThrowsError(try book.resolve([.tcp(host: "missing.test", port: 80)])) { error in
            XCTAssertEqual("\(error)", "host not found in upstream \"missing.test:80\"")
        }
    }

    func testAFailedRefreshKeepsTheLastAddress() throws {
        let names = FakeNames()
        names.port.withLockedValue { $0 = 4242 }
        let book = PeerAddressBook { host, port in
            if names.lookups.withLockedValue({ $0 }) > 0 { names.lookups.withLockedValue { $0 += 1 }; throw FakeError(description: "SERVFAIL") }
            return try names.lookup(host, port)
        }
        try book.resolve([.tcp(host: "app.test", port: 1)])
        XCTAssertEqual(book.refresh().map(\.peer), [.tcp(host: "app.test", port: 1)])
        XCTAssertEqual(book.address(host: "app.test", port: 1)?.port, 4242)
    }

    func testTheResolverServiceRefreshesOffTheEventLoops() async throws {
        let names = FakeNames()
        names.port.withLockedValue { $0 = 1111 }
        let book = PeerAddressBook(lookup: names.lookup)
        try book.resolve([.tcp(host: "app.test", port: 1)])
        names.port.withLockedValue { $0 = 2222 }
        let service = UpstreamResolverService(book: book, interval: .milliseconds(20), logger: Logger(label: "test"))
        try await service.start()
        // Readiness, bounded: the refresh loop runs on its own.
        for _ in 0..<500 where book.address(host: "app.test", port: 1)?.port != 2222 {
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        await service.stop()
        XCTAssertEqual(book.address(host: "app.test", port: 1)?.port, 2222)
        XCTAssertFalse(names.threads.withLockedValue { $0 }.contains(true), "no lookup on an event loop")
    }
}
