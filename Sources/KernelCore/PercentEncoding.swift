/// `%XX` escaping of the bytes a URI must not carry as they are, shared by what writes URIs into heads: the
/// `Location` of a `return`, the request line of `proxy_pass`.
public enum PercentEncoding {
    /// Bytes no request line or header value may hold: controls, space, DEL and bytes from 0x80. A decoded `$uri`
    /// or capture can hold them (`/a%0d%0aSet-Cookie:...`); escaped, they cannot add a line to a head.
    @inline(__always)
    public static func breaksALine(_ byte: UInt8) -> Bool { byte <= 0x20 || byte >= 0x7F }

    /// `text` with every byte `escapes` picks as upper-case `%XX`; `text` itself when none is.
    public static func escaped(_ text: String, where escapes: (UInt8) -> Bool = breaksALine) -> String {
        guard text.utf8.contains(where: escapes) else { return text }
        let hex: [UInt8] = Array("0123456789ABCDEF".utf8)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count + 16)
        for byte in text.utf8 {
            if escapes(byte) {
                bytes += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0x0F)]]
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
