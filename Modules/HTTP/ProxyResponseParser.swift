import KernelCore
import KernelUpstream
import NIOCore

/// Why an upstream's HTTP answer is unusable: a 502 for the client (nginx's `invalid_header`) and one of nginx's
/// log lines.
enum ProxyResponseError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalidStatusLine(String)
    case invalidHeader(String)
    case headTooLarge
    case duplicateHeader(line: String, previous: String)
    case invalidContentLength(String)
    case lengthAndEncoding
    case unknownTransferEncoding(String)
    case earlyHintsInHTTP10
    case unrequestedSwitch
    case invalidChunkedBody
    case trailersTooLarge

    var description: String {
        switch self {
        case .invalidStatusLine(let line): return "upstream sent no valid HTTP/1.0 header: \"\(escapeForLog(line))\""
        case .invalidHeader(let line): return "upstream sent invalid header: \"\(escapeForLog(line))\""
        case .headTooLarge: return "upstream sent too big header"
        case .duplicateHeader(let line, let previous):
            return "upstream sent duplicate header line: \"\(escapeForLog(line))\", previous value: \"\(escapeForLog(previous))\""
        case .invalidContentLength(let line): return "upstream sent invalid \"Content-Length\" header: \"\(escapeForLog(line))\""
        case .lengthAndEncoding: return "upstream sent \"Content-Length\" and \"Transfer-Encoding\" headers at the same time"
        case .unknownTransferEncoding(let value): return "upstream sent unknown \"Transfer-Encoding\": \"\(escapeForLog(value))\""
        case .earlyHintsInHTTP10: return "upstream sent HTTP/1.0 response with early hints"
        case .unrequestedSwitch: return "upstream sent \"101 Switching Protocols\" to a request without \"Upgrade\""
        case .invalidChunkedBody: return "upstream sent invalid chunked response"
        case .trailersTooLarge: return "upstream sent too big trailers"
        }
    }
}

/// Parses an upstream's HTTP/1.x answer head as strictly as the listener parses requests (the same header-line
/// check, `HTTPRequestHeadParser.fieldLine`): a status line of `HTTP/1.0` or `HTTP/1.1`, a three-digit status and
/// a reason of field-value bytes; no obs-fold, no whitespace before a colon, no control bytes; one
/// `Content-Length` of digits only, never beside a `Transfer-Encoding`; `Transfer-Encoding` exactly `chunked`.
/// So a smuggled second answer can never reach a client. Lines may end in CRLF or LF, as nginx reads them.
///
/// Interim `1xx` heads are read and dropped (their size counts against the limit, so an endless run of them
/// ends in an error), except a `101 Switching Protocols` to a request that asked for an `Upgrade`: that head is
/// the answer, with no body. The whole head may not exceed `maxHeadSize` (nginx `proxy_buffer_size`).
struct ProxyResponseParser: UpstreamResponseParser {
    let maxHeadSize: Int
    /// The request carried `Upgrade`: a 101 is its answer.
    let upgradeRequested: Bool
    /// The request was HEAD: its answer has no body, whatever its framing says.
    let isHeadRequest: Bool
    private var consumed = 0

    init(maxHeadSize: Int, upgradeRequested: Bool = false, isHeadRequest: Bool = false) {
        self.maxHeadSize = maxHeadSize
        self.upgradeRequested = upgradeRequested
        self.isHeadRequest = isHeadRequest
    }

    mutating func parseHead(_ buffer: inout ByteBuffer) throws -> UpstreamResponseHead? {
        while true {
            // A head is parsed once it is whole: nothing is consumed before its empty line arrived.
            guard let end = Self.headEnd(buffer, limit: maxHeadSize - consumed) else {
                if consumed + buffer.readableBytes > maxHeadSize { throw ProxyResponseError.headTooLarge }
                return nil
            }
            let head = try buffer.withUnsafeReadableBytes { bytes in
                try Self.parse(UnsafeRawBufferPointer(rebasing: bytes[0..<end]), upgradeRequested: upgradeRequested,
                               isHeadRequest: isHeadRequest, maxTrailerSize: maxHeadSize)
            }
            buffer.moveReaderIndex(forwardBy: end)
            consumed += end
            if let head { return head }
        }
    }

