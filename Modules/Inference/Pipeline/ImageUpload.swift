import KernelCore
import NIOCore

/// An uploaded image as it arrived: the raw body, a `multipart/form-data` form with a `file` field, or JSON
/// `{"image": "<base64>"}`. The image bytes are taken out on the pipeline's thread pool, never on an event loop.
public struct ImageUpload: Sendable {
    public var body: ByteBuffer
    /// The request's `Content-Type`, if any.
    public var contentType: String?

    /// Parts a form may have before it is refused (the image is one).
    static let maxParts = 16

    public init(body: ByteBuffer, contentType: String?) {
        self.body = body
        self.contentType = contentType
    }

    /// The image's bytes; 400 when the form or the JSON is malformed or holds no image.
    public func imageBytes() throws -> ByteBuffer {
        let mediaType = contentType.map { MediaType($0) }
        switch mediaType?.type {
        case "multipart/form-data":
            guard let boundary = mediaType?.parameters["boundary"], !boundary.isEmpty, boundary.utf8.count <= 70 else {
                throw KernelHTTPError(400, "multipart/form-data without a valid boundary parameter")
            }
            return try ImageUpload.formFile(body, boundary: boundary)
        case "application/json":
            return try ImageUpload.jsonImage(body)
        default:
            return body
        }
    }

    /// The `file` part of a multipart/form-data body (RFC 7578): parts are split at `--boundary` lines, each part's
    /// headers end at an empty line; the part whose Content-Disposition names `file` is the image.
    static func formFile(_ body: ByteBuffer, boundary: String) throws -> ByteBuffer {
        let bytes = body.readableBytesView
        let delimiter = Array("--\(boundary)".utf8)
        guard var position = find(delimiter, in: bytes, from: bytes.startIndex) else {
            throw KernelHTTPError(400, "the multipart/form-data body has no part (boundary not found)")
        }
        var parts = 0
        while true {
            position += delimiter.count
            // "--" after a delimiter ends the form.
            if bytes.distance(from: position, to: bytes.endIndex) >= 2, bytes[position] == UInt8(ascii: "-"),
               bytes[position + 1] == UInt8(ascii: "-") { break }
            guard let lineEnd = find([13, 10], in: bytes, from: position) else { break }
            let headerStart = lineEnd + 2
            guard let headerEnd = find([13, 10, 13, 10], in: bytes, from: headerStart) else {
                throw KernelHTTPError(400, "a multipart/form-data part has no end of its headers")
            }
            let contentStart = headerEnd + 4
            guard let next = find([13, 10] + delimiter, in: bytes, from: contentStart) else {
                throw KernelHTTPError(400, "a multipart/form-data part is not closed by its boundary")
            }
            parts += 1
            guard parts <= maxParts else { throw KernelHTTPError(400, "the form has more than \(maxParts) parts") }
            let headers = String(decoding: bytes[headerStart..<headerEnd], as: UTF8.self)
            if partName(headers) == "file" {
                return body.getSlice(at: body.readerIndex + bytes.distance(from: bytes.startIndex, to: contentStart),
                                     length: bytes.distance(from: contentStart, to: next))!
            }
            position = next + 2
        }
        throw KernelHTTPError(400, "the form has no \"file\" field")
    }

    /// The `name` parameter of a part's Content-Disposition header.
    static func partName(_ headers: String) -> String? {
        for line in headers.split(separator: "\r\n") {
            let pieces = line.split(separator: ":", maxSplits: 1)
            guard pieces.count == 2, pieces[0].lowercased() == "content-disposition" else { continue }
            return MediaType(String(pieces[1])).parameters["name"]
        }
        return nil
    }

    static func find(_ needle: [UInt8], in bytes: ByteBufferView, from start: ByteBufferView.Index) -> ByteBufferView.Index? {
        guard let first = needle.first, bytes.distance(from: start, to: bytes.endIndex) >= needle.count else { return nil }
        var index = start
        let last = bytes.index(bytes.endIndex, offsetBy: -needle.count)
        while index <= last {
            if bytes[index] == first, bytes[index..<index + needle.count].elementsEqual(needle) { return index }
            index += 1
        }
        return nil
    }

