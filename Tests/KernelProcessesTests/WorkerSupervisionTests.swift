import KernelCore
import KernelProcesses
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A worker's supervision against a stand-in master on the other end of a real socketpair.
final class WorkerSupervisionTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private var master: ControlConnection!
    private var supervision: WorkerSupervision!
    private let queries = ProcessQueryRegistry()
    /// What the stand-in master received.
    private let received = NIOLockedValueBox<[ControlMessage]>([])
    /// How the stand-in master answers a request.
    private let reply = NIOLockedValueBox<(@Sendable (ControlMessage) -> ControlMessage?)?>(nil)

    override func setUp() async throws {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var pair: [CInt] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair), 0)
        let logger = Logger(label: "test")
        let received = self.received, reply = self.reply
        let box = NIOLockedValueBox<ControlConnection?>(nil)
        master = try await ControlConnection.adopt(
            descriptor: pair[0], group: group, logger: logger,
            received: { message in
                received.withLockedValue { $0.append(message) }
                if let answer = reply.withLockedValue({ $0 })?(message) { box.withLockedValue { $0 }?.send(answer) }
            },
            closed: {})
        box.withLockedValue { $0 = master }
        supervision = WorkerSupervision(identity: WorkerIdentity(pool: "main", number: 2, controlDescriptor: pair[1]),
                                        queries: queries, logger: logger)
        try await supervision.connect(group: group)
    }

    override func tearDown() async throws {
        // The worker side first: a master end closing under a live worker would stop this test process.
        supervision.close()
        master.close()
        try await group.shutdownGracefully()
    }

    private func waitForMessages(_ count: Int) async throws -> [ControlMessage] {
        for _ in 0..<500 {
            let messages = received.withLockedValue { $0 }
            if messages.count >= count { return messages }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        XCTFail("the master received \(received.withLockedValue { $0 })")
        return []
    }

    func testReadyAndOneReplacementRequestReachTheMaster() async throws {
        XCTAssertEqual(supervision.workerNumber, 2)
        XCTAssertTrue(supervision.isSupervised)
        supervision.reportServing()
        supervision.requestReplacement(reason: "max_requests 10 reached")
        supervision.requestReplacement(reason: "max_requests 10 reached")
        supervision.reportServing()
        // The second request for a replacement is not sent: the third message is the second `ready`.
        let messages = try await waitForMessages(3)
        XCTAssertEqual(messages, [.ready, .replace(reason: "max_requests 10 reached"), .ready])
    }

    func testGatherAsksTheMasterAndReturnsItsAnswers() async throws {
        reply.withLockedValue {
            $0 = { message in
                guard case .gather(let id, "metrics", 1500) = message else { return nil }
                return .gathered(id: id, answers: [GatheredAnswer(worker: -1, pid: 1, body: Array("m 1\n".utf8)),
                                                   GatheredAnswer(worker: 2, pid: 22, body: Array("w 2\n".utf8))])
            }
        }
        let answers = await supervision.gather("metrics", timeout: .milliseconds(1500))
        XCTAssertEqual(answers.map { GatheredAnswer($0) },
                       [GatheredAnswer(worker: -1, pid: 1, body: Array("m 1\n".utf8)),
                        GatheredAnswer(worker: 2, pid: 22, body: Array("w 2\n".utf8))])
        XCTAssertEqual(answers.first?.source, .master)
    }

    func testAGatherTheMasterDoesNotAnswerFallsBackToThisProcess() async throws {
        queries.register("stats") { Array("{\"id\":2}".utf8) }
        let answers = await supervision.gather("stats", timeout: .milliseconds(50))
        XCTAssertEqual(answers.map(\.body), [Array("{\"id\":2}".utf8)])
        XCTAssertEqual(answers.first?.source, .worker(2))
    }

    func testTheMastersQueryIsAnsweredFromTheRegistry() async throws {
        queries.register("metrics") { Array("kernel_x 1\n".utf8) }
        master.send(.query(id: 41, query: "metrics"))
        master.send(.query(id: 42, query: "unknown"))
        let messages = try await waitForMessages(2)
        XCTAssertEqual(Set(messages.map { "\($0)" }),
                       Set(["\(ControlMessage.answer(id: 41, body: Array("kernel_x 1\n".utf8)))",
                            "\(ControlMessage.answer(id: 42, body: nil))"]))
    }

    func testWorkersComesFromTheMastersTable() async throws {
        let table = [WorkerProcessInfo(number: 1, pid: 11, pool: "main", spawnedAt: 1, respawns: 0, state: "serving"),
                     WorkerProcessInfo(number: 2, pid: 22, pool: "main", spawnedAt: 2, respawns: 1, state: "draining")]
        reply.withLockedValue {
            $0 = { message in
                guard case .listWorkers(let id) = message else { return nil }
                return .workers(id: id, table)
            }
        }
        let workers = await supervision.workers()
        XCTAssertEqual(workers, table)
    }

    func testShareSendsTheCommandAndReturnsTheGatheredAnswers() async throws {
        reply.withLockedValue {
            $0 = { message in
                guard case .share(let id, "key 1", "load x", .after, 2000) = message else { return nil }
                return .gathered(id: id, answers: [GatheredAnswer(worker: 1, pid: 11, body: Array("ok".utf8)),
                                                   GatheredAnswer(worker: 2, pid: 22, body: Array("ok".utf8))])
            }
        }
        let answers = await supervision.share("load x", key: "key 1", memory: .after, timeout: .milliseconds(2000))
        XCTAssertEqual(answers.map(\.source), [.worker(1), .worker(2)])
    }

    func testAShareTooLongForAControlFrameIsNotSent() async throws {
        let command = String(repeating: "x", count: ProcessSharing.maximumCommandLength + 1)
        let answers = await supervision.share(command, key: "k", memory: .after, timeout: .milliseconds(100))
        XCTAssertEqual(answers.count, 0)
        // Nothing reached the master (a frame it refused would have closed the channel).
        try await Task.sleep(nanoseconds: 100_000_000)
        XCTAssertEqual(received.withLockedValue { $0 }.count, 0)
    }

    func testReplayRunsTheRememberedCommandsInOrderUntilNoneIsLeft() async throws {
        let ran = NIOLockedValueBox<[String]>([])
        queries.registerCommand("repo") { argument in
            ran.withLockedValue { $0.append(String(argument)) }
            return []
        }
        // The master hands the commands out in two parts, then none: the worker asks on from the last one it got.
        reply.withLockedValue {
            $0 = { message in
                guard case .listShared(let id, let after) = message else { return nil }
                switch after {
                case 0: return .shared(id: id, commands: ["repo load a", "repo load b"], through: 5)
                case 5: return .shared(id: id, commands: ["repo unload a"], through: 9)
                default: return .shared(id: id, commands: [], through: after)
                }
            }
        }
        await supervision.replaySharedCommands()
        XCTAssertEqual(ran.withLockedValue { $0 }, ["load a", "load b", "unload a"])
        let asked = received.withLockedValue { $0 }.compactMap { message -> UInt64? in
            guard case .listShared(_, let after) = message else { return nil }
            return after
        }
        XCTAssertEqual(asked, [0, 5, 9])
    }
}
