import Foundation
import KernelCore
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import XCTest

/// A connection handler that only records what the driver calls back.
private final class RecordingConnection: ChannelInboundHandler, DrivenConnection {
    typealias InboundIn = ByteBuffer
    let timers = ConnectionTimers()
    var context: ChannelHandlerContext!
    var fired: [ConnectionTimers.Slot?] = []
    var completions: [ConnectionTimers.WriteCompletion] = []
    var responses: [(status: Int, serial: UInt64)] = []
    var acceptsResponses = true
    var parts: [String?] = []
    var partsWritten = 0
    var lingering = 0

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func exchangeResponded(_ response: KernelResponse, serial: UInt64, context: ChannelHandlerContext) -> Bool {
        responses.append((response.status, serial))
        return acceptsResponses
    }

    func responsePartArrived(_ part: Result<ByteBuffer?, any Error>, serial: UInt64, context: ChannelHandlerContext) {
        parts.append((try? part.get())?.map { String(buffer: $0) } ?? nil)
    }

    func responsePartWritten(_ result: Result<Void, any Error>, serial: UInt64, context: ChannelHandlerContext) {
        partsWritten += 1
    }

    func watchedWriteCompleted(context: ChannelHandlerContext) {
        completions.append(timers.writeCompleted(channelActive: context.channel.isActive, now: context.eventLoop.now,
                                                 sendTimeout: .seconds(5), keepRunning: false))
    }

    func connectionTimerFired(context: ChannelHandlerContext) {
        fired.append(timers.dueSlot(now: context.eventLoop.now))
        timers.arm(for: self, context: context)
    }

    func lingeringStarted(context: ChannelHandlerContext) { lingering += 1 }
}

/// Routes everything to `handler`, with a 16-byte body buffer and a 10-byte body limit.
private struct OneRouteRouter: RequestRouter {
    let handler: any RequestHandler
    func route(_ request: KernelRequest) -> RouteDecision {
        RouteDecision(route: RouteInfo(), handler: handler, maxBodySize: 10, accessLog: nil,
                      bodyBuffering: RequestBodyBuffering(bufferSize: 16, tempPath: NSTemporaryDirectory() + "kernel-driver-test-bodies"))
    }
}

private struct LaterHandler: RequestHandler {
    let response: KernelResponse
    func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        let response = self.response
        return context.eventLoop.submit { response }
    }
}

final class ExchangeDriverTests: XCTestCase {
    private func connection() throws -> (EmbeddedChannel, RecordingConnection) {
        let channel = EmbeddedChannel()
        let recorder = RecordingConnection()
        try channel.pipeline.syncOperations.addHandler(recorder)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return (channel, recorder)
    }

    private func exchange(_ handler: any RequestHandler, on channel: EmbeddedChannel,
                          serial: UInt64 = 7) -> (KernelRuntime, InFlightExchange) {
        let runtime = KernelRuntime.standalone(threads: 1, level: .critical)
        runtime.install(KernelGeneration(router: OneRouteRouter(handler: handler), runtime: runtime))
        let request = KernelRequest(method: "POST", uri: "/", path: "/", query: "", version: .http1_1, headers: HeaderFields(),
                                    connection: ConnectionInfo(protocolName: "test", listener: "-", remoteAddress: nil, localAddress: nil))
        return (runtime, ExchangeDriver.begin(request, serial: serial, runtime: runtime, on: channel.eventLoop))
    }

    // MARK: - Timers

    func testTheMostUrgentDueDeadlineIsHandledFirstAndTheRestRightAfter() throws {
        let (channel, c) = try connection()
        c.timers.set(.read, after: .seconds(10), for: c, context: c.context)
        c.timers.set(.linger, after: .seconds(5), for: c, context: c.context)
        c.timers.set(.send, after: .seconds(5), for: c, context: c.context)
        channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        XCTAssertEqual(c.fired, [.send, .linger])
        channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        XCTAssertEqual(c.fired, [.send, .linger, .read])
        XCTAssertNil(c.timers.deadline(.read))
    }

    func testMovingADeadlineLaterKeepsTheTaskWhichReArmsWhenItFiresEarly() throws {
        let (channel, c) = try connection()
        c.timers.set(.read, after: .seconds(5), for: c, context: c.context)
        c.timers.set(.read, after: .seconds(10), for: c, context: c.context)
        channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        XCTAssertEqual(c.fired, [nil], "fired early: nothing due")
        channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        XCTAssertEqual(c.fired, [nil, .read])
    }

    func testAnEarlierDeadlineReplacesTheTask() throws {
        let (channel, c) = try connection()
        c.timers.set(.read, after: .seconds(10), for: c, context: c.context)
        c.timers.set(.send, after: .seconds(2), for: c, context: c.context)
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        XCTAssertEqual(c.fired, [.send])
    }

