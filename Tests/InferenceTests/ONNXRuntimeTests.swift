import Foundation
import KernelCore
import Logging
import NIOCore
import NIOPosix
import XCTest
@testable import Inference

/// Real ONNX Runtime runs of the demo model (made by scripts/models/make_models.py; `make test` makes it).
final class ONNXRuntimeTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let demoPath = root + "/models/demo/1/model.onnx"

    private func runtime() throws -> ONNXRuntime {
        let path: String
        do {
            path = try ONNXRuntime.locate(configured: nil, environment: ProcessInfo.processInfo.environment)
        } catch {
            // `make test` installs ONNX Runtime: its absence fails these tests rather than skipping them.
            throw MissingPrerequisite("ONNX Runtime is not installed (run scripts/setup.sh): \(error)")
        }
        return try ONNXRuntime.open(path: path)
    }

    private func demoSession(_ runtime: ONNXRuntime) throws -> ONNXSession {
        guard FileManager.default.fileExists(atPath: ONNXRuntimeTests.demoPath) else {
            throw MissingPrerequisite("\(ONNXRuntimeTests.demoPath) is missing: run scripts/models/make_models.py")
        }
        return try ONNXSession(runtime: runtime, path: ONNXRuntimeTests.demoPath, options: SessionOptions())
    }

    /// Deterministic input rows.
    private func input(rows: Int, seed: Int) -> Tensor {
        var state = UInt32(truncatingIfNeeded: seed &* 2654435761 &+ 1)
        let values = (0..<(rows * 64)).map { _ -> Float in
            state = state &* 1664525 &+ 1013904223
            return Float(Int32(bitPattern: state >> 8) - (1 << 23)) / Float(1 << 23)
        }
        return Tensor(float32: values, shape: [Int64(rows), 64])
    }

    func testReadsTheModelsSignature() throws {
        let session = try demoSession(try runtime())
        XCTAssertEqual(session.inputs, [TensorSpec(name: "input", dataType: .fp32, shape: [-1, 64])])
        XCTAssertEqual(session.outputs, [TensorSpec(name: "output", dataType: .fp32, shape: [-1, 10])])
    }

    func testMissingModelFileGivesOrtsMessage() throws {
        let runtime = try runtime()
        XCTAssertThrowsError(try ONNXSession(runtime: runtime, path: "/nonexistent/model.onnx", options: SessionOptions())) { error in
            XCTAssertTrue("\(error)".contains("/nonexistent/model.onnx"), "\(error)")
        }
    }

    func testLocateReportsHowToInstall() {
        XCTAssertThrowsError(try ONNXRuntime.locate(configured: "/nonexistent/libonnxruntime.so", environment: [:])) { error in
            XCTAssertTrue("\(error)".contains("pip install onnxruntime"), "\(error)")
        }
        XCTAssertThrowsError(try ONNXRuntime.open(path: "/dev/null")) { error in
            XCTAssertTrue("\(error)".contains("pip install onnxruntime"), "\(error)")
        }
    }

    func testBatchedRunIsBitIdenticalToSingleRuns() throws {
        let session = try demoSession(try runtime())
        let singles = (0..<8).map { input(rows: 1, seed: $0) }
        let unbatched = try singles.map { try session.run([$0])[0] }
        let joined = BatchAssembly.join(singles.map { [$0] })
        let batched = try BatchAssembly.split(try session.run(joined), rows: Array(repeating: 1, count: 8))
        for (one, fromBatch) in zip(unbatched, batched) {
            XCTAssertEqual(one.shape, [1, 10])
            XCTAssertEqual(fromBatch[0].bytes, one.bytes)
        }
    }

    func testSchedulerJoinsConcurrentRequestsWithExactResults() throws {
        let runtime = try runtime()
        let session = try demoSession(runtime)
        let reference = try demoSession(runtime)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { try? group.syncShutdownGracefully() }
        let policy = SchedulingPolicy(maxBatchSize: 16, dynamicBatching: true, maxQueueDelayNanoseconds: 2_000_000)
        let scheduler = ModelScheduler(modelName: "demo", policy: policy, runners: [session], logger: Logger(label: "test"))
        defer { scheduler.stop() }
        let inputs = (0..<64).map { input(rows: 1 + $0 % 3, seed: 100 + $0) }
        let futures = inputs.map { scheduler.submit([$0], on: group.next()).map(\.outputs) }
        for (tensor, future) in zip(inputs, futures) {
            XCTAssertEqual(try future.wait()[0].bytes, try reference.run([tensor])[0].bytes)
        }
        XCTAssertEqual(scheduler.currentStatistics.inferenceCount, UInt64(inputs.reduce(0) { $0 + $1.rows }))
    }

    /// `arena_shrinkage`: after one large run and a small one, a session with it has given the large run's
    /// memory back; one without keeps it in its arena (ONNX Runtime's arena never shrinks on its own).
    func testArenaShrinkageGivesALargeRunsMemoryBack() throws {
        let onnx = try runtime()
        func residentBytes() -> Int {
            guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
                  let pages = text.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return 0 }
            return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
        }
        func retained(shrinking: Bool) throws -> Int {
            var memory = SessionMemoryOptions()
            memory.arenaShrinkage = shrinking
            let session = try ONNXSession(runtime: onnx, path: ONNXRuntimeTests.demoPath, options: SessionOptions(memory: memory))
            let small = input(rows: 1, seed: 1)
            _ = try session.run([small])
            let before = residentBytes()
            // 100000 rows: the inputs (25 MiB) are the test's, the layers' activations and outputs the arena's.
            do {
                let large = Tensor(dataType: .fp32, shape: [100_000, 64], bytes: [UInt8](repeating: 0, count: 100_000 * 64 * 4))
                _ = try session.run([large])
            }
            _ = try session.run([small])
            return residentBytes() - before
        }
        let kept = try retained(shrinking: false)
        let shrunk = try retained(shrinking: true)
        XCTAssertGreaterThan(kept, 16 << 20, "without shrinkage the arena keeps the large run's memory")
        XCTAssertLessThan(shrunk, kept / 4, "with shrinkage it is given back (kept \(kept), shrunk \(shrunk))")
    }

}

