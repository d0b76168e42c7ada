import Foundation
import KernelConfig
import KernelCore
import NIOCore
import NIOEmbedded
import NIOConcurrencyHelpers
import XCTest

final class GenerationTests: XCTestCase {
    func testRetiredGenerationDrainsOnlyAfterItsLastRequest() throws {
        let runtime = KernelRuntime.standalone(threads: 1, level: .error)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let old = KernelGeneration(router: NotFoundRouter(), runtime: runtime)
        runtime.install(old)
        let request = KernelRequest(method: "GET", uri: "/", path: "/", query: "", version: .http1_1, headers: [:],
                                    connection: ConnectionInfo(protocolName: "http", listener: "-", remoteAddress: nil, localAddress: nil))
        let exchange = runtime.begin(request, on: EmbeddedEventLoop())
        XCTAssertTrue(exchange.generation === old)

        runtime.install(KernelGeneration(router: NotFoundRouter(), runtime: runtime))
        let drained = NIOLockedValueBox(false)
        old.retireForTesting { drained.withLockedValue { $0 = true } }
        XCTAssertFalse(drained.withLockedValue { $0 }, "a request still holds the old generation")
        exchange.finish(request, status: 200, bodyBytesSent: 0)
        XCTAssertTrue(drained.withLockedValue { $0 })
        // A second finish does not release twice.
        exchange.finish(request, status: 200, bodyBytesSent: 0)
    }

    func testUnknownTopLevelKeyIsAnError() throws {
        let file = NSTemporaryDirectory() + "kernel-core-\(getpid()).yaml"
        try "kernel:\n  pid: /tmp/x.pid\nhtp:\n  listen: 80\n".write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let runtime = KernelRuntime.standalone(threads: 1, level: .error)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let loader = ConfigurationLoader(modules: [], role: .both)
        XCTAssertThrowsError(try loader.load(file: file, runtime: runtime, mode: .check, number: 1)) { error in
            XCTAssertEqual("\(error)", "\(file):3:1: htp: unknown key (expected one of: kernel)")
        }
    }

    func testCoreSectionDecodesUnitsAndLevels() throws {
        let text = "kernel:\n  event_loop_threads: 3\n  pid: run/k.pid\n  error_log: {path: logs/e.log, level: warn}\n  shutdown_timeout: 1m30s\n"
        let root = try YAMLParser().parse(text, file: "etc/k.yaml")
        let core = try CoreConfiguration.decode(try ConfigValue(node: root, path: "").mapping().optional("kernel"), directory: "etc")
        XCTAssertEqual(core.eventLoopThreads, 3)
        XCTAssertEqual(core.pidFile, "etc/run/k.pid")
        XCTAssertEqual(core.errorLogPath, "etc/logs/e.log")
        XCTAssertEqual(core.errorLogLevel, .warning)
        XCTAssertEqual(core.shutdownTimeout.milliseconds, 90_000)
        XCTAssertNil(core.openFileLimit, "absent: the soft limit is raised to the hard limit")
    }

    func testWorkerRlimitNofile() throws {
        func decode(_ text: String) throws -> CoreConfiguration {
            let root = try YAMLParser().parse("kernel:\n  worker_rlimit_nofile: \(text)\n", file: "k.yaml")
            return try CoreConfiguration.decode(try ConfigValue(node: root, path: "").mapping().optional("kernel"), directory: ".")
        }
        XCTAssertEqual(try decode("65536").openFileLimit, 65536)
        for bad in ["0", "-1", "lots", "\"1024\"", "4294967296"] {
            XCTAssertThrowsError(try decode(bad)) { error in
                XCTAssertEqual("\(error)", "k.yaml:2:25: kernel.worker_rlimit_nofile: expected a number of files 1-2147483647, found \(bad.hasPrefix("\"") ? bad : "\"\(bad)\"")")
            }
        }
    }

    func testParentDirectoriesAreCreatedAsMkdirP() throws {
        let base = NSTemporaryDirectory() + "kernel-dirs-\(getpid())-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: base) }
        try ParentDirectories.create(for: "\(base)/a/b/../c/kernel.pid")
        var info = stat()
        XCTAssertEqual(stat("\(base)/a/c", &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o755 & ~currentUmask())
        XCTAssertEqual(stat("\(base)/a/b", &info), 0)
        XCTAssertNoThrow(try ParentDirectories.create(for: "\(base)/a/c/kernel.pid"), "existing directories are fine")
        XCTAssertNoThrow(try ParentDirectories.create(for: "kernel.pid"), "no directory part")
        XCTAssertThrowsError(try ParentDirectories.create(for: "/proc/kernel-test-dir/x/k.pid")) { error in
            XCTAssertEqual("\(error)", "mkdir() \"/proc/kernel-test-dir\" failed (2: No such file or directory)")
        }
        _ = FileManager.default.createFile(atPath: "\(base)/file", contents: Data())
        XCTAssertThrowsError(try ParentDirectories.create(for: "\(base)/file/sub/k.pid")) { error in
            XCTAssertEqual("\(error)", "mkdir() \"\(base)/file/sub\" failed (20: Not a directory)")
        }
    }

    private func currentUmask() -> mode_t {
        let mask = umask(0)
        umask(mask)
        return mask
    }
}
