import KernelConfig
import KernelCore
import NIOCore
import XCTest

/// `kernel.processes`, `lazy`, `worker_reload_mercy`, `shutdown_delay`.
final class ProcessesConfigurationTests: XCTestCase {
    private func decode(_ body: String) throws -> CoreConfiguration {
        let root = try YAMLParser().parse("kernel:\n" + body, file: "k.yaml")
        return try CoreConfiguration.decode(try ConfigValue(node: root, path: "").mapping().optional("kernel"), directory: ".")
    }

    func testAbsentOrZeroIsOneProcess() throws {
        XCTAssertEqual(try decode("  pid: k.pid\n").processes, .single)
        XCTAssertEqual(try decode("  processes: 0\n").processes, .single)
        let defaults = try decode("  pid: k.pid\n")
        XCTAssertTrue(defaults.lazy)
        XCTAssertEqual(defaults.workerReloadMercy, .seconds(60))
        XCTAssertEqual(defaults.shutdownDelay.milliseconds, 0)
    }

    func testACountOrAutoIsOnePoolOfTheCommandLineRole() throws {
        XCTAssertEqual(try decode("  processes: 3\n").processes, .pools([WorkerPool(name: "main", role: nil, count: 3)]))
        XCTAssertEqual(try decode("  processes: auto\n").processes.pools.first?.count, System.coreCount)
        // nginx's and uWSGI's names for the same setting.
        XCTAssertEqual(try decode("  worker_processes: 2\n").processes.pools.first?.count, 2)
        XCTAssertEqual(try decode("  workers: 4\n").processes.pools.first?.count, 4)
        XCTAssertThrowsError(try decode("  processes: 2\n  workers: 2\n")) { error in
            XCTAssertTrue("\(error)".contains("processes and workers are the same setting"), "\(error)")
        }
        XCTAssertThrowsError(try decode("  processes: many\n")) { error in
            XCTAssertTrue("\(error)".contains("expected auto or a number of processes 0-1024"), "\(error)")
        }
    }

    func testPoolsByRoleWithTheirListeners() throws {
        let core = try decode("  processes:\n    edge: 2\n    worker: {count: 3, listen: [uwsgi, \"unix:/run/m.sock\"]}\n    both: 0\n")
        XCTAssertEqual(core.processes.pools.map(\.name), ["edge", "worker"], "a pool of 0 is no pool")
        XCTAssertEqual(core.processes.pools[0].role, .edge)
        XCTAssertNil(core.processes.pools[0].listen)
        XCTAssertEqual(core.processes.pools[1].count, 3)
        XCTAssertEqual(core.processes.pools[1].listen, ["uwsgi", "unix:/run/m.sock"])
        let files = try CoreConfiguration.decode(
            try ConfigValue(node: try YAMLParser().parse("kernel:\n  processes: {edge: {count: 1, config: edge.yaml}}\n", file: "etc/k.yaml"),
                            path: "").mapping().optional("kernel"), directory: "etc")
        XCTAssertEqual(files.processes.pools.first?.configurationFile, "etc/edge.yaml", "relative to the master's file")
        XCTAssertThrowsError(try decode("  processes: {models: 2}\n")) { error in
            XCTAssertTrue("\(error)".contains("models"), "\(error)")
        }
        XCTAssertThrowsError(try decode("  processes: {edge: 0}\n"))
    }

    func testAPoolTakesListenersByProtocolOrAddress() {
        let init_: @Sendable (any Channel, KernelRuntime) -> EventLoopFuture<Void> = { channel, _ in channel.eventLoop.makeSucceededVoidFuture() }
        let http = ListenerSpec(protocolName: "http", address: ListenAddress(parsing: "127.0.0.1:8080")!, initializeConnection: init_)
        let uwsgi = ListenerSpec(protocolName: "uwsgi", address: ListenAddress(parsing: "unix:/run/m.sock")!, initializeConnection: init_)
        XCTAssertTrue(WorkerPool(name: "edge", role: .edge, count: 1).takes(uwsgi), "no listen: every listener")
        let byProtocol = WorkerPool(name: "edge", role: .edge, count: 1, listen: ["http"])
        XCTAssertTrue(byProtocol.takes(http))
        XCTAssertFalse(byProtocol.takes(uwsgi))
        let byAddress = WorkerPool(name: "worker", role: .worker, count: 1, listen: ["unix:/run/m.sock", "*:9090"])
        XCTAssertTrue(byAddress.takes(uwsgi))
        XCTAssertFalse(byAddress.takes(http))
    }

    func testMercyDelayAndLazy() throws {
        let core = try decode("  worker_reload_mercy: 10s\n  shutdown_delay: 5s\n  lazy: false\n")
        XCTAssertEqual(core.workerReloadMercy, .seconds(10))
        XCTAssertEqual(core.shutdownDelay, .seconds(5))
        XCTAssertFalse(core.lazy)
    }
}