    func testClearedAndCancelledDeadlinesDoNotFire() throws {
        let (channel, c) = try connection()
        c.timers.set(.read, after: .seconds(5), for: c, context: c.context)
        c.timers.clear(.read)
        channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        XCTAssertEqual(c.fired, [nil])
        c.timers.set(.read, after: .seconds(5), for: c, context: c.context)
        c.timers.cancelAll()
        channel.embeddedEventLoop.advanceTime(by: .seconds(60))
        XCTAssertEqual(c.fired, [nil])
    }

    // MARK: - Watched writes

    func testWatchedWritesGoOutInSlicesAndStopTheSendTimeoutWhenAllCompleted() throws {
        let (channel, c) = try connection()
        let body = ByteBuffer(repeating: 0x61, count: 2 * SendProgress.sliceSize + 100)
        let last = channel.eventLoop.makePromise(of: Void.self)
        c.timers.writeWatched(body, promise: last, sendTimeout: .seconds(5), for: c, context: c.context)
        XCTAssertEqual(c.timers.pendingWrites, 3)
        XCTAssertNotNil(c.timers.deadline(.send))
        c.context.flush()
        XCTAssertEqual(c.completions, [.progressing, .progressing, .drained])
        XCTAssertNil(c.timers.deadline(.send))
        var sizes: [Int] = []
        while let part = try channel.readOutbound(as: ByteBuffer.self) { sizes.append(part.readableBytes) }
        XCTAssertEqual(sizes, [SendProgress.sliceSize, SendProgress.sliceSize, 100])
        XCTAssertNoThrow(try last.futureResult.wait())
    }

    func testAStalledWriteFiresTheSendTimeout() throws {
        let (channel, c) = try connection()
        c.timers.startSendTimeout(.seconds(3), for: c, context: c.context)
        c.timers.startSendTimeout(.seconds(30), for: c, context: c.context)
        channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        XCTAssertEqual(c.fired, [.send], "a running send_timeout is not restarted")
    }

