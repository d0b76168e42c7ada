import KernelCore
import KernelUpstream
import NIOCore

/// Why a uwsgi application's answer is unusable (answered with 502, nginx's `invalid_header`).
public enum UWSGIResponseError: Error, Sendable, Hashable, CustomStringConvertible {
    case invalidStatusLine(String)
    case invalidHeader(String)
    case invalidStatus(String)
    case headTooLarge(limit: Int)
    case invalidContentLength(String)
    /// Two `Content-Length` lines that disagree (nginx 1.23+'s words for it).
    case conflictingContentLength(String, previous: String)
    case unsupportedTransferEncoding(String)

    public var description: String {
        switch self {
        case .invalidStatusLine(let line): return "upstream sent invalid status line: \"\(escapeForLog(line))\""
        case .invalidHeader(let line): return "upstream sent invalid header: \"\(escapeForLog(line))\""
        case .invalidStatus(let value): return "upstream sent invalid status \"\(escapeForLog(value))\""
        case .headTooLarge(let limit): return "upstream sent too big header (over \(limit) bytes)"
        case .invalidContentLength(let value): return "upstream sent invalid \"Content-Length\" header: \"\(escapeForLog(value))\""
        case .conflictingContentLength(let value, let previous):
            return "upstream sent duplicate header line: \"Content-Length: \(escapeForLog(value))\", previous value: \"Content-Length: \(escapeForLog(previous))\""
        case .unsupportedTransferEncoding(let value): return "upstream sent unsupported \"Transfer-Encoding\": \"\(escapeForLog(value))\""
        }
    }
}

/// Parses the head a uwsgi application server writes back (nginx's `ngx_http_uwsgi_process_header`): an HTTP/1.x
/// status line, header lines and an empty line; the body that follows is delimited by `Content-Length` or by the
/// connection's end (the upstream engine reads it).
///
/// As nginx does, an answer that does not start with a status line is read as CGI-style headers: its status comes
/// from a `Status` header, else 302 with a `Location`, else 200. Lines may end in CRLF or LF. Interim `1xx` heads
/// are skipped. The head (with any interim heads before it) may not exceed `maxHeadSize` (nginx
/// `uwsgi_buffer_size`).
public struct UWSGIResponseParser: UpstreamResponseParser, Sendable {
    public let maxHeadSize: Int
    private var headBytes = 0
    private var statusLine: (status: Int, reason: String?)?
    private var sawFirstLine = false
    private var headers = HeaderFields()

    public init(maxHeadSize: Int = 4096) {
        self.maxHeadSize = maxHeadSize
    }

    public mutating func parseHead(_ buffer: inout ByteBuffer) throws -> UpstreamResponseHead? {
        while true {
            let view = buffer.readableBytesView
            guard let newline = view.firstIndex(of: UInt8(ascii: "\n")) else {
                if headBytes + buffer.readableBytes > maxHeadSize { throw UWSGIResponseError.headTooLarge(limit: maxHeadSize) }
                return nil
            }
            let lineLength = newline - view.startIndex
            headBytes += lineLength + 1
            guard headBytes <= maxHeadSize else { throw UWSGIResponseError.headTooLarge(limit: maxHeadSize) }
            var line = buffer.readSlice(length: lineLength)!
            buffer.moveReaderIndex(forwardBy: 1)
            if line.readableBytes > 0, line.getInteger(at: line.writerIndex - 1, as: UInt8.self) == UInt8(ascii: "\r") {
                line.moveWriterIndex(to: line.writerIndex - 1)
            }
            if !sawFirstLine {
                sawFirstLine = true
                if line.readableBytesView.starts(with: "HTTP/".utf8) {
                    statusLine = try UWSGIResponseParser.parseStatusLine(decodeHeaderText(line))
                    continue
                }
            }
            if line.readableBytes == 0 {
                if let head = try finishHead() { return head }
                continue
            }
            let (name, value, undecoded) = try UWSGIResponseParser.parseHeaderField(line)
            headers.add(name, value)
            if let undecoded { headers.keep(undecoded: undecoded, at: headers.count - 1) }
        }
    }

