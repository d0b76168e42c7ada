#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Triton's classification extension: an output requested with `"parameters": {"classification": K}` (tritonclient's
/// `class_count`) is answered with its K largest elements instead of the tensor, per batch row, each as the BYTES
/// string `value:index`, or `value:index:label` when the output's `label_filename` has a label for the index. The output's datatype
/// becomes BYTES and its shape `[rows, min(K, row elements)]` for a model that batches, `[min(K, elements)]`
/// otherwise, as Triton's HTTP server shapes it.
enum OutputClassification {
    /// Whether the elements of `dataType` can be ranked (Triton ranks integers and FP32/FP64).
    static func supports(_ dataType: TensorDataType) -> Bool {
        switch dataType {
        case .uint8, .uint16, .uint32, .uint64, .int8, .int16, .int32, .int64, .fp32, .fp64: return true
        case .bool, .fp16, .bf16, .bytes: return false
        }
    }

    /// The classification of `tensor`: its `count` largest elements of each row (rows along dimension 0 when
    /// `batched`), largest first, equal values in index order.
    static func classify(_ tensor: Tensor, count: Int, batched: Bool, labels: [String]? = nil) -> Tensor {
        let rows = batched && !tensor.shape.isEmpty ? Int(max(0, tensor.shape[0])) : 1
        let rowElements = TensorSize.elementCount(batched ? Array(tensor.shape.dropFirst()) : tensor.shape) ?? 0
        let kept = min(count, rowElements)
        var strings: [[UInt8]] = []
        strings.reserveCapacity(rows * kept)
        tensor.withUnsafeBytes { raw in
            let available = raw.count / tensor.dataType.byteWidth
            for row in 0..<rows {
                let start = row * rowElements
                guard start + rowElements <= available else { break }
                let values = (0..<rowElements).map { element(raw, tensor.dataType, start + $0) }
                let order = values.indices.sorted { first, second in
                    let a = values[first], b = values[second]
                    // NaN ranks last; equal values (NaNs among them) keep their order.
                    if a.number.isNaN || b.number.isNaN {
                        return a.number.isNaN == b.number.isNaN ? first < second : b.number.isNaN
                    }
                    if a.number != b.number { return a.number > b.number }
                    return first < second
                }
                for index in order.prefix(kept) {
                    // Triton appends a label only where the file has a non-empty one for the index.
                    if let labels, index < labels.count, !labels[index].isEmpty {
                        strings.append(Array("\(values[index].text):\(index):\(labels[index])".utf8))
                    } else {
                        strings.append(Array("\(values[index].text):\(index)".utf8))
                    }
                }
            }
        }
        let shape: [Int64] = batched && !tensor.shape.isEmpty ? [Int64(rows), Int64(kept)] : [Int64(kept)]
        return Tensor(strings: strings, shape: shape)
    }

    /// One element as a number to rank by and as Triton writes it (`std::to_string`: integers in decimal,
    /// floating point with six decimals).
    private static func element(_ raw: UnsafeRawBufferPointer, _ type: TensorDataType, _ index: Int) -> (number: Double, text: String) {
        func integer<T: FixedWidthInteger>(_: T.Type) -> (Double, String) {
            let value = raw.loadUnaligned(fromByteOffset: index * MemoryLayout<T>.size, as: T.self)
            return (Double(value), String(value))
        }
        switch type {
        case .uint8: return integer(UInt8.self)
        case .uint16: return integer(UInt16.self)
        case .uint32: return integer(UInt32.self)
        case .uint64: return integer(UInt64.self)
        case .int8: return integer(Int8.self)
        case .int16: return integer(Int16.self)
        case .int32: return integer(Int32.self)
        case .int64: return integer(Int64.self)
        case .fp32:
            let value = Double(raw.loadUnaligned(fromByteOffset: index * 4, as: Float.self))
            return (value, sixDecimals(value))
        case .fp64:
            let value = raw.loadUnaligned(fromByteOffset: index * 8, as: Double.self)
            return (value, sixDecimals(value))
        case .bool, .fp16, .bf16, .bytes:
            return (.nan, "")
        }
    }

    /// `%f`, as C++'s `std::to_string` formats a float or a double.
    static func sixDecimals(_ value: Double) -> String {
        // The longest `%f` text of a double (1.8e308) is 316 bytes.
        var buffer = [CChar](repeating: 0, count: 352)
        let written = withVaList([value]) { arguments in
            buffer.withUnsafeMutableBufferPointer { vsnprintf($0.baseAddress, $0.count, "%f", arguments) }
        }
        guard written > 0 else { return "\(value)" }
        return String(decoding: buffer.prefix(Int(written)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
