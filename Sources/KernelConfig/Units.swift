/// A byte count written with nginx's units: `512`, `64k`, `100m`, `1g` (multiples of 1024).
public struct ByteSize: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var bytes: Int

    public init(bytes: Int) { self.bytes = bytes }

    public init?(parsing text: String) {
        var digits = Substring(text.trimmingSpaces())
        var multiplier = 1
        switch digits.last {
        case "k", "K": multiplier = 1 << 10
        case "m", "M": multiplier = 1 << 20
        case "g", "G": multiplier = 1 << 30
        default: break
        }
        if multiplier != 1 { digits = digits.dropLast() }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int(digits) else { return nil }
        let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { return nil }
        bytes = product
    }

    public static func < (a: ByteSize, b: ByteSize) -> Bool { a.bytes < b.bytes }

    public var description: String {
        if bytes != 0 && bytes % (1 << 30) == 0 { return "\(bytes >> 30)g" }
        if bytes != 0 && bytes % (1 << 20) == 0 { return "\(bytes >> 20)m" }
        if bytes != 0 && bytes % (1 << 10) == 0 { return "\(bytes >> 10)k" }
        return "\(bytes)"
    }
}

/// A duration written with nginx's units: `ms`, `s`, `m`, `h`, `d`, `w`, combinable (`1h30m`, `1m 30s`);
/// a bare number is seconds.
public struct ConfigDuration: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var milliseconds: Int64

    public init(milliseconds: Int64) { self.milliseconds = milliseconds }

    public init?(parsing text: String) {
        let source = Array(text.trimmingSpaces().utf8)
        guard !source.isEmpty else { return nil }
        var index = 0
        var total: Int64 = 0
        while index < source.count {
            if source[index] == UInt8(ascii: " ") { index += 1; continue }
            var value: Int64 = 0
            let start = index
            while index < source.count, source[index] >= 48, source[index] <= 57 {
                let (m, o1) = value.multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(Int64(source[index] - 48))
                guard !o1, !o2 else { return nil }
                value = a
                index += 1
            }
            guard index > start else { return nil }
            var unit: Int64 = 1000
            if index < source.count {
                switch source[index] {
                case UInt8(ascii: "m"):
                    if index + 1 < source.count, source[index + 1] == UInt8(ascii: "s") {
                        unit = 1; index += 2
                    } else {
                        unit = 60_000; index += 1
                    }
                case UInt8(ascii: "s"): unit = 1000; index += 1
                case UInt8(ascii: "h"): unit = 3_600_000; index += 1
                case UInt8(ascii: "d"): unit = 86_400_000; index += 1
                case UInt8(ascii: "w"): unit = 604_800_000; index += 1
                case UInt8(ascii: " "): break
                default: return nil
                }
            }
            let (product, o1) = value.multipliedReportingOverflow(by: unit)
            let (sum, o2) = total.addingReportingOverflow(product)
            guard !o1, !o2 else { return nil }
            total = sum
        }
        guard total <= ConfigDuration.maximum.milliseconds else { return nil }
        milliseconds = total
    }

    /// The longest duration accepted (365 days): every conversion of a configured duration (to nanoseconds, to a
    /// timer) then stays far inside Int64.
    public static let maximum = ConfigDuration(milliseconds: 365 * 86_400_000)

    public static func seconds(_ value: Int64) -> ConfigDuration { ConfigDuration(milliseconds: value * 1000) }

    public var nanoseconds: Int64 { milliseconds * 1_000_000 }
    public var seconds: Double { Double(milliseconds) / 1000 }

    public static func < (a: ConfigDuration, b: ConfigDuration) -> Bool { a.milliseconds < b.milliseconds }

    public var description: String {
        if milliseconds % 1000 != 0 { return "\(milliseconds)ms" }
        let s = milliseconds / 1000
        if s != 0 && s % 3600 == 0 { return "\(s / 3600)h" }
        if s != 0 && s % 60 == 0 { return "\(s / 60)m" }
        return "\(s)s"
    }
}

extension String {
    func trimmingSpaces() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first == " " || first == "\t" { scalars.removeFirst() }
        while let last = scalars.last, last == " " || last == "\t" { scalars.removeLast() }
        return String(scalars)
    }
}
