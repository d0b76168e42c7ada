import KernelCore

/// What `least_time` measures.
public enum LeastTimeMeasure: String, Sendable, Equatable {
    /// Until the answer's head arrived (`PeerLeaseOutcome.headerNanoseconds`).
    case header
    /// Until its body ended (`PeerLeaseOutcome.durationNanoseconds`).
    case lastByte = "last_byte"
}

extension BalancedGroup {
    /// Each new sample's share of the moving average: 1/8, the gain of TCP's smoothed round-trip time (RFC 6298),
    /// which follows a change within a few dozen answers and is not thrown by one slow answer.
    static let leastTimeGain = 0.125

    /// nginx Plus's `least_time`: the usable peer with the lowest expected time for a new request, the average
    /// time times the requests it would then have in flight, for its weight (`average × (conns + 1) / weight`);
    /// ties by the smooth weighted round robin. A peer without a sample is tried first (its expected time is 0).
    /// With `inflight`, requests still in flight count too: a peer's average is at least the time its requests in
    /// flight have taken so far, so a peer that stopped answering is not chosen on its old average.
    static func leastTimePick(_ peers: inout [Peer], inflight: Bool, excluding excluded: [PeerAddress], at time: UInt64) -> Int? {
        let candidates = candidates(peers, excluding: excluded, at: time)
        guard !candidates.isEmpty else { return nil }
        var expected: [Int: Double] = [:]
        for index in candidates {
            let peer = peers[index]
            var average = peer.averageNanoseconds ?? 0
            if inflight, peer.conns > 0 {
                let elapsed = Double((UInt64(peer.conns) &* time) &- peer.inflightStarts) / Double(peer.conns)
                average = max(average, elapsed)
            }
            let weight = Double(peer.server.weight * slowStartPermille(peer, at: time))
            expected[index] = average * Double(peer.conns + 1) / weight
        }
        let lowest = candidates.map { expected[$0]! }.min()!
        return weightedPick(&peers, among: candidates.filter { expected[$0]! == lowest }, at: time)
    }

    /// A lease ended: its time joins the peer's moving average. Failures and answers whose client left before the
    /// measured point give no sample.
    static func recordTime(_ outcome: PeerLeaseOutcome, measure: LeastTimeMeasure, into peer: inout Peer) {
        guard !outcome.isFailure else { return }
        let sample: UInt64?
        switch measure {
        case .header: sample = outcome.headerNanoseconds
        case .lastByte: sample = outcome.clientClosed ? nil : outcome.durationNanoseconds
        }
        guard let sample else { return }
        if let average = peer.averageNanoseconds {
            peer.averageNanoseconds = average + leastTimeGain * (Double(sample) - average)
        } else {
            peer.averageNanoseconds = Double(sample)
        }
    }
}
