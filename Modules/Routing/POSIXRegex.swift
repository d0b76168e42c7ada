import Atomics
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A regular expression of a `~`/`~*` location or a `~` server name, compiled with the C library's POSIX
/// `regcomp` (extended syntax) after `PCRESyntax` translated the common PCRE spellings nginx users write.
///
/// glibc serialises `regexec` calls on one compiled expression with a lock inside it, so the expression is compiled
/// once per event-loop thread: a match takes the first copy nobody uses (one atomic exchange) and only falls back
/// to sharing the first copy when more threads than copies match at once.
final class POSIXRegex: @unchecked Sendable {
    /// The expression as written in the configuration.
    let pattern: String
    /// Capturing groups, counted as PCRE counts them (`(?:...)` does not count).
    let captureCount: Int
    private let capturingGroups: [Int]
    private let groupCount: Int
    private let copies: UnsafeMutablePointer<regex_t>
    private let copyCount: Int
    private let inUse: [ManagedAtomic<Bool>]

    /// Compiles `pattern`; throws `RegexSyntaxError` with the reason when it is not valid.
    init(_ pattern: String, caseInsensitive: Bool, copies copyCount: Int) throws {
        let translated = try PCRESyntax.translate(pattern)
        self.pattern = pattern
        capturingGroups = translated.capturingGroups
        captureCount = translated.capturingGroups.count
        self.copyCount = max(1, copyCount)
        let storage = UnsafeMutablePointer<regex_t>.allocate(capacity: self.copyCount)
        var flags = REG_EXTENDED
        if caseInsensitive { flags |= REG_ICASE }
        if translated.capturingGroups.isEmpty { flags |= REG_NOSUB }
        var compiled = 0
        var groups = 0
        do {
            for index in 0..<self.copyCount {
                let status = regcomp(storage + index, translated.expression, flags)
                guard status == 0 else {
                    var message = [UInt8](repeating: 0, count: 256)
                    message.withUnsafeMutableBufferPointer { buffer in
                        buffer.withMemoryRebound(to: CChar.self) { _ = regerror(status, storage + index, $0.baseAddress, $0.count) }
                    }
                    throw RegexSyntaxError(reason: String(decoding: message.prefix { $0 != 0 }, as: UTF8.self))
                }
                compiled += 1
                groups = Int(storage[index].re_nsub)
            }
        } catch {
            for index in 0..<compiled { regfree(storage + index) }
            storage.deallocate()
            throw error
        }
        copies = storage
        groupCount = groups
        inUse = (0..<self.copyCount).map { _ in ManagedAtomic(false) }
    }

    deinit {
        for index in 0..<copyCount { regfree(copies + index) }
        copies.deallocate()
    }

    /// Whether `text` matches anywhere (as PCRE's search does; anchor with `^`/`$`).
    func matches(_ text: String) -> Bool {
        withCopy { regex in
            text.withCString { regexec(regex, $0, 0, nil, 0) == 0 }
        }
    }

    /// The capturing groups' texts when `text` matches (an unmatched group is empty), nil otherwise.
    func captures(in text: String) -> [String]? {
        guard captureCount > 0 else { return matches(text) ? [] : nil }
        let slots = groupCount + 1
        return withCopy { regex in
            text.withCString { cString in
                withUnsafeTemporaryAllocation(of: regmatch_t.self, capacity: slots) { matches -> [String]? in
                    guard regexec(regex, cString, slots, matches.baseAddress, 0) == 0 else { return nil }
                    var result: [String] = []
                    result.reserveCapacity(captureCount)
                    for group in capturingGroups {
                        let match = matches[group]
                        guard match.rm_so >= 0, match.rm_eo >= match.rm_so else {
                            result.append("")
                            continue
                        }
                        let bytes = UnsafeRawBufferPointer(start: UnsafeRawPointer(cString) + Int(match.rm_so),
                                                           count: Int(match.rm_eo - match.rm_so))
                        result.append(String(decoding: bytes, as: UTF8.self))
                    }
                    return result
                }
            }
        }
    }

    private func withCopy<Result>(_ body: (UnsafeMutablePointer<regex_t>) -> Result) -> Result {
        for index in 0..<copyCount
        where inUse[index].compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
            defer { inUse[index].store(false, ordering: .releasing) }
            return body(copies + index)
        }
        // Every copy is busy: glibc's own lock makes sharing the first one safe, only slower.
        return body(copies)
    }
}

/// Why a regular expression was rejected.
struct RegexSyntaxError: Error, CustomStringConvertible {
    var reason: String
    var description: String { reason }
}

/// Translates the PCRE spellings common in nginx configurations into POSIX extended syntax, and rejects the PCRE
/// features POSIX lacks instead of letting them silently mean something else (POSIX reads `\d` as a plain `d`).
///
/// Translated: `\d` `\D` (outside and inside brackets), `\w` `\s` inside brackets, `\.`-style escapes inside
/// brackets, and non-capturing groups `(?:...)` (their group numbers are hidden, so `$1` stays PCRE's `$1`).
/// Rejected: other `(?...)` groups, lazy and possessive quantifiers, letter escapes POSIX does not know.
enum PCRESyntax {
    struct Translation {
        /// The POSIX extended expression.
        var expression: String
        /// The POSIX group numbers (1-based) of the capturing groups, in PCRE's order.
        var capturingGroups: [Int]
    }