extension ONNXRuntimeTests {
    /// `models/strings/1/model.onnx` (scripts/models/make_models.py), or the same string identity model made with
    /// onnx.helper in a temporary directory while that file is not there.
    private func stringsSession(_ runtime: ONNXRuntime) throws -> ONNXSession {
        var path = ONNXRuntimeTests.root + "/models/strings/1/model.onnx"
        if !FileManager.default.fileExists(atPath: path) {
            path = FileManager.default.temporaryDirectory.appendingPathComponent("strings-\(ProcessInfo.processInfo.processIdentifier).onnx").path
            let script = """
                import onnx, sys
                from onnx import TensorProto, helper
                graph = helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "strings",
                    [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["rows", "columns"])],
                    [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, ["rows", "columns"])])
                model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                model.ir_version = 8
                onnx.save(model, sys.argv[1])
                """
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["python3", "-c", script, path]
            try process.run()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else { throw MissingPrerequisite("onnx (Python) could not write \(path): run scripts/setup.sh") }
        }
        return try ONNXSession(runtime: runtime, path: path, options: SessionOptions())
    }

    func testStringTensorsRoundTripThroughONNXRuntimeWithNULs() throws {
        let session = try stringsSession(try runtime())
        XCTAssertEqual(session.inputs, [TensorSpec(name: "INPUT0", dataType: .bytes, shape: [-1, -1])])
        XCTAssertEqual(session.outputs, [TensorSpec(name: "OUTPUT0", dataType: .bytes, shape: [-1, -1])])
        let elements: [[UInt8]] = [[], [0], [0x61, 0, 0x62], Array("h\u{e9}llo \u{6f22}".utf8), [0xFF, 0xFE],
                                   Array(repeating: 0x7A, count: 1000)]
        let input = Tensor(strings: elements, shape: [2, 3])
        let output = try session.run([input])[0]
        XCTAssertEqual(output.shape, [2, 3])
        XCTAssertEqual(output.stringElements, elements)
        XCTAssertEqual(output, input)
        // Only empty strings: ORT holds no string bytes at all (what warm-up's zero inputs are).
        let blanks = Tensor(dataType: .bytes, shape: [2, 2], bytes: [UInt8](repeating: 0, count: 16))
        XCTAssertEqual(try session.run([blanks])[0].stringElements, Array(repeating: [], count: 4))
        let empty = try session.run([Tensor(strings: [], shape: [0, 3])])[0]
        XCTAssertEqual(empty.shape, [0, 3])
        XCTAssertEqual(empty.byteCount, 0)
    }

    func testRunBatchJoinsStringRequestsAndSplitsThemBack() throws {
        let session = try stringsSession(try runtime())
        let requests = [[Tensor(strings: [[1], []], shape: [1, 2])],
                        [Tensor(strings: [[2, 0, 2], [3], [], [4, 4]], shape: [2, 2])],
                        [Tensor(strings: [[0], [5]], shape: [1, 2])]]
        let run = try session.runBatch(requests, rows: [1, 2, 1])
        XCTAssertEqual(run.outputs.map { $0[0] }, requests.map { $0[0] })
    }

    func testRunBatchOutputsAreViewsOfOneRuntimeOutput() throws {
        let session = try demoSession(try runtime())
        let requests = (0..<3).map { [input(rows: 1 + $0, seed: 40 + $0)] }
        let run = try session.runBatch(requests, rows: [1, 2, 3])
        for (request, outputs) in zip(requests, run.outputs) {
            XCTAssertEqual(outputs[0].bytes, try session.run(request)[0].bytes)
            guard case .memory = outputs[0].storage else { return XCTFail("an output copied out of ONNX Runtime") }
        }
        let base = run.outputs[0][0].withUnsafeBytes { $0.baseAddress! }
        run.outputs[1][0].withUnsafeBytes { XCTAssertEqual($0.baseAddress, base + 40) }
        XCTAssertGreaterThan(run.timing.inferNanoseconds, 0)
    }
}

/// A prerequisite that `make test` installs is missing: the test fails and says what to run.
struct MissingPrerequisite: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