    /// `{"image": "<base64>"}`.
    static func jsonImage(_ body: ByteBuffer) throws -> ByteBuffer {
        let value: JSONValue
        do { value = try JSONReader.parse(body) } catch {
            throw KernelHTTPError(400, "failed to parse the request JSON: \(error)")
        }
        guard let text = value["image"]?.stringValue else {
            throw KernelHTTPError(400, "the request JSON needs \"image\": the image in base64")
        }
        guard let decoded = Base64.decode(text) else {
            throw KernelHTTPError(400, "\"image\" is not valid base64")
        }
        var buffer = ByteBufferAllocator().buffer(capacity: decoded.count)
        buffer.writeBytes(decoded)
        return buffer
    }
}

/// A media type and its parameters (`multipart/form-data; boundary=x`), names lower-cased, quotes removed.
/// A quoted value is read to its closing quote (RFC 9110 5.6.4, with `\\` escapes), so a `;` or `name=` inside
/// one (`filename="a; name=file"`) is part of that value, not a parameter of its own.
struct MediaType {
    var type: String
    var parameters: [String: String] = [:]

    init(_ text: String) {
        let bytes = Array(text.utf8)
        var index = 0
        func skip(_ isSkipped: (UInt8) -> Bool) { while index < bytes.count, isSkipped(bytes[index]) { index += 1 } }
        func isSpace(_ byte: UInt8) -> Bool { byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        skip { $0 != UInt8(ascii: ";") }
        type = Substring(String(decoding: bytes[0..<index], as: UTF8.self)).trimmingSpaces.lowercased()
        while index < bytes.count {
            index += 1  // past the ';'
            let nameStart = index
            skip { $0 != UInt8(ascii: "=") && $0 != UInt8(ascii: ";") }
            let name = Substring(String(decoding: bytes[nameStart..<index], as: UTF8.self)).trimmingSpaces.lowercased()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "=") else { continue }
            index += 1
            skip(isSpace)
            var value: [UInt8] = []
            if index < bytes.count, bytes[index] == UInt8(ascii: "\"") {
                index += 1
                while index < bytes.count, bytes[index] != UInt8(ascii: "\"") {
                    if bytes[index] == UInt8(ascii: "\\"), index + 1 < bytes.count { index += 1 }
                    value.append(bytes[index])
                    index += 1
                }
                skip { $0 != UInt8(ascii: ";") }
            } else {
                let valueStart = index
                skip { $0 != UInt8(ascii: ";") }
                value = Array(bytes[valueStart..<index])
                while let last = value.last, isSpace(last) { value.removeLast() }
            }
            // A repeated parameter's last value counts, as werkzeug's parse_options_header (Flask) reads it.
            if !name.isEmpty { parameters[name] = String(decoding: value, as: UTF8.self) }
        }
    }
}

extension Substring {
    var trimmingSpaces: String {
        String(drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
    }
}

/// Standard base64 (RFC 4648 section 4), padding optional. Line breaks and blanks are skipped (MIME's base64,
/// RFC 2045, as Python's `base64.encodebytes` writes it, breaks lines every 76 characters), and a data URL's
/// `data:<type>;base64,` prefix (what a browser's `FileReader.readAsDataURL` gives) is dropped; any other
/// character is an error.
enum Base64 {
    static func decode(_ text: String) -> [UInt8]? {
        var output: [UInt8] = []
        output.reserveCapacity(text.utf8.count / 4 * 3)
        var accumulator: UInt32 = 0
        var bits = 0
        var padding = 0
        var encoded = text.utf8[...]
        if encoded.starts(with: "data:".utf8), let comma = encoded.firstIndex(of: UInt8(ascii: ",")) {
            guard encoded[..<comma].reversed().starts(with: ";base64".utf8.reversed()) else { return nil }
            encoded = encoded[encoded.index(after: comma)...]
        }
        for byte in encoded {
            let value: UInt8
            switch byte {
            case UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: " "), UInt8(ascii: "\t"): continue
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = byte - UInt8(ascii: "A")
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = byte - UInt8(ascii: "a") + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = byte - UInt8(ascii: "0") + 52
            case UInt8(ascii: "+"): value = 62
            case UInt8(ascii: "/"): value = 63
            case UInt8(ascii: "="): padding += 1; continue
            default: return nil
            }
            guard padding == 0 else { return nil }
            accumulator = (accumulator << 6) | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                output.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
            }
        }
        guard padding <= 2, bits < 6 else { return nil }
        return output
    }
}