    static func translate(_ pattern: String) throws -> Translation {
        let source = Array(pattern.utf8)
        guard !source.isEmpty else { throw RegexSyntaxError(reason: "empty regular expression") }
        var output: [UInt8] = []
        output.reserveCapacity(source.count + 8)
        var groups: [Int] = []
        var groupNumber = 0
        var index = 0
        func byte(_ character: Unicode.Scalar) -> UInt8 { UInt8(ascii: character) }
        while index < source.count {
            let character = source[index]
            switch character {
            case byte("\\"):
                guard index + 1 < source.count else { throw RegexSyntaxError(reason: "trailing backslash") }
                let escaped = source[index + 1]
                switch escaped {
                case byte("d"): output += Array("[0-9]".utf8)
                case byte("D"): output += Array("[^0-9]".utf8)
                // GNU extensions that mean what PCRE means.
                case byte("w"), byte("W"), byte("s"), byte("S"), byte("b"), byte("B"):
                    output += [character, escaped]
                default:
                    if isAlphanumeric(escaped) {
                        throw RegexSyntaxError(reason: "\"\\\(Unicode.Scalar(escaped))\" is not supported (POSIX extended syntax with \\d, \\w, \\s, \\b)")
                    }
                    output += [character, escaped]
                }
                index += 2
            case byte("["):
                index = try translateBracket(source, from: index, into: &output)
            case byte("("):
                if index + 1 < source.count, source[index + 1] == byte("?") {
                    guard index + 2 < source.count, source[index + 2] == byte(":") else {
                        throw RegexSyntaxError(reason: "\"(?\" groups other than \"(?:...)\" are not supported")
                    }
                    groupNumber += 1
                    output.append(character)
                    index += 3
                } else {
                    groupNumber += 1
                    groups.append(groupNumber)
                    output.append(character)
                    index += 1
                }
            case byte("*"), byte("+"), byte("?"):
                output.append(character)
                index += 1
                if index < source.count, source[index] == byte("?") || source[index] == byte("+") {
                    throw RegexSyntaxError(reason: "lazy and possessive quantifiers (*?, +?, ??, *+) are not supported")
                }
            default:
                output.append(character)
                index += 1
            }
        }
        return Translation(expression: String(decoding: output, as: UTF8.self), capturingGroups: groups)
    }

    /// Copies one bracket expression starting at `start` (the `[`); returns the index after its `]`.
    private static func translateBracket(_ source: [UInt8], from start: Int, into output: inout [UInt8]) throws -> Int {
        func byte(_ character: Unicode.Scalar) -> UInt8 { UInt8(ascii: character) }
        var index = start + 1
        output.append(byte("["))
        if index < source.count, source[index] == byte("^") {
            output.append(byte("^"))
            index += 1
        }
        if index < source.count, source[index] == byte("]") {
            output.append(byte("]"))
            index += 1
        }
        while index < source.count, source[index] != byte("]") {
            let character = source[index]
            if character == byte("["), index + 1 < source.count,
               [byte(":"), byte("."), byte("=")].contains(source[index + 1]) {
                // A POSIX class such as [:alpha:]: copy through its closing ":]".
                let kind = source[index + 1]
                var end = index + 2
                while end + 1 < source.count, !(source[end] == kind && source[end + 1] == byte("]")) { end += 1 }
                guard end + 1 < source.count else { throw RegexSyntaxError(reason: "unterminated \"[\(Unicode.Scalar(kind))\"") }
                output += source[index...(end + 1)]
                index = end + 2
            } else if character == byte("\\") {
                guard index + 1 < source.count else { throw RegexSyntaxError(reason: "trailing backslash") }
                let escaped = source[index + 1]
                switch escaped {
                case byte("d"): output += Array("0-9".utf8)
                case byte("w"): output += Array("[:alnum:]_".utf8)
                case byte("s"): output += Array("[:space:]".utf8)
                // Inside POSIX brackets a backslash is an ordinary character.
                case byte("\\"): output.append(escaped)
                case byte("]"), byte("-"), byte("^"):
                    throw RegexSyntaxError(reason: "write \"\(Unicode.Scalar(escaped))\" unescaped inside [...]: \"]\" first, \"-\" last, \"^\" not first")
                default:
                    if isAlphanumeric(escaped) {
                        throw RegexSyntaxError(reason: "\"\\\(Unicode.Scalar(escaped))\" is not supported inside [...]")
                    }
                    output.append(escaped)
                }
                index += 2
            } else {
                output.append(character)
                index += 1
            }
        }
        guard index < source.count else { throw RegexSyntaxError(reason: "unterminated \"[\"") }
        output.append(byte("]"))
        return index + 1
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122)
    }
}
