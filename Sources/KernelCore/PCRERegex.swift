import CPCRE2

/// A regular expression compiled with PCRE2, as nginx compiles `location ~`, `server_name ~` and `map` patterns:
/// the whole Perl syntax (lookaround, lazy quantifiers, `\b`, `\d`, named groups `(?<name>...)` and
/// `(?P<name>...)`), JIT-compiled when the platform supports it.
///
/// Matching is thread-safe: the compiled code is shared and read-only, and each match gets its own match data
/// (sized for this pattern's groups, freed before the call returns).
public final class PCRERegex: @unchecked Sendable {
    /// The expression as written.
    public let pattern: String
    /// Capturing groups (`$1`...), named ones included.
    public let captureCount: Int
    /// Group numbers by name, for `(?<name>...)` and `(?P<name>...)`: the variables `$name`.
    public let captureNames: [String: Int]
    private let code: OpaquePointer

    /// Compiles `pattern` (case-insensitively for `~*`); throws PCRE2's message and the offset where it stopped.
    public init(_ pattern: String, caseInsensitive: Bool = false) throws(PCRERegexError) {
        var options: UInt32 = 0
        if caseInsensitive { options |= PCRE2_CASELESS }
        var errorCode: Int32 = 0
        var errorOffset = 0
        let compiled = pattern.utf8.withContiguousStorageIfAvailable { bytes in
            pcre2_compile_8(bytes.baseAddress, bytes.count, options, &errorCode, &errorOffset, nil)
        } ?? Array(pattern.utf8).withUnsafeBufferPointer { bytes in
            pcre2_compile_8(bytes.baseAddress, bytes.count, options, &errorCode, &errorOffset, nil)
        }
        guard let compiled else {
            throw PCRERegexError(message: PCRERegex.message(for: errorCode), offset: errorOffset)
        }
        // Without JIT support (or with too little memory for it) the interpreter matches the same way.
        _ = pcre2_jit_compile_8(compiled, PCRE2_JIT_COMPLETE)
        code = compiled
        self.pattern = pattern
        var count: UInt32 = 0
        pcre2_pattern_info_8(compiled, UInt32(PCRE2_INFO_CAPTURECOUNT), &count)
        captureCount = Int(count)
        captureNames = PCRERegex.nameTable(of: compiled)
    }

    deinit { pcre2_code_free_8(code) }

    /// Whether `text` matches anywhere (anchor with `^`/`$`).
    public func matches(_ text: String) -> Bool {
        withMatch(text) { _, _ in true } ?? false
    }

    /// The texts of groups 1...captureCount when `text` matches (a group that took no part is empty), nil when it
    /// does not match.
    public func captures(in text: String) -> [String]? {
        let count = captureCount
        return withMatch(text) { bytes, offsets in
            var groups: [String] = []
            groups.reserveCapacity(count)
            for group in stride(from: 1, through: count, by: 1) {
                let start = offsets[2 * group], end = offsets[2 * group + 1]
                if start < 0 || end < start {
                    groups.append("")
                } else {
                    groups.append(String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self))
                }
            }
            return groups
        }
    }

    /// Runs one match and gives `body` the subject's bytes and the offset vector (`PCRE2_UNSET`, all bits set,
    /// reads as -1).
    private func withMatch<T>(_ text: String, _ body: (UnsafeBufferPointer<UInt8>, UnsafeBufferPointer<Int>) -> T) -> T? {
        var text = text
        return text.withUTF8 { bytes -> T? in
            guard let data = pcre2_match_data_create_8(UInt32(captureCount + 1), nil) else { return nil }
            defer { pcre2_match_data_free_8(data) }
            // A non-empty buffer's base address, also for the empty subject (PCRE2 rejects a NULL subject).
            let result = withUnsafePointer(to: UInt8(0)) { empty in
                pcre2_match_8(code, bytes.baseAddress ?? empty, bytes.count, 0, 0, data, nil)
            }
            guard result >= 0 else { return nil }
            let pairs = Int(pcre2_get_ovector_count_8(data))
            let vector = pcre2_get_ovector_pointer_8(data)!
            return vector.withMemoryRebound(to: Int.self, capacity: 2 * pairs) { offsets in
                // Groups beyond what this match set are unset (the result counts the highest set group + 1).
                let set = result == 0 ? pairs : Int(result)
                for index in 2 * set..<2 * pairs { offsets[index] = -1 }
                return body(bytes, UnsafeBufferPointer(start: offsets, count: 2 * pairs))
            }
        }
    }

    private static func message(for code: Int32) -> String {
        var buffer = [UInt8](repeating: 0, count: 256)
        let length = buffer.withUnsafeMutableBufferPointer { pcre2_get_error_message_8(code, $0.baseAddress, $0.count) }
        return length > 0 ? String(decoding: buffer.prefix(Int(length)), as: UTF8.self) : "error \(code)"
    }

    /// The name table: entries of `entrySize` bytes, a big-endian group number and the zero-terminated name.
    private static func nameTable(of code: OpaquePointer) -> [String: Int] {
        var count: UInt32 = 0
        var entrySize: UInt32 = 0
        var table: UnsafePointer<UInt8>? = nil
        pcre2_pattern_info_8(code, UInt32(PCRE2_INFO_NAMECOUNT), &count)
        guard count > 0 else { return [:] }
        pcre2_pattern_info_8(code, UInt32(PCRE2_INFO_NAMEENTRYSIZE), &entrySize)
        pcre2_pattern_info_8(code, UInt32(PCRE2_INFO_NAMETABLE), &table)
        guard let table else { return [:] }
        var names: [String: Int] = [:]
        for index in 0..<Int(count) {
            let entry = table + index * Int(entrySize)
            let group = Int(entry[0]) << 8 | Int(entry[1])
            names[String(cString: entry + 2)] = group
        }
        return names
    }
}

/// A pattern PCRE2 refused: its message (`missing closing parenthesis`) and the offset in the pattern.
public struct PCRERegexError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var offset: Int
    public var description: String { "\(message) at offset \(offset)" }
}
