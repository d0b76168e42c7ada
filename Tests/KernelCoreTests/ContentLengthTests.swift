import KernelCore
import XCTest

/// The one Content-Length rule of every listener and of `uwsgi_pass` (nginx's `ngx_atoof`).
final class ContentLengthTests: XCTestCase {
    func testDigitsUpToIntMax() {
        XCTAssertEqual(ContentLength.parse("0"), 0)
        XCTAssertEqual(ContentLength.parse("5"), 5)
        XCTAssertEqual(ContentLength.parse("10485760"), 10_485_760)
        XCTAssertEqual(ContentLength.parse("999999999999999999"), 999_999_999_999_999_999)  // 18 digits
        XCTAssertEqual(ContentLength.parse("9223372036854775807"), Int.max)  // 19 digits, NGX_MAX_OFF_T_VALUE
    }

    func testBeyondIntMaxIsInvalidNotTrapped() {
        XCTAssertNil(ContentLength.parse("9223372036854775808"))  // Int.max + 1: the overflow of the last addition
        XCTAssertNil(ContentLength.parse("9999999999999999999"))  // 19 digits, overflows in the multiplication
        XCTAssertNil(ContentLength.parse("10000000000000000000"))  // 20 digits
        XCTAssertNil(ContentLength.parse(String(repeating: "9", count: 400)))
    }

    func testLeadingZerosDoNotCountAgainstTheLimit() {
        // ngx_atoof limits the value, not the number of digits.
        XCTAssertEqual(ContentLength.parse("00000000000000000000000003"), 3)
        XCTAssertEqual(ContentLength.parse("09223372036854775807"), Int.max)
    }

    func testOnlyDigits() {
        for bad in ["", " ", "5abc", "-1", "+5", " 5", "5 ", "0x10", "1e3", "1,2", "5\t", "١٢", "\u{0}5"] {
            XCTAssertNil(ContentLength.parse(bad), bad.debugDescription)
        }
    }

    func testBytes() {
        XCTAssertEqual(ContentLength.parse(Array("123".utf8)), 123)
        XCTAssertEqual(ContentLength.parse(Array("123".utf8)[1...]), 23)
        XCTAssertNil(ContentLength.parse([UInt8]()))
        XCTAssertNil(ContentLength.parse([0x31, 0xFF]))
    }
}
