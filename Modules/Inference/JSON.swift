#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KernelCore
import NIOCore

/// A parsed JSON value. Numbers keep their source text's byte range and are converted only when the element type
/// they are read as is known, so that every type gets one correctly rounded conversion from the decimal text.
public enum JSONValue: Sendable {
    case null
    case bool(Bool)
    /// The number's bytes in the parsed document.
    case number(JSONNumber)
    case string(String)
    case array([JSONValue])
    /// An array whose items are all numbers (tensor data, shapes), kept without wrapping each item.
    case numbers([JSONNumber])
    case object([(key: String, value: JSONValue)])

    /// The member `key` of an object (first occurrence), or nil.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        for member in members where member.key == key { return member.value }
        return nil
    }

    public var stringValue: String? {
        if case .string(let text) = self { return text }
        return nil
    }

    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    public var arrayValue: [JSONValue]? {
        if case .array(let items) = self { return items }
        if case .numbers(let items) = self { return items.map { .number($0) } }
        return nil
    }

    public var isObject: Bool {
        if case .object = self { return true }
        return false
    }

    /// A short name of the kind of value, for error messages.
    public var kindName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array, .numbers: return "an array"
        case .object: return "an object"
        }
    }
}

/// A JSON number as written: sign, the significant digits that fit a UInt64 and a power of ten (the text itself only when it
/// has more digits), plus `NaN`, `Infinity` and `-Infinity` as Python's `json` writes them.
///
/// Keeping the decimal form lets each element type get one correctly rounded conversion (FP32 is not rounded
/// through FP64) without allocating per number.
public struct JSONNumber: Sendable {
    enum Special: UInt8, Sendable { case none, nan, infinity }
    var negative: Bool
    /// Significant digits as an integer.
    var mantissa: UInt64
    /// The power of ten `mantissa` is scaled by.
    var exponent: Int32
    /// Written without fraction or exponent.
    public let isInteger: Bool
    var special: Special
    /// The text, kept only when the digits did not fit `mantissa`.
    var longText: [UInt8]?