    /// The length of the head at the start of `buffer` (through its empty line), nil while incomplete.
    static func headEnd(_ buffer: ByteBuffer, limit: Int) -> Int? {
        buffer.withUnsafeReadableBytes { bytes -> Int? in
            var lineStart = 0
            var index = 0
            let count = min(bytes.count, max(0, limit))
            while index < count {
                if bytes[index] == HTTPByte.lf {
                    let length = index - lineStart
                    if length == 0 || (length == 1 && bytes[lineStart] == HTTPByte.cr) {
                        // The first line empty is no head at all: the status line check refuses it.
                        return index + 1
                    }
                    lineStart = index + 1
                }
                index += 1
            }
            return nil
        }
    }

    /// One whole head; nil for an interim one that is dropped. A chunked body's trailer may take `maxTrailerSize`.
    static func parse(_ bytes: UnsafeRawBufferPointer, upgradeRequested: Bool, isHeadRequest: Bool,
                      maxTrailerSize: Int) throws -> UpstreamResponseHead? {
        var lines = LineReader(bytes: bytes)
        guard let statusLine = lines.next() else { throw ProxyResponseError.invalidStatusLine("") }
        let (http11, status, reason) = try parseStatusLine(bytes, statusLine)
        var headers: [HeaderFields.Element] = []
        // One allocation for a usual head instead of one per doubling.
        headers.reserveCapacity(16)
        var contentLength: (line: String, value: Int64)?
        var transferEncoding: String?
        var chunked = false
        var connectionClose = !http11
        /// The fields the `Connection` values list: they belong to the upstream's hop and are not passed on.
        var listed: [String] = []
        let interim = (100..<200).contains(status) && status != 101
        /// The fields whose values are no UTF-8, with their bytes (`HeaderFields.undecoded`).
        var undecoded: [(index: Int, bytes: [UInt8])] = []
        while let line = lines.next(), !line.isEmpty {
            guard let field = HTTPRequestHeadParser.fieldLine(bytes, line, names: HTTPHeaderNamePolicy(underscoresAllowed: true, ignoreInvalid: false)),
                  bytes[field.name].allSatisfy(HTTPToken.isTokenByte) else {
                throw ProxyResponseError.invalidHeader(text(bytes, line))
            }
            // Interim heads are dropped: their fields mean nothing. A 101 is passed on, so it is checked as a
            // final head is.
            if interim { continue }
            // Known by its bytes: the fields the engine drops (hop-by-hop, `Date`, `Server`) are read here, if at
            // all, and never become strings (`UpstreamResponseHead.headers`).
            switch ResponseFieldName(UnsafeRawBufferPointer(rebasing: bytes[field.name])) {
            case .contentLength:
                let name = text(bytes, field.name)
                let value = text(bytes, field.value)
                if let previous = contentLength {
                    throw ProxyResponseError.duplicateHeader(line: "\(name): \(value)", previous: previous.line)
                }
                if transferEncoding != nil { throw ProxyResponseError.lengthAndEncoding }
                guard let length = ContentLength.parse(value) else {
                    throw ProxyResponseError.invalidContentLength("\(name): \(value)")
                }
                contentLength = ("\(name): \(value)", Int64(length))
                headers.append((name, value))
            case .transferEncoding:
                let name = text(bytes, field.name)
                let value = text(bytes, field.value)
                if let previous = transferEncoding {
                    throw ProxyResponseError.duplicateHeader(line: "\(name): \(value)", previous: previous)
                }
                if contentLength != nil { throw ProxyResponseError.lengthAndEncoding }
                guard value.equalsCaseInsensitive("chunked") else { throw ProxyResponseError.unknownTransferEncoding(value) }
                transferEncoding = "\(name): \(value)"
                chunked = true
            case .connection:
                let value = UnsafeRawBufferPointer(rebasing: bytes[field.value])
                if Self.listsClose(value) { connectionClose = true }
                HopByHopHeaders.addListedOptions(inConnectionValue: value, to: &listed)
            case .upgrade where status == 101:
                headers.append((text(bytes, field.name), value(bytes, field.value, index: headers.count, keeping: &undecoded)))
            case .dropped, .upgrade:
                continue
            case .other:
                headers.append((text(bytes, field.name), value(bytes, field.value, index: headers.count, keeping: &undecoded)))
            }
        }
        var fields = Self.fields(headers, undecoded)
        if !listed.isEmpty { fields = fields.filter { field in !listed.contains { field.name.equalsCaseInsensitive($0) } } }
        switch status {
        case 101:
            guard upgradeRequested else { throw ProxyResponseError.unrequestedSwitch }
            return UpstreamResponseHead(status: status, reason: reason, headers: fields, framing: .none,
                                        reusable: false)
        case 100..<200:
            if status == 103, !http11 { throw ProxyResponseError.earlyHintsInHTTP10 }
            return nil
        default:
            break
        }
        let framing: UpstreamBodyFraming
        let delimited: Bool
        if isHeadRequest || status == 204 || status == 304 {
            framing = .none
            delimited = true
        } else if chunked {
            framing = .decoded(ProxyChunkedDecoder(maxTrailerSize: maxTrailerSize))
            delimited = true
        } else if let contentLength {
            framing = .length(contentLength.value)
            delimited = true
        } else {
            framing = .untilClose
            delimited = false
        }
        return UpstreamResponseHead(status: status, reason: reason, headers: fields, framing: framing,
                                    reusable: http11 && !connectionClose && delimited)
    }

