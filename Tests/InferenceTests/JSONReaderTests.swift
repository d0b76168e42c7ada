import NIOCore
import XCTest
@testable import Inference

final class JSONReaderTests: XCTestCase {
    private func parse(_ text: String) throws -> JSONValue { try JSONReader.parse(Array(text.utf8)) }

    private func number(_ text: String) throws -> JSONNumber {
        guard case .number(let number) = try parse(text) else {
            XCTFail("\(text) is not a number")
            throw JSONParseError(offset: 0, reason: "not a number")
        }
        return number
    }

    func testParsesNestedDocument() throws {
        let value = try parse(#" {"a": [1, -2.5e1, true, null, "x\n\u00e9\ud83d\ude00"], "b": {}} "#)
        let items = try XCTUnwrap(value["a"]?.arrayValue)
        XCTAssertEqual(items.count, 5)
        guard case .number(let first) = items[0], case .number(let second) = items[1] else { return XCTFail() }
        XCTAssertEqual(first.int64, 1)
        XCTAssertEqual(second.double, -25)
        XCTAssertNil(second.int64)
        XCTAssertEqual(items[2].boolValue, true)
        XCTAssertEqual(items[4].stringValue, "x\né😀")
        XCTAssertTrue(value["b"]?.isObject ?? false)
    }

    func testRejectsMalformedDocuments() {
        for text in ["", "{", "[1,]", "{\"a\" 1}", "01", "1.", "-", "[1] x", "\"\u{01}\"", "tru", "\"\\ud800\"", "{\"a\":1,}"] {
            XCTAssertThrowsError(try parse(text), "accepted \(text.debugDescription)")
        }
    }

    func testLimitsNesting() {
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        XCTAssertThrowsError(try parse(deep))
        let fine = String(repeating: "[", count: 10) + String(repeating: "]", count: 10)
        XCTAssertNoThrow(try parse(fine))
    }

    func testFloatConversionIsCorrectlyRounded() throws {
        // Each text must give exactly what Swift's correctly rounded Float(String)/Double(String) give.
        let texts = ["0.1", "0.10000000149011612", "1e-45", "1.4e-45", "3.4028235e38", "3.4028236e38", "-0.0",
                     "16777217", "0.30000001192092896", "123456789012345678901234567890", "2.5e-3", "1E+2",
                     "0.000000000000000000000000000000000000011754943508222875", "7.038531e-26", "1e-400",
                     "1.7976931348623157e308", "179769313486231570000000000000000000000000000000000000000000000e246"]
        for text in texts {
            XCTAssertEqual(try number(text).float.bitPattern, Float(text)!.bitPattern, text)
            XCTAssertEqual(try number(text).double.bitPattern, Double(text)!.bitPattern, text)
        }
        XCTAssertTrue(try number("NaN").float.isNaN)
        XCTAssertEqual(try number("-Infinity").double, -.infinity)
        // Past a double's range: an error, as rapidjson (Triton's reader) has it.
        for text in ["1e400", "-1e999999999", "1.8e308", "17976931348623159e292", "100000000000000000000000e300"] {
            XCTAssertThrowsError(try number(text), text) { error in
                XCTAssertTrue("\(error)".contains("Number too big to be stored in double"), "\(error)")
            }
        }
    }

    func testFloatFromPythonStyleDoubleTextIsExact() throws {
        // Python sends FP32 data as the shortest text of the double holding the float (`0.10000000149011612`).
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            let value = Float(bitPattern: UInt32.random(in: 0...UInt32.max, using: &generator))
            guard value.isFinite else { continue }
            let text = Double(value).description
            XCTAssertEqual(try number(text).float.bitPattern, value.bitPattern, text)
        }
    }

    func testFloatFromArbitraryDecimalsMatchesCorrectRounding() throws {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            let digits = (0..<Int.random(in: 1...19, using: &generator)).map { _ in String(Int.random(in: 0...9, using: &generator)) }.joined()
            let text = "\(Bool.random(using: &generator) ? "-" : "")\(Int.random(in: 1...9, using: &generator))\(digits)e\(Int.random(in: -40...20, using: &generator))"
            XCTAssertEqual(try number(text).float.bitPattern, Float(text)!.bitPattern, text)
            XCTAssertEqual(try number(text).double.bitPattern, Double(text)!.bitPattern, text)
        }
        // Fractions of every length (the digit loop takes eight at a time), leading zeros included.
        for _ in 0..<20_000 {
            let integer = Bool.random(using: &generator) ? "0" : String(Int.random(in: 1...99_999, using: &generator))
            let zeros = String(repeating: "0", count: Int.random(in: 0...12, using: &generator))
            let digits = (0..<Int.random(in: 1...25, using: &generator)).map { _ in String(Int.random(in: 0...9, using: &generator)) }.joined()
            let text = "\(integer).\(zeros)\(digits)"
            XCTAssertEqual(try number(text).float.bitPattern, Float(text)!.bitPattern, text)
            XCTAssertEqual(try number(text).double.bitPattern, Double(text)!.bitPattern, text)
        }
        // Midpoints between adjacent floats, written exactly: ties round to even.
        for bits in stride(from: UInt32(0x3F80_0000), to: 0x3F80_0000 + 2000, by: 1) {
            let low = Double(Float(bitPattern: bits)), high = Double(Float(bitPattern: bits + 1))
            let text = ((low + high) / 2).description
            XCTAssertEqual(try number(text).float.bitPattern, Float(text)!.bitPattern, text)
        }
    }

    func testIntegerRanges() throws {
        XCTAssertEqual(try number("-9223372036854775808").int64, Int64.min)
        XCTAssertNil(try number("9223372036854775808").int64)
        XCTAssertEqual(try number("18446744073709551615").uint64, UInt64.max)
        XCTAssertNil(try number("18446744073709551616").uint64)
        XCTAssertNil(try number("-1").uint64)
        XCTAssertNil(try number("1.0").int64)
    }

    func testWriterRoundTripsFloatsAndEscapesStrings() throws {
        var writer = JSONWriter(buffer: ByteBuffer())
        let values: [Float] = [0.1, 1, -0.0, 1e-45, 3.4028235e38, 1.0 / 3.0, 123456.79]
        writer.raw("[")
        for (index, value) in values.enumerated() {
            if index > 0 { writer.raw(",") }
            writer.float(value)
        }
        writer.raw(",")
        writer.string("a\"b\\c\n\u{1}")
        writer.raw(",")
        writer.integer(Int64.min)
        writer.raw("]")
        let parsed = try XCTUnwrap(try JSONReader.parse(writer.buffer).arrayValue)
        for (index, value) in values.enumerated() {
            guard case .number(let number) = parsed[index] else { return XCTFail() }
            XCTAssertEqual(number.float.bitPattern, value.bitPattern)
        }
        XCTAssertEqual(parsed[values.count].stringValue, "a\"b\\c\n\u{1}")
        guard case .number(let last) = parsed[values.count + 1] else { return XCTFail() }
        XCTAssertEqual(last.int64, Int64.min)
    }
}
