import KernelCore
import NIOCore

/// Stacking requests along dimension 0 and splitting the outputs back.
public enum BatchAssembly {
    /// Concatenates each input of every request into one buffer per input (row-major data: the rows simply follow
    /// each other, for BYTES too). This is the one copy a batched input makes between the request and the runtime.
    ///
    /// The requests are those the scheduler found compatible: the rows total at most `max_batch_size`, and the bytes
    /// are those of tensors already in memory, so these sums cannot overflow.
    public static func join(_ requests: [[Tensor]], allocator: ByteBufferAllocator = ByteBufferAllocator()) -> [Tensor] {
        guard let first = requests.first else { return [] }
        if requests.count == 1 { return first }
        var joined: [Tensor] = []
        joined.reserveCapacity(first.count)
        for position in first.indices {
            var total = 0
            var rows: Int64 = 0
            for request in requests {
                total += request[position].byteCount
                rows += request[position].shape[0]
            }
            var buffer = allocator.buffer(capacity: total)
            for request in requests { request[position].write(to: &buffer) }
            var shape = first[position].shape
            shape[0] = rows
            joined.append(Tensor(dataType: first[position].dataType, shape: shape, buffer: buffer))
        }
        return joined
    }

    /// Splits each output along dimension 0 into consecutive slices of `rows`, as views of the output's bytes.
    ///
    /// Fails with 500 when an output's dimension 0 is not the rows' total, or its shape does not describe its bytes
    /// (sizes checked, so a model's odd output shape cannot trap).
    public static func split(_ outputs: [Tensor], rows: [Int]) throws -> [[Tensor]] {
        guard let total = TensorSize.total(rows) else {
            throw KernelHTTPError(500, "a batch of \(rows.count) requests has more rows than can be counted")
        }
        var result = [[Tensor]](repeating: [], count: rows.count)
        for index in result.indices { result[index].reserveCapacity(outputs.count) }
        for output in outputs {
            guard let first = output.shape.first, first == Int64(total) else {
                throw KernelHTTPError(500, "a batched output has shape \(InferenceCodec.shapeText(output.shape)), "
                                      + "not \(total) rows along dimension 0: the model cannot be batched")
            }
            let inconsistent = KernelHTTPError(500, "a batched output has shape \(InferenceCodec.shapeText(output.shape)) "
                                               + "that does not describe its \(output.byteCount) bytes")
            // Where each request's rows end in the output's bytes.
            var ends: [Int] = []
            if output.dataType.hasFixedWidth {
                guard let rowBytes = output.rowByteCount, output.isConsistent else { throw inconsistent }
                var offset = 0
                // rowBytes * total is the output's byte count, so each product fits.
                for count in rows {
                    offset += rowBytes * count
                    ends.append(offset)
                }
            } else {
                guard let perRow = TensorSize.elementCount(Array(output.shape.dropFirst())),
                      let found = output.withUnsafeBytes({ BytesElements.rowEnds($0, rows: rows, perRow: perRow) }),
                      found.last ?? 0 == output.byteCount else { throw inconsistent }
                ends = found
            }
            var start = 0
            for (index, count) in rows.enumerated() {
                var shape = output.shape
                shape[0] = Int64(count)
                result[index].append(output.slice(byteOffset: start, count: ends[index] - start, shape: shape))
                start = ends[index]
            }
        }
        return result
    }
}