    /// The value of eight ASCII digits at `pointer`, or nil when any of the eight bytes is not a digit
    /// (SWAR: the eight bytes are checked and combined as one little-endian 64-bit word).
    @inline(__always)
    static func eightDigits(_ pointer: UnsafePointer<UInt8>) -> UInt64? {
        let word = UInt64(littleEndian: UnsafeRawPointer(pointer).loadUnaligned(as: UInt64.self))
        // Every byte is 0x30...0x39: its high nibble is 3, and adding 6 keeps it 3.
        let high = word & 0xF0F0_F0F0_F0F0_F0F0
        let carried = ((word &+ 0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0) >> 4
        guard high | carried == 0x3333_3333_3333_3333 else { return nil }
        var value = word &- 0x3030_3030_3030_3030
        value = (value &* 10) &+ (value >> 8)            // pairs: d0*10+d1 in bytes 0, 2, 4, 6
        let pairs = value & 0x0000_00FF_0000_00FF          // pairs 0 and 2
        let others = (value >> 16) & 0x0000_00FF_0000_00FF // pairs 1 and 3
        value = (pairs &* (100 + (1_000_000 << 32)) &+ others &* (1 + (10_000 << 32))) >> 32
        return value & 0xFFFF_FFFF
    }

    /// Adds a digit beyond the 19th: kept while the mantissa does not overflow, else dropped (the text is then
    /// kept for conversions) with the exponent adjusted for integer digits.
    @inline(never)
    static func extend(_ mantissa: UInt64, _ digit: UInt8, _ truncated: Bool, _ exponent: Int,
                       fraction: Bool) -> (UInt64, Bool, Int) {
        let (scaled, o1) = mantissa.multipliedReportingOverflow(by: 10)
        let (sum, o2) = scaled.addingReportingOverflow(UInt64(digit))
        if !truncated, !o1, !o2 { return (sum, false, fraction ? exponent - 1 : exponent) }
        return (mantissa, true, fraction ? exponent : exponent + 1)
    }

    /// The value as an integer, or nil when it is not an integer literal or does not fit.
    public var int64: Int64? {
        guard isInteger, longText == nil else { return nil }
        if negative {
            guard mantissa <= UInt64(Int64.max) + 1 else { return nil }
            return mantissa == UInt64(Int64.max) + 1 ? Int64.min : -Int64(mantissa)
        }
        guard mantissa <= UInt64(Int64.max) else { return nil }
        return Int64(mantissa)
    }

    /// The value as an unsigned integer, or nil when negative, not an integer literal, or too large.
    public var uint64: UInt64? {
        guard isInteger, longText == nil else { return nil }
        guard !negative || mantissa == 0 else { return nil }
        return mantissa
    }

    /// The nearest `Double` to the decimal text.
    public var double: Double {
        switch special {
        case .nan: return .nan
        case .infinity: return negative ? -.infinity : .infinity
        case .none: break
        }
        if longText == nil, mantissa < (1 << 53), exponent >= -22, exponent <= 22 {
            // Exact operands and one correctly rounded operation (Clinger's fast path).
            let magnitude = exponent < 0 ? Double(mantissa) / powerOfTen(Int(-exponent))
                                         : Double(mantissa) * powerOfTen(Int(exponent))
            return negative ? -magnitude : magnitude
        }
        return withCString { strtod($0, nil) }
    }

    /// The nearest `Float` to the decimal text (one rounding, not through `Double`).
    public var float: Float {
        switch special {
        case .nan: return .nan
        case .infinity: return negative ? -.infinity : .infinity
        case .none: break
        }
        if longText == nil, let value = JSONNumber.fastFloat(mantissa: mantissa, exponent: Int(exponent), negative: negative) {
            return value
        }
        return withCString { strtof($0, nil) }
    }

    /// The `Float` nearest to `mantissa` × 10^`exponent` where it can be had without the decimal text, else nil (then
    /// the C library rounds the text). `float` and the tensor reader's FP32 path (`Cursor.float32`) both take it.
    @inline(__always)
    static func fastFloat(mantissa: UInt64, exponent: Int, negative: Bool) -> Float? {
        guard exponent >= -22, exponent <= 22 else { return nil }
        if mantissa < (1 << 24), exponent >= -10, exponent <= 10 {
            // Exact operands, one rounding.
            let scale = Float(powerOfTen(abs(exponent)))
            let magnitude = exponent < 0 ? Float(mantissa) / scale : Float(mantissa) * scale
            return negative ? -magnitude : magnitude
        }
        // Python writes FP32 values as the shortest *double* text (17 digits): compute in Double, which lands
        // within 3 units in the last place of the exact value (at most three roundings of relative error 2^-53
        // each: the mantissa, 10^-k, the product; a multiplication, where a division would take several times as
        // long). Rounding that to Float is then exact unless the double lies within those 3 units of a midpoint
        // between two floats, that is unless the 29 bits Float drops are within 4 of 2^28; and the value is a
        // normal float.
        let approximate = Double(mantissa) * (exponent < 0 ? inversePowerOfTen(-exponent) : powerOfTen(exponent))
        let dropped = approximate.significandBitPattern & ((1 << 29) - 1)
        let distance = dropped > (1 << 28) ? dropped - (1 << 28) : (1 << 28) - dropped
        guard distance > 4, approximate >= Double(Float.leastNormalMagnitude),
              approximate < Double(Float.greatestFiniteMagnitude) else { return nil }
        let magnitude = Float(approximate)
        return negative ? -magnitude : magnitude
    }

    /// The number as C text (`-123e-4`) for `strtod`/`strtof`, on the stack.
    private func withCString<T>(_ body: (UnsafePointer<CChar>) -> T) -> T {
        if let longText {
            return withUnsafeTemporaryAllocation(of: CChar.self, capacity: longText.count + 1) { buffer in
                for (index, byte) in longText.enumerated() { buffer[index] = CChar(bitPattern: byte) }
                buffer[longText.count] = 0
                return body(UnsafePointer(buffer.baseAddress!))
            }
        }
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: 48) { buffer in
            var position = 0
            if negative { buffer[position] = CChar(UInt8(ascii: "-")); position += 1 }
            position = appendDigits(of: mantissa, to: buffer, at: position)
            buffer[position] = CChar(UInt8(ascii: "e")); position += 1
            if exponent < 0 { buffer[position] = CChar(UInt8(ascii: "-")); position += 1 }
            position = appendDigits(of: UInt64(exponent.magnitude), to: buffer, at: position)
            buffer[position] = 0
            return body(UnsafePointer(buffer.baseAddress!))
        }
    }

