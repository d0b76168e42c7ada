import CZlib
import KernelCore
import NIOCore

/// The compression of infer request and response bodies, as Triton's HTTP server takes and gives them (and as
/// `tritonclient`'s `request_compression_algorithm` and `response_compression_algorithm` ask for it): a request
/// with `Content-Encoding: gzip` or `deflate` (zlib's format) is expanded before it is read, and a response is
/// compressed with the encoding of `Accept-Encoding` that has the highest weight. `Inference-Header-Content-Length`
/// counts the uncompressed bytes, on both sides.
enum InferenceBodyEncoding: String, Sendable {
    case identity
    case gzip
    case deflate

    /// The encodings a client may send, for the `Accept-Encoding` of a refusal (Triton's value).
    static let supported = "gzip, deflate"

    /// The request's `Content-Encoding` (identity when absent). Another one is a 415 naming the supported ones.
    static func ofRequest(_ headers: HeaderFields) throws -> InferenceBodyEncoding {
        guard let value = headers["Content-Encoding"] else { return .identity }
        let token = value.trimmingSpaces.lowercased()
        switch token {
        case "", "identity": return .identity
        case "gzip", "x-gzip": return .gzip
        case "deflate": return .deflate
        default:
            throw KernelHTTPError(415, "Unsupported compression type '\(value)': the request body may be gzip, deflate or identity",
                                  headers: ["Accept-Encoding": supported])
        }
    }

