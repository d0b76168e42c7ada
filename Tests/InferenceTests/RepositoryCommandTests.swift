@testable import Inference
import KernelCore
import NIOCore
import XCTest

/// A load or unload as worker processes share it: the command's text, and how their outcomes make one answer.
final class RepositoryCommandTests: XCTestCase {
    private func answer(_ source: ProcessAnswer.Source, pid: Int32, _ outcome: SharedCommandOutcome?) -> ProcessAnswer {
        ProcessAnswer(source: source, pid: pid, body: outcome?.encoded ?? [])
    }

    func testTheCommandCarriesTheRequestBodyAsItCame() throws {
        let body = ByteBuffer(string: #"{"parameters": {"config": "{\"max_batch_size\": 4}"}}"#)
        let text = RepositoryCommand.text(action: .load, model: "démo", repository: "/srv/repo \"x\"", body: body)
        XCTAssertTrue(text.hasPrefix(RepositoryCommand.name + " "))
        let command = try XCTUnwrap(RepositoryCommand(argument: text.dropFirst(RepositoryCommand.name.count + 1)))
        XCTAssertEqual(command.action, .load)
        XCTAssertEqual(command.model, "démo")
        XCTAssertEqual(command.repository, "/srv/repo \"x\"")
        let parameters = try RepositoryRequestBody(value: command.request).loadParameters(modelName: "démo")
        XCTAssertEqual(parameters.config, #"{"max_batch_size": 4}"#)

        let unload = RepositoryCommand.text(action: .unload, model: "m", repository: "", body: nil)
        let parsed = try XCTUnwrap(RepositoryCommand(argument: unload.dropFirst(RepositoryCommand.name.count + 1)))
        XCTAssertEqual(parsed.action, .unload)
        XCTAssertNil(parsed.request)
        XCTAssertNil(RepositoryCommand(argument: "{\"action\": \"drop\"}"))
    }

    func testEveryProcessDoneIsDone() {
        let done = SharedCommandOutcome(status: 200, message: "")
        let outcome = SharedCommandOutcome.combine([answer(.worker(1), pid: 10, done), answer(.worker(2), pid: 20, done),
                                                 answer(.master, pid: 1, nil)], own: 10)
        XCTAssertEqual(outcome, done)
    }

    func testTheOwnFailureIsTritonsMessageAndAnotherWorkersNamesIt() {
        let done = SharedCommandOutcome(status: 200, message: "")
        let failed = SharedCommandOutcome(status: 400, message: "load failed for model 'm': bad")
        let own = SharedCommandOutcome.combine([answer(.worker(1), pid: 10, failed), answer(.worker(2), pid: 20, failed)], own: 20)
        XCTAssertEqual(own, failed)
        let other = SharedCommandOutcome.combine([answer(.worker(1), pid: 10, failed), answer(.worker(2), pid: 20, done)], own: 20)
        XCTAssertEqual(other, SharedCommandOutcome(status: 400, message: "worker process 1 (pid 10): load failed for model 'm': bad"))
    }

    func testNoAnswerIsAnError() {
        XCTAssertEqual(SharedCommandOutcome.combine([answer(.master, pid: 1, nil)], own: 10).status, 503)
        let unreadable = ProcessAnswer(source: .worker(1), pid: 10, body: Array("x".utf8))
        XCTAssertEqual(SharedCommandOutcome.combine([unreadable], own: 10).status, 500)
    }
}