    /// Writes `value` in decimal at `position`; returns the position after it.
    private func appendDigits(of value: UInt64, to buffer: UnsafeMutableBufferPointer<CChar>, at position: Int) -> Int {
        var digits = 0
        var rest = value
        repeat { digits += 1; rest /= 10 } while rest > 0
        rest = value
        for offset in stride(from: digits - 1, through: 0, by: -1) {
            buffer[position + offset] = CChar(UInt8(rest % 10) + 48)
            rest /= 10
        }
        return position + digits
    }
}

/// 10^exponent for 0...22, each exact in a `Double`, and 10^-exponent for 0...22, the `Double` nearest to each (not
/// exact: one rounding, which `fastFloat` allows for). Tables, not switches: the exponents of consecutive tensor
/// elements vary (Python writes 16 or 17 digits), and a switch's jump mispredicts on each change; an array of
/// literals is laid out in the binary at compile time, so reading it costs a load and a bounds check.
private let powersOfTen: [Double] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14,
                                     1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22]
private let inversePowersOfTen: [Double] = [1e-0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11,
                                            1e-12, 1e-13, 1e-14, 1e-15, 1e-16, 1e-17, 1e-18, 1e-19, 1e-20, 1e-21, 1e-22]

/// 10^exponent, exact, for 0...22 (the nearest end of that range for anything else).
@inline(__always)
func powerOfTen(_ exponent: Int) -> Double {
    powersOfTen[max(0, min(exponent, 22))]
}

/// 10^-exponent, nearest, for 0...22 (the nearest end of that range for anything else).
@inline(__always)
func inversePowerOfTen(_ exponent: Int) -> Double {
    inversePowersOfTen[max(0, min(exponent, 22))]
}

/// Why a document is not valid JSON, with the byte offset where parsing stopped.
public struct JSONParseError: Error, Sendable, CustomStringConvertible {
    public var offset: Int
    public var reason: String
    public var description: String { "\(reason) at byte \(offset)" }
}

/// A strict JSON parser (RFC 8259, plus `NaN`/`Infinity` numbers as Python's `json` writes them), with a nesting
/// limit so a hostile document cannot exhaust the stack.
public struct JSONReader {
    public static let maximumDepth = 64

    /// Parses one document from `bytes`; trailing non-space bytes are an error.
    public static func parse<Bytes: Collection<UInt8>>(_ bytes: Bytes) throws -> JSONValue {
        let result: JSONValue? = try bytes.withContiguousStorageIfAvailable { try parse(buffer: $0) }
        if let result { return result }
        return try Array(bytes).withUnsafeBufferPointer { try parse(buffer: $0) }
    }

    /// Parses the readable bytes of `buffer`.
    public static func parse(_ buffer: ByteBuffer) throws -> JSONValue {
        try buffer.withUnsafeReadableBytes { try parse(buffer: $0.bindMemory(to: UInt8.self)) }
    }

