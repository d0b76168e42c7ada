import KernelCore

extension BalancedGroup {
    /// nginx's `ngx_http_upstream_peek_random_peer`: a peer at random, each as likely as its weight.
    func peekRandomPeer() -> Int {
        let totalWeight = primary.reduce(0) { $0 + $1.server.weight }
        return Self.peerIndex(atWeight: Int(random() % UInt64(totalWeight)), of: primary)
    }

    /// nginx's `random` (`ngx_http_upstream_get_random_peer`) and `random two [least_conn]`
    /// (`ngx_http_upstream_get_random2_peer`): random peers are drawn until one (or, with `two`, two different
    /// ones) can take the request; of two, the one with fewer requests in flight for its weight wins, the second
    /// drawn on a tie. After 20 draws round robin decides (nil here).
    func randomPick(two: Bool, excluding excluded: [PeerAddress], at time: UInt64) -> Int? {
        guard primary.count >= 2 else { return nil }
        var first: Int?
        for _ in 0...20 {
            let index = peekRandomPeer()
            guard index != first, Self.usable(primary[index], at: time), !excluded.contains(primary[index].server.address) else {
                continue
            }
            guard two else {
                Self.markChecked(&primary[index], at: time)
                return index
            }
            guard let chosen = first else {
                first = index
                continue
            }
            let picked = primary[index].conns * primary[chosen].server.weight > primary[chosen].conns * primary[index].server.weight
                ? chosen : index
            Self.markChecked(&primary[picked], at: time)
            return picked
        }
        return nil
    }
}
