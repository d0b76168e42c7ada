/// Element counts and byte sizes computed from shapes and counts that a request controls.
///
/// Every product and sum is checked (`multipliedReportingOverflow`, `addingReportingOverflow`): a size that does
/// not fit is `nil`, which callers turn into an error status, never a trap. Negative operands are `nil` too, so a
/// negative dimension can never cancel out into a plausible size.
public enum TensorSize {
    /// The most bytes one response body can hold: `ByteBuffer` indexes its storage with `UInt32`.
    public static let bufferLimit = Int(UInt32.max)

    /// `a * b`, or nil when either is negative or the product overflows.
    @inline(__always)
    public static func product(_ a: Int, _ b: Int) -> Int? {
        guard a >= 0, b >= 0 else { return nil }
        let (result, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? nil : result
    }

    /// `a + b`, or nil when either is negative or the sum overflows.
    @inline(__always)
    public static func sum(_ a: Int, _ b: Int) -> Int? {
        guard a >= 0, b >= 0 else { return nil }
        let (result, overflow) = a.addingReportingOverflow(b)
        return overflow ? nil : result
    }

    /// The sum of `values`, or nil when one is negative or the total overflows.
    public static func total<Values: Sequence<Int>>(_ values: Values) -> Int? {
        var result = 0
        for value in values {
            guard let next = sum(result, value) else { return nil }
            result = next
        }
        return result
    }

    /// The number of elements `shape` describes: 0 when any dimension is 0 (whatever the others are, so the answer
    /// does not depend on the order of the dimensions), nil when a dimension is negative or the product overflows.
    public static func elementCount(_ shape: [Int64]) -> Int? {
        guard shape.allSatisfy({ $0 >= 0 }) else { return nil }
        if shape.contains(0) { return 0 }
        return extent(shape)
    }

    /// The bytes of a dense tensor of `shape` and `dataType`, or nil as for `elementCount` or when the byte size
    /// overflows.
    public static func byteCount(_ shape: [Int64], _ dataType: TensorDataType) -> Int? {
        elementCount(shape).flatMap { product($0, dataType.byteWidth) }
    }

    /// The product of the non-zero dimensions: the elements the shape would have with each empty dimension taken as
    /// one. A shape such as `[0, 2^62]` holds no element but describes rows of 2^62 elements each; checking the
    /// extent refuses it before anything (a batch split, a row size, ONNX Runtime) multiplies its other dimensions.
    /// nil when a dimension is negative or the product overflows.
    public static func extent(_ shape: [Int64]) -> Int? {
        var result = 1
        for dimension in shape where dimension != 0 {
            guard dimension > 0, let next = product(result, Int(dimension)) else { return nil }
            result = next
        }
        return result
    }

    /// `extent(shape)` in bytes of `dataType`, or nil when it does not fit an `Int`.
    public static func extentByteCount(_ shape: [Int64], _ dataType: TensorDataType) -> Int? {
        extent(shape).flatMap { product($0, dataType.byteWidth) }
    }
}
