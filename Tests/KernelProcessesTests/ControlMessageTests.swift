import KernelCore
import KernelProcesses
import NIOCore
import NIOEmbedded
import XCTest

final class ControlMessageTests: XCTestCase {
    private let samples: [ControlMessage] = [
        .ready,
        .replace(reason: "max_requests 100 reached"),
        .gather(id: 7, query: "metrics", timeoutMilliseconds: 2000),
        .gathered(id: 7, answers: [GatheredAnswer(worker: -1, pid: 10, body: Array("a 1\n".utf8)),
                                   GatheredAnswer(worker: 2, pid: 12, body: [])]),
        .query(id: 9, query: "stats"),
        .answer(id: 9, body: Array("{}".utf8)),
        .answer(id: 10, body: nil),
        .listWorkers(id: 11),
        .workers(id: 11, [WorkerProcessInfo(number: 1, pid: 1234, pool: "edge", spawnedAt: 1764612345.25, respawns: 3, state: "serving")]),
        .share(id: 12, key: "inference.repository /r demo", command: "inference.repository {\"a\":\"é\"}", memory: .instead,
               timeoutMilliseconds: 600_000),
        .share(id: 13, key: "k", command: "", memory: .after, timeoutMilliseconds: 0),
        .share(id: 14, key: "k *", command: "x", memory: .forgetting, timeoutMilliseconds: 5),
        .listShared(id: 14, after: 1 << 40),
        .shared(id: 14, commands: ["c 1", "", "c 3"], through: 77),
        .shared(id: 15, commands: [], through: 0),
    ]

    func testEveryMessageSurvivesTheRoundTrip() throws {
        for message in samples {
            var buffer = ByteBuffer()
            message.encode(into: &buffer)
            XCTAssertEqual(try ControlMessage.decode(from: &buffer), message)
            XCTAssertEqual(buffer.readableBytes, 0)
        }
    }

    func testAPartialFrameWaitsForTheRest() throws {
        var whole = ByteBuffer()
        ControlMessage.replace(reason: "reload_on_rss").encode(into: &whole)
        var partial = whole.getSlice(at: 0, length: whole.readableBytes - 1)!
        XCTAssertNil(try ControlMessage.decode(from: &partial))
        XCTAssertEqual(partial.readableBytes, whole.readableBytes - 1, "nothing is consumed from a partial frame")
    }

    func testTheDecoderSplitsAStreamIntoMessages() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(ControlMessageDecoder()))
        var stream = ByteBuffer()
        for message in samples { message.encode(into: &stream) }
        // Delivered a few bytes at a time, as a socket may.
        while stream.readableBytes > 0 {
            let chunk = stream.readSlice(length: min(5, stream.readableBytes))!
            try channel.writeInbound(chunk)
        }
        var decoded: [ControlMessage] = []
        while let message = try channel.readInbound(as: ControlMessage.self) { decoded.append(message) }
        XCTAssertEqual(decoded, samples)
        XCTAssertTrue(try channel.finish().isClean)
    }

    func testTheEncoderWritesFrames() throws {
        let channel = EmbeddedChannel(handler: MessageToByteHandler(ControlMessageEncoder()))
        try channel.writeOutbound(ControlMessage.query(id: 3, query: "metrics"))
        var written = try XCTUnwrap(channel.readOutbound(as: ByteBuffer.self))
        XCTAssertEqual(written.getInteger(at: 0, as: UInt32.self), UInt32(written.readableBytes - 4))
        XCTAssertEqual(try ControlMessage.decode(from: &written), .query(id: 3, query: "metrics"))
        _ = try channel.finish()
    }

    func testAnUnknownKindOrAnOversizedFrameIsAnError() {
        var unknown = ByteBuffer()
        unknown.writeInteger(UInt32(1))
        unknown.writeInteger(UInt8(200))
        XCTAssertThrowsError(try ControlMessage.decode(from: &unknown))
        var huge = ByteBuffer()
        huge.writeInteger(UInt32(ControlMessage.maximumFrameLength + 1))
        XCTAssertThrowsError(try ControlMessage.decode(from: &huge))
        var trailing = ByteBuffer()
        trailing.writeInteger(UInt32(2))
        trailing.writeInteger(UInt8(1))
        trailing.writeInteger(UInt8(0))
        XCTAssertThrowsError(try ControlMessage.decode(from: &trailing), "a ready frame has no fields")
    }
}

