import KernelCore
import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a request was refused before a handler saw it: the status sent, the error-log text and the short text of
/// the JSON error body.
struct HTTPRequestError: Error, Equatable {
    var status: Int
    /// nginx-style log text, e.g. `client sent invalid header line`.
    var logMessage: String
    /// The text of `{"error": ...}`.
    var clientMessage: String

    static func badRequest(_ log: String, _ client: String = "bad request") -> HTTPRequestError {
        HTTPRequestError(status: 400, logMessage: log, clientMessage: client)
    }
    static let invalidRequestLine = badRequest("client sent invalid request line", "invalid request line")
    static let invalidHeaderLine = badRequest("client sent invalid header line", "invalid header line")
    static let invalidTarget = badRequest("client sent invalid request target", "invalid request target")
    static let invalidChunkedBody = badRequest("client sent invalid chunked body", "invalid chunked body")
    static let requestLineTooLong = HTTPRequestError(status: 414, logMessage: "client sent too long URI",
                                                     clientMessage: "request line too long")
    static let headerLineTooLong = HTTPRequestError(status: 431, logMessage: "client sent too long header line",
                                                    clientMessage: "request header line too large")
    static let headTooLarge = HTTPRequestError(status: 431, logMessage: "client sent too large request header",
                                               clientMessage: "request header fields too large")
    static let unsupportedVersion = HTTPRequestError(status: 505, logMessage: "client sent unsupported HTTP version",
                                                     clientMessage: "HTTP version not supported")
    static let unknownTransferEncoding = HTTPRequestError(status: 501,
                                                          logMessage: "client sent unknown \"Transfer-Encoding\"",
                                                          clientMessage: "unsupported transfer encoding")
    static let timedOut = HTTPRequestError(status: 408, logMessage: "client timed out", clientMessage: "request timed out")
    static let invalidMethod = badRequest("client sent invalid method", "invalid method")
    static let traceNotAllowed = HTTPRequestError(status: 405, logMessage: "client sent TRACE method",
                                                  clientMessage: "method not allowed")
}

/// Byte classes of RFC 9110/9112.
enum HTTPByte {
    static let cr: UInt8 = 13
    static let lf: UInt8 = 10
    static let space: UInt8 = 32
    static let tab: UInt8 = 9
    static let colon: UInt8 = 58

    /// `tchar`: the characters of methods and header names (the core's one rule).
    @inline(__always)
    static func isToken(_ byte: UInt8) -> Bool { HTTPToken.isTokenByte(byte) }
    /// A byte of a method as nginx reads one: `A`-`Z`, `_`, `-`.
    @inline(__always)
    static func isMethod(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")) || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
    }

    /// A byte allowed in a header value: HTAB, visible ASCII, space and obs-text; never CR, LF, NUL or DEL.
    @inline(__always)
    static func isFieldValue(_ byte: UInt8) -> Bool { byte == tab || (byte >= 0x20 && byte != 0x7F) }

    /// A byte allowed in a request target: anything visible (raw UTF-8 is tolerated, as nginx does).
    @inline(__always)
    static func isTarget(_ byte: UInt8) -> Bool { byte > 0x20 && byte != 0x7F }

    @inline(__always)
    static func lower(_ byte: UInt8) -> UInt8 { (byte >= 0x41 && byte <= 0x5A) ? byte | 0x20 : byte }

    /// The bytes nginx treats as valid in a header name: ASCII letters, digits and `-` (`_` only with
    /// `underscores_in_headers`). Other bytes make a name invalid, except controls and space, which refuse the line.
    @inline(__always)
    static func isPlainNameByte(_ byte: UInt8) -> Bool {
        switch byte {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x2D: return true
        default: return false
        }
    }
}

/// What nginx does with unusual header names (`underscores_in_headers`, `ignore_invalid_headers`).
///
/// A name is *invalid* when it holds a byte other than ASCII letters, digits and `-` (or `_` while underscores are
/// not allowed): other token characters (`.`, `!`, ...), separators and bytes of 0x80 and above. An invalid name
/// is dropped with an info line when `ignoreInvalid` is on (the default) and kept as it is otherwise. A name that
/// starts with a colon, or holds a control byte, DEL or a space, is no header line at all: 400 either way.
struct HTTPHeaderNamePolicy: Sendable, Equatable {
    /// nginx `underscores_in_headers` (default off): whether `_` is valid in a header name.
    var underscoresAllowed = false
    /// nginx `ignore_invalid_headers` (default on): whether lines with invalid names are dropped.
    var ignoreInvalid = true
}

