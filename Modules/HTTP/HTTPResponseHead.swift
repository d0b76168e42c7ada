import KernelCore
import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The `Date` header value (`Wed, 25 Nov 2026 08:29:18 GMT`), formatted once per second per connection.
struct HTTPDateCache {
    private var second = -1
    private var text = ""

    private static let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    mutating func current() -> String {
        let now = Int(time(nil))
        if now != second {
            second = now
            var t = time_t(now)
            var parts = tm()
            gmtime_r(&t, &parts)
            text = "\(HTTPDateCache.days[Int(parts.tm_wday)]), \(pad(Int(parts.tm_mday))) \(HTTPDateCache.months[Int(parts.tm_mon)]) \(Int(parts.tm_year) + 1900) \(pad(Int(parts.tm_hour))):\(pad(Int(parts.tm_min))):\(pad(Int(parts.tm_sec))) GMT"
        }
        return text
    }

    private func pad(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
}

/// How a response body is framed on the wire.
enum HTTPBodyFraming: Equatable {
    /// `Content-Length: n` (also for HEAD and bodiless statuses, where no body follows).
    case length(Int)
    /// `Transfer-Encoding: chunked` (HTTP/1.1 streams of unknown length).
    case chunked
    /// Neither: the body ends when the connection closes (HTTP/1.0 streams of unknown length).
    case closeDelimited
    /// No body and no length header (1xx, 204, 304).
    case none
}

/// Serialises response heads straight into a `ByteBuffer`.
enum HTTPResponseHeadWriter {
    /// Headers the connection owns: a handler's value for them is replaced (`Date`, `Server`, the framing) or, for
    /// the hop-by-hop fields (`HopByHopHeaders`), dropped: they describe the handler's connection, not this one.
    @inline(__always)
    static func isConnectionOwned(_ name: String) -> Bool {
        switch name.utf8.count {
        case 4: return name.equalsCaseInsensitive("date")
        case 6: return name.equalsCaseInsensitive("server")
        case 14: return name.equalsCaseInsensitive("content-length")
        default: return HopByHopHeaders.contains(name)
        }
    }

    /// A header name or value that would break the framing (CR, LF or NUL) is dropped rather than written.
    @inline(__always)
    static func isSafe(_ text: String) -> Bool {
        for byte in text.utf8 where byte == 13 || byte == 10 || byte == 0 { return false }
        return true
    }

    /// Writes the status line and headers. The head is measured first and then copied into the buffer in one
    /// pass: a response head is a dozen short pieces, and writing them one `ByteBuffer` call at a time cost more
    /// than the copying.
    /// `upgrading`: the head of a `101` that upgrades the connection, with the handler's `Upgrade` field and
    /// `Connection: upgrade` instead of the keep-alive fields.
    static func write(status: Int, reason: String, headers: HeaderFields, framing: HTTPBodyFraming, close: Bool,
                      serverLine: String, date: String, into out: inout ByteBuffer, upgrading: Bool = false) {
        let reason = isSafe(reason) ? reason : HTTPStatusText.reason(for: status)
        var size = 16 + reason.utf8.count + serverLine.utf8.count + 8 + date.utf8.count
        // A value kept as the bytes it came as (`HeaderFields.undecoded`) is no longer than its text: each byte
        // of an invalid sequence became at most one U+FFFD (three bytes) or one two-byte ISO-8859-1 code point.
        for field in headers.fields { size += field.name.utf8.count + field.value.utf8.count + 4 }
        size += 64  // Content-Length or Transfer-Encoding, and Connection.
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { buffer in
            var head = HeadBytes(buffer)
            head.append("HTTP/1.1 ")
            if (100...999).contains(status) {
                head.append(UInt8(48 + status / 100))
                head.append(UInt8(48 + status / 10 % 10))
                head.append(UInt8(48 + status % 10))
            } else {
                head.append("500")
            }
            head.append(" ")
            head.append(reason)
            head.append("\r\n")
            head.append(serverLine)
            head.append("Date: ")
            head.append(date)
            head.append("\r\n")
            for (index, field) in headers.fields.enumerated() where !isConnectionOwned(field.name) {
                guard isSafe(field.name), isSafe(field.value), !field.name.isEmpty else { continue }
                head.append(field.name)
                head.append(": ")
                if let undecoded = headers.undecodedBytes(at: index) {
                    undecoded.withUnsafeBytes { head.append($0) }
                } else {
                    head.append(field.value)
                }
                head.append("\r\n")
            }
            switch framing {
            case .length(let length):
                head.append("Content-Length: ")
                head.appendDecimal(length)
                head.append("\r\n")
            case .chunked:
                head.append("Transfer-Encoding: chunked\r\n")
            case .closeDelimited, .none:
                break
            }
            if upgrading {
                if let protocols = headers["Upgrade"], isSafe(protocols) {
                    head.append("Upgrade: ")
                    head.append(protocols)
                    head.append("\r\n")
                }
                head.append("Connection: upgrade\r\n\r\n")
            } else {
                head.append(close ? "Connection: close\r\n\r\n" : "Connection: keep-alive\r\n\r\n")
            }
            return head.count
        }
    }

    /// The chunk-size line of a chunk (`1a2b\r\n`).
    static func writeChunkHeader(_ length: Int, into out: inout ByteBuffer) {
        let hex = String(length, radix: 16)
        out.writeString(hex)
        out.writeStaticString("\r\n")
    }
}

/// Appends bytes to memory measured beforehand (`HTTPResponseHeadWriter.write` sizes it); running past the end is a
/// programming error and traps.
private struct HeadBytes {
    private let base: UnsafeMutableRawBufferPointer
    private(set) var count = 0

    init(_ base: UnsafeMutableRawBufferPointer) { self.base = base }

    mutating func append(_ byte: UInt8) {
        precondition(count < base.count, "response head larger than measured")
        base[count] = byte
        count += 1
    }

    mutating func append(_ text: StaticString) {
        append(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    mutating func append(_ text: String) {
        var text = text
        text.withUTF8 { append(UnsafeRawBufferPointer($0)) }
    }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        precondition(count + bytes.count <= base.count, "response head larger than measured")
        if bytes.count > 0 {
            (base.baseAddress! + count).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        }
        count += bytes.count
    }

    /// A non-negative integer in decimal.
    mutating func appendDecimal(_ value: Int) {
        precondition(value >= 0, "lengths are never negative")
        var digits = 1
        var rest = value / 10
        while rest > 0 { digits += 1; rest /= 10 }
        precondition(count + digits <= base.count, "response head larger than measured")
        rest = value
        for position in stride(from: count + digits - 1, through: count, by: -1) {
            base[position] = UInt8(48 + rest % 10)
            rest /= 10
        }
        count += digits
    }
}
