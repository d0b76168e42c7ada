import KernelCore

/// The master's memory of the commands workers shared (`ProcessSupervision.share`), by configuration generation
/// and key, so that a worker started later replays what its siblings ran, in the order they ran it.
///
/// A key keeps the commands shared under it since the last one remembered `instead` of them (which replaces them
/// all: an unload does not depend on the loads before it), at most `perKey` of them: replaying them gives the state the
/// siblings reached even when a later command failed where an earlier one had worked.
struct SharedCommandLog {
    private struct Entry {
        var sequence: UInt64
        var command: String
    }

    /// The most commands a key keeps; the oldest go first.
    static let perKey = 16

    /// Generation → key → commands, oldest first.
    private var generations: [Int: [String: [Entry]]] = [:]
    /// The sequence number of the last command remembered (0: none yet); it only grows, across generations.
    private(set) var lastSequence: UInt64 = 0

    /// Remembers `command` under `key` in `generation`, as `memory` says: after every command remembered before it,
    /// instead of what the key held, or not at all (the key's commands forgotten too). A key ending in `*` that
    /// does not go after the others replaces every key it is a prefix of too (unregistering every shared memory
    /// region makes each one's registration irrelevant), so that keys made of names clients choose do not pile up.
    mutating func remember(_ command: String, key: String, memory: SharedCommandMemory, generation: Int) {
        lastSequence += 1
        if memory != .after, key.hasSuffix("*"), let keys = generations[generation]?.keys {
            let prefix = key.dropLast()
            for other in keys where other.hasPrefix(prefix) { generations[generation]![other] = nil }
        }
        if memory == .forgetting {
            generations[generation]?[key] = nil
            return
        }
        var entries = memory == .instead ? [] : generations[generation]?[key] ?? []
        entries.append(Entry(sequence: lastSequence, command: command))
        if entries.count > Self.perKey { entries.removeFirst(entries.count - Self.perKey) }
        generations[generation, default: [:]][key] = entries
    }

    /// The commands of `generation` remembered after sequence number `after`, oldest first, as many as fit in
    /// `atMost` bytes (always at least one when there is one), and the sequence number of the last one given
    /// (`after` when none is).
    func commands(after: UInt64, generation: Int, atMost: Int) -> (commands: [String], through: UInt64) {
        let pending = (generations[generation] ?? [:]).values.joined().filter { $0.sequence > after }
            .sorted { $0.sequence < $1.sequence }
        var commands: [String] = []
        var through = after
        var size = 0
        for entry in pending {
            size += entry.command.utf8.count
            guard commands.isEmpty || size <= atMost else { break }
            commands.append(entry.command)
            through = entry.sequence
        }
        return (commands, through)
    }

    /// Drops what generations older than `generation` remembered: their workers are draining, and no worker of
    /// theirs starts again.
    mutating func forget(before generation: Int) {
        generations = generations.filter { $0.key >= generation }
    }
}