    /// The response's encoding for `Accept-Encoding` as Triton chooses it: among `identity`, `gzip` and `deflate`,
    /// the first with the highest weight (`;q=`, 1 without one); malformed entries and weights are skipped, and
    /// weight 0 never wins. Identity without the header.
    static func forResponse(acceptEncoding: String?) -> InferenceBodyEncoding {
        guard let acceptEncoding else { return .identity }
        var chosen = InferenceBodyEncoding.identity
        var chosenWeight = 0.0
        for entry in acceptEncoding.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = entry.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(parts[0]).trimmingSpaces.lowercased()
            var weight = 1.0
            if parts.count == 2 {
                let parameter = String(parts[1]).trimmingSpaces
                guard parameter.hasPrefix("q="), let value = Double(parameter.dropFirst(2)), value.isFinite else { continue }
                weight = value
            }
            guard let encoding = InferenceBodyEncoding(rawValue: name), weight > chosenWeight else { continue }
            chosen = encoding
            chosenWeight = weight
        }
        return chosen
    }

    /// How an expansion ended.
    private enum Expansion {
        case complete
        /// More output than the limit allows.
        case tooLarge
        /// The input ended before the compressed stream did.
        case truncated
        /// Bytes after the end of the compressed stream.
        case trailing
        /// zlib's error code (corrupt data, a preset dictionary nobody has).
        case failed(Int32)
    }

    /// The most bytes an expansion may make, and the setting that says so (named in the 413).
    struct ExpansionLimit {
        var bytes: Int
        var setting: String
    }

    /// `body` expanded, at most `limit` bytes (and never more than one buffer holds): more is a 413, as an
    /// uncompressed body that large would be, found before more than `limit` bytes are made. A body that is not
    /// what its encoding says is a 400.
    func expand(_ body: ByteBuffer, limit expansionLimit: ExpansionLimit) throws -> ByteBuffer {
        guard self != .identity else { return body }
        let limit = min(expansionLimit.bytes, Int(UInt32.max))
        var stream = z_stream()
        // 15 + 32: zlib's largest window, with the gzip or zlib header detected (Triton expands both this way).
        guard inflateInit2_(&stream, 15 + 32, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw KernelHTTPError(500, "failed to initialise the \(rawValue) decompression")
        }
        defer { inflateEnd(&stream) }
        var output = ByteBufferAllocator().buffer(capacity: min(limit, max(64 << 10, body.readableBytes * 4)))
        let outcome: Expansion = body.withUnsafeReadableBytes { input -> Expansion in
            stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
            stream.avail_in = uInt(input.count)
            while true {
                let room = min(output.writableBytes, limit - output.writerIndex)
                var result = Z_OK
                if room == 0, output.writerIndex >= limit {
                    // At the limit: the stream may only end here; one more byte of output is one too many.
                    var probe: Bytef = 0
                    withUnsafeMutablePointer(to: &probe) { pointer in
                        stream.next_out = pointer
                        stream.avail_out = 1
                        result = CZlib.inflate(&stream, Z_NO_FLUSH)
                    }
                    guard result == Z_STREAM_END, stream.avail_out == 1 else { return .tooLarge }
                    return stream.avail_in == 0 ? .complete : .trailing
                }
                if room == 0 {
                    output.reserveCapacity(minimumWritableBytes: min(limit - output.writerIndex, max(64 << 10, output.writerIndex)))
                    continue
                }
                output.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { pointer -> Int in
                    stream.next_out = pointer.bindMemory(to: Bytef.self).baseAddress
                    stream.avail_out = uInt(room)
                    result = CZlib.inflate(&stream, Z_NO_FLUSH)
                    return room - Int(stream.avail_out)
                }
                switch result {
                case Z_STREAM_END:
                    // Bytes after the compressed stream are not part of any body this request can have.
                    return stream.avail_in == 0 ? .complete : .trailing
                case Z_OK:
                    continue
                case Z_BUF_ERROR where stream.avail_in == 0:
                    return .truncated
                case Z_BUF_ERROR:
                    continue  // the output was full: the loop makes room, or stops at the limit
                default:
                    return .failed(result)
                }
            }
        }
        switch outcome {
        case .complete:
            return output
        case .tooLarge:
            throw KernelHTTPError(413, "Decompressed data size exceeds the maximum allowed value (\(limit) bytes, \(expansionLimit.setting))")
        case .truncated:
            throw KernelHTTPError(400, "failed to decompress the \(rawValue) request body: it ends before the compressed data does")
        case .trailing:
            throw KernelHTTPError(400, "failed to decompress the \(rawValue) request body: there are bytes after the compressed data")
        case .failed(let code):
            let reason = stream.msg.map { String(cString: $0) } ?? (code == Z_NEED_DICT ? "it needs a preset dictionary" : "the data is not \(rawValue)")
            throw KernelHTTPError(400, "failed to decompress the \(rawValue) request body: \(reason)")
        }
    }

    /// `body` compressed with this encoding (gzip: the gzip format; deflate: zlib's, as Triton writes them); nil
    /// for identity, or when zlib fails (the response then goes uncompressed).
    func compress(_ body: ByteBuffer) -> ByteBuffer? {
        guard self != .identity else { return nil }
        var stream = z_stream()
        guard deflateInit2_(&stream, Z_DEFAULT_COMPRESSION, Z_DEFLATED, self == .gzip ? 15 + 16 : 15, 8,
                            Z_DEFAULT_STRATEGY, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            return nil
        }
        defer { deflateEnd(&stream) }
        let bound = Int(deflateBound(&stream, uLong(body.readableBytes)))
        var output = ByteBufferAllocator().buffer(capacity: bound)
        let finished: Bool = body.withUnsafeReadableBytes { input in
            stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
            stream.avail_in = uInt(input.count)
            var result = Z_OK
            output.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { pointer -> Int in
                stream.next_out = pointer.bindMemory(to: Bytef.self).baseAddress
                stream.avail_out = uInt(pointer.count)
                result = CZlib.deflate(&stream, Z_FINISH)
                return pointer.count - Int(stream.avail_out)
            }
            return result == Z_STREAM_END
        }
        // deflateBound is an upper bound for one Z_FINISH call: a shortfall would be zlib's error.
        return finished ? output : nil
    }
}

private extension String {
    var trimmingSpaces: String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { $0 != " " && $0 != "\t" }) else { return "" }
        let last = scalars.lastIndex(where: { $0 != " " && $0 != "\t" })!
        return String(scalars[first...last])
    }
}