    func testCloseAfterWritesWithoutLingerClosesOnceTheWritesLeft() throws {
        let (channel, c) = try connection()
        c.context.write(NIOAny(ByteBuffer(string: "bye")), promise: nil)
        c.timers.closeAfterWrites(linger: false, sendTimeout: .seconds(5), for: c, context: c.context)
        channel.embeddedEventLoop.run()
        XCTAssertFalse(channel.isActive)
        XCTAssertEqual(try channel.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) }, "bye")
        XCTAssertEqual(c.lingering, 0)
    }

    // MARK: - The exchange

    func testAReadyResponseIsHandedOverAtOnceAndALaterOneOnTheLoop() throws {
        let (channel, c) = try connection()
        let (runtime, ready) = exchange(StaticResponseHandler(.text(201, "now")), on: channel)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        ExchangeDriver.start(ready, for: c, context: c.context)
        XCTAssertEqual(c.responses.map(\.status), [201])
        XCTAssertEqual(c.responses.map(\.serial), [7])

        let (laterRuntime, later) = exchange(LaterHandler(response: .text(202, "later")), on: channel, serial: 8)
        defer { try? laterRuntime.eventLoopGroup.syncShutdownGracefully() }
        ExchangeDriver.start(later, for: c, context: c.context)
        XCTAssertEqual(c.responses.count, 1)
        channel.embeddedEventLoop.run()
        XCTAssertEqual(c.responses.map(\.status), [201, 202])
        XCTAssertEqual(c.responses.last?.serial, 8)
    }

    func testALateStreamedResponseNobodyWaitsForIsCancelled() throws {
        let (channel, c) = try connection()
        c.acceptsResponses = false
        let cancelled = NIOLockedValueBox(false)
        let eventLoop = channel.eventLoop
        let stream = ResponseBodyStream(next: { eventLoop.makeSucceededFuture(nil) },
                                        cancel: { cancelled.withLockedValue { $0 = true } })
        let (runtime, inFlight) = exchange(LaterHandler(response: KernelResponse(status: 200, body: .stream(stream))), on: channel)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        ExchangeDriver.start(inFlight, for: c, context: c.context)
        channel.embeddedEventLoop.run()
        XCTAssertEqual(c.responses.count, 1)
        XCTAssertTrue(cancelled.withLockedValue { $0 })
    }

    func testThePumpAsksForOnePartAtATime() throws {
        let (channel, c) = try connection()
        let parts = NIOLockedValueBox(["ab", "cd"])
        let eventLoop = channel.eventLoop
        let stream = ResponseBodyStream(next: {
            eventLoop.makeSucceededFuture(parts.withLockedValue { $0.isEmpty ? nil : $0.removeFirst() }.map { ByteBuffer(string: $0) })
        }, cancel: {})
        ResponsePump.pull(stream, serial: 1, for: c, context: c.context)
        channel.embeddedEventLoop.run()
        XCTAssertEqual(c.parts, ["ab"])
        let promise = ResponsePump.partPromise(serial: 1, for: c, context: c.context)
        promise.succeed(())
        XCTAssertEqual(c.partsWritten, 1)
        ResponsePump.pull(stream, serial: 1, for: c, context: c.context)
        ResponsePump.pull(stream, serial: 1, for: c, context: c.context)
        channel.embeddedEventLoop.run()
        XCTAssertEqual(c.parts, ["ab", "cd", nil])
    }

    func testTheBodyLimitAdmitsUpToClientMaxBodySize() throws {
        let (channel, _) = try connection()
        let (runtime, inFlight) = exchange(StaticResponseHandler(.text(200, "")), on: channel)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        XCTAssertTrue(inFlight.exchange.admitsBody(ofLength: 10))
        XCTAssertFalse(inFlight.exchange.admitsBody(ofLength: 11))
    }

    // MARK: - Bodies

    func testABodyInOnePartThatFitsIsKeptAsReceived() throws {
        let (channel, _) = try connection()
        let (runtime, inFlight) = exchange(StaticResponseHandler(.text(200, "")), on: channel)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        try inFlight.body.append(ByteBuffer(), for: inFlight, allocator: channel.allocator)
        try inFlight.body.append(ByteBuffer(string: "0123456789"), for: inFlight, allocator: channel.allocator)
        ExchangeDriver.bodyComplete(inFlight)
        XCTAssertEqual(inFlight.request.body.map { String(buffer: $0) }, "0123456789")
        XCTAssertNil(inFlight.request.bodySource)
    }

    func testPartsGoToMemoryUpToTheBufferSizeAndThenToAFile() throws {
        let (channel, _) = try connection()
        let (runtime, small) = exchange(StaticResponseHandler(.text(200, "")), on: channel)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        try small.body.append(ByteBuffer(string: "01234567"), for: small, allocator: channel.allocator)
        try small.body.append(ByteBuffer(string: "89"), for: small, allocator: channel.allocator)
        ExchangeDriver.bodyComplete(small)
        XCTAssertEqual(small.request.body.map { String(buffer: $0) }, "0123456789")

        try FileManager.default.createDirectory(atPath: NSTemporaryDirectory() + "kernel-driver-test-bodies",
                                                withIntermediateDirectories: true)
        let (_, large) = exchange(StaticResponseHandler(.text(200, "")), on: channel)
        try large.body.append(ByteBuffer(string: "0123456789"), for: large, allocator: channel.allocator)
        try large.body.append(ByteBuffer(string: "0123456789"), for: large, allocator: channel.allocator)
        ExchangeDriver.bodyComplete(large)
        XCTAssertNil(large.request.body)
        guard case .file(let file)? = large.request.bodySource else { return XCTFail("not spooled") }
        XCTAssertEqual(file.length, 20)
    }

    func testNoBodyLeavesTheRequestWithoutOne() throws {
        let (channel, _) = try connection()
        let (runtime, inFlight) = exchange(StaticResponseHandler(.text(200, "")), on: channel)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        ExchangeDriver.bodyComplete(inFlight)
        XCTAssertNil(inFlight.request.body)
    }

    // MARK: - Shared rules

    func testNoBodyForInterimNoContentNotModifiedAndHead() {
        for status in [100, 101, 199, 204, 304] {
            XCTAssertTrue(ResponseBodyRule.statusForbidsBody(status), "\(status)")
            XCTAssertFalse(ResponseBodyRule.sendsBody(status: status, isHead: false), "\(status)")
        }
        for status in [200, 201, 206, 301, 404, 500] {
            XCTAssertFalse(ResponseBodyRule.statusForbidsBody(status), "\(status)")
            XCTAssertTrue(ResponseBodyRule.sendsBody(status: status, isHead: false), "\(status)")
            XCTAssertFalse(ResponseBodyRule.sendsBody(status: status, isHead: true), "\(status)")
        }
    }

    func testHopByHopNamesInAnyCaseAndNothingElse() {
        for name in HopByHopHeaders.names {
            XCTAssertTrue(HopByHopHeaders.contains(name), name)
            XCTAssertTrue(HopByHopHeaders.contains(name.uppercased()), name)
        }
        XCTAssertTrue(HopByHopHeaders.contains("Transfer-Encoding"))
        for name in ["", "t", "Content-Type", "Content-Length", "Connections", "Upgrade-Insecure-Requests", "tx", "Trailers"] {
            XCTAssertFalse(HopByHopHeaders.contains(name), name)
        }
    }
}