    /// Whether a `Connection` value lists the `close` option (in any case, among others separated by commas).
    static func listsClose(_ value: UnsafeRawBufferPointer) -> Bool {
        var start = 0
        while start <= value.count {
            var end = start
            while end < value.count, value[end] != UInt8(ascii: ",") { end += 1 }
            var first = start
            var last = end
            while first < last, value[first] == HTTPByte.space || value[first] == HTTPByte.tab { first += 1 }
            while last > first, value[last - 1] == HTTPByte.space || value[last - 1] == HTTPByte.tab { last -= 1 }
            if HTTPToken.equalCaseInsensitive(UnsafeRawBufferPointer(rebasing: value[first..<last]), "close".utf8) { return true }
            start = end + 1
        }
        return false
    }

    /// `HTTP/1.x SP 3DIGIT [SP reason]` → (HTTP/1.1?, status, reason).
    static func parseStatusLine(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>) throws -> (Bool, Int, String?) {
        let length = line.count
        let base = line.lowerBound
        func byte(_ offset: Int) -> UInt8 { bytes[base + offset] }
        func isDigit(_ byte: UInt8) -> Bool { byte >= 0x30 && byte <= 0x39 }
        guard length >= 12, byte(0) == UInt8(ascii: "H"), byte(1) == UInt8(ascii: "T"), byte(2) == UInt8(ascii: "T"),
              byte(3) == UInt8(ascii: "P"), byte(4) == UInt8(ascii: "/"), byte(5) == UInt8(ascii: "1"),
              byte(6) == UInt8(ascii: "."), byte(7) == UInt8(ascii: "0") || byte(7) == UInt8(ascii: "1"),
              byte(8) == HTTPByte.space, isDigit(byte(9)), isDigit(byte(10)), isDigit(byte(11)),
              length == 12 || byte(12) == HTTPByte.space else {
            throw ProxyResponseError.invalidStatusLine(text(bytes, line))
        }
        let status = Int(byte(9) - 0x30) * 100 + Int(byte(10) - 0x30) * 10 + Int(byte(11) - 0x30)
        guard (100...599).contains(status) else { throw ProxyResponseError.invalidStatusLine(text(bytes, line)) }
        var reason: String?
        if length > 13 {
            let reasonRange = (base + 13)..<line.upperBound
            for index in reasonRange where !HTTPByte.isFieldValue(bytes[index]) {
                throw ProxyResponseError.invalidStatusLine(text(bytes, line))
            }
            reason = text(bytes, reasonRange)
        }
        return (byte(7) == UInt8(ascii: "1"), status, reason)
    }

