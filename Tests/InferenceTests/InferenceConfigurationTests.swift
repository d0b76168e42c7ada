import KernelConfig
import XCTest
@testable import Inference

final class InferenceConfigurationTests: XCTestCase {
    private func decode(_ text: String) throws -> InferenceConfiguration {
        let root = try YAMLParser().parse(text, file: "etc/k.yaml")
        let value = try XCTUnwrap(try ConfigValue(node: root, path: "").mapping().optional("inference"))
        return try InferenceConfiguration.decode(value) { $0.hasPrefix("/") ? $0 : "etc/" + $0 }
    }

    private func assertError(_ text: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try decode(text), file: file, line: line) { error in
            XCTAssertEqual("\(error)", expected, file: file, line: line)
        }
    }

    func testDecodesEveryKeyAndDefaults() throws {
        let configuration = try decode("""
            inference:
              runtime_library: /opt/ort/libonnxruntime.so.1.31.1
              load_before_listen: false
              models:
                - name: demo
                  path: ../models/demo/1/model.onnx
                  version: 3
                  instances: 2
                  intra_op_threads: 4
                  inter_op_threads: 2
                  max_batch_size: 32
                  dynamic_batching: {max_queue_delay: 2ms, preferred_batch_sizes: [8, 16]}
                  max_queue: 256
                  timeout: 5s
                  warmup: 2
                - name: plain
                  path: /m.onnx
            """)
        XCTAssertEqual(configuration.runtimeLibrary, "/opt/ort/libonnxruntime.so.1.31.1")
        XCTAssertFalse(configuration.loadBeforeListen)
        XCTAssertTrue(try decode("inference: {}\n").loadBeforeListen, "models load before the listeners open by default")
        let demo = configuration.models[0]
        XCTAssertEqual(demo.path, "etc/../models/demo/1/model.onnx")
        XCTAssertEqual(demo.version, "3")
        XCTAssertEqual(demo.instances, 2)
        XCTAssertEqual(demo.intraOpThreads, 4)
        XCTAssertEqual(demo.interOpThreads, 2)
        XCTAssertEqual(demo.policy.maxBatchSize, 32)
        XCTAssertTrue(demo.policy.dynamicBatching)
        XCTAssertEqual(demo.policy.maxQueueDelayNanoseconds, 2_000_000)
        // Microseconds, the unit of Triton's max_queue_delay_microseconds, kept as they are.
        let micro = try decode("inference:\n  models:\n    - {name: m, path: /m.onnx, max_batch_size: 4, dynamic_batching: {max_queue_delay: 250us}}\n")
        XCTAssertEqual(micro.models[0].policy.maxQueueDelayNanoseconds, 250_000)
        XCTAssertThrowsError(try decode("inference:\n  models:\n    - {name: m, path: /m.onnx, max_batch_size: 4, dynamic_batching: {max_queue_delay: 2.5us}}\n"))
        XCTAssertEqual(demo.policy.preferredBatchSizes, [8, 16])
        XCTAssertEqual(demo.policy.maxQueue, 256)
        XCTAssertEqual(demo.policy.timeoutNanoseconds, 5_000_000_000)
        XCTAssertEqual(demo.warmup, 2)
        let plain = configuration.models[1]
        XCTAssertEqual(plain.version, "1")
        XCTAssertEqual(plain.instances, 1)
        XCTAssertEqual(plain.intraOpThreads, 1)
        XCTAssertFalse(plain.policy.dynamicBatching)
        XCTAssertEqual(plain.maxQueue, InferenceConfiguration.defaultMaxQueue)
        XCTAssertEqual(plain.policy.timeoutNanoseconds, 0)
        // A queue timeout below a millisecond, as Triton's default_timeout_microseconds often is, is kept.
        let short = try decode("inference:\n  models:\n    - {name: m, path: /m.onnx, timeout: 750us}\n").models[0]
        XCTAssertEqual(short.policy.timeoutNanoseconds, 750_000)
        XCTAssertThrowsError(try decode("inference:\n  models:\n    - {name: m, path: /m.onnx, timeout: 7x5us}\n"))
        XCTAssertEqual(configuration.maxInputSize, 64 << 20, "Triton's --http-max-input-size default")
        XCTAssertEqual(try decode("inference:\n  max_input_size: 100m\n").maxInputSize, 100 << 20)
    }

    func testErrorsNameTheKeyAndPlace() {
        assertError("inference:\n  models:\n    - name: a\n      path: a.onnx\n      batch: 3\n",
                    "etc/k.yaml:5:7: inference.models[0].batch: unknown key (expected one of: arena_extend_strategy, arena_shrinkage, cpu_mem_arena, dynamic_batching, graph_optimization_level, inputs, instances, inter_op_threads, intra_op_threads, max_batch_size, max_queue, memory_pattern, name, outputs, path, queue_full_status, thread_spinning, timeout, version, warmup, warmup_batch_sizes, warmup_data)")
        assertError("inference:\n  models:\n    - path: a.onnx\n",
                    "etc/k.yaml:3:7: inference.models[0]: missing required key \"name\"")
        assertError("inference:\n  models:\n    - {name: a, path: a.onnx, dynamic_batching: {}}\n",
                    "etc/k.yaml:3:49: inference.models[0].dynamic_batching: dynamic_batching needs max_batch_size greater than 0")
        assertError("inference:\n  models:\n    - {name: a, path: a.onnx, max_batch_size: 4, dynamic_batching: {preferred_batch_sizes: [8]}}\n",
                    "etc/k.yaml:3:93: inference.models[0].dynamic_batching.preferred_batch_sizes[0]: preferred batch size 8 is larger than max_batch_size 4")
        assertError("inference:\n  models:\n    - {name: a, path: a.onnx}\n    - {name: a, path: b.onnx}\n",
                    "etc/k.yaml:4:7: inference.models[1]: model \"a\" is declared twice")
        assertError("inference:\n  models:\n    - {name: a, path: a.onnx, instances: 0}\n",
                    "etc/k.yaml:3:42: inference.models[0].instances: expected an integer 1-256, found \"0\"")
        XCTAssertThrowsError(try decode("inference:\n  load_before_listen: later\n"))
        assertError("inference:\n  max_input_size: 0\n",
                    "etc/k.yaml:2:19: inference.max_input_size: expected a size from 1 to 4g (e.g. 64m), found \"0\"")
    }
}