/// Finds the end of a request head while bytes arrive, enforcing the nginx size limits on the way, so that a
/// slowly sent head is scanned once (not once per read) and an oversized one is refused as soon as it shows.
///
/// Limits (`large_client_header_buffers NUMBER SIZE`): a request line that does not fit in SIZE bytes with its
/// line ending is 414; such a header line, or a whole head longer than NUMBER × SIZE, is 431. The ending counts,
/// as in nginx, whose buffer of SIZE bytes holds the line and its CRLF: 8190 bytes of a line with CRLF fit in 8k. Empty lines before the request line are
/// skipped (RFC 9112 §2.2) but count towards the head size.
struct HTTPHeadScanner {
    let maxLineLength: Int
    let maxHeadLength: Int
    /// Bytes examined so far.
    private(set) var position = 0
    private var lineStart = 0
    private var headStart = 0
    private var lines = 0

    enum Outcome: Equatable {
        case needMore
        /// The head is `start..<end` (`end` is after the empty line).
        case complete(start: Int, end: Int)
        case failure(HTTPRequestError)
    }

    init(maxLineLength: Int, maxHeadLength: Int) {
        self.maxLineLength = maxLineLength
        self.maxHeadLength = maxHeadLength
    }

    /// True when nothing of a head has been seen (only complete empty lines, if anything).
    var hasSeenRequestBytes: Bool { position > 0 }

    mutating func reset() {
        position = 0
        lineStart = 0
        headStart = 0
        lines = 0
    }

    /// Continues scanning `bytes` (the same unconsumed input as before, possibly longer).
    mutating func scan(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        let count = bytes.count
        guard let base = bytes.baseAddress, count > position else { return checkPartial(count) }
        while position < count {
            guard let found = memchr(base + position, Int32(HTTPByte.lf), count - position) else {
                position = count
                break
            }
            let lf = base.distance(to: UnsafeRawPointer(found))
            var lineEnd = lf
            if lineEnd > lineStart, bytes[lineEnd - 1] == HTTPByte.cr { lineEnd -= 1 }
            if let failure = bareCarriageReturn(base, before: lineEnd) { return failure }
            let length = lineEnd - lineStart
            position = lf + 1
            if length == 0 {
                if lines == 0 {
                    // An empty line before the request line.
                    headStart = position
                    lineStart = position
                    if position > maxHeadLength { return .failure(.headTooLarge) }
                    continue
                }
                return .complete(start: headStart, end: position)
            }
            if position - lineStart > maxLineLength {
                // What the limit's worth of bytes shows decides, as when the line arrives in pieces (below).
                if lines == 0, !HTTPRequestHeadParser.requestLinePrefixIsPlausible(bytes, lineStart..<lineStart + maxLineLength) {
                    return .failure(.invalidRequestLine)
                }
                // The limit its bytes reach first: the whole head's when the line starts near its end. Fed in
                // pieces, the line is over at `lineStart + maxLineLength` bytes, the head at `headStart +
                // maxHeadLength + 2` (below): the head's is named when it comes no later.
                if lines > 0, lineStart + maxLineLength > headStart + maxHeadLength + 1 { return .failure(.headTooLarge) }
                return .failure(lines == 0 ? .requestLineTooLong : .headerLineTooLong)
            }
            if lines == 0, case .failure(let error) = HTTPRequestHeadParser.checkRequestLine(bytes, lineStart..<lineEnd) {
                return .failure(error)
            }
            lines += 1
            lineStart = position
            if position - headStart > maxHeadLength { return .failure(.headTooLarge) }
        }
        // A CR at the very end may still be followed by its LF.
        if let failure = bareCarriageReturn(base, before: count - 1) { return failure }
        // Only the first `maxLineLength` bytes are judged, so that the answer does not depend on how the line is cut.
        if lines == 0, !HTTPRequestHeadParser.requestLinePrefixIsPlausible(bytes, lineStart..<min(count, lineStart + maxLineLength)) {
            return .failure(.invalidRequestLine)
        }
        return checkPartial(count)
    }

