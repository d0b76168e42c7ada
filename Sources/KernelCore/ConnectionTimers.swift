import NIOCore

/// Every deadline of one connection (`send_timeout`, the lingering close, and the protocol's read-side timeout:
/// header, body or keep-alive), served by one scheduled task, with the count of writes watched for `send_timeout`.
///
/// Moving a deadline later, which every request and every read does, only stores it: the task, when it fires early,
/// re-arms itself for the nearest deadline. Only a deadline earlier than the scheduled one replaces the task.
/// One per connection (a class: writes complete, and call back into the handler, while a write is being made);
/// all calls come from the connection's event loop.
public final class ConnectionTimers {
    /// A deadline, in the order a due one is handled when several are.
    public enum Slot: Sendable, Equatable {
        /// `send_timeout`: set while watched writes are pending or the peer is not reading.
        case send
        /// The end of a lingering close.
        case linger
        /// The protocol's read-side timeout (which one is the protocol's state to know).
        case read
    }

    /// What `writeCompleted` found.
    public enum WriteCompletion: Sendable, Equatable {
        /// Writes are still pending (or the peer is still not reading): `send_timeout` restarted from now.
        case progressing
        /// Nothing is pending: `send_timeout` stopped.
        case drained
        /// The connection is gone: nothing is measured.
        case stopped
    }

    // Event-loop-only state, one access at a time: no dynamic exclusivity check (see `HTTPConnectionHandler`).
    @exclusivity(unchecked) private var send: NIODeadline?
    @exclusivity(unchecked) private var linger: NIODeadline?
    @exclusivity(unchecked) private var read: NIODeadline?
    @exclusivity(unchecked) private var task: Scheduled<Void>?
    @exclusivity(unchecked) private var taskAt = NIODeadline.distantFuture
    /// Watched writes handed to the channel and not completed yet.
    @exclusivity(unchecked) public private(set) var pendingWrites = 0

    public init() {}

    public func deadline(_ slot: Slot) -> NIODeadline? {
        switch slot {
        case .send: return send
        case .linger: return linger
        case .read: return read
        }
    }

    /// Sets `slot` to `amount` from now and makes sure the task fires by then.
    public func set<Connection: DrivenConnection>(_ slot: Slot, after amount: TimeAmount, for owner: Connection,
                                                           context: ChannelHandlerContext) {
        store(slot, context.eventLoop.now + amount)
        arm(for: owner, context: context)
    }

    /// Clears `slot`; a task scheduled for it finds nothing due and re-arms for the rest.
    public func clear(_ slot: Slot) { store(slot, nil) }

    private func store(_ slot: Slot, _ deadline: NIODeadline?) {
        switch slot {
        case .send: send = deadline
        case .linger: linger = deadline
        case .read: read = deadline
        }
    }

    /// Makes sure the task fires no later than the nearest deadline.
    public func arm<Connection: DrivenConnection>(for owner: Connection, context: ChannelHandlerContext) {
        // Three comparisons, not a loop over an array: this runs for every request.
        var next = send ?? .distantFuture
        if let linger, linger < next { next = linger }
        if let read, read < next { next = read }
        guard next != .distantFuture, task == nil || taskAt > next else { return }
        task?.cancel()
        taskAt = next
        task = context.eventLoop.assumeIsolated().scheduleTask(deadline: next) {
            owner.connectionTimerFired(context: context)
        }
    }

    /// Called first thing when the task ran: the due deadline (cleared), the most urgent first, or nil when it
    /// fired early (then call `arm` again).
    public func dueSlot(now: NIODeadline) -> Slot? {
        task = nil
        taskAt = .distantFuture
        if let send, send <= now { self.send = nil; return .send }
        if let linger, linger <= now { self.linger = nil; return .linger }
        if let read, read <= now { self.read = nil; return .read }
        return nil
    }

