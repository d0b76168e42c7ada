import Foundation
import NIOConcurrencyHelpers
@testable import Routing
import XCTest

/// The PCRE-to-POSIX translation and the per-thread copies of compiled expressions.
final class RegexTests: XCTestCase {
    func testTranslation() throws {
        XCTAssertEqual(try PCRESyntax.translate("^/a/\\d+$").expression, "^/a/[0-9]+$")
        XCTAssertEqual(try PCRESyntax.translate("\\D").expression, "[^0-9]")
        XCTAssertEqual(try PCRESyntax.translate("[\\d\\w.-]").expression, "[0-9[:alnum:]_.-]")
        XCTAssertEqual(try PCRESyntax.translate("[\\.\\/]").expression, "[./]", "inside POSIX brackets a backslash is literal")
        XCTAssertEqual(try PCRESyntax.translate("[]a]").expression, "[]a]")
        XCTAssertEqual(try PCRESyntax.translate("[[:alpha:]\\d]").expression, "[[:alpha:]0-9]")
        let groups = try PCRESyntax.translate("(?:a|b)(c)(?:d)(e)")
        XCTAssertEqual(groups.expression, "(a|b)(c)(d)(e)")
        XCTAssertEqual(groups.capturingGroups, [2, 4])
    }

    func testRejections() {
        for (pattern, reason) in [
            ("", "empty regular expression"),
            ("a\\", "trailing backslash"),
            ("(?i)a", "\"(?\" groups other than \"(?:...)\" are not supported"),
            ("a*+", "lazy and possessive quantifiers (*?, +?, ??, *+) are not supported"),
            ("a??", "lazy and possessive quantifiers (*?, +?, ??, *+) are not supported"),
            ("\\1", "\"\\1\" is not supported (POSIX extended syntax with \\d, \\w, \\s, \\b)"),
            ("[\\]]", "write \"]\" unescaped inside [...]: \"]\" first, \"-\" last, \"^\" not first"),
            ("[a", "unterminated \"[\""),
        ] {
            XCTAssertThrowsError(try PCRESyntax.translate(pattern), pattern) { error in
                XCTAssertEqual("\(error)", reason, pattern)
            }
        }
    }

    func testCapturesSkipNonCapturingGroupsAndUnmatchedGroupsAreEmpty() throws {
        let regex = try POSIXRegex("^/(?:x|y)/(a)?(b)$", caseInsensitive: false, copies: 2)
        XCTAssertEqual(regex.captureCount, 2)
        XCTAssertEqual(regex.captures(in: "/x/ab"), ["a", "b"])
        XCTAssertEqual(regex.captures(in: "/y/b"), ["", "b"])
        XCTAssertNil(regex.captures(in: "/z/ab"))
    }

    func testCaseInsensitiveAndUTF8() throws {
        let regex = try POSIXRegex("^/caf(é)/(.+)$", caseInsensitive: true, copies: 1)
        XCTAssertEqual(regex.captures(in: "/CAFé/ü"), ["é", "ü"])
    }

    func testConcurrentMatchingGivesEachThreadItsOwnResult() throws {
        // More threads than copies: the shared fallback must stay correct too.
        let regex = try POSIXRegex("^/item/([0-9]+)$", caseInsensitive: false, copies: 2)
        let wrong = NIOLockedValueBox(0)
        DispatchQueue.concurrentPerform(iterations: 8) { thread in
            for index in 0..<2000 {
                let number = "\(thread * 10_000 + index)"
                if regex.captures(in: "/item/\(number)") != [number] || regex.matches("/other/\(number)") {
                    wrong.withLockedValue { $0 += 1 }
                }
            }
        }
        XCTAssertEqual(wrong.withLockedValue { $0 }, 0)
    }
}
