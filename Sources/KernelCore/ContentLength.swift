/// The one rule for a `Content-Length` (or uwsgi `CONTENT_LENGTH`) value, shared by every protocol module so that
/// an edge and a worker never disagree on which lengths exist.
///
/// It is nginx's `ngx_atoof` with `NGX_MAX_OFF_T_VALUE`: one or more ASCII digits and nothing else (no sign, no
/// spaces, no list), whose value is at most `Int.max` (9223372036854775807, 19 digits). Leading zeros do not count
/// against the limit, as in nginx. A larger value is invalid (nginx: "client sent invalid Content-Length header"),
/// never trapped and never clamped.
public enum ContentLength {
    /// The value of `bytes`, or nil when they are empty, hold anything but digits, or exceed `Int.max`.
    @inlinable
    public static func parse<Bytes: Sequence>(_ bytes: Bytes) -> Int? where Bytes.Element == UInt8 {
        var value = 0
        var sawDigit = false
        for byte in bytes {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(Int(byte &- UInt8(ascii: "0")))
            guard !overflow1, !overflow2 else { return nil }
            value = sum
            sawDigit = true
        }
        return sawDigit ? value : nil
    }

    /// The value of `text` (its UTF-8 bytes); see `parse(_:)` on bytes.
    @inlinable
    public static func parse(_ text: String) -> Int? { parse(text.utf8) }
}
