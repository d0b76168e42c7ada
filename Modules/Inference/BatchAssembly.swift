import KernelCore

/// Stacking requests along dimension 0 and splitting the outputs back.
public enum BatchAssembly {
    /// Concatenates each input of every request (row-major data: the rows simply follow each other).
    ///
    /// The requests are those the scheduler found compatible: the rows total at most `max_batch_size`, and the bytes
    /// are those of tensors already in memory, so these sums cannot overflow.
    public static func join(_ requests: [[Tensor]]) -> [Tensor] {
        guard let first = requests.first else { return [] }
        var joined: [Tensor] = []
        for position in first.indices {
            let parts = requests.map { $0[position] }
            var bytes: [UInt8] = []
            bytes.reserveCapacity(parts.reduce(0) { $0 + $1.bytes.count })
            for part in parts { bytes.append(contentsOf: part.bytes) }
            var shape = parts[0].shape
            shape[0] = parts.reduce(0) { $0 + $1.shape[0] }
            joined.append(Tensor(dataType: parts[0].dataType, shape: shape, bytes: bytes))
        }
        return joined
    }

    /// Splits each output along dimension 0 into consecutive slices of `rows`.
    ///
    /// Fails with 500 when an output's dimension 0 is not the rows' total, or its shape does not describe its bytes
    /// (sizes checked, so a model's odd output shape cannot trap).
    public static func split(_ outputs: [Tensor], rows: [Int]) throws -> [[Tensor]] {
        guard let total = TensorSize.total(rows) else {
            throw KernelHTTPError(500, "a batch of \(rows.count) requests has more rows than can be counted")
        }
        var result = [[Tensor]](repeating: [], count: rows.count)
        for output in outputs {
            guard let first = output.shape.first, first == Int64(total) else {
                throw KernelHTTPError(500, "a batched output has shape \(InferenceCodec.shapeText(output.shape)), "
                                      + "not \(total) rows along dimension 0: the model cannot be batched")
            }
            guard let rowBytes = output.rowByteCount, output.isConsistent else {
                throw KernelHTTPError(500, "a batched output has shape \(InferenceCodec.shapeText(output.shape)) "
                                      + "that does not describe its \(output.bytes.count) bytes")
            }
            var offset = 0
            for (index, count) in rows.enumerated() {
                var shape = output.shape
                shape[0] = Int64(count)
                // rowBytes * total is the output's byte count, so each slice's product fits.
                let length = rowBytes * count
                result[index].append(Tensor(dataType: output.dataType, shape: shape,
                                            bytes: Array(output.bytes[offset..<offset + length])))
                offset += length
            }
        }
        return result
    }
}