    /// A CR of the current line before `end` that the next byte shows is no line ending: nginx refuses the request
    /// at that byte (400) rather than wait for an LF that would not make the line valid. Only a CR the size limits
    /// have not been passed by yet counts (one within the line's first `maxLineLength` - 1 bytes and the head's
    /// first `maxHeadLength` + 1), so that the answer is the same however the bytes arrive: fed in pieces, the CR
    /// is judged when its next byte arrives, before a limit that byte does not pass.
    private func bareCarriageReturn(_ base: UnsafeRawPointer, before end: Int) -> Outcome? {
        let last = min(end, lineStart + maxLineLength - 1, headStart + maxHeadLength + 1)
        // `end` is before the line's own ending and no LF comes before it: a CR before it has a next byte, not an LF.
        guard last > lineStart, memchr(base + lineStart, Int32(HTTPByte.cr), last - lineStart) != nil else { return nil }
        return .failure(lines == 0 ? .invalidRequestLine : .invalidHeaderLine)
    }

    private func checkPartial(_ count: Int) -> Outcome {
        // A line without its LF yet is over once its bytes leave no room for the LF. The head's limit does not
        // count the last line's ending: one byte more, a CR at the end may begin it.
        let lineOver = count - lineStart >= maxLineLength
        let headOver = count - headStart > maxHeadLength + 1
        guard lineOver || headOver else { return .needMore }
        if lines == 0 { return .failure(.requestLineTooLong) }
        // Past both: the limit the bytes reached first, whatever the size of the read that passed them.
        if headOver, !lineOver || headStart + maxHeadLength + 1 < lineStart + maxLineLength { return .failure(.headTooLarge) }
        return .failure(.headerLineTooLong)
    }
}

/// A parsed and validated request head.
struct HTTPRequestHead {
    var method: String
    var target: String
    var version: ProtocolVersion
    var headers: HeaderFields
    var contentLength: Int?
    var chunked: Bool
    /// `Connection: close` was sent.
    var connectionClose: Bool
    /// `Connection: keep-alive` was sent.
    var connectionKeepAlive: Bool
    /// `Expect: 100-continue` was sent.
    var expectContinue: Bool
    /// Header lines dropped for an invalid name (`ignore_invalid_headers`), as `name: value`, for the error log.
    var ignoredHeaderLines: [String] = []

    /// Whether the client allows the connection to stay open after this request.
    var clientWantsKeepAlive: Bool {
        if connectionClose { return false }
        return version == .http1_1 || connectionKeepAlive
    }

}

/// Parses a complete request head strictly (RFC 9112 plus nginx's checks): the request line, header field
/// syntax (no obs-fold, no bare CR, no whitespace before the colon), and the framing headers.
enum HTTPRequestHeadParser {
    private static let contentLength: [UInt8] = Array("content-length".utf8)
    private static let transferEncoding: [UInt8] = Array("transfer-encoding".utf8)
    private static let host: [UInt8] = Array("host".utf8)
    private static let connection: [UInt8] = Array("connection".utf8)
    private static let expect: [UInt8] = Array("expect".utf8)
    private static let close: [UInt8] = Array("close".utf8)
    private static let keepAlive: [UInt8] = Array("keep-alive".utf8)
    private static let continueExpectation: [UInt8] = Array("100-continue".utf8)
    private static let chunked: [UInt8] = Array("chunked".utf8)

