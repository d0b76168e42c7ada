import KernelCore
import NIOCore
import NIOPosix
import XCTest
@testable import Inference

/// The checked size arithmetic every request-driven size goes through.
final class TensorSizeTests: XCTestCase {
    func testProductAndSumReportOverflowAndNegativeOperands() {
        XCTAssertEqual(TensorSize.product(6, 7), 42)
        XCTAssertEqual(TensorSize.product(0, Int.max), 0)
        XCTAssertEqual(TensorSize.product(Int.max, 1), Int.max)
        XCTAssertNil(TensorSize.product(Int.max, 2))
        XCTAssertNil(TensorSize.product(1 << 32, 1 << 31))
        XCTAssertNil(TensorSize.product(-1, 0))
        XCTAssertNil(TensorSize.product(-2, -3))  // a product of negatives is positive, and still refused

        XCTAssertEqual(TensorSize.sum(Int.max - 1, 1), Int.max)
        XCTAssertNil(TensorSize.sum(Int.max, 1))
        XCTAssertNil(TensorSize.sum(-5, 10))
        XCTAssertEqual(TensorSize.total([1, 2, 3]), 6)
        XCTAssertEqual(TensorSize.total([]), 0)
        XCTAssertNil(TensorSize.total([Int.max, 1]))
        XCTAssertNil(TensorSize.total([3, -1]))
    }

    func testElementCountDoesNotDependOnTheOrderOfDimensions() {
        XCTAssertEqual(TensorSize.elementCount([]), 1)  // a scalar
        XCTAssertEqual(TensorSize.elementCount([2, 3, 4]), 24)
        // An empty dimension makes the count 0 wherever it is, even when the others overflow together.
        XCTAssertEqual(TensorSize.elementCount([0, 1 << 62]), 0)
        XCTAssertEqual(TensorSize.elementCount([1 << 62, 1 << 62, 0]), 0)
        XCTAssertEqual(TensorSize.elementCount([1 << 62, 0, 1 << 62]), 0)
        XCTAssertNil(TensorSize.elementCount([1 << 40, 1 << 40]))
        XCTAssertNil(TensorSize.elementCount([Int64.max, 2]))
        XCTAssertNil(TensorSize.elementCount([-1, 0]))
        XCTAssertNil(TensorSize.elementCount([0, -1]))
        XCTAssertEqual(Tensor.elementCount([0, 1 << 62]), 0)
    }

    func testByteCountAndExtentOverflow() {
        XCTAssertEqual(TensorSize.byteCount([2, 3], .fp32), 24)
        XCTAssertEqual(TensorSize.byteCount([1 << 61], .int8), 1 << 61)
        XCTAssertEqual(TensorSize.byteCount([1 << 61], .fp32), nil)  // 2^63 bytes
        XCTAssertEqual(TensorSize.byteCount([1 << 60], .fp64), nil)
        XCTAssertEqual(TensorSize.byteCount([0, 1 << 62], .fp64), 0)

        XCTAssertEqual(TensorSize.extent([0, 0]), 1)
        XCTAssertEqual(TensorSize.extent([0, 1 << 62]), 1 << 62)
        XCTAssertEqual(TensorSize.extent([3, 0, 5]), 15)
        XCTAssertNil(TensorSize.extent([1 << 62, 0, 1 << 62]))
        XCTAssertNil(TensorSize.extent([2, -1]))
        XCTAssertNil(TensorSize.extentByteCount([0, 1 << 62], .fp32))
        XCTAssertEqual(TensorSize.extentByteCount([0, 1 << 30], .fp32), 1 << 32)
    }

    func testRowSizesOfEmptyTensorsWithHugeRows() {
        // [0, 2^62] holds nothing, but a row of it is 2^64 FP32 bytes: nil, not a trap.
        XCTAssertNil(Tensor(dataType: .fp32, shape: [0, 1 << 62], bytes: []).rowByteCount)
        XCTAssertEqual(Tensor(dataType: .fp32, shape: [0, 1 << 20], bytes: []).rowByteCount, 4 << 20)
        XCTAssertTrue(Tensor(dataType: .fp32, shape: [0, 1 << 62], bytes: []).isConsistent)
        XCTAssertFalse(Tensor(dataType: .fp32, shape: [2, 2], bytes: [0, 0, 0, 0]).isConsistent)
        XCTAssertEqual(Tensor(dataType: .fp32, shape: [-3, 2], bytes: []).rows, 0)
    }

