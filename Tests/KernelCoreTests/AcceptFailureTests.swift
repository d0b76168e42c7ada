#if canImport(Glibc)
import Glibc
#endif
@testable import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import XCTest

/// The listening socket's answer to a failed `accept`: nginx's log line, and for `EMFILE`/`ENFILE` a 500 ms pause
/// of accepting (autoRead off, then on again), with the line at most once a second.
final class AcceptFailureTests: XCTestCase {
    private let lines = NIOLockedValueBox<[(Logger.Level, String)]>([])
    private var channel: EmbeddedChannel!

    override func setUpWithError() throws {
        let lines = self.lines
        let logger = Logger(label: "test") { _ in RecordingLogHandler(lines: lines) }
        channel = EmbeddedChannel(handler: AcceptFailureHandler(listener: "127.0.0.1:8080", logger: logger))
    }

    override func tearDownWithError() throws {
        _ = try? channel.finish()
    }

    /// The last value the handler gave `autoRead`, nil when it never set it.
    private var autoRead: Bool? {
        channel.options.first { $0.option is ChannelOptions.Types.AutoReadOption }?.value as? Bool
    }

    private func failAccept(_ code: Int32) {
        channel.pipeline.fireErrorCaught(IOError(errnoCode: code, reason: "accept(descriptor:addr:len:)"))
    }

    func testTooManyOpenFilesPausesAcceptingAndResumesAfterTheBackoff() throws {
        failAccept(EMFILE)
        XCTAssertEqual(lines.withLockedValue { $0.map(\.1) },
                       ["accept() failed (24: Too many open files) while accepting new connection on 127.0.0.1:8080"])
        XCTAssertEqual(lines.withLockedValue { $0.first?.0 }, .critical, "nginx logs it at crit")
        XCTAssertEqual(autoRead, false, "accepting stops")
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(499))
        XCTAssertEqual(autoRead, false)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        XCTAssertEqual(autoRead, true, "accepting resumes after 500 ms")
    }

    func testTheLineIsLoggedAtMostOnceASecondAndCountsWhatItLeftOut() throws {
        failAccept(EMFILE)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(500))
        failAccept(ENFILE)
        XCTAssertEqual(autoRead, false, "each failure pauses again")
        XCTAssertEqual(lines.withLockedValue { $0.count }, 1)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(500))
        XCTAssertEqual(autoRead, true)
        failAccept(EMFILE)
        XCTAssertEqual(lines.withLockedValue { $0.map(\.1) }, [
            "accept() failed (24: Too many open files) while accepting new connection on 127.0.0.1:8080",
            "accept() failed (24: Too many open files) while accepting new connection on 127.0.0.1:8080 (1 more since the last report)",
        ])
    }

    func testAFailureWhilePausedDoesNotShortenThePause() throws {
        failAccept(EMFILE)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(300))
        failAccept(EMFILE)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(200))
        XCTAssertEqual(autoRead, true, "one pause at a time, from the first failure")
    }

    func testAnAbortedConnectionIsLoggedAtErrorWithoutPausing() throws {
        failAccept(ECONNABORTED)
        XCTAssertEqual(lines.withLockedValue { $0.map(\.0) }, [.error])
        XCTAssertEqual(lines.withLockedValue { $0.first?.1 },
                       "accept() failed (103: Software caused connection abort) while accepting new connection on 127.0.0.1:8080")
        XCTAssertNil(autoRead)
    }

    func testClosingDuringThePauseCancelsTheResume() throws {
        failAccept(EMFILE)
        XCTAssertNoThrow(try channel.close().wait())
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        XCTAssertEqual(autoRead, false, "a closed listener is not resumed")
    }

    func testOtherErrorsPassThrough() throws {
        struct Other: Error {}
        channel.pipeline.fireErrorCaught(Other())
        XCTAssertThrowsError(try channel.throwIfErrorCaught())
        XCTAssertTrue(lines.withLockedValue { $0.isEmpty })
    }
}

/// Keeps every line logged, with its level.
private struct RecordingLogHandler: LogHandler {
    let lines: NIOLockedValueBox<[(Logger.Level, String)]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        lines.withLockedValue { $0.append((event.level, "\(event.message)")) }
    }
}
