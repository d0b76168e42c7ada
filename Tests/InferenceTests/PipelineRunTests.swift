import KernelConfig
import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest
@testable import Inference

/// A detection model stand-in: a probability map of 0.9 over the middle of its input, zero elsewhere; it counts its
/// runs and the rows of each.
final class FakeDetector: ModelRunner, @unchecked Sendable {
    let batches = NIOLockedValueBox<[Int]>([])

    func run(_ inputs: [Tensor]) throws -> [Tensor] {
        let shape = inputs[0].shape.map(Int.init)
        let (rows, height, width) = (shape[0], shape[2], shape[3])
        batches.withLockedValue { $0.append(rows) }
        var map = [Float](repeating: 0, count: rows * height * width)
        for row in 0..<rows {
            for y in (height / 4)..<(height / 2) {
                for x in (width / 8)..<(width / 2) { map[(row * height + y) * width + x] = 0.9 }
            }
        }
        return [Tensor(float32: map, shape: [Int64(rows), 1, Int64(height), Int64(width)])]
    }
}

/// Pipelines run against a model with a fake runner: the model step goes through the scheduler, batches across
/// requests, and the request's cancellation and deadline stop it.
final class PipelineRunTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private var detector: FakeDetector!
    private var scheduler: ModelScheduler!

    override func setUp() {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        detector = FakeDetector()
    }

    override func tearDown() {
        scheduler?.stop()
        try? group.syncShutdownGracefully()
    }

    private func pipeline(queueDelay: String = "0ms", ready: Bool = true) throws -> Pipeline {
        let text = """
            inference:
              models:
                - {name: det, path: /det.onnx, max_batch_size: 8, dynamic_batching: {max_queue_delay: \(queueDelay)}}
              pipelines:
                - name: boxes
                  steps:
                    - {name: decode, op: decode_image}
                    - {name: image, op: ocr_prepare}
                    - {name: det_input, op: det_preprocess, limit_side_len: 64}
                    - {name: det, model: det}
                    - {name: boxes, op: db_postprocess, inputs: [det, image]}
            """
        let root = try YAMLParser().parse(text, file: "k.yaml")
        let value = try XCTUnwrap(try ConfigValue(node: root, path: "").mapping().optional("inference"))
        let configuration = try InferenceConfiguration.decode(value) { $0 }
        let repository = ModelRepository(configurations: configuration.models)
        let model = configuration.models[0]
        scheduler = ModelScheduler(modelName: "det", policy: model.policy, runners: [detector],
                                   logger: Logger(label: "test"))
        let spec = TensorSpec(name: "x", dataType: .fp32, shape: [-1, 3, -1, -1])
        let signature = ModelSignature(name: "det", version: "1", inputs: [spec],
                                       outputs: [TensorSpec(name: "y", dataType: .fp32, shape: [-1, 1, -1, -1])],
                                       maxBatchSize: 8)
        if ready {
            repository.setState(.ready(LoadedModel(configuration: model, signature: signature, scheduler: scheduler)), for: "det")
        }
        return Pipeline(configuration: configuration.pipelines[0], repository: repository, runtimeLibrary: nil)
    }

    private func upload() -> ImageUpload {
        let white = [UInt8](repeating: 255, count: 128 * 64 * 3)
        return ImageUpload(body: ByteBuffer(bytes: TestPNG.rgb(width: 128, height: 64, rgb: white)), contentType: "image/png")
    }

    private func assertFails(_ future: EventLoopFuture<PipelineRun>, _ status: Int, line: UInt = #line) {
        XCTAssertThrowsError(try future.wait(), line: line) { error in
            XCTAssertEqual((error as? KernelHTTPError)?.status, status, "\(error)", line: line)
        }
    }

    func testTheModelStepRunsThroughTheScheduler() throws {
        let run = try pipeline().run(upload(), options: SubmitOptions(), on: group.next()).wait()
        guard case .boxes(let boxes) = run.output else { return XCTFail("\(run.output)") }
        XCTAssertEqual(boxes.count, 1, "one blob in the fake probability map")
        XCTAssertEqual(run.timings.map(\.name), ["decode", "image", "det_input", "det", "boxes"])
        let det = try XCTUnwrap(run.timings.first { $0.name == "det" })
        XCTAssertEqual(det.model, "det")
        XCTAssertEqual(det.requests, 1)
        XCTAssertEqual(det.batchSize, 1)
        XCTAssertEqual(detector.batches.withLockedValue { $0 }, [1])
    }

    func testConcurrentRequestsJoinOneBatch() throws {
        // A long queue delay: the four requests' detection inputs (one shape) queue together.
        let pipeline = try pipeline(queueDelay: "500ms")
        let runs = try (0..<4).map { _ in pipeline.run(upload(), options: SubmitOptions(), on: group.next()) }
            .map { try $0.wait() }
        XCTAssertGreaterThan(detector.batches.withLockedValue { $0.max() ?? 0 }, 1)
        XCTAssertGreaterThan(runs.compactMap { $0.timings.first { $0.name == "det" }?.batchSize }.max() ?? 0, 1)
    }

    func testCancellationAndDeadlineStopTheRun() throws {
        let pipeline = try pipeline()
        let cancellation = RequestCancellation()
        cancellation.cancel("client left")
        assertFails(pipeline.run(upload(), options: SubmitOptions(cancellation: cancellation), on: group.next()), 499)
        assertFails(pipeline.run(upload(), options: SubmitOptions(deadline: .now() - .seconds(1)), on: group.next()), 504)
        XCTAssertEqual(detector.batches.withLockedValue { $0 }, [], "the model never ran")
    }

    func testAModelThatIsNotReadyIs503() throws {
        assertFails(try pipeline(ready: false).run(upload(), options: SubmitOptions(), on: group.next()), 503)
    }

    func testAnImageThatIsNoImageIs400() throws {
        let bad = ImageUpload(body: ByteBuffer(string: "text"), contentType: nil)
        assertFails(try pipeline().run(bad, options: SubmitOptions(), on: group.next()), 400)
    }
}