    static func parse(buffer: UnsafeBufferPointer<UInt8>) throws -> JSONValue {
        var reader = Cursor(bytes: buffer, index: 0)
        let value = try reader.value(depth: 0)
        reader.skipSpace()
        guard reader.index == buffer.count else { throw reader.error("unexpected data after the JSON value") }
        return value
    }

    struct Cursor {
        let bytes: UnsafeBufferPointer<UInt8>
        var index: Int

        func error(_ reason: String) -> JSONParseError { JSONParseError(offset: index, reason: reason) }

        mutating func skipSpace() {
            while index < bytes.count {
                switch bytes[index] {
                case 0x20, 0x0A, 0x0D, 0x09: index += 1
                default: return
                }
            }
        }

        mutating func value(depth: Int) throws -> JSONValue {
            guard depth < JSONReader.maximumDepth else { throw error("nesting deeper than \(JSONReader.maximumDepth)") }
            skipSpace()
            guard index < bytes.count else { throw error("unexpected end of JSON") }
            switch bytes[index] {
            case UInt8(ascii: "{"): return try object(depth: depth)
            case UInt8(ascii: "["): return try array(depth: depth)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): try literal("true"); return .bool(true)
            case UInt8(ascii: "f"): try literal("false"); return .bool(false)
            case UInt8(ascii: "n"): try literal("null"); return .null
            default: return .number(try number())
            }
        }

