import KernelCore
import NIOCore
import NIOEmbedded
import XCTest
@testable import Inference

/// `max_in_flight`: runs beyond the limit wait in order, start as runs end, and leave the line when their client
/// goes or their deadline passes, without taking a slot.
final class PipelineAdmissionTests: XCTestCase {
    struct Refusal: Error, Equatable { let reason: String }

    private func admit(_ admission: PipelineAdmission, _ loop: EmbeddedEventLoop, deadline: NIODeadline? = nil,
                       cancellation: RequestCancellation? = nil) -> EventLoopFuture<Void> {
        admission.admit(on: loop, deadline: deadline, cancellation: cancellation,
                        expired: { Refusal(reason: "deadline") }, left: { Refusal(reason: "left") })
    }

    private func state(_ future: EventLoopFuture<Void>, _ loop: EmbeddedEventLoop) -> String {
        loop.run()
        var outcome = "waiting"
        future.whenComplete { result in
            switch result {
            case .success: outcome = "running"
            case .failure(let error): outcome = (error as? Refusal)?.reason ?? "\(error)"
            }
        }
        loop.run()
        return outcome
    }

    func testRunsBeyondTheLimitWaitInOrderAndStartAsRunsEnd() {
        let loop = EmbeddedEventLoop()
        let admission = PipelineAdmission(limit: 2)
        let first = admit(admission, loop), second = admit(admission, loop), third = admit(admission, loop), fourth = admit(admission, loop)
        XCTAssertEqual([first, second, third, fourth].map { state($0, loop) }, ["running", "running", "waiting", "waiting"])
        XCTAssertEqual(admission.counts.running, 2)
        XCTAssertEqual(admission.counts.waiting, 2)
        admission.release()
        XCTAssertEqual(state(third, loop), "running", "the first in line takes the freed slot")
        XCTAssertEqual(state(fourth, loop), "waiting")
        admission.release()
        admission.release()
        admission.release()
        XCTAssertEqual(state(fourth, loop), "running")
        XCTAssertEqual(admission.counts.running, 0)
        XCTAssertEqual(admission.counts.waiting, 0)
    }

    func testAWaiterWhoseClientLeavesOrWhoseDeadlinePassesTakesNoSlot() {
        let loop = EmbeddedEventLoop()
        let admission = PipelineAdmission(limit: 1)
        let running = admit(admission, loop)
        let cancellation = RequestCancellation()
        let leaving = admit(admission, loop, cancellation: cancellation)
        let late = admit(admission, loop, deadline: loop.now + .milliseconds(100))
        let patient = admit(admission, loop)
        XCTAssertEqual(state(running, loop), "running")
        cancellation.cancel("client closed")
        XCTAssertEqual(state(leaving, loop), "left")
        loop.advanceTime(by: .milliseconds(100))
        XCTAssertEqual(state(late, loop), "deadline", "504 at the deadline, not when a slot frees")
        XCTAssertEqual(admission.counts.waiting, 1)
        admission.release()
        XCTAssertEqual(state(patient, loop), "running", "the slot goes past the ones that left")
        XCTAssertEqual(admission.counts.running, 1)
    }
}
