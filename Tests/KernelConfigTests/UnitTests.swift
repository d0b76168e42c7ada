import KernelConfig
import XCTest

/// nginx's size and time units.
final class UnitTests: XCTestCase {
    func testSizes() {
        XCTAssertEqual(ByteSize(parsing: "512")?.bytes, 512)
        XCTAssertEqual(ByteSize(parsing: "0")?.bytes, 0)
        XCTAssertEqual(ByteSize(parsing: "64k")?.bytes, 65_536)
        XCTAssertEqual(ByteSize(parsing: "64K")?.bytes, 65_536)
        XCTAssertEqual(ByteSize(parsing: "100m")?.bytes, 104_857_600)
        XCTAssertEqual(ByteSize(parsing: "1g")?.bytes, 1_073_741_824)
        XCTAssertEqual(ByteSize(parsing: " 8k ")?.bytes, 8192)
        for bad in ["", "k", "1.5m", "-1", "10q", "1 m", "1kb", "0x10", "99999999999999999999", "9223372036854775807k"] {
            XCTAssertNil(ByteSize(parsing: bad), bad)
        }
        XCTAssertEqual(ByteSize(bytes: 65_536).description, "64k")
        XCTAssertEqual(ByteSize(bytes: 1 << 30).description, "1g")
        XCTAssertEqual(ByteSize(bytes: 1000).description, "1000")
    }

    func testDurations() {
        XCTAssertEqual(ConfigDuration(parsing: "500ms")?.milliseconds, 500)
        XCTAssertEqual(ConfigDuration(parsing: "30s")?.milliseconds, 30_000)
        XCTAssertEqual(ConfigDuration(parsing: "30")?.milliseconds, 30_000, "a bare number is seconds")
        XCTAssertEqual(ConfigDuration(parsing: "5m")?.milliseconds, 300_000)
        XCTAssertEqual(ConfigDuration(parsing: "1h30m")?.milliseconds, 5_400_000)
        XCTAssertEqual(ConfigDuration(parsing: "1m 30s")?.milliseconds, 90_000)
        XCTAssertEqual(ConfigDuration(parsing: "1d")?.milliseconds, 86_400_000)
        XCTAssertEqual(ConfigDuration(parsing: "1w")?.milliseconds, 604_800_000)
        XCTAssertEqual(ConfigDuration(parsing: "0")?.milliseconds, 0)
        XCTAssertEqual(ConfigDuration(parsing: "365d")?.milliseconds, 31_536_000_000, "the longest duration accepted")
        for bad in ["", "ms", "s", "1.5s", "-1s", "5x", "1hh", "1M", "99999999999999999999s", "1h30q", "366d", "10000000000"] {
            XCTAssertNil(ConfigDuration(parsing: bad), bad)
        }
        XCTAssertEqual(ConfigDuration(milliseconds: 500).description, "500ms")
        XCTAssertEqual(ConfigDuration(milliseconds: 5_400_000).description, "90m")
        XCTAssertEqual(ConfigDuration(milliseconds: 7_200_000).description, "2h")
        XCTAssertEqual(ConfigDuration.seconds(30).nanoseconds, 30_000_000_000)
    }
}
