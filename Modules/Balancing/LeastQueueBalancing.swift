import KernelCore

extension BalancedGroup {
    /// How long a peer's reported queue depth is trusted when no request of this edge is in flight to it. A
    /// report arrives only with an answer, so a peer that got no request since it reported a deep queue would keep
    /// that depth for ever, and while the others report less it would never be chosen again; after this it counts
    /// as what is known for sure, the requests in flight (none), and the next request to it brings a fresh report.
    /// Two seconds is several answers of a model queue, and a probe every two seconds costs a busy peer little.
    static let queueReportLifetimeNanoseconds: UInt64 = 2_000_000_000

    /// The load `least_queue` compares: the depth the peer last reported plus the requests this edge sent it since
    /// (which the report could not count).
    static func reportedLoad(_ peer: Peer, at time: UInt64) -> Int {
        if peer.reports == 0 || (peer.conns == 0 && time &- peer.reportedAt > queueReportLifetimeNanoseconds) {
            return peer.conns
        }
        return peer.reportedDepth + peer.startedSinceReport
    }

    /// `least_queue`: power-of-two choices on reported model queue depth, as the Kubernetes Gateway API inference
    /// extension balances model servers. Two different usable peers are drawn at random (weighted, as `random
    /// two`); the one with the lower load for its weight wins, the second drawn on a tie. After 20 draws round
    /// robin decides (nil here).
    func leastQueuePick(excluding excluded: [PeerAddress], at time: UInt64) -> Int? {
        guard primary.count >= 2 else { return nil }
        var first: Int?
        for _ in 0...20 {
            let index = peekRandomPeer()
            guard index != first, Self.usable(primary[index], at: time), !excluded.contains(primary[index].server.address) else {
                continue
            }
            guard let chosen = first else {
                first = index
                continue
            }
            let load = Self.reportedLoad(primary[index], at: time), chosenLoad = Self.reportedLoad(primary[chosen], at: time)
            let picked = load * primary[chosen].server.weight > chosenLoad * primary[index].server.weight ? chosen : index
            Self.markChecked(&primary[picked], at: time)
            return picked
        }
        return nil
    }

    /// A lease ended: its peer's report (if the answer carried one) replaces the last, and a lease that started
    /// after the last report no longer adds to it.
    static func recordQueueDepth(_ outcome: PeerLeaseOutcome, lease: Slot, into peer: inout Peer, at time: UInt64) {
        if lease.reports == peer.reports, peer.startedSinceReport > 0 { peer.startedSinceReport -= 1 }
        guard let depth = outcome.queueDepth else { return }
        peer.reportedDepth = depth
        peer.reportedAt = time
        peer.reports += 1
        // The requests in flight that started before this answer are in the depth it reports.
        peer.startedSinceReport = 0
    }
}
