import KernelCore

/// What one answer for a `resolve` line changed in its group.
public struct PeerMembershipChange: Sendable, Equatable {
    public var added: [PeerAddress] = []
    public var removed: [PeerAddress] = []

    public init(added: [PeerAddress] = [], removed: [PeerAddress] = []) {
        self.added = added
        self.removed = removed
    }

    public var isEmpty: Bool { added.isEmpty && removed.isEmpty }
}

/// How the peers of a `resolve` line follow its name's answers, in a group's peer list (under the group's lock).
///
/// Leases name their peer by its index in the list, so a peer that leaves is never moved: its slot is marked
/// removed (no method picks it) and its requests in flight finish on it. A slot is reused only when no request
/// is on it any more, so the list grows no longer than the most addresses the name had at once plus those still
/// draining.
enum GroupMembership {
    static func replace(line: Int, template: UpstreamServer, addresses: [PeerAddress], in peers: inout [BalancedGroup.Peer],
                        healthChecked: Bool, at time: UInt64) -> PeerMembershipChange {
        var change = PeerMembershipChange()
        var wanted: [PeerAddress] = []
        for address in addresses where !wanted.contains(address) { wanted.append(address) }
        for index in peers.indices where peers[index].resolvedFrom == line && !peers[index].removed
            && !wanted.contains(peers[index].server.address) {
            peers[index].removed = true
            change.removed.append(peers[index].server.address)
        }
        for address in wanted {
            let mine = peers.indices.filter { peers[$0].resolvedFrom == line }
            if mine.contains(where: { !peers[$0].removed && peers[$0].server.address == address }) { continue }
            change.added.append(address)
            if let back = mine.first(where: { peers[$0].server.address == address }) {
                // The address came back while its old requests drain: same slot, so their count stays right;
                // its failures are forgotten and it is checked again like a new peer.
                peers[back].removed = false
                peers[back].fails = 0
                peers[back].passesHealthChecks = !healthChecked
                BalancedGroup.scheduleSlowStart(&peers[back], at: time)
                continue
            }
            var server = template
            server.address = address
            server.resolve = false
            var peer = BalancedGroup.Peer(server)
            peer.resolvedFrom = line
            peer.passesHealthChecks = !healthChecked
            // A new peer ramps up like one back from failure (nginx Plus's slow_start).
            BalancedGroup.scheduleSlowStart(&peer, at: time)
            if let free = mine.first(where: { peers[$0].removed && peers[$0].conns == 0 }) {
                peers[free] = peer
            } else {
                peers.append(peer)
            }
        }
        return change
    }
}
