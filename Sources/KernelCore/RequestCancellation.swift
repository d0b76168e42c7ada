import NIOConcurrencyHelpers

/// Tells the work a request started that nobody waits for its answer any more: the client closed its connection.
///
/// The connection that read the request cancels it when the client leaves before the response is complete;
/// handlers whose work is queued (a model's scheduler) register a callback and drop that work before it runs.
public final class RequestCancellation: Sendable {
    private struct State {
        var reason: String?
        var callbacks: [@Sendable (String) -> Void] = []
    }
    private let state = NIOLockedValueBox(State())

    public init() {}

    /// Whether the request was cancelled.
    public var isCancelled: Bool { state.withLockedValue { $0.reason != nil } }

    /// Runs `body` once with the reason when the request is cancelled, at once when it already was. `body` runs on
    /// the thread that cancels (the connection's event loop): it must not block.
    public func whenCancelled(_ body: @escaping @Sendable (String) -> Void) {
        let reason: String? = state.withLockedValue { state in
            if state.reason == nil { state.callbacks.append(body) }
            return state.reason
        }
        if let reason { body(reason) }
    }

    /// Cancels the request; only the first call counts.
    public func cancel(_ reason: String) {
        let callbacks: [@Sendable (String) -> Void] = state.withLockedValue { state in
            guard state.reason == nil else { return [] }
            state.reason = reason
            defer { state.callbacks = [] }
            return state.callbacks
        }
        for callback in callbacks { callback(reason) }
    }
}