    /// The text of the value of the field at `index`, its bytes added to `undecoded` when they are no UTF-8.
    private static func value(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, index: Int,
                              keeping undecoded: inout [(index: Int, bytes: [UInt8])]) -> String {
        let decoded = HeaderValueText.decode(UnsafeRawBufferPointer(rebasing: bytes[range]))
        if let raw = decoded.undecoded { undecoded.append((index, raw)) }
        return decoded.text
    }

    private static func fields(_ list: [HeaderFields.Element], _ undecoded: [(index: Int, bytes: [UInt8])]) -> HeaderFields {
        var fields = HeaderFields(list)
        for (index, raw) in undecoded { fields.keep(undecoded: raw, at: index) }
        return fields
    }

    private static func text(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self)
    }

    /// The lines of a head without their endings (CRLF or LF).
    struct LineReader {
        let bytes: UnsafeRawBufferPointer
        var position = 0

        mutating func next() -> Range<Int>? {
            guard position < bytes.count else { return nil }
            var index = position
            while index < bytes.count, bytes[index] != HTTPByte.lf { index += 1 }
            guard index < bytes.count else { return nil }
            var end = index
            if end > position, bytes[end - 1] == HTTPByte.cr { end -= 1 }
            defer { position = index + 1 }
            return position..<end
        }
    }
}

/// Decodes a chunked upstream body with the listener's own chunked decoder (`ChunkedBodyDecoder`: hexadecimal
/// sizes of at most 15 digits, CRLF after every chunk, trailer lines of field-value bytes within a size limit),
/// handing out what each read carried as one part.
struct ProxyChunkedDecoder: UpstreamBodyDecoder {
    private var decoder: ChunkedBodyDecoder
    private var ended = false
    /// A refusal found after payload that was handed out first.
    private var failure: ProxyResponseError?

    init(maxTrailerSize: Int) {
        decoder = ChunkedBodyDecoder(maxTrailerLength: maxTrailerSize)
    }

    mutating func decode(_ buffer: inout ByteBuffer) throws -> UpstreamBodyDecoding {
        if let failure { throw failure }
        if ended { return .end }
        var payload = ByteBuffer()
        let outcome = decoder.decode(&buffer, into: &payload, limit: nil)
        switch outcome {
        case .needMore:
            return payload.readableBytes > 0 ? .part(payload) : .needMoreData
        case .done:
            ended = true
            return payload.readableBytes > 0 ? .part(payload) : .end
        case .failure, .tooLarge:
            var error = ProxyResponseError.invalidChunkedBody
            if case .failure(let refused) = outcome, refused.clientMessage == "trailer too large" { error = .trailersTooLarge }
            // The chunks decoded before the bad one go out first, whatever reads the body came in.
            guard payload.readableBytes > 0 else { throw error }
            failure = error
            return .part(payload)
        }
    }
}

/// The response header names the parser knows by their bytes: those it reads for the framing, and those the
/// upstream engine drops from every answer (hop-by-hop fields, `Date` and `Server`, which the listener writes
/// itself), so that they are never made into strings.
enum ResponseFieldName {
    case contentLength
    case transferEncoding
    case connection
    /// Hop-by-hop, but kept on a `101` for the listener to write.
    case upgrade
    /// Never passed to the client: `Date`, `Server`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`.
    case dropped
    case other

    init(_ name: UnsafeRawBufferPointer) {
        func named(_ known: StaticString) -> Bool {
            HTTPToken.equalCaseInsensitive(name, UnsafeRawBufferPointer(start: known.utf8Start, count: known.utf8CodeUnitCount))
        }
        switch name.count {
        case 2: self = named("te") ? .dropped : .other
        case 4: self = named("date") ? .dropped : .other
        case 6: self = named("server") ? .dropped : .other
        case 7: self = named("upgrade") ? .upgrade : named("trailer") ? .dropped : .other
        case 10: self = named("connection") ? .connection : named("keep-alive") ? .dropped : .other
        case 14: self = named("content-length") ? .contentLength : .other
        case 16: self = named("proxy-connection") ? .dropped : .other
        case 17: self = named("transfer-encoding") ? .transferEncoding : .other
        default: self = .other
        }
    }
}
