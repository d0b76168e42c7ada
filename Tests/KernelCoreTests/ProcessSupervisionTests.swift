import KernelCore
import Logging
import NIOCore
import XCTest

final class ProcessSupervisionTests: XCTestCase {
    private let logger = Logger(label: "test")

    func testStandaloneGatherAnswersWithThisProcessOnly() async {
        let queries = ProcessQueryRegistry()
        let supervision = StandaloneSupervision(queries: queries, logger: logger)
        queries.register("metrics") { Array("first".utf8) }
        queries.register("metrics") { Array("second".utf8) }
        let answers = await supervision.gather("metrics", timeout: .seconds(1))
        XCTAssertEqual(answers.count, 1)
        XCTAssertEqual(answers.first?.source, .worker(0))
        XCTAssertEqual(answers.first?.pid, getpid())
        XCTAssertEqual(answers.first.map { String(decoding: $0.body, as: UTF8.self) }, "second")
    }

    func testStandaloneGatherOfAnUnknownQueryIsEmpty() async {
        let supervision = StandaloneSupervision(queries: ProcessQueryRegistry(), logger: logger)
        let answers = await supervision.gather("nothing", timeout: .seconds(1))
        XCTAssertTrue(answers.isEmpty)
    }

    func testStandaloneIsOneUnsupervisedServingWorker() async {
        let supervision = StandaloneSupervision(queries: ProcessQueryRegistry(), logger: logger)
        XCTAssertEqual(supervision.workerNumber, 0)
        XCTAssertFalse(supervision.isSupervised)
        let workers = await supervision.workers()
        XCTAssertEqual(workers.map(\.pid), [getpid()])
        XCTAssertEqual(workers.map(\.state), ["serving"])
        supervision.requestReplacement(reason: "test")  // logs and keeps running
    }

    func testRuntimeUsesTheSupervisionItIsGiven() {
        let runtime = KernelRuntime.standalone()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        XCTAssertEqual(runtime.supervision.workerNumber, 0)
        runtime.processQueries.register("x") { [1] }
        XCTAssertNotNil(runtime.processQueries.responder(for: "x"))
    }

    func testACommandQueryReachesItsResponderWithTheArgument() async {
        let queries = ProcessQueryRegistry()
        queries.registerCommand("repo") { argument in Array("ran \(argument)".utf8) }
        queries.register("repo stats") { Array("the query".utf8) }
        // A query registered under the whole text comes first; a command gets what follows its name's space.
        let exact = await queries.answer("repo stats")
        let command = await queries.answer("repo load {\"a\": 1}")
        let bare = await queries.answer("repo")
        let other = await queries.answer("other load")
        XCTAssertEqual(exact.map { String(decoding: $0, as: UTF8.self) }, "the query")
        XCTAssertEqual(command.map { String(decoding: $0, as: UTF8.self) }, "ran load {\"a\": 1}")
        XCTAssertNil(bare)
        XCTAssertNil(other)
    }

    func testStandaloneShareRunsTheCommandHereAndReplaysNothing() async {
        let queries = ProcessQueryRegistry()
        let supervision = StandaloneSupervision(queries: queries, logger: logger)
        queries.registerCommand("repo") { argument in Array(argument.utf8) }
        let answers = await supervision.share("repo load a", key: "a", memory: .after, timeout: .seconds(1))
        XCTAssertEqual(answers.map { String(decoding: $0.body, as: UTF8.self) }, ["load a"])
        await supervision.replaySharedCommands()
    }
}