final class ProcessEnvironmentTests: XCTestCase {
    func testInheritedListenersRoundTripWithAwkwardPaths() {
        let listeners = InheritedListeners(["http 127.0.0.1:0": 3, "uwsgi unix:/tmp/a;b%c.sock": 4])
        XCTAssertEqual(InheritedListeners(environmentValue: listeners.environmentValue), listeners)
        XCTAssertEqual(InheritedListeners(["http 127.0.0.1:8080": 3]).environmentValue, "3=http 127.0.0.1:8080")
        XCTAssertNil(InheritedListeners(environmentValue: "x=http 1"))
    }

    func testWorkerIdentity() {
        let identity = WorkerIdentity(pool: "edge", number: 2, controlDescriptor: 5)
        XCTAssertEqual(WorkerIdentity(environmentValue: identity.environmentValue), identity)
        XCTAssertNil(WorkerIdentity(environmentValue: "edge:0:5"))
        XCTAssertNil(WorkerIdentity(environmentValue: "edge:1"))
    }

    func testExitStatusInNginxWords() {
        XCTAssertEqual(ExitStatus(waitStatus: 1 << 8).description, "exited with code 1")
        XCTAssertEqual(ExitStatus(waitStatus: 9).description, "exited on signal 9")
        XCTAssertEqual(ExitStatus(waitStatus: 0), .exited(code: 0))
    }

    func testRespawnBackOffDoublesAndIsCapped() {
        XCTAssertEqual(MasterProcess.respawnDelay(quickDeaths: 1), .zero)
        XCTAssertEqual(MasterProcess.respawnDelay(quickDeaths: 2), .milliseconds(500))
        XCTAssertEqual(MasterProcess.respawnDelay(quickDeaths: 3), .seconds(1))
        XCTAssertEqual(MasterProcess.respawnDelay(quickDeaths: 4), .seconds(2))
        XCTAssertEqual(MasterProcess.respawnDelay(quickDeaths: 50), .seconds(30))
    }
}

final class WorkerMetricsTests: XCTestCase {
    func testEveryPoolHasEveryCauseAndState() {
        let workers = [WorkerProcessInfo(number: 1, pid: 11, pool: "edge", spawnedAt: 0, respawns: 0, state: "serving"),
                       WorkerProcessInfo(number: 1, pid: 21, pool: "worker", spawnedAt: 0, respawns: 2, state: "serving"),
                       WorkerProcessInfo(number: 1, pid: 20, pool: "worker", spawnedAt: 0, respawns: 1, state: "draining")]
        let text = WorkerMetrics.render(pools: ["edge", "worker"], restarts: ["worker": ["signal": 1, "recycle": 1]], workers: workers)
        let lines = text.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.filter { $0.hasPrefix("# TYPE") },
                       ["# TYPE kernel_worker_restarts_total counter", "# TYPE kernel_workers gauge"])
        XCTAssertTrue(lines.contains("kernel_worker_restarts_total{pool=\"worker\",cause=\"signal\"} 1"))
        XCTAssertTrue(lines.contains("kernel_worker_restarts_total{pool=\"worker\",cause=\"recycle\"} 1"))
        XCTAssertTrue(lines.contains("kernel_worker_restarts_total{pool=\"edge\",cause=\"harakiri\"} 0"))
        XCTAssertTrue(lines.contains("kernel_workers{pool=\"worker\",state=\"serving\"} 1"))
        XCTAssertTrue(lines.contains("kernel_workers{pool=\"worker\",state=\"draining\"} 1"))
        XCTAssertTrue(lines.contains("kernel_workers{pool=\"edge\",state=\"starting\"} 0"))
        XCTAssertEqual(lines.filter { !$0.hasPrefix("#") }.count, 2 * 4 + 2 * 3)
        XCTAssertTrue(text.hasSuffix("\n"))
    }
}
