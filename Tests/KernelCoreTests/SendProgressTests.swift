import KernelCore
import NIOCore
import NIOEmbedded
import XCTest

final class SendProgressTests: XCTestCase {
    func testSlicesCoverTheBufferWithoutCopying() {
        var buffer = ByteBufferAllocator().buffer(capacity: 0)
        buffer.writeBytes((0..<(SendProgress.sliceSize * 2 + 7)).map { UInt8(truncatingIfNeeded: $0) })
        var seen: [(Int, Bool)] = []
        var joined = ByteBufferAllocator().buffer(capacity: 0)
        SendProgress.forEachSlice(of: buffer) { slice, isLast in
            seen.append((slice.readableBytes, isLast))
            joined.writeImmutableBuffer(slice)
        }
        XCTAssertEqual(seen.map(\.0), [SendProgress.sliceSize, SendProgress.sliceSize, 7])
        XCTAssertEqual(seen.map(\.1), [false, false, true])
        XCTAssertEqual(joined, buffer)
    }

    func testAnEmptyBufferIsOneEmptySlice() {
        var count = 0
        SendProgress.forEachSlice(of: ByteBuffer()) { slice, isLast in
            XCTAssertEqual(slice.readableBytes, 0)
            XCTAssertTrue(isLast)
            count += 1
        }
        XCTAssertEqual(count, 1)
    }

    func testWatchFiresOnlyAfterATimeoutWithoutProgress() {
        let loop = EmbeddedEventLoop()
        var fired = 0
        let watch = SendTimeoutWatch(timeout: .seconds(10), eventLoop: loop) { fired += 1 }
        for _ in 0..<3 { watch.writeStarted() }
        loop.advanceTime(by: .seconds(9))
        watch.writeCompleted()           // progress at 9 s
        loop.advanceTime(by: .seconds(9))
        watch.writeCompleted()           // progress at 18 s
        loop.advanceTime(by: .seconds(9))
        XCTAssertEqual(fired, 0, "27 s in total, never 10 s without progress")
        loop.advanceTime(by: .seconds(2))
        XCTAssertEqual(fired, 1)
        loop.advanceTime(by: .seconds(60))
        XCTAssertEqual(fired, 1, "fires once")
    }

    func testADeferredWriteIsTimedFromItsStartOnceArmed() {
        let loop = EmbeddedEventLoop()
        var fired = 0
        let watch = SendTimeoutWatch(timeout: .seconds(10), eventLoop: loop) { fired += 1 }
        watch.writeStarted(arming: false)
        loop.advanceTime(by: .seconds(5))
        watch.armIfWaiting()             // the flush did not finish the write
        loop.advanceTime(by: .seconds(4))
        XCTAssertEqual(fired, 0, "9 s after the write started")
        loop.advanceTime(by: .seconds(2))
        XCTAssertEqual(fired, 1, "10 s without progress counted from the write's start, not from arming")
    }

    func testADeferredWriteThatCompletedIsNeverTimed() {
        let loop = EmbeddedEventLoop()
        var fired = 0
        let watch = SendTimeoutWatch(timeout: .seconds(10), eventLoop: loop) { fired += 1 }
        watch.writeStarted(arming: false)
        watch.writeCompleted()           // the flush wrote it at once
        watch.armIfWaiting()
        loop.advanceTime(by: .seconds(60))
        XCTAssertEqual(fired, 0)
        watch.writeStarted(arming: false)
        loop.advanceTime(by: .seconds(60))
        XCTAssertEqual(fired, 0, "not armed: nothing is timed until armIfWaiting")
        watch.armIfWaiting()
        loop.advanceTime(by: .seconds(1))
        XCTAssertEqual(fired, 1)
    }

    func testWatchIsIdleWhenNothingIsPending() {
        let loop = EmbeddedEventLoop()
        var fired = 0
        let watch = SendTimeoutWatch(timeout: .seconds(10), eventLoop: loop) { fired += 1 }
        watch.writeStarted()
        watch.writeCompleted()
        loop.advanceTime(by: .seconds(60))
        XCTAssertEqual(fired, 0)
        watch.writeStarted()
        loop.advanceTime(by: .seconds(11))
        XCTAssertEqual(fired, 1, "a write started later is watched from its start")
    }

    func testStoppedWatchNeverFires() {
        let loop = EmbeddedEventLoop()
        var fired = 0
        let watch = SendTimeoutWatch(timeout: .seconds(10), eventLoop: loop) { fired += 1 }
        watch.writeStarted()
        watch.stop()
        loop.advanceTime(by: .seconds(60))
        XCTAssertEqual(fired, 0)
    }
}