    /// `bytes` is the head including its final empty line; `names` decides what happens to unusual header names.
    static func parse(_ bytes: UnsafeRawBufferPointer,
                      names: HTTPHeaderNamePolicy = HTTPHeaderNamePolicy()) -> Result<HTTPRequestHead, HTTPRequestError> {
        guard let base = bytes.baseAddress else { return .failure(.invalidRequestLine) }
        let count = bytes.count
        var position = 0

        /// The next line without its line ending, or nil at the end.
        func nextLine() -> Range<Int>? {
            guard position < count, let found = memchr(base + position, Int32(HTTPByte.lf), count - position) else {
                return nil
            }
            let lf = base.distance(to: UnsafeRawPointer(found))
            var end = lf
            if end > position, bytes[end - 1] == HTTPByte.cr { end -= 1 }
            defer { position = lf + 1 }
            return position..<end
        }

        guard let requestLine = nextLine() else { return .failure(.invalidRequestLine) }
        var head: HTTPRequestHead
        switch parseRequestLine(bytes, requestLine) {
        case .success(let parsed): head = parsed
        case .failure(let error): return .failure(error)
        }

        var fields: [HeaderFields.Element] = []
        fields.reserveCapacity(8)
        /// nil without a Transfer-Encoding header; else whether it is exactly `chunked`.
        var transferEncodingIsChunked: Bool?
        var sawHost = false
        /// The fields whose values are no UTF-8, with their bytes (`HeaderFields.undecoded`).
        var undecoded: [(index: Int, bytes: [UInt8])] = []
        while let line = nextLine(), !line.isEmpty {
            guard let field = fieldLine(bytes, line, names: names) else { return .failure(.invalidHeaderLine) }
            let nameRange = field.name
            let valueRange = field.value
            if field.invalidName, names.ignoreInvalid {
                // Dropped before anything reads it: `X_Forwarded_For` never stands in for `X-Forwarded-For`, nor
                // `Content_Length` for a length.
                head.ignoredHeaderLines.append(string(bytes, line.lowerBound..<valueRange.upperBound))
                continue
            }
            let name = string(bytes, nameRange)
            let decoded = HeaderValueText.decode(UnsafeRawBufferPointer(rebasing: bytes[valueRange]))
            let value = decoded.text
            if let raw = decoded.undecoded { undecoded.append((fields.count, raw)) }

            if equalsLowercased(bytes, nameRange, contentLength) {
                guard head.contentLength == nil else {
                    return .failure(.badRequest("client sent duplicate header line: \"\(name): \(value)\"", "duplicate Content-Length"))
                }
                guard let length = ContentLength.parse(UnsafeRawBufferPointer(rebasing: bytes[valueRange])) else {
                    return .failure(.badRequest("client sent invalid \"Content-Length\" header", "invalid Content-Length"))
                }
                head.contentLength = length
            } else if equalsLowercased(bytes, nameRange, transferEncoding) {
                guard transferEncodingIsChunked == nil else {
                    return .failure(.badRequest("client sent duplicate header line: \"\(name): \(value)\"", "duplicate Transfer-Encoding"))
                }
                transferEncodingIsChunked = equalsLowercased(bytes, valueRange, chunked)
            } else if equalsLowercased(bytes, nameRange, host) {
                guard !sawHost else {
                    return .failure(.badRequest("client sent duplicate host header: \"\(name): \(value)\"", "duplicate Host"))
                }
                // A host is a name, an address or `[v6]`, with an optional port: never empty (nginx refuses it), and
                // the path separator never belongs in it (on Linux nginx's is `/` alone: a `\` passes, as there).
                if valueRange.isEmpty { return .failure(.badRequest("client sent invalid host header", "invalid Host header")) }
                for i in valueRange where bytes[i] == UInt8(ascii: "/") || bytes[i] == HTTPByte.space || bytes[i] == HTTPByte.tab {
                    return .failure(.badRequest("client sent invalid host header", "invalid Host header"))
                }
                if !isValidHostName(bytes, valueRange) {
                    return .failure(.badRequest("client sent invalid host header", "invalid Host header"))
                }
                sawHost = true
            } else if equalsLowercased(bytes, nameRange, connection) {
                // A comma-separated list of options; only `close` and `keep-alive` matter here.
                var tokenStart = valueRange.lowerBound
                for i in valueRange.lowerBound...valueRange.upperBound where i == valueRange.upperBound || bytes[i] == UInt8(ascii: ",") {
                    var start = tokenStart, end = i
                    while start < end, bytes[start] == HTTPByte.space || bytes[start] == HTTPByte.tab { start += 1 }
                    while end > start, bytes[end - 1] == HTTPByte.space || bytes[end - 1] == HTTPByte.tab { end -= 1 }
                    if equalsLowercased(bytes, start..<end, close) { head.connectionClose = true }
                    if equalsLowercased(bytes, start..<end, keepAlive) { head.connectionKeepAlive = true }
                    tokenStart = i + 1
                }
            } else if equalsLowercased(bytes, nameRange, expect) {
                if equalsLowercased(bytes, valueRange, continueExpectation) { head.expectContinue = true }
            }
            fields.append((name: name, value: value))
        }
        head.headers = HeaderFields(fields)
        for (index, raw) in undecoded { head.headers.keep(undecoded: raw, at: index) }

        if head.version == .http1_1, !sawHost {
            return .failure(.badRequest("client sent HTTP/1.1 request without \"Host\" header", "missing Host header"))
        }
        if let isChunked = transferEncodingIsChunked {
            if head.version == .http1_0 {
                return .failure(.badRequest("client sent HTTP/1.0 request with \"Transfer-Encoding\" header",
                                            "Transfer-Encoding in an HTTP/1.0 request"))
            }
            if head.contentLength != nil {
                return .failure(.badRequest("client sent \"Content-Length\" and \"Transfer-Encoding\" headers at the same time",
                                            "Content-Length with Transfer-Encoding"))
            }
            guard isChunked else {
                return .failure(.unknownTransferEncoding)
            }
            head.chunked = true
        }
        // nginx answers TRACE 405 once the head is read, whatever the location (RFC 9110 leaves TRACE to the
        // server; echoing a request back lets a page read cookies it cannot see).
        if head.method == "TRACE" { return .failure(.traceNotAllowed) }
        return .success(head)
    }

