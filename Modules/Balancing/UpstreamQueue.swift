import KernelCore
import NIOCore

/// nginx Plus's `queue N [timeout=T]` of an upstream group: when every server that could take a request is at
/// its `max_conns`, up to `size` requests wait, each at most `timeout`, for a lease to end and free a slot.
public struct UpstreamQueuePolicy: Sendable, Equatable {
    /// How many requests may wait at once.
    public var size: Int
    /// How long one request waits (nginx Plus's default: 60s).
    public var timeout: TimeAmount

    public init(size: Int, timeout: TimeAmount = .seconds(60)) {
        self.size = size
        self.timeout = timeout
    }
}

/// One request waiting in a group's queue.
struct UpstreamWaiter {
    let id: UInt64
    let request: KernelRequest
    let key: [UInt8]?
    let excluded: [PeerAddress]
    let promise: EventLoopPromise<PeerLease?>
    var timeout: Scheduled<Void>?
}

extension BalancedGroup {
    /// Leases a peer, waiting in the group's `queue` (if it has one) while every server that could take the
    /// request is at `max_conns`. Waiters are served oldest first, each on its own event loop; a full queue or a
    /// wait that times out answers nil, which the proxy answers with 502, as nginx Plus does.
    public func lease(_ request: KernelRequest, excluding excluded: [PeerAddress], on eventLoop: any EventLoop) -> EventLoopFuture<PeerLease?> {
        guard let queue else { return eventLoop.makeSucceededFuture(begin(request, excluding: excluded)) }
        let key = hashKey(of: request)
        let promise = eventLoop.makePromise(of: PeerLease?.self)
        enum Decision { case now(PeerLease?), full, waiting(UInt64) }
        let decision: Decision = lock.withLock {
            let time = now()
            if let lease = pickLocked(request, key: key, excluding: excluded, at: time) { return .now(lease) }
            // Only a slot that frees up can help; with every server down or failed the answer is at once.
            guard mayFreeUp(excluding: excluded, at: time) else { return .now(nil) }
            guard waiters.count < queue.size else { return .full }
            nextWaiterID += 1
            waiters.append(UpstreamWaiter(id: nextWaiterID, request: request, key: key, excluded: excluded, promise: promise))
            return .waiting(nextWaiterID)
        }
        switch decision {
        case .now(let lease):
            promise.succeed(lease)
        case .full:
            logger?.error("upstream queue is full while connecting to upstream, group: \"\(name)\", queue: \(queue.size)")
            promise.succeed(nil)
        case .waiting(let id):
            let timer = eventLoop.scheduleTask(in: queue.timeout) { [self] in self.waitTimedOut(id) }
            let stillWaiting = lock.withLock {
                guard let index = waiters.firstIndex(where: { $0.id == id }) else { return false }
                waiters[index].timeout = timer
                return true
            }
            if !stillWaiting { timer.cancel() }
        }
        return promise.futureResult
    }

    /// A group without a `queue` leases at once (`begin`).
    public var leasesAtOnce: Bool { queue == nil }

    /// How many requests wait in the queue now.
    public var waiting: Int { lock.withLock { waiters.count } }

    /// Whether a server the request may use is held back only by its `max_conns`. Called with `lock` held.
    func mayFreeUp(excluding excluded: [PeerAddress], at time: UInt64) -> Bool {
        (primary + backup).contains { peer in
            !peer.server.down && !Self.failed(peer, at: time) && peer.server.maxConns > 0
                && peer.conns >= peer.server.maxConns && !excluded.contains(peer.server.address)
        }
    }

    /// Gives free slots to waiting requests, oldest first; the leases to hand over once the lock is released.
    /// Called with `lock` held.
    func serveWaiters(at time: UInt64) -> [(UpstreamWaiter, PeerLease)] {
        guard !waiters.isEmpty else { return [] }
        var served: [(UpstreamWaiter, PeerLease)] = []
        var remaining = CircularBuffer<UpstreamWaiter>(initialCapacity: waiters.count)
        // Once a waiter that excludes nothing finds no slot, no later one will.
        var exhausted = false
        while let waiter = waiters.popFirst() {
            if !exhausted, let lease = pickLocked(waiter.request, key: waiter.key, excluding: waiter.excluded, at: time) {
                served.append((waiter, lease))
                continue
            }
            if waiter.excluded.isEmpty { exhausted = true }
            remaining.append(waiter)
        }
        waiters = remaining
        return served
    }

    /// Hands leases to their waiters (outside the lock: the promise's callbacks run on the waiter's event loop).
    func deliver(_ served: [(UpstreamWaiter, PeerLease)]) {
        for (waiter, lease) in served {
            waiter.timeout?.cancel()
            waiter.promise.succeed(lease)
        }
    }

    /// A waiter's `timeout` passed without a free slot.
    private func waitTimedOut(_ id: UInt64) {
        let waiter: UpstreamWaiter? = lock.withLock {
            guard let index = waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return waiters.remove(at: index)
        }
        guard let waiter else { return }
        logger?.error("upstream queue timed out while connecting to upstream, group: \"\(name)\", client: \(waiter.request.connection.remoteAddress.map { "\($0)" } ?? "-"), request: \"\(waiter.request.method) \(waiter.request.uri)\"")
        waiter.promise.succeed(nil)
    }
}
