@testable import KernelProcesses
import XCTest

final class SharedCommandLogTests: XCTestCase {
    func testAKeyKeepsItsCommandsInOrderUntilOneResetsIt() {
        var log = SharedCommandLog()
        log.remember("load a v1", key: "a", memory: .after, generation: 1)
        log.remember("load b", key: "b", memory: .after, generation: 1)
        log.remember("load a v2", key: "a", memory: .after, generation: 1)
        XCTAssertEqual(log.commands(after: 0, generation: 1, atMost: 1 << 20).commands, ["load a v1", "load b", "load a v2"])
        log.remember("unload a", key: "a", memory: .instead, generation: 1)
        let all = log.commands(after: 0, generation: 1, atMost: 1 << 20)
        XCTAssertEqual(all.commands, ["load b", "unload a"])
        XCTAssertEqual(all.through, log.lastSequence)
        // Asked from the last one given: nothing is left.
        XCTAssertEqual(log.commands(after: all.through, generation: 1, atMost: 1 << 20).commands, [])
        XCTAssertEqual(log.commands(after: all.through, generation: 1, atMost: 1 << 20).through, all.through)
    }

    func testAResettingKeyEndingInAStarReplacesEveryKeyItPrefixes() {
        var log = SharedCommandLog()
        log.remember("register a", key: "shm region a", memory: .instead, generation: 1)
        log.remember("load m", key: "model m", memory: .after, generation: 1)
        log.remember("register b", key: "shm region b", memory: .instead, generation: 1)
        log.remember("unregister all", key: "shm region *", memory: .instead, generation: 1)
        XCTAssertEqual(log.commands(after: 0, generation: 1, atMost: 1 << 20).commands, ["load m", "unregister all"])
        log.remember("register c", key: "shm region c", memory: .instead, generation: 1)
        XCTAssertEqual(log.commands(after: 0, generation: 1, atMost: 1 << 20).commands, ["load m", "unregister all", "register c"])
    }

    func testACommandRememberedAsForgettingLeavesNothingOfItsKey() {
        var log = SharedCommandLog()
        log.remember("register a", key: "shm region a", memory: .instead, generation: 1)
        log.remember("register b", key: "shm region b", memory: .instead, generation: 1)
        log.remember("unregister a", key: "shm region a", memory: .forgetting, generation: 1)
        XCTAssertEqual(log.commands(after: 0, generation: 1, atMost: 1 << 20).commands, ["register b"])
        log.remember("unregister all", key: "shm region *", memory: .forgetting, generation: 1)
        XCTAssertEqual(log.commands(after: 0, generation: 1, atMost: 1 << 20).commands, [])
    }

    func testGenerationsAreSeparateAndOldOnesAreForgotten() {
        var log = SharedCommandLog()
        log.remember("old", key: "a", memory: .after, generation: 1)
        log.remember("new", key: "a", memory: .after, generation: 2)
        XCTAssertEqual(log.commands(after: 0, generation: 1, atMost: 100).commands, ["old"])
        XCTAssertEqual(log.commands(after: 0, generation: 2, atMost: 100).commands, ["new"])
        log.forget(before: 2)
        XCTAssertEqual(log.commands(after: 0, generation: 1, atMost: 100).commands, [])
        XCTAssertEqual(log.commands(after: 0, generation: 2, atMost: 100).commands, ["new"])
    }

    func testAnAnswerHoldsWhatFitsButAlwaysOneCommand() {
        var log = SharedCommandLog()
        for name in ["aaaa", "bbbb", "cccc"] { log.remember(name, key: name, memory: .after, generation: 1) }
        let first = log.commands(after: 0, generation: 1, atMost: 9)
        XCTAssertEqual(first.commands, ["aaaa", "bbbb"])
        let second = log.commands(after: first.through, generation: 1, atMost: 2)
        XCTAssertEqual(second.commands, ["cccc"])  // longer than the bound, but a command is never skipped
    }

    func testAKeyKeepsAtMostItsBound() {
        var log = SharedCommandLog()
        for index in 0..<(SharedCommandLog.perKey + 3) {
            log.remember("load \(index)", key: "a", memory: .after, generation: 1)
        }
        let kept = log.commands(after: 0, generation: 1, atMost: 1 << 20).commands
        XCTAssertEqual(kept.count, SharedCommandLog.perKey)
        XCTAssertEqual(kept.first, "load 3")
        XCTAssertEqual(kept.last, "load \(SharedCommandLog.perKey + 2)")
    }
}