    func testBatchSplitRefusesOutputsWhoseShapeDoesNotDescribeTheirBytes() {
        let huge = Tensor(dataType: .fp32, shape: [0, 1 << 62], bytes: [])
        XCTAssertThrowsError(try BatchAssembly.split([huge], rows: [0, 0])) { error in
            XCTAssertEqual((error as? KernelHTTPError)?.status, 500)
        }
        let short = Tensor(dataType: .fp32, shape: [2, 2], bytes: [UInt8](repeating: 0, count: 8))
        XCTAssertThrowsError(try BatchAssembly.split([short], rows: [1, 1])) { error in
            XCTAssertEqual((error as? KernelHTTPError)?.status, 500)
        }
        XCTAssertThrowsError(try BatchAssembly.split([short], rows: [Int.max, 1]))
        let empty = Tensor(dataType: .fp32, shape: [0, 3], bytes: [])
        XCTAssertEqual(try BatchAssembly.split([empty], rows: [0, 0]).map { $0[0].shape }, [[0, 3], [0, 3]])
    }

    func testStatisticsCountersSaturate() throws {
        var counter = DurationCounter()
        counter.count = .max
        counter.nanoseconds = .max - 1
        counter.add(5)
        XCTAssertEqual(counter.count, .max)
        XCTAssertEqual(counter.nanoseconds, .max)

        // Rows that add up past UInt64 saturate the count. A model that does not batch counts each request as one.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let loop = group.next()
        var statistics = ModelStatistics()
        let jobs = (0..<4).map { _ in
            InferenceJob(inputs: [Tensor(dataType: .fp32, shape: [1 << 62, 0], bytes: [])],
                         promise: loop.makePromise(of: InferenceResult.self), enqueued: 10, batchDimension: true)
        }
        let unbatched = InferenceJob(inputs: [Tensor(dataType: .fp32, shape: [1 << 62, 0], bytes: [])],
                                     promise: loop.makePromise(of: InferenceResult.self), enqueued: 10, batchDimension: false)
        XCTAssertEqual(unbatched.rows, 1)
        unbatched.complete(.success(InferenceResult(outputs: [], timing: InferenceTiming())))
        for job in jobs {
            statistics.record(batchSize: job.rows, requests: [job], timing: ComputeTiming(inferNanoseconds: 1), dequeued: 5, finished: 3,
                              succeeded: true)
        }
        XCTAssertEqual(statistics.inferenceCount, .max)
        XCTAssertEqual(statistics.executionCount, 4)
        XCTAssertEqual(statistics.success.nanoseconds, 0)  // finished before enqueued (clock): 0, not a trap
        for job in jobs { job.complete(.success(InferenceResult(outputs: [], timing: InferenceTiming()))) }
    }

    func testBytesAndHalfSizesAreLowerBoundsAndWidths() throws {
        // BYTES: 4 bytes an element at least (an empty string is its length alone); BF16 and FP16: 2.
        XCTAssertEqual(TensorSize.byteCount([2, 3], .bytes), 24)
        XCTAssertEqual(TensorSize.byteCount([2, 3], .bf16), 12)
        XCTAssertEqual(TensorSize.extentByteCount([0, 1 << 30], .bytes), 1 << 32)
        XCTAssertEqual(TensorDataType.bytes.onnxElementType, 8)
        XCTAssertEqual(TensorDataType.bf16.onnxElementType, 16)
        XCTAssertEqual(TensorDataType(onnxElementType: 8), .bytes)
        XCTAssertNil(TensorDataType(onnxElementType: 14))  // complex64: not carried
        // Zeros of the least size are a valid BYTES tensor of empty strings (what warm-up feeds a string input).
        let zeros = Tensor(dataType: .bytes, shape: [2, 3], bytes: [UInt8](repeating: 0, count: 24))
        XCTAssertTrue(zeros.isConsistent)
        XCTAssertEqual(zeros.stringElements, Array(repeating: [], count: 6))
        XCTAssertFalse(Tensor(dataType: .bytes, shape: [2, 3], bytes: [UInt8](repeating: 0, count: 20)).isConsistent)
        XCTAssertNil(zeros.rowByteCount)
    }

    func testAShapeTooLargeForBytesIs400BeforeAllocating() throws {
        let model = ModelSignature(name: "s", version: "1", inputs: [TensorSpec(name: "t", dataType: .bytes, shape: [-1, -1])],
                                   outputs: [], maxBatchSize: 0)
        let body = ByteBuffer(string: #"{"inputs": [{"name": "t", "shape": [1, 2000000000], "datatype": "BYTES", "data": ["a"]}]}"#)
        XCTAssertThrowsError(try InferenceCodec.decodeRequest(body: body, headers: [:], model: model)) { error in
            XCTAssertEqual((error as? KernelHTTPError)?.status, 400)
            XCTAssertTrue("\(error)".contains("input 't' has a shape too large: [1,2000000000] of BYTES"), "\(error)")
        }
    }
}
