@testable import Balancing
import KernelCore
import NIOConcurrencyHelpers
import NIOCore
import XCTest

/// A clock the test moves by hand.
final class TestClock: @unchecked Sendable {
    private let value = NIOLockedValueBox<UInt64>(1_000_000_000)
    var now: UInt64 { value.withLockedValue { $0 } }
    func advance(seconds: Double) { value.withLockedValue { $0 += UInt64(seconds * 1e9) } }
}

/// Random values the test chooses: each call takes the next, cycling.
final class TestRandom: @unchecked Sendable {
    private let state: NIOLockedValueBox<(values: [UInt64], next: Int)>
    init(_ values: [UInt64]) { state = NIOLockedValueBox((values, 0)) }
    func next() -> UInt64 {
        state.withLockedValue { state in
            defer { state.next = (state.next + 1) % state.values.count }
            return state.values[state.next]
        }
    }
}

/// A seeded generator (SplitMix64), for draws that must look random and repeat from run to run.
final class SeededRandom: @unchecked Sendable {
    private let state: NIOLockedValueBox<UInt64>
    init(seed: UInt64) { state = NIOLockedValueBox(seed) }
    func next() -> UInt64 {
        state.withLockedValue { state in
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }
}

/// Servers written as nginx lines (`127.0.0.1:1 weight=5 max_conns=2 backup`).
func servers(_ lines: String...) -> [UpstreamServer] {
    lines.map { line in
        let words = line.split(separator: " ")
        var server = UpstreamServer(address: PeerAddress(parsing: String(words[0]))!)
        for word in words.dropFirst() {
            let parts = word.split(separator: "=")
            switch parts[0] {
            case "weight": server.weight = Int(parts[1])!
            case "max_fails": server.maxFails = Int(parts[1])!
            case "max_conns": server.maxConns = Int(parts[1])!
            case "slow_start": server.slowStartNanoseconds = UInt64(parts[1])! * 1_000_000_000
            case "backup": server.backup = true
            case "down": server.down = true
            default: XCTFail("unknown \(word)")
            }
        }
        return server
    }
}

func request(from ip: String = "10.0.0.1", uri: String = "/") -> KernelRequest {
    let connection = ConnectionInfo(protocolName: "http", listener: "test",
                                    remoteAddress: try! SocketAddress(ipAddress: ip, port: 40000), localAddress: nil)
    let query = uri.split(separator: "?", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
    let path = String(uri.split(separator: "?", maxSplits: 1).first ?? "/")
    return KernelRequest(method: "GET", uri: uri, path: path, query: query, version: .http1_1, headers: [:],
                         connection: connection)
}

func port(_ lease: PeerLease?) -> Int {
    guard let lease, case .tcp(_, let port) = lease.peer else { return -1 }
    return port
}

func outcome(milliseconds: Double = 1, header: Double? = nil, failure: PeerFailure? = nil, queueDepth: Int? = nil) -> PeerLeaseOutcome {
    PeerLeaseOutcome(status: failure == nil ? 200 : nil, bytesReceived: 1, durationNanoseconds: UInt64(milliseconds * 1e6),
                     failure: failure, headerNanoseconds: UInt64((header ?? milliseconds) * 1e6), queueDepth: queueDepth)
}