        mutating func literal(_ word: StaticString) throws {
            let count = word.utf8CodeUnitCount
            guard index + count <= bytes.count else { throw error("invalid literal") }
            for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] {
                throw error("invalid literal")
            }
            index += count
        }

        mutating func object(depth: Int) throws -> JSONValue {
            index += 1
            var members: [(key: String, value: JSONValue)] = []
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") { index += 1; return .object(members) }
            while true {
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw error("expected a member name") }
                let key = try string()
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw error("expected ':'") }
                index += 1
                members.append((key, try value(depth: depth + 1)))
                skipSpace()
                guard index < bytes.count else { throw error("unexpected end of JSON") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                if bytes[index] == UInt8(ascii: "}") { index += 1; return .object(members) }
                throw error("expected ',' or '}'")
            }
        }

        mutating func array(depth: Int) throws -> JSONValue {
            index += 1
            var items: [JSONValue] = []
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") { index += 1; return .array(items) }
            if index < bytes.count, bytes[index] == UInt8(ascii: "-") || isDigit(bytes[index]) {
                // Tensor data: read a run of numbers without wrapping each in a JSONValue.
                var numbers: [JSONNumber] = []
                while true {
                    numbers.append(try number())
                    skipSpace()
                    guard index < bytes.count else { throw error("unexpected end of JSON") }
                    if bytes[index] == UInt8(ascii: "]") { index += 1; return .numbers(numbers) }
                    guard bytes[index] == UInt8(ascii: ",") else { throw error("expected ',' or ']'") }
                    index += 1
                    skipSpace()
                    guard index < bytes.count else { throw error("unexpected end of JSON") }
                    if !(bytes[index] == UInt8(ascii: "-") || isDigit(bytes[index])) { break }
                }
                items = numbers.map { .number($0) }  // a mixed array: continue item by item
            }
            while true {
                items.append(try value(depth: depth + 1))
                skipSpace()
                guard index < bytes.count else { throw error("unexpected end of JSON") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                if bytes[index] == UInt8(ascii: "]") { index += 1; return .array(items) }
                throw error("expected ',' or ']'")
            }
        }

        mutating func number() throws -> JSONNumber {
            let start = index
            let negative = bytes[index] == UInt8(ascii: "-")
            if negative { index += 1 }
            guard index < bytes.count else { throw error("invalid number") }
            if bytes[index] == UInt8(ascii: "N") {
                guard !negative else { throw error("invalid number") }
                try literal("NaN")
                return JSONNumber(negative: false, mantissa: 0, exponent: 0, isInteger: false, special: .nan)
            }
            if bytes[index] == UInt8(ascii: "I") {
                try literal("Infinity")
                return JSONNumber(negative: negative, mantissa: 0, exponent: 0, isInteger: false, special: .infinity)
            }
            var i = index  // a local cursor: the loops below stay in registers
            var mantissa: UInt64 = 0
            var significant = 0   // digits in mantissa, leading zeros excluded
            var exponent = 0
            var truncated = false
            var integer = true
            let count = bytes.count
            // Integer part. Up to 19 significant digits always fit a UInt64 (no overflow checks needed).
            let digitsStart = i
            while i < count {
                let digit = bytes[i] &- 48
                guard digit < 10 else { break }
                if significant < 19 {
                    mantissa = mantissa &* 10 &+ UInt64(digit)
                    if mantissa != 0 { significant += 1 }
                } else {
                    (mantissa, truncated, exponent) = JSONNumber.extend(mantissa, digit, truncated, exponent, fraction: false)
                }
                i += 1
            }
            let integerDigits = i - digitsStart
            guard integerDigits > 0 else { index = i; throw error("invalid number") }
            guard integerDigits == 1 || bytes[digitsStart] != UInt8(ascii: "0") else { index = i; throw error("invalid number (leading zero)") }
            if i < count, bytes[i] == UInt8(ascii: ".") {
                integer = false
                i += 1
                let fractionStart = i
                // Eight digits at a time while they surely fit (counting leading zeros as significant only makes
                // the checked path below start earlier).
                while significant <= 11, i + 8 <= count, let eight = JSONNumber.eightDigits(bytes.baseAddress! + i) {
                    mantissa = mantissa &* 100_000_000 &+ eight
                    significant += mantissa == 0 ? 0 : 8
                    exponent -= 8
                    i += 8
                }
                while i < count {
                    let digit = bytes[i] &- 48
                    guard digit < 10 else { break }
                    if significant < 19 {
                        mantissa = mantissa &* 10 &+ UInt64(digit)
                        if mantissa != 0 { significant += 1 }
                        exponent -= 1
                    } else {
                        (mantissa, truncated, exponent) = JSONNumber.extend(mantissa, digit, truncated, exponent, fraction: true)
                    }
                    i += 1
                }
                guard i > fractionStart else { index = i; throw error("invalid number") }
            }
            if i < count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
                integer = false
                i += 1
                var negativeExponent = false
                if i < count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") {
                    negativeExponent = bytes[i] == UInt8(ascii: "-")
                    i += 1
                }
                let exponentStart = i
                var written = 0
                while i < count, isDigit(bytes[i]) {
                    if written < 100_000 { written = written * 10 + Int(bytes[i] - 48) }
                    i += 1
                }
                guard i > exponentStart else { index = i; throw error("invalid number") }
                exponent += negativeExponent ? -written : written
            }
            // Out-of-range exponents saturate: strtod/strtof then give 0 or infinity as the text would.
            let clamped = Int32(clamping: max(-100_000, min(100_000, exponent)))
            let number = JSONNumber(negative: negative, mantissa: mantissa, exponent: clamped, isInteger: integer && !truncated,
                                    special: .none, longText: truncated ? Array(bytes[start..<i]) : nil)
            // Past a double's range is an error, as rapidjson (Triton's reader) has it; below it is 0.
            if mantissa != 0, exponent > 308 - 19 {
                var digits = 0
                var rest = mantissa
                while rest > 0 { digits += 1; rest /= 10 }
                let order = digits + exponent - 1
                if order > 308 || (order == 308 && number.double.isInfinite) {
                    index = start
                    throw error("Number too big to be stored in double")
                }
            }
            index = i
            return number
        }

        /// An FP32 tensor element: the plain forms (at most 19 digits, an exponent of at most 4 digits) are read and
        /// converted in one pass without making a `JSONNumber`; anything else, errors included, is left to `number()`
        /// from the same place, so the value and the error are exactly `number().float`'s.
        @inline(__always)
        mutating func float32() throws -> Float {
            let start = index
            let count = bytes.count
            let base = bytes.baseAddress!
            var i = index
            let negative = base[i] == UInt8(ascii: "-")
            if negative { i += 1 }
            var mantissa: UInt64 = 0
            var digits = 0
            let integerStart = i
            while i < count {
                let digit = base[i] &- 48
                guard digit < 10 else { break }
                mantissa = mantissa &* 10 &+ UInt64(digit)
                digits += 1
                i += 1
            }
            var exponent = 0
            // No integer digit, a leading zero, or too many digits: the general reader decides.
            guard digits > 0, digits <= 19, digits == 1 || base[integerStart] != UInt8(ascii: "0") else {
                index = start
                return try number().float
            }
            if i < count, base[i] == UInt8(ascii: ".") {
                i += 1
                let fractionStart = i
                while digits <= 11, i + 8 <= count, let eight = JSONNumber.eightDigits(base + i) {
                    mantissa = mantissa &* 100_000_000 &+ eight
                    digits += 8
                    i += 8
                }
                while i < count {
                    let digit = base[i] &- 48
                    guard digit < 10 else { break }
                    mantissa = mantissa &* 10 &+ UInt64(digit)
                    digits += 1
                    i += 1
                    if digits > 19 { break }
                }
                exponent = fractionStart - i
                guard i > fractionStart, digits <= 19 else {
                    index = start
                    return try number().float
                }
            }
            if i < count, base[i] | 0x20 == UInt8(ascii: "e") {
                i += 1
                var negativeExponent = false
                if i < count, base[i] == UInt8(ascii: "+") || base[i] == UInt8(ascii: "-") {
                    negativeExponent = base[i] == UInt8(ascii: "-")
                    i += 1
                }
                let exponentStart = i
                var written = 0
                while i < count, i - exponentStart < 5 {
                    let digit = base[i] &- 48
                    guard digit < 10 else { break }
                    written = written * 10 + Int(digit)
                    i += 1
                }
                guard i > exponentStart, i - exponentStart < 5, i == count || (base[i] &- 48) >= 10 else {
                    index = start
                    return try number().float
                }
                exponent += negativeExponent ? -written : written
            }
            guard let value = JSONNumber.fastFloat(mantissa: mantissa, exponent: exponent, negative: negative) else {
                index = start
                return try number().float
            }
            index = i
            return value
        }

        @inline(__always) func isDigit(_ byte: UInt8) -> Bool { byte >= 48 && byte <= 57 }

        /// A string's content: where it lies in the document when it has no escape, else its decoded bytes.
        enum StringContent {
            case source(Range<Int>)
            case decoded([UInt8])
        }

        mutating func string() throws -> String {
            switch try stringContent() {
            case .source(let range): return String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self)
            case .decoded(let scalars): return String(decoding: scalars, as: UTF8.self)
            }
        }

        /// Reads the string at the cursor (at its opening quote) without making a `String`.
        mutating func stringContent() throws -> StringContent {
            index += 1
            let start = index
            // Fast path: no escapes.
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\"") {
                    index += 1
                    return .source(start..<index - 1)
                }
                if byte == UInt8(ascii: "\\") { break }
                guard byte >= 0x20 else { throw error("control character in string") }
                index += 1
            }
            var scalars = Array(bytes[start..<index])
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\"") {
                    index += 1
                    return .decoded(scalars)
                }
                guard byte >= 0x20 else { throw error("control character in string") }
                if byte != UInt8(ascii: "\\") {
                    scalars.append(byte)
                    index += 1
                    continue
                }
                index += 1
                guard index < bytes.count else { break }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""): scalars.append(0x22)
                case UInt8(ascii: "\\"): scalars.append(0x5C)
                case UInt8(ascii: "/"): scalars.append(0x2F)
                case UInt8(ascii: "b"): scalars.append(0x08)
                case UInt8(ascii: "f"): scalars.append(0x0C)
                case UInt8(ascii: "n"): scalars.append(0x0A)
                case UInt8(ascii: "r"): scalars.append(0x0D)
                case UInt8(ascii: "t"): scalars.append(0x09)
                case UInt8(ascii: "u"):
                    var code = try hex4()
                    if code >= 0xD800 && code < 0xDC00 {
                        guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                            throw error("unpaired surrogate")
                        }
                        index += 2
                        let low = try hex4()
                        guard low >= 0xDC00 && low < 0xE000 else { throw error("unpaired surrogate") }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    } else if code >= 0xDC00 && code < 0xE000 {
                        throw error("unpaired surrogate")
                    }
                    scalars.append(contentsOf: String(Character(Unicode.Scalar(code)!)).utf8)
                default:
                    throw error("invalid escape")
                }
            }
            throw error("unterminated string")
        }

        /// Checks and passes over one value without building it (members the reader does not use).
        mutating func skipValue(depth: Int) throws {
            guard depth < JSONReader.maximumDepth else { throw error("nesting deeper than \(JSONReader.maximumDepth)") }
            skipSpace()
            guard index < bytes.count else { throw error("unexpected end of JSON") }
            switch bytes[index] {
            case UInt8(ascii: "{"):
                index += 1
                skipSpace()
                if index < bytes.count, bytes[index] == UInt8(ascii: "}") { index += 1; return }
                while true {
                    skipSpace()
                    guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw error("expected a member name") }
                    _ = try stringContent()
                    skipSpace()
                    guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw error("expected ':'") }
                    index += 1
                    try skipValue(depth: depth + 1)
                    skipSpace()
                    guard index < bytes.count else { throw error("unexpected end of JSON") }
                    if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                    if bytes[index] == UInt8(ascii: "}") { index += 1; return }
                    throw error("expected ',' or '}'")
                }
            case UInt8(ascii: "["):
                index += 1
                skipSpace()
                if index < bytes.count, bytes[index] == UInt8(ascii: "]") { index += 1; return }
                while true {
                    try skipValue(depth: depth + 1)
                    skipSpace()
                    guard index < bytes.count else { throw error("unexpected end of JSON") }
                    if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                    if bytes[index] == UInt8(ascii: "]") { index += 1; return }
                    throw error("expected ',' or ']'")
                }
            case UInt8(ascii: "\""): _ = try stringContent()
            case UInt8(ascii: "t"): try literal("true")
            case UInt8(ascii: "f"): try literal("false")
            case UInt8(ascii: "n"): try literal("null")
            default: _ = try number()
            }
        }

        /// Reads `expected` (after space), or throws `error(reason)`.
        mutating func expect(_ byte: UInt8, _ reason: String) throws {
            skipSpace()
            guard index < bytes.count, bytes[index] == byte else { throw error(reason) }
            index += 1
        }

        /// After a member or item: true for ',' (another follows), false for `close`; anything else is an error.
        mutating func next(close: UInt8) throws -> Bool {
            skipSpace()
            guard index < bytes.count else { throw error("unexpected end of JSON") }
            if bytes[index] == UInt8(ascii: ",") { index += 1; return true }
            if bytes[index] == close { index += 1; return false }
            throw error(close == UInt8(ascii: "}") ? "expected ',' or '}'" : "expected ',' or ']'")
        }

        mutating func hex4() throws -> UInt32 {
            guard index + 4 <= bytes.count else { throw error("invalid \\u escape") }
            var value: UInt32 = 0
            for _ in 0..<4 {
                let byte = bytes[index]
                let digit: UInt32
                switch byte {
                case 48...57: digit = UInt32(byte - 48)
                case 65...70: digit = UInt32(byte - 55)
                case 97...102: digit = UInt32(byte - 87)
                default: throw error("invalid \\u escape")
                }
                value = value << 4 | digit
                index += 1
            }
            return value
        }
    }
}

