import XCTest
@testable import Inference

/// Triton's `reshape` between the served and the model's shapes: fixed shapes, one free dimension on either side,
/// the batch dimension kept in front, and shapes whose elements cannot take the other shape.
final class TensorReshapeTests: XCTestCase {
    func testFixedShapesMapBothWays() {
        let reshape = TensorReshape(served: [3, 224, 224], model: [1, 3, 224, 224], batched: false)
        XCTAssertEqual(reshape.toModel([3, 224, 224]), [1, 3, 224, 224])
        XCTAssertEqual(reshape.toServed([1, 3, 224, 224]), [3, 224, 224])
        XCTAssertNil(reshape.toModel([3, 224, 223]), "other element counts do not map")
    }

    func testTheBatchDimensionStaysInFront() {
        let reshape = TensorReshape(served: [8, 8], model: [64], batched: true)
        XCTAssertEqual(reshape.toModel([5, 8, 8]), [5, 64])
        XCTAssertEqual(reshape.toServed([5, 64]), [5, 8, 8])
        XCTAssertEqual(reshape.toModel([0, 8, 8]), [0, 64], "an empty batch")
        XCTAssertNil(reshape.toModel([]), "a batched tensor has its batch dimension")
    }

    func testOneFreeDimensionIsInferredFromTheElements() {
        let reshape = TensorReshape(served: [-1], model: [-1, 4], batched: false)
        XCTAssertEqual(reshape.toModel([12]), [3, 4])
        XCTAssertEqual(reshape.toServed([3, 4]), [12])
        XCTAssertNil(reshape.toModel([10]), "10 elements are no rows of 4")
        XCTAssertEqual(reshape.toModel([0]), [0, 4])
    }
}