    /// Where the name and the value of one header field line are, and whether the name is one nginx calls
    /// invalid (a byte other than letters, digits and `-`, or `_` unless allowed).
    struct FieldLine {
        var name: Range<Int>
        /// Without the whitespace around it.
        var value: Range<Int>
        var invalidName: Bool
    }

    /// One header field line (without its line ending) checked as strictly as RFC 9112 asks: no obs-fold, no
    /// whitespace or control byte in or after the name, a colon, a value of field-value bytes only. Nil when the
    /// line is no header line at all. The request parser and the `proxy_pass` response parser both read their
    /// header lines with it, so that an edge is as strict with its upstreams as with its clients.
    static func fieldLine(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>, names: HTTPHeaderNamePolicy) -> FieldLine? {
        guard !line.isEmpty else { return nil }
        let first = bytes[line.lowerBound]
        // obs-fold (a continuation line) is rejected, as RFC 9112 §5.2 allows.
        if first == HTTPByte.space || first == HTTPByte.tab { return nil }
        // The name as nginx's ngx_http_parse_header_line reads it: up to the first colon; controls, DEL and
        // spaces refuse the line (no whitespace before the colon, RFC 9112 5.1), other unusual bytes only make
        // the name invalid. A line without a colon is refused too (nginx would take it as a name with an
        // empty value).
        var index = line.lowerBound
        var invalidName = false
        while index < line.upperBound {
            let byte = bytes[index]
            if HTTPByte.isPlainNameByte(byte) {
                index += 1
                continue
            }
            if byte == HTTPByte.colon { break }
            if byte <= HTTPByte.space || byte == 0x7F { return nil }
            if byte != UInt8(ascii: "_") || !names.underscoresAllowed { invalidName = true }
            index += 1
        }
        guard index > line.lowerBound, index < line.upperBound else { return nil }
        let nameRange = line.lowerBound..<index
        index += 1
        while index < line.upperBound, bytes[index] == HTTPByte.space || bytes[index] == HTTPByte.tab { index += 1 }
        var valueEnd = line.upperBound
        while valueEnd > index, bytes[valueEnd - 1] == HTTPByte.space || bytes[valueEnd - 1] == HTTPByte.tab { valueEnd -= 1 }
        for i in index..<valueEnd where !HTTPByte.isFieldValue(bytes[i]) { return nil }
        return FieldLine(name: nameRange, value: index..<valueEnd, invalidName: invalidName)
    }

