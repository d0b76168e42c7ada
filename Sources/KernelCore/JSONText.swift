import NIOCore

/// The kernel's one JSON string escaper: error bodies, JSON access logs (`escape=json`) and the inference
/// responses all write strings through it.
///
/// Byte by byte on the UTF-8: `"` and `\` get a backslash, `\n`, `\r` and `\t` their short escapes, other bytes
/// below 0x20 `\u00XX`; everything else (multi-byte UTF-8 included) is copied. A string with nothing to escape,
/// the common case, is copied in one piece.
public enum JSONText {
    /// Writes `text` as a JSON string literal, quotes included.
    @inlinable
    public static func writeQuoted(_ text: String, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "\""))
        writeEscaped(text, into: &buffer)
        buffer.writeInteger(UInt8(ascii: "\""))
    }

    /// Writes the inside of a JSON string literal for `text`, without the quotes.
    @inlinable
    public static func writeEscaped(_ text: String, into buffer: inout ByteBuffer) {
        guard needsEscaping(text) else {
            buffer.writeString(text)
            return
        }
        for byte in text.utf8 {
            escape(byte, byte: { buffer.writeInteger($0) }, text: { buffer.writeStaticString($0) })
        }
    }

    /// Appends the inside of a JSON string literal for `text` to `bytes`, without the quotes.
    @inlinable
    public static func appendEscaped(_ text: String, to bytes: inout [UInt8]) {
        guard needsEscaping(text) else {
            bytes.append(contentsOf: text.utf8)
            return
        }
        for byte in text.utf8 {
            escape(byte, byte: { bytes.append($0) }, text: { escaped in
                escaped.withUTF8Buffer { bytes.append(contentsOf: $0) }
            })
        }
    }

    /// `text` as a JSON string literal, quotes included.
    public static func quoted(_ text: String) -> String {
        var bytes: [UInt8] = [UInt8(ascii: "\"")]
        bytes.reserveCapacity(text.utf8.count + 2)
        appendEscaped(text, to: &bytes)
        bytes.append(UInt8(ascii: "\""))
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Whether any byte of `text` needs an escape.
    @inlinable
    public static func needsEscaping(_ text: String) -> Bool {
        text.utf8.contains { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C }
    }

    @inlinable @inline(__always)
    static func escape(_ value: UInt8, byte: (UInt8) -> Void, text: (StaticString) -> Void) {
        switch value {
        case 0x22: text("\\\"")
        case 0x5C: text("\\\\")
        case 0x0A: text("\\n")
        case 0x0D: text("\\r")
        case 0x09: text("\\t")
        case 0..<0x20:
            text("\\u00")
            byte(hexDigit(value >> 4))
            byte(hexDigit(value & 15))
        default: byte(value)
        }
    }

    @inlinable @inline(__always)
    static func hexDigit(_ value: UInt8) -> UInt8 { value < 10 ? 48 + value : 87 + value }
}