    /// Cancels the task and clears every deadline: the connection is closed.
    public func cancelAll() {
        task?.cancel()
        task = nil
        taskAt = .distantFuture
        send = nil
        linger = nil
        read = nil
    }

    // MARK: - Writes watched for send_timeout

    /// Writes `buffer` (without flushing) in `SendProgress` slices whose completions are watched: `send_timeout`
    /// runs while any is pending and restarts each time one completes, so a large body that keeps moving never
    /// times out while a peer that stops reading is cut off `sendTimeout` after the last progress. `promise`
    /// completes with the last slice.
    public func writeWatched<Connection: DrivenConnection>(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?,
                                                                    sendTimeout: TimeAmount, for owner: Connection,
                                                                    context: ChannelHandlerContext) {
        SendProgress.forEachSlice(of: buffer) { slice, isLast in
            let written = (isLast ? promise : nil) ?? context.eventLoop.makePromise(of: Void.self)
            if pendingWrites == 0, send == nil {
                set(.send, after: sendTimeout, for: owner, context: context)
            }
            pendingWrites += 1
            written.futureResult.assumeIsolated().whenComplete { _ in owner.watchedWriteCompleted(context: context) }
            context.write(NIOAny(slice), promise: written)
        }
    }

    /// Starts `send_timeout` when it is not running: the peer is not reading (the channel is not writable).
    public func startSendTimeout<Connection: DrivenConnection>(_ sendTimeout: TimeAmount, for owner: Connection,
                                                                        context: ChannelHandlerContext) {
        if send == nil { set(.send, after: sendTimeout, for: owner, context: context) }
    }

    /// Counts a completed watched write. The deadline moves on while writes are pending or `keepRunning` (the peer
    /// is still not reading); moving it later needs no new task.
    public func writeCompleted(channelActive: Bool, now: NIODeadline, sendTimeout: TimeAmount,
                                        keepRunning: Bool) -> WriteCompletion {
        pendingWrites -= 1
        guard channelActive else { return .stopped }
        if pendingWrites > 0 || keepRunning {
            send = now + sendTimeout
            return .progressing
        }
        send = nil
        return .drained
    }

    /// Closes once everything written so far is sent. With `linger`, the write side closes first and input is
    /// drained (`LingeringClose`). Until the last write completes `send_timeout` bounds the wait, so a peer that
    /// does not read its last response cannot keep the connection.
    public func closeAfterWrites<Connection: DrivenConnection>(linger: Bool, sendTimeout: TimeAmount,
                                                                        for owner: Connection,
                                                                        context: ChannelHandlerContext) {
        let written = context.eventLoop.makePromise(of: Void.self)
        writeWatched(context.channel.allocator.buffer(capacity: 0), promise: written, sendTimeout: sendTimeout,
                     for: owner, context: context)
        context.flush()
        written.futureResult.assumeIsolated().whenComplete { result in
            guard linger, case .success = result, context.channel.isActive else {
                context.close(promise: nil)
                return
            }
            LingeringClose.begin(for: owner, context: context)
        }
    }
}

/// nginx's lingering close: after a response that leaves request bytes unread, the output side closes first and
/// input is read and dropped for a while, so that the unread bytes do not make the kernel reset the connection
/// before the peer has read the response.
public enum LingeringClose {
    /// How long input is drained (nginx `lingering_timeout`, `lingering_time`).
    public static let timeout = TimeAmount.seconds(5)

    /// Closes the output side; then the owner arms its linger deadline, or the connection closes when that failed.
    public static func begin<Connection: DrivenConnection>(for owner: Connection, context: ChannelHandlerContext) {
        let halfClosed = context.eventLoop.makePromise(of: Void.self)
        context.close(mode: .output, promise: halfClosed)
        halfClosed.futureResult.assumeIsolated().whenComplete { result in
            if case .success = result, context.channel.isActive {
                owner.lingeringStarted(context: context)
            } else {
                context.close(promise: nil)
            }
        }
    }
}
