import Foundation
import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import XCTest
@testable import KernelUpstream

/// `proxy_buffering` / `uwsgi_buffering`: the answer is read ahead of the client, in memory then in a temporary
/// file, so the upstream is let go however slowly the client reads; what is held goes out at once, in order.
final class UpstreamBufferingTests: XCTestCase {
    private var tempPath = ""

    override func setUp() {
        tempPath = NSTemporaryDirectory() + "kernel-upstream-buffering-\(getpid())-\(UUID().uuidString)"
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: tempPath)
    }

    /// An upstream that hands out `parts` one per pull and counts the pulls.
    private func upstream(_ parts: [String], on loop: EmbeddedEventLoop,
                          pulls: NIOLockedValueBox<Int> = NIOLockedValueBox(0),
                          cancelled: NIOLockedValueBox<Bool> = NIOLockedValueBox(false)) -> ResponseBodyStream {
        let left = NIOLockedValueBox(parts)
        return ResponseBodyStream(next: {
            pulls.withLockedValue { $0 += 1 }
            let next = left.withLockedValue { $0.isEmpty ? nil : $0.removeFirst() }
            return loop.makeSucceededFuture(next.map { ByteBuffer(string: $0) })
        }, cancel: { cancelled.withLockedValue { $0 = true } })
    }

    private func settings(memory: Int, file: Int64) -> UpstreamBuffering {
        var settings = UpstreamBuffering(tempPath: tempPath)
        settings.memorySize = memory
        settings.maxTempFileSize = file
        return settings
    }

    private func drain(_ stream: ResponseBodyStream) throws -> [String] {
        var parts: [String] = []
        while let part = try stream.next().wait() { parts.append(String(buffer: part)) }
        return parts
    }

    func testInMemoryItReadsAheadUpToTheLimitAndHandsOverWhatIsHeld() throws {
        let loop = EmbeddedEventLoop()
        let pulls = NIOLockedValueBox(0)
        let buffer = UpstreamResponseBuffer(upstream(["aaaa", "bbbb", "cccc", "dddd"], on: loop, pulls: pulls),
                                            settings: settings(memory: 8, file: 0), logger: Logger(label: "test"),
                                            eventLoop: loop)
        let stream = buffer.stream
        // The first pull reads one part for the client and goes on reading until 8 bytes are held.
        XCTAssertEqual(try stream.next().wait().map { String(buffer: $0) }, "aaaa")
        XCTAssertEqual(pulls.withLockedValue { $0 }, 3)
        XCTAssertEqual(try drain(stream), ["bbbbcccc", "dddd"])
        XCTAssertFalse(buffer.usedTemporaryFile)
    }

    func testBeyondMemoryTheWholeAnswerIsReadIntoAFileAndComesBackInOrder() throws {
        let loop = EmbeddedEventLoop()
        let pulls = NIOLockedValueBox(0)
        let parts = (0..<40).map { String(repeating: String(UnicodeScalar(UInt8(65 + $0 % 26))), count: 1000) }
        let buffer = UpstreamResponseBuffer(upstream(parts, on: loop, pulls: pulls),
                                            settings: settings(memory: 4096, file: 1 << 20), logger: Logger(label: "test"),
                                            eventLoop: loop)
        let stream = buffer.stream
        let first = try XCTUnwrap(stream.next().wait())
        // One pull for the client, then the upstream is read to its end (40 parts and the end) before the client
        // takes a second part: the upstream is free.
        XCTAssertEqual(pulls.withLockedValue { $0 }, 41)
        XCTAssertTrue(buffer.usedTemporaryFile)
        let rest = try drain(stream)
        XCTAssertEqual(String(buffer: first) + rest.joined(), parts.joined(), "every byte, in order")
        XCTAssertTrue(rest.allSatisfy { $0.utf8.count <= UpstreamResponseBuffer.fileReadSize })
    }

    func testTheFileLimitMakesTheUpstreamWaitAndTheFileIsReusedOnceReadBack() throws {
        let loop = EmbeddedEventLoop()
        let pulls = NIOLockedValueBox(0)
        let parts = (0..<12).map { String(repeating: String(UnicodeScalar(UInt8(97 + $0))), count: 100) }
        let buffer = UpstreamResponseBuffer(upstream(parts, on: loop, pulls: pulls),
                                            settings: settings(memory: 200, file: 300), logger: Logger(label: "test"),
                                            eventLoop: loop)
        let stream = buffer.stream
        var received = try XCTUnwrap(stream.next().wait()).readableBytes
        // 1 for the client, 2 to fill the memory, 3 to reach the file's limit: then the upstream waits.
        XCTAssertEqual(pulls.withLockedValue { $0 }, 6)
        while let part = try stream.next().wait() { received += part.readableBytes }
        XCTAssertEqual(received, 1200)
        XCTAssertEqual(pulls.withLockedValue { $0 }, 13, "read to its end once the client caught up")
    }

    func testAFailureComesAfterWhatWasHeldAndACancelReachesTheUpstream() throws {
        let loop = EmbeddedEventLoop()
        struct Broken: Error {}
        let served = NIOLockedValueBox(0)
        let failing = ResponseBodyStream(next: {
            let count = served.withLockedValue { value -> Int in value += 1; return value }
            return count <= 2 ? loop.makeSucceededFuture(ByteBuffer(string: "part\(count)")) : loop.makeFailedFuture(Broken())
        }, cancel: {})
        let stream = UpstreamResponseBuffer(failing, settings: settings(memory: 64, file: 0), logger: Logger(label: "test"),
                                            eventLoop: loop).stream
        XCTAssertEqual(try stream.next().wait().map { String(buffer: $0) }, "part1")
        XCTAssertEqual(try stream.next().wait().map { String(buffer: $0) }, "part2")
        XCTAssertThrowsError(try stream.next().wait())

        let cancelled = NIOLockedValueBox(false)
        let big = (0..<10).map { _ in String(repeating: "z", count: 100) }
        let spilled = UpstreamResponseBuffer(upstream(big, on: loop, cancelled: cancelled),
                                             settings: settings(memory: 100, file: 1 << 20), logger: Logger(label: "test"),
                                             eventLoop: loop)
        _ = try spilled.stream.next().wait()
        spilled.stream.cancel()
        XCTAssertTrue(cancelled.withLockedValue { $0 })
        XCTAssertNil(try spilled.stream.next().wait(), "nothing after a cancel")
        // An upstream that has not ended: a pull after the cancel ends at once too.
        let endless = ResponseBodyStream(next: { loop.makeSucceededFuture(ByteBuffer(string: "more")) }, cancel: {})
        let open = UpstreamResponseBuffer(endless, settings: settings(memory: 8, file: 0), logger: Logger(label: "test"),
                                          eventLoop: loop).stream
        _ = try open.next().wait()
        open.cancel()
        XCTAssertNil(try open.next().wait())
    }

    func testXAccelBufferingChoosesAndIsHiddenAndTheEnginesOwnAnswersPassUntouched() throws {
        let loop = EmbeddedEventLoop()
        let answered = UpstreamReport(group: "g", attempts: [UpstreamAttempt(address: "a", status: 200, responseTime: 0, headerTime: 0)])
        var response = KernelResponse(status: 200, headers: ["X-Accel-Buffering": "no"],
                                      body: .stream(upstream(["a"], on: loop)))
        response.upstream = answered
        var off = settings(memory: 8, file: 0)
        let unbuffered = off.apply(to: response, passAccelHeader: false, logger: Logger(label: "test"), eventLoop: loop)
        XCTAssertNil(unbuffered.headers["X-Accel-Buffering"])
        XCTAssertEqual(off.apply(to: response, passAccelHeader: true, logger: Logger(label: "test"), eventLoop: loop)
            .headers["X-Accel-Buffering"], "no", "proxy_pass_header keeps it")
        off.enabled = false
        response.headers.replace("X-Accel-Buffering", "yes")
        // Buffered after all: the read-ahead pulls the upstream's end as soon as the client takes the first part.
        let pulls = NIOLockedValueBox(0)
        response.body = .stream(upstream(["a", "b"], on: loop, pulls: pulls))
        let yes = off.apply(to: response, passAccelHeader: false, logger: Logger(label: "test"), eventLoop: loop)
        guard case .stream(let stream) = yes.body else { return XCTFail("a stream") }
        _ = try stream.next().wait()
        XCTAssertEqual(pulls.withLockedValue { $0 }, 3)

        var failed = KernelResponse.error(502, "bad gateway")
        failed.headers.add("X-Accel-Buffering", "no")
        failed.upstream = UpstreamReport(group: "g", attempts: [UpstreamAttempt(address: "a", status: 502, responseTime: 0)])
        XCTAssertEqual(off.apply(to: failed, passAccelHeader: false, logger: Logger(label: "test"), eventLoop: loop)
            .headers["X-Accel-Buffering"], "no")
    }
}