    /// The final head, or nil after an interim one (whose lines are dropped; the final head is read next).
    private mutating func finishHead() throws -> UpstreamResponseHead? {
        var status: Int
        var reason: String?
        if let statusLine {
            (status, reason) = statusLine
        } else if let value = headers["Status"] {
            // CGI style: `Status: 404 Not Found`.
            let digits = value.prefix(3)
            guard digits.count == 3, digits.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let code = Int(digits), code >= 100 else {
                throw UWSGIResponseError.invalidStatus(value)
            }
            status = code
            let rest = value.dropFirst(3).drop { $0 == " " }
            reason = rest.isEmpty ? nil : String(rest)
        } else if headers.contains("Location") {
            status = 302
        } else {
            status = 200
        }
        if (100..<200).contains(status) {
            // An interim answer (100 Continue, 103 Early Hints, and 101 too: the kernel never asks for an upgrade)
            // is no answer to pass on: its headers are dropped and the final answer is read next. Interim and
            // final heads count together against `maxHeadSize`, so an endless run of them ends in an error.
            headers = HeaderFields()
            statusLine = nil
            sawFirstLine = false
            return nil
        }
        headers.remove("Status")
        if let encoding = headers["Transfer-Encoding"], !encoding.equalsCaseInsensitive("identity") {
            throw UWSGIResponseError.unsupportedTransferEncoding(encoding)
        }
        var length: (value: Int, text: String)?
        for value in headers.values("Content-Length") {
            guard let parsed = ContentLength.parse(value) else {
                throw UWSGIResponseError.invalidContentLength(value)
            }
            if let length, length.value != parsed {
                throw UWSGIResponseError.conflictingContentLength(value, previous: length.text)
            }
            length = (parsed, value)
        }
        defer { headers = HeaderFields() }
        return UpstreamResponseHead(status: status, reason: reason, headers: headers,
                                    framing: length.map { .length(Int64($0.value)) } ?? .untilClose)
    }

    /// `HTTP/1.1 200 OK` → (200, "OK"); the reason may be empty or absent.
    static func parseStatusLine(_ line: String) throws -> (Int, String?) {
        let bytes = Array(line.utf8)
        // "HTTP/d.d ddd"
        guard bytes.count >= 12, bytes[6] == UInt8(ascii: "."), isDigit(bytes[5]), isDigit(bytes[7]),
              bytes[8] == UInt8(ascii: " "), isDigit(bytes[9]), isDigit(bytes[10]), isDigit(bytes[11]),
              bytes.count == 12 || bytes[12] == UInt8(ascii: " ") else {
            throw UWSGIResponseError.invalidStatusLine(line)
        }
        let status = Int(bytes[9] - 48) * 100 + Int(bytes[10] - 48) * 10 + Int(bytes[11] - 48)
        guard status >= 100 else { throw UWSGIResponseError.invalidStatusLine(line) }
        let reason = bytes.count > 13 ? String(decoding: bytes[13...], as: UTF8.self) : nil
        return (status, reason)
    }

    /// `Name: value` with a token name; surrounding spaces of the value are dropped. Split on the line's bytes,
    /// before any text is made: the name is token bytes (ASCII) and only the value goes through
    /// `decodeHeaderText`, as the whole line did (the bytes around it are ASCII, so its text is the same).
    static func parseHeaderLine(_ line: ByteBuffer) throws -> (String, String) {
        let (name, value, _) = try parseHeaderField(line)
        return (name, value)
    }

    /// A header line's name and value, and the value's bytes when they are no UTF-8 (the text is then their
    /// ISO-8859-1 reading, and the bytes are what a client is sent: `HeaderFields.undecoded`).
    static func parseHeaderField(_ line: ByteBuffer) throws -> (String, String, [UInt8]?) {
        let bytes = line.readableBytesView
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")), colon > bytes.startIndex,
              bytes[..<colon].allSatisfy(HTTPToken.isTokenByte) else {
            throw UWSGIResponseError.invalidHeader(decodeHeaderText(line))
        }
        func isBlank(_ byte: UInt8) -> Bool { byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        var start = colon + 1
        var end = bytes.endIndex
        while start < end, isBlank(bytes[start]) { start += 1 }
        while end > start, isBlank(bytes[end - 1]) { end -= 1 }
        guard !bytes[start..<end].contains(0) else { throw UWSGIResponseError.invalidHeader(decodeHeaderText(line)) }
        let name = decodeHeaderText(line.getSlice(at: bytes.startIndex, length: colon - bytes.startIndex)!)
        let valueBytes = line.getSlice(at: start, length: end - start)!
        let value = decodeHeaderText(valueBytes)
        // Valid UTF-8 is its own text, byte for byte; the ISO-8859-1 reading of anything else writes each byte
        // above 0x7F as two, so the lengths differ exactly when the text is not the bytes.
        let undecoded = value.utf8.count == valueBytes.readableBytes ? nil : Array(valueBytes.readableBytesView)
        return (name, value, undecoded)
    }
}

private func isDigit(_ byte: UInt8) -> Bool { byte >= 48 && byte <= 57 }

