/// BYTES tensor data as Triton serialises it: per element a 4-byte little-endian length, then that many bytes.
enum BytesElements {
    /// Why data does not hold the elements its shape says.
    enum Problem: Equatable {
        /// Element `element` (0-based) starts with fewer than 4 bytes left.
        case incompleteLength(element: Int, available: Int)
        /// Element `element` says `length` bytes but only `available` are left.
        case pastEnd(element: Int, length: Int, available: Int)
        /// More bytes follow the last expected element: there are more elements than `expected`.
        case tooMany(expected: Int)
        /// The data ends after `found` elements.
        case tooFew(found: Int, expected: Int)

        /// The message, in Triton's words where Triton has them (`InferenceRequest::ValidateBytesInputs`).
        func message(input: String, model: String) -> String {
            switch self {
            case .incompleteLength(_, let available):
                return "incomplete string length indicator for inference input '\(input)' for model '\(model)', "
                    + "expecting 4 bytes but only \(available) bytes available"
            case .pastEnd(let element, let length, let available):
                return "string element \(element) of inference input '\(input)' for model '\(model)' has length "
                    + "\(length), more than the \(available) bytes left in its data"
            case .tooMany(let expected):
                return "unexpected number of string elements \(expected + 1) for inference input '\(input)' for model "
                    + "'\(model)', expecting \(expected)"
            case .tooFew(let found, let expected):
                return "expected \(expected) string elements for inference input '\(input)' for model '\(model)', got \(found)"
            }
        }
    }

    /// The length of the element whose length prefix starts at `offset` (no bounds check: the caller checked 4 bytes).
    @inline(__always)
    static func length(_ raw: UnsafeRawBufferPointer, at offset: Int) -> Int {
        Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
    }

    /// nil when `raw` holds exactly `count` well-formed elements.
    static func validate(_ raw: UnsafeRawBufferPointer, count: Int) -> Problem? {
        var offset = 0
        for element in 0..<count {
            let left = raw.count - offset
            if left == 0 { return .tooFew(found: element, expected: count) }
            guard left >= 4 else { return .incompleteLength(element: element, available: left) }
            let size = length(raw, at: offset)
            guard size <= left - 4 else { return .pastEnd(element: element, length: size, available: left - 4) }
            offset += 4 + size
        }
        return offset == raw.count ? nil : .tooMany(expected: count)
    }

    /// The byte ranges of the elements' contents (data that `validate` accepted).
    static func ranges(_ raw: UnsafeRawBufferPointer) -> [Range<Int>] {
        var result: [Range<Int>] = []
        var offset = 0
        while offset + 4 <= raw.count {
            let size = length(raw, at: offset)
            guard size <= raw.count - offset - 4 else { break }
            result.append(offset + 4 ..< offset + 4 + size)
            offset += 4 + size
        }
        return result
    }

    /// The byte offset where each of `rows` rows of `perRow` elements ends, or nil when the data is shorter.
    static func rowEnds(_ raw: UnsafeRawBufferPointer, rows: [Int], perRow: Int) -> [Int]? {
        var ends: [Int] = []
        ends.reserveCapacity(rows.count)
        var offset = 0
        for count in rows {
            guard let elements = TensorSize.product(count, perRow) else { return nil }
            for _ in 0..<elements {
                guard raw.count - offset >= 4 else { return nil }
                let size = length(raw, at: offset)
                guard size <= raw.count - offset - 4 else { return nil }
                offset += 4 + size
            }
            ends.append(offset)
        }
        return ends
    }
}
