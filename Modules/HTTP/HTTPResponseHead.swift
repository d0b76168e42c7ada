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
    /// Headers the connection owns: a handler's value for them is replaced, not forwarded.
    @inline(__always)
    static func isConnectionOwned(_ name: String) -> Bool {
        switch name.utf8.count {
        case 4: return name.equalsCaseInsensitive("date")
        case 6: return name.equalsCaseInsensitive("server")
        case 10: return name.equalsCaseInsensitive("connection") || name.equalsCaseInsensitive("keep-alive")
        case 14: return name.equalsCaseInsensitive("content-length")
        case 17: return name.equalsCaseInsensitive("transfer-encoding")
        default: return false
        }
    }

    /// A header name or value that would break the framing (CR, LF or NUL) is dropped rather than written.
    @inline(__always)
    static func isSafe(_ text: String) -> Bool {
        for byte in text.utf8 where byte == 13 || byte == 10 || byte == 0 { return false }
        return true
    }

    static func write(status: Int, reason: String, headers: HeaderFields, framing: HTTPBodyFraming, close: Bool,
                      serverLine: String, date: String, into out: inout ByteBuffer) {
        out.writeStaticString("HTTP/1.1 ")
        if (100...999).contains(status) {
            out.writeInteger(UInt8(48 + status / 100))
            out.writeInteger(UInt8(48 + status / 10 % 10))
            out.writeInteger(UInt8(48 + status % 10))
        } else {
            out.writeStaticString("500")
        }
        out.writeStaticString(" ")
        out.writeString(isSafe(reason) ? reason : HTTPStatusText.reason(for: status))
        out.writeStaticString("\r\n")
        out.writeString(serverLine)
        out.writeStaticString("Date: ")
        out.writeString(date)
        out.writeStaticString("\r\n")
        for field in headers.fields where !isConnectionOwned(field.name) {
            guard isSafe(field.name), isSafe(field.value), !field.name.isEmpty else { continue }
            out.writeString(field.name)
            out.writeStaticString(": ")
            out.writeString(field.value)
            out.writeStaticString("\r\n")
        }
        switch framing {
        case .length(let length):
            out.writeStaticString("Content-Length: ")
            writeDecimal(length, into: &out)
            out.writeStaticString("\r\n")
        case .chunked:
            out.writeStaticString("Transfer-Encoding: chunked\r\n")
        case .closeDelimited, .none:
            break
        }
        out.writeStaticString(close ? "Connection: close\r\n\r\n" : "Connection: keep-alive\r\n\r\n")
    }

    /// Writes a non-negative integer in decimal without building a String.
    static func writeDecimal(_ value: Int, into out: inout ByteBuffer) {
        precondition(value >= 0, "lengths are never negative")
        if value < 10 {
            out.writeInteger(UInt8(48 + value))
            return
        }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        var rest = value
        withUnsafeMutableBytes(of: &digits) { raw in
            while rest > 0 {
                raw[19 - count] = UInt8(48 + rest % 10)
                rest /= 10
                count += 1
            }
            out.writeBytes(UnsafeRawBufferPointer(rebasing: raw[(20 - count)...]))
        }
    }

    /// The chunk-size line of a chunk (`1a2b\r\n`).
    static func writeChunkHeader(_ length: Int, into out: inout ByteBuffer) {
        let hex = String(length, radix: 16)
        out.writeString(hex)
        out.writeStaticString("\r\n")
    }
}
