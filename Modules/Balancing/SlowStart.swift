import KernelCore

extension BalancedGroup {
    /// nginx Plus's `slow_start`: the share of its weight, in thousandths, a peer has `time` into its ramp — from
    /// 1 (a peer just back still gets a trickle, which tests it) to 1000 at the end of `slow_start`, and 1000 when
    /// it is not ramping.
    static func slowStartPermille(_ peer: Peer, at time: UInt64) -> Int {
        guard let start = peer.rampStart, peer.server.slowStartNanoseconds > 0, time >= start else { return 1000 }
        let elapsed = time - start
        guard elapsed < peer.server.slowStartNanoseconds else { return 1000 }
        return max(1, Int(Double(elapsed) / Double(peer.server.slowStartNanoseconds) * 1000))
    }

    /// Starts the ramp of a peer at `start`: when it comes back from being unavailable, or when it is new (a
    /// peer added at run time).
    static func scheduleSlowStart(_ peer: inout Peer, at start: UInt64) {
        guard peer.server.slowStartNanoseconds > 0 else { return }
        peer.rampStart = start
    }
}