    /// nginx's `ngx_http_validate_host` beyond the bytes refused above: no two dots in a row (`a..b`, which
    /// `$host` would carry into paths and upstream heads), and a name (before the port, or a `[v6]` literal) that is
    /// not empty once one trailing dot is dropped (`.`, `:80`).
    static func isValidHostName(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Bool {
        var nameEnd = range.upperBound
        var literal = false
        var previousWasDot = false
        for i in range {
            let byte = bytes[i]
            if byte == UInt8(ascii: ".") {
                if previousWasDot { return false }
                previousWasDot = true
                continue
            }
            previousWasDot = false
            if byte == UInt8(ascii: "["), i == range.lowerBound {
                literal = true
            } else if byte == UInt8(ascii: "]"), literal {
                literal = false
                if nameEnd == range.upperBound { nameEnd = i + 1 }
            } else if byte == UInt8(ascii: ":"), !literal, nameEnd == range.upperBound {
                nameEnd = i
            }
        }
        var nameLength = nameEnd - range.lowerBound
        if nameLength > 0, bytes[nameEnd - 1] == UInt8(ascii: ".") { nameLength -= 1 }
        return nameLength > 0
    }

    /// `METHOD SP request-target SP HTTP/d.d`.
    private static func parseRequestLine(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>) -> Result<HTTPRequestHead, HTTPRequestError> {
        switch checkRequestLine(bytes, line) {
        case .failure(let error):
            return .failure(error)
        case .success(let parts):
            return .success(HTTPRequestHead(method: method(bytes, parts.method), target: string(bytes, parts.target),
                                            version: parts.version, headers: HeaderFields(), contentLength: nil, chunked: false,
                                            connectionClose: false, connectionKeepAlive: false, expectContinue: false))
        }
    }

    /// The parts of a request line, located and validated without building strings (the head scanner calls it as
    /// soon as the first line is complete, so that a non-HTTP client is refused at once).
    struct RequestLineParts {
        var method: Range<Int>
        var target: Range<Int>
        var version: ProtocolVersion
    }

    static func checkRequestLine(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>) -> Result<RequestLineParts, HTTPRequestError> {
        var index = line.lowerBound
        while index < line.upperBound, HTTPByte.isToken(bytes[index]) { index += 1 }
        guard index > line.lowerBound, index < line.upperBound, bytes[index] == HTTPByte.space else {
            return .failure(.invalidRequestLine)
        }
        // A method is upper-case letters, `_` and `-`, as nginx reads one: `get` is no method (400).
        for i in line.lowerBound..<index where !HTTPByte.isMethod(bytes[i]) { return .failure(.invalidMethod) }
        let methodRange = line.lowerBound..<index
        // Words may be parted by more than one space, and spaces may end the line, as nginx reads a request line
        // (RFC 9112 section 3 lets a recipient part it on whitespace).
        while index < line.upperBound, bytes[index] == HTTPByte.space { index += 1 }
        let targetStart = index
        while index < line.upperBound, HTTPByte.isTarget(bytes[index]) { index += 1 }
        guard index > targetStart, index < line.upperBound, bytes[index] == HTTPByte.space else {
            return .failure(.invalidRequestLine)
        }
        let targetRange = targetStart..<index
        // nginx reads the target before the version: one that starts with neither `/` nor a scheme's letter (the
        // asterisk form, HTTP/2's `PRI * HTTP/2.0` preface) is refused there, 400 before a 505.
        let first = bytes[targetStart] | 0x20
        guard bytes[targetStart] == UInt8(ascii: "/") || (first >= UInt8(ascii: "a") && first <= UInt8(ascii: "z")) else {
            return .failure(.invalidTarget)
        }
        while index < line.upperBound, bytes[index] == HTTPByte.space { index += 1 }
        var lineEnd = line.upperBound
        while lineEnd > index, bytes[lineEnd - 1] == HTTPByte.space { lineEnd -= 1 }
        let line = line.lowerBound..<lineEnd
        // HTTP-version = "HTTP/" DIGIT "." DIGIT; other digit strings are versions we do not speak (505).
        guard line.upperBound - index >= 7, bytes[index] == UInt8(ascii: "H"), bytes[index + 1] == UInt8(ascii: "T"),
              bytes[index + 2] == UInt8(ascii: "T"), bytes[index + 3] == UInt8(ascii: "P"), bytes[index + 4] == UInt8(ascii: "/") else {
            return .failure(.invalidRequestLine)
        }
        index += 5
        // nginx reads no major version that starts with 0 (`HTTP/01.1`, `HTTP/0.9` aside, is no version it speaks).
        if index + 1 < line.upperBound, bytes[index] == UInt8(ascii: "0"), bytes[index + 1] != UInt8(ascii: ".") {
            return .failure(.invalidRequestLine)
        }
        guard let major = digits(bytes, &index, line.upperBound), index < line.upperBound, bytes[index] == UInt8(ascii: ".") else {
            return .failure(.invalidRequestLine)
        }
        index += 1
        guard let minor = digits(bytes, &index, line.upperBound), index == line.upperBound else {
            return .failure(.invalidRequestLine)
        }
        let version: ProtocolVersion
        switch (major, minor) {
        case (1, 0): version = .http1_0
        // A later HTTP/1 minor version is answered as HTTP/1.1, the highest this server speaks (RFC 9110 2.5).
        case (1, _): version = .http1_1
        default: return .failure(.unsupportedVersion)
        }
        return .success(RequestLineParts(method: methodRange, target: targetRange, version: version))
    }

    /// Whether the start of a request line still in progress can begin a valid one (a method of token bytes, then
    /// a space): refuses TLS handshakes and other binary input before it fills the head buffer.
    static func requestLinePrefixIsPlausible(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Bool {
        for index in range {
            let byte = bytes[index]
            if byte == HTTPByte.space { return index > range.lowerBound }
            // A CR at the very end may be the start of a line ending.
            if byte == HTTPByte.cr, index == range.upperBound - 1 { return true }
            if !HTTPByte.isToken(byte) { return false }
        }
        return true
    }

    /// One to three decimal digits (a version number).
    private static func digits(_ bytes: UnsafeRawBufferPointer, _ index: inout Int, _ end: Int) -> Int? {
        var value = 0
        let start = index
        while index < end, index - start < 3, bytes[index] >= 0x30, bytes[index] <= 0x39 {
            value = value * 10 + Int(bytes[index] - 0x30)
            index += 1
        }
        return index > start ? value : nil
    }

    @inline(__always)
    private static func equalsLowercased(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ name: [UInt8]) -> Bool {
        guard range.count == name.count else { return false }
        var j = 0
        for i in range {
            if HTTPByte.lower(bytes[i]) != name[j] { return false }
            j += 1
        }
        return true
    }

    @inline(__always)
    private static func string(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self)
    }

    /// The common methods come from literals (no decoding); others are decoded.
    private static func method(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> String {
        let first = bytes[range.lowerBound]
        switch (range.count, first) {
        case (3, UInt8(ascii: "G")) where bytes[range.lowerBound + 1] == UInt8(ascii: "E") && bytes[range.lowerBound + 2] == UInt8(ascii: "T"):
            return "GET"
        case (4, UInt8(ascii: "P")) where string(bytes, range) == "POST": return "POST"
        case (4, UInt8(ascii: "H")) where string(bytes, range) == "HEAD": return "HEAD"
        default: return string(bytes, range)
        }
    }
}

/// Decodes a chunked request body (RFC 9112 §7.1) incrementally, checking the size limit as each chunk size is
/// read so that an oversized body is refused before its bytes are read.
struct ChunkedBodyDecoder {
    enum State: Equatable {
        case size
        case data(remaining: Int)
        case dataEnd
        case trailer(bytesSeen: Int)
        case done
    }

    enum Outcome: Equatable {
        case needMore
        case done
        case failure(HTTPRequestError)
        /// The body would exceed the limit; `size` is the body size the client announced so far.
        case tooLarge(size: Int)
    }

    /// Longest chunk-size line accepted (size plus extensions).
    static let maxSizeLineLength = 4096
    private(set) var state: State = .size
    private(set) var received = 0
    let maxTrailerLength: Int

    init(maxTrailerLength: Int) { self.maxTrailerLength = maxTrailerLength }

    /// Consumes what it can from `input`, appending body bytes to `body`.
    mutating func decode(_ input: inout ByteBuffer, into body: inout ByteBuffer, limit: Int?) -> Outcome {
        while true {
            switch state {
            case .done:
                return .done
            case .size:
                guard let lineEnd = findLF(input, limit: ChunkedBodyDecoder.maxSizeLineLength + 2) else {
                    return input.readableBytes > ChunkedBodyDecoder.maxSizeLineLength + 1 ? .failure(.invalidChunkedBody) : .needMore
                }
                let size = input.withUnsafeReadableBytes { bytes in ChunkedBodyDecoder.parseSizeLine(bytes, lineEnd) }
                input.moveReaderIndex(forwardBy: lineEnd + 1)
                guard let size else { return .failure(.invalidChunkedBody) }
                if size == 0 {
                    state = .trailer(bytesSeen: 0)
                    continue
                }
                let (total, overflow) = received.addingReportingOverflow(size)
                if overflow { return .failure(.invalidChunkedBody) }
                if let limit, total > limit { return .tooLarge(size: total) }
                state = .data(remaining: size)
            case .data(let remaining):
                guard input.readableBytes > 0 else { return .needMore }
                let take = min(remaining, input.readableBytes)
                var slice = input.readSlice(length: take)!
                body.writeBuffer(&slice)
                received += take
                state = take == remaining ? .dataEnd : .data(remaining: remaining - take)
            case .dataEnd:
                guard let first = input.getInteger(at: input.readerIndex, as: UInt8.self) else { return .needMore }
                if first == HTTPByte.lf {
                    input.moveReaderIndex(forwardBy: 1)
                } else if first == HTTPByte.cr {
                    guard let second = input.getInteger(at: input.readerIndex + 1, as: UInt8.self) else { return .needMore }
                    guard second == HTTPByte.lf else { return .failure(.invalidChunkedBody) }
                    input.moveReaderIndex(forwardBy: 2)
                } else {
                    return .failure(.invalidChunkedBody)
                }
                state = .size
            case .trailer(let seen):
                // Trailer fields are read and dropped (nginx does not pass them on either); only their size is bounded.
                let room = maxTrailerLength - seen
                guard let lineEnd = findLF(input, limit: room + 1) else {
                    return input.readableBytes > room ? .failure(.badRequest("client sent too large chunked trailer", "trailer too large")) : .needMore
                }
                let empty = lineEnd == 0 || (lineEnd == 1 && input.getInteger(at: input.readerIndex, as: UInt8.self) == HTTPByte.cr)
                let valid = input.withUnsafeReadableBytes { bytes in
                    // A bare CR or other control bytes in a trailer line make the body invalid.
                    var end = lineEnd
                    if end > 0, bytes[end - 1] == HTTPByte.cr { end -= 1 }
                    for i in 0..<end where !HTTPByte.isFieldValue(bytes[i]) { return false }
                    return true
                }
                input.moveReaderIndex(forwardBy: lineEnd + 1)
                guard valid else { return .failure(.invalidChunkedBody) }
                state = empty ? .done : .trailer(bytesSeen: seen + lineEnd + 1)
            }
        }
    }

    /// The offset of the first LF among the first `limit` readable bytes.
    private func findLF(_ buffer: ByteBuffer, limit: Int) -> Int? {
        buffer.withUnsafeReadableBytes { bytes in
            let length = min(bytes.count, limit)
            guard length > 0, let base = bytes.baseAddress, let found = memchr(base, Int32(HTTPByte.lf), length) else { return nil }
            return base.distance(to: UnsafeRawPointer(found))
        }
    }

    /// `1*HEXDIG [BWS] *( ";" ext )` followed by CR (optional) before `lfIndex`; nil when malformed or too big.
    static func parseSizeLine(_ bytes: UnsafeRawBufferPointer, _ lfIndex: Int) -> Int? {
        var end = lfIndex
        if end > 0, bytes[end - 1] == HTTPByte.cr { end -= 1 }
        var index = 0
        var value = 0
        var significant = 0
        while index < end {
            let byte = bytes[index]
            let digit: Int
            switch byte {
            case 0x30...0x39: digit = Int(byte - 0x30)
            case 0x41...0x46: digit = Int(byte - 0x41 + 10)
            case 0x61...0x66: digit = Int(byte - 0x61 + 10)
            default: digit = -1
            }
            if digit < 0 { break }
            if value != 0 || digit != 0 { significant += 1 }
            // 15 hex digits stay far below Int.max; more is no body anyone sends.
            if significant > 15 { return nil }
            value = value << 4 | digit
            index += 1
        }
        guard index > 0 else { return nil }
        while index < end, bytes[index] == HTTPByte.space || bytes[index] == HTTPByte.tab { index += 1 }
        if index < end {
            guard bytes[index] == UInt8(ascii: ";") else { return nil }
            for i in index..<end where !HTTPByte.isFieldValue(bytes[i]) { return nil }
        }
        return value
    }
}
