/// Keeps a peer's bytes quoted in a log line on one line and printable: bytes outside printable ASCII (and `"`,
/// `\`) become `\xHH`, at most 200 bytes, then `...`; what nginx does with what it quotes of an invalid header.
public func escapeForLog(_ text: String) -> String {
    var out = ""
    for byte in text.utf8.prefix(200) {
        if byte < 0x20 || byte >= 0x7f || byte == 0x22 || byte == 0x5c {
            let hex = String(byte, radix: 16, uppercase: true)
            out += "\\x" + (hex.count == 1 ? "0" + hex : hex)
        } else {
            out.unicodeScalars.append(Unicode.Scalar(byte))
        }
    }
    return text.utf8.count > 200 ? out + "..." : out
}
