@testable import Balancing
import KernelConfig
import KernelCore
import XCTest

final class BalancingConfigurationTests: XCTestCase {
    private func value(_ text: String) throws -> ConfigValue {
        let yaml = try YAMLParser(environment: [:]).parse("v: \(text)\n", file: "t.yaml")
        return try ConfigValue(node: yaml, path: "").mapping().required("v")
    }

    private func method(_ text: String) throws -> BalancingMethod {
        try BalancingModule.decodeMethod(try value(text), variables: .standard)
    }

    func testMethodsInNginxsWords() throws {
        XCTAssertEqual(try method("round_robin"), .roundRobin)
        XCTAssertEqual(try method("ip_hash"), .ipHash)
        XCTAssertEqual(try method("least_conn"), .leastConn)
        XCTAssertEqual(try method("hash $request_uri"), .hash(try HashKey("$request_uri"), consistent: false))
        XCTAssertEqual(try method("hash $arg_user consistent"), .hash(try HashKey("$arg_user"), consistent: true))
        XCTAssertEqual(try method("random"), .random(two: false))
        XCTAssertEqual(try method("random two"), .random(two: true))
        XCTAssertEqual(try method("random two least_conn"), .random(two: true))
        XCTAssertEqual(try method("least_time header"), .leastTime(.header, inflight: false))
        XCTAssertEqual(try method("least_time last_byte inflight"), .leastTime(.lastByte, inflight: true))
        XCTAssertEqual(try method("least_queue"), .leastQueue)
    }

    func testBadMethodsAreRefused() throws {
        for bad in ["hash", "hash $nope", "hash $uri sideways", "random three", "random two most_conn", "least_time",
                    "least_time first_byte", "least_time header outflight", "fastest", "least_conn now"] {
            XCTAssertThrowsError(try method(bad), bad)
        }
    }

    func testQueue() throws {
        XCTAssertEqual(try BalancingModule.decodeQueue(try value("100")), UpstreamQueuePolicy(size: 100, timeout: .seconds(60)))
        XCTAssertEqual(try BalancingModule.decodeQueue(try value("\"10 timeout=30s\"")), UpstreamQueuePolicy(size: 10, timeout: .seconds(30)))
        for bad in ["0", "ten", "\"10 timeout=soon\"", "\"10 wait=3s\""] {
            XCTAssertThrowsError(try BalancingModule.decodeQueue(try value(bad)), bad)
        }
    }

    func testSlowStartOnAServerLine() throws {
        let server = try UpstreamServer.decode(try value("\"127.0.0.1:1 slow_start=30s\""))
        XCTAssertEqual(server.slowStartNanoseconds, 30_000_000_000)
        XCTAssertThrowsError(try UpstreamServer.decode(try value("\"127.0.0.1:1 slow_start=later\"")))
    }
}