/// Appends JSON text to a `ByteBuffer` without building intermediate strings for structure.
public struct JSONWriter: Sendable {
    public var buffer: ByteBuffer

    public init(buffer: ByteBuffer) { self.buffer = buffer }

    @inline(__always) public mutating func raw(_ text: StaticString) { buffer.writeStaticString(text) }

    @inline(__always) public mutating func byte(_ byte: UInt8) { buffer.writeInteger(byte) }

    /// A JSON string literal with the escapes JSON requires (the core's one escaper).
    @inline(__always) public mutating func string(_ text: String) { JSONText.writeQuoted(text, into: &buffer) }

    /// An integer in decimal, written digit by digit.
    public mutating func integer<T: BinaryInteger>(_ value: T) {
        if value == 0 { buffer.writeInteger(UInt8(ascii: "0")); return }
        var magnitude = value.magnitude
        if value < 0 { buffer.writeInteger(UInt8(ascii: "-")) }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes of scratch, enough for 20 digits
        let count = withUnsafeMutableBytes(of: &digits) { scratch -> Int in
            var position = scratch.count
            while magnitude > 0 {
                position -= 1
                scratch[position] = UInt8(truncatingIfNeeded: magnitude % 10) + 48
                magnitude /= 10
            }
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: scratch[position...]))
            return scratch.count - position
        }
        _ = count
    }

    /// `[a,b,...]`: a list of integers (a shape, dimensions, batch sizes).
    public mutating func integers<Values: Sequence>(_ values: Values) where Values.Element: BinaryInteger {
        byte(UInt8(ascii: "["))
        var first = true
        for value in values {
            if !first { byte(UInt8(ascii: ",")) }
            first = false
            integer(value)
        }
        byte(UInt8(ascii: "]"))
    }

    /// The shortest text that reads back as the same `Float` (Swift's `description`); NaN and infinities as
    /// Python's `json` writes them.
    public mutating func float(_ value: Float) {
        if value.isFinite { buffer.writeString(value.description) } else { nonFinite(Double(value)) }
    }

    /// The shortest text that reads back as the same `Double`.
    public mutating func double(_ value: Double) {
        if value.isFinite { buffer.writeString(value.description) } else { nonFinite(value) }
    }

    private mutating func nonFinite(_ value: Double) {
        if value.isNaN { buffer.writeStaticString("NaN") }
        else { buffer.writeStaticString(value < 0 ? "-Infinity" : "Infinity") }
    }
}

extension JSONWriter {
    /// `bytes` as a JSON string literal, escaped byte by byte as `JSONText` escapes text (`"`, `\`, and control
    /// characters; `\u0000` for NUL); other bytes are copied as they are. A string with nothing to escape is copied
    /// in one piece.
    static func writeQuoted(bytes: UnsafeRawBufferPointer, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "\""))
        guard bytes.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C }) else {
            buffer.writeBytes(bytes)
            buffer.writeInteger(UInt8(ascii: "\""))
            return
        }
        let hex: StaticString = "0123456789abcdef"
        for byte in bytes {
            switch byte {
            case 0x22: buffer.writeStaticString("\\\"")
            case 0x5C: buffer.writeStaticString("\\\\")
            case 0x0A: buffer.writeStaticString("\\n")
            case 0x0D: buffer.writeStaticString("\\r")
            case 0x09: buffer.writeStaticString("\\t")
            case 0..<0x20:
                buffer.writeStaticString("\\u00")
                buffer.writeInteger(hex.utf8Start[Int(byte >> 4)])
                buffer.writeInteger(hex.utf8Start[Int(byte & 0xF)])
            default: buffer.writeInteger(byte)
            }
        }
        buffer.writeInteger(UInt8(ascii: "\""))
    }
}
