import KernelCore
import NIOConcurrencyHelpers
import NIOCore

/// A pipeline's `max_in_flight`: at most that many requests run its steps at once; the others wait in arrival
/// order, holding only their uploads, and start as runs end. Without it, every concurrent request makes its large
/// intermediate values (a detection input is megabytes) at once and waits with them in the models' queues, so the
/// process's memory and its cache misses grow with the number of clients while the models can still only run
/// what the cores allow.
///
/// A waiting request that is no longer wanted leaves the line: its client gone (its cancellation) or its deadline
/// reached (a timer, 504 at the deadline), without taking a slot.
final class PipelineAdmission: Sendable {
    let limit: Int
    private let state = NIOLockedValueBox(State())

    private struct State {
        var running = 0
        var waiting: [Waiter] = []
        var nextID: UInt64 = 0
    }

    private struct Waiter {
        let id: UInt64
        let promise: EventLoopPromise<Void>
    }

    /// `limit` > 0.
    init(limit: Int) {
        precondition(limit > 0)
        self.limit = limit
    }

    /// Succeeds once the request may run (at once when a slot is free). Every success must be followed by one
    /// `release()`. Fails with `expired` when the deadline passes first, or `left` when the client leaves.
    func admit(on eventLoop: any EventLoop, deadline: NIODeadline?, cancellation: RequestCancellation?,
               expired: @escaping @Sendable () -> any Error, left: @escaping @Sendable () -> any Error) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        let id: UInt64? = state.withLockedValue { state in
            if state.running < limit {
                state.running += 1
                return nil
            }
            state.nextID &+= 1
            state.waiting.append(Waiter(id: state.nextID, promise: promise))
            return state.nextID
        }
        guard let id else {
            promise.succeed(())
            return promise.futureResult
        }
        if let deadline {
            let timer = eventLoop.scheduleTask(deadline: deadline) { [self] in
                if remove(id) { promise.fail(expired()) }
            }
            promise.futureResult.whenComplete { _ in timer.cancel() }
        }
        cancellation?.whenCancelled { [self] _ in
            if remove(id) { promise.fail(left()) }
        }
        return promise.futureResult
    }

    /// A run ended: the first waiting request takes its slot.
    func release() {
        let next: Waiter? = state.withLockedValue { state in
            guard !state.waiting.isEmpty else {
                state.running -= 1
                return nil
            }
            return state.waiting.removeFirst()
        }
        next?.promise.succeed(())
    }

    /// Takes a waiter out of the line; false when it was admitted or removed already.
    private func remove(_ id: UInt64) -> Bool {
        state.withLockedValue { state in
            guard let index = state.waiting.firstIndex(where: { $0.id == id }) else { return false }
            state.waiting.remove(at: index)
            return true
        }
    }

    /// Requests running and waiting now (what the tests observe).
    var counts: (running: Int, waiting: Int) {
        state.withLockedValue { ($0.running, $0.waiting.count) }
    }
}
