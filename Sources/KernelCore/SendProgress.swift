import NIOCore

/// nginx's `send_timeout` (and `uwsgi_send_timeout`) is the longest time without progress between two successive
/// writes, not a limit on the whole response. A channel reports progress only when a write completes, so a large
/// buffer written as one write would show none until its last byte left: writers hand large buffers over in slices
/// of `sliceSize` and restart their timer each time one completes.
public enum SendProgress {
    /// The largest piece written as one watched write: a client that reads at least this much per timeout period
    /// is never cut off.
    public static let sliceSize = 16 * 1024

    /// Calls `body` with consecutive slices of `buffer`'s readable bytes (views, no copy), each at most
    /// `sliceSize` long, and `true` with the last one. An empty buffer is one empty slice.
    public static func forEachSlice(of buffer: ByteBuffer, _ body: (ByteBuffer, _ isLast: Bool) -> Void) {
        var rest = buffer
        while rest.readableBytes > sliceSize {
            body(rest.readSlice(length: sliceSize)!, false)
        }
        body(rest, true)
    }
}

/// `send_timeout` for a writer outside a channel handler (the upstream side of a proxy): armed while watched
/// writes are pending, restarted whenever one completes, and `onTimeout` runs when none completed for `timeout`.
/// Lives on one event loop: every call must come from it.
public final class SendTimeoutWatch {
    private let timeout: TimeAmount
    private let eventLoop: any EventLoop
    private let onTimeout: () -> Void
    private var pending = 0
    private var deadline: NIODeadline?
    private var task: Scheduled<Void>?
    private var stopped = false

    public init(timeout: TimeAmount, eventLoop: any EventLoop, onTimeout: @escaping () -> Void) {
        self.timeout = timeout
        self.eventLoop = eventLoop
        self.onTimeout = onTimeout
    }

    /// A write was handed to the channel; call `writeCompleted` when its promise completes. With `arming` false
    /// the timer is not set yet: `armIfWaiting` sets it after the flush, so a write that the flush completed at
    /// once (a small request on an idle socket, the common case) costs no timer at all.
    public func writeStarted(arming: Bool = true) {
        guard !stopped else { return }
        pending += 1
        if pending == 1 {
            deadline = eventLoop.now + timeout
            if arming, task == nil { schedule() }
        }
    }

    /// Sets the timer if a write handed over with `writeStarted(arming: false)` is still waiting.
    public func armIfWaiting() {
        guard !stopped, pending > 0, task == nil else { return }
        schedule()
    }

    /// A watched write completed (either way): progress, so the deadline moves on.
    public func writeCompleted() {
        guard !stopped, pending > 0 else { return }
        pending -= 1
        deadline = pending > 0 ? eventLoop.now + timeout : nil
    }

    /// No more timeouts: the exchange is over.
    public func stop() {
        stopped = true
        deadline = nil
        task?.cancel()
        task = nil
    }

    private func schedule() {
        guard let deadline else { return }
        task = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            task = nil
            guard !stopped, let current = self.deadline else { return }
            if current > eventLoop.now {
                // Progress since the task was set: wait for the moved deadline.
                schedule()
                return
            }
            stop()
            onTimeout()
        }
    }
}
