import KernelCore
import Logging
import NIOCore
import XCTest
@testable import Inference

/// Triton's logging extension over the error log's one threshold (`LogSettings`).
final class LogSettingsTests: XCTestCase {
    private func settings(_ level: Logger.Level, file: String = "/var/log/kernel/error.log") -> LogSettings {
        LogSettings(level: level, file: file)
    }

    private func apply(_ body: String, to level: Logger.Level) throws -> Logger.Level {
        try settings(level).applying(try JSONReader.parse(ByteBuffer(string: body))).level
    }

    private func text(_ settings: LogSettings) -> String {
        var writer = JSONWriter(buffer: ByteBuffer())
        settings.json(into: &writer)
        return String(buffer: writer.buffer)
    }

    func testEachThresholdReadsAsTritonsSwitches() {
        XCTAssertEqual(text(settings(.notice, file: "stderr")),
                       #"{"log_file":"","log_info":false,"log_warning":true,"log_error":true,"log_verbose_level":0,"log_format":"default"}"#)
        XCTAssertEqual(text(settings(.debug)),
                       #"{"log_file":"/var/log/kernel/error.log","log_info":true,"log_warning":true,"log_error":true,"log_verbose_level":1,"log_format":"default"}"#)
        XCTAssertTrue(text(settings(.info)).contains(#""log_info":true,"log_warning":true,"log_error":true,"log_verbose_level":0"#))
        XCTAssertTrue(text(settings(.error)).contains(#""log_info":false,"log_warning":false,"log_error":true"#))
        XCTAssertTrue(text(settings(.critical)).contains(#""log_info":false,"log_warning":false,"log_error":false"#))
    }

    func testTheVerboseLevelSetReadsBackWhileTheLevelIsDebug() throws {
        let verbose = try settings(.notice).applying(try JSONReader.parse(ByteBuffer(string: #"{"log_verbose_level": 4}"#)))
        XCTAssertEqual(verbose.level, .debug)
        XCTAssertTrue(text(verbose).contains(#""log_verbose_level":4"#))
        XCTAssertEqual(verbose.commandArgument, "debug 4")
        let quiet = try verbose.applying(try JSONReader.parse(ByteBuffer(string: #"{"log_verbose_level": 0}"#)))
        XCTAssertTrue(text(quiet).contains(#""log_verbose_level":0"#))
    }

    func testSwitchesMoveTheThreshold() throws {
        XCTAssertEqual(try apply(#"{"log_info": true}"#, to: .notice), .info)
        XCTAssertEqual(try apply(#"{"log_verbose_level": 2}"#, to: .notice), .debug)
        XCTAssertEqual(try apply(#"{"log_verbose_level": 0}"#, to: .debug), .info)
        // Info off keeps nginx's notices, as the default level has them.
        XCTAssertEqual(try apply(#"{"log_info": false}"#, to: .info), .notice)
        XCTAssertEqual(try apply(#"{"log_info": false}"#, to: .warning), .warning)
        XCTAssertEqual(try apply(#"{"log_warning": false}"#, to: .notice), .error)
        XCTAssertEqual(try apply(#"{"log_warning": false, "log_error": false}"#, to: .notice), .critical)
        XCTAssertEqual(try apply(#"{"log_error": true, "log_warning": true}"#, to: .critical), .warning)
        // A switch turned on takes the more severe kinds with it, one turned off the less severe ones.
        XCTAssertEqual(try apply(#"{"log_info": true}"#, to: .critical), .info)
        XCTAssertEqual(try apply(#"{"log_error": false}"#, to: .debug), .critical)
        XCTAssertEqual(try apply(#"{"log_warning": false}"#, to: .debug), .error)
        // Members left out, null ones and an empty body change nothing; so does the format Triton calls default.
        XCTAssertEqual(try apply(#"{}"#, to: .warning), .warning)
        XCTAssertEqual(try apply(#"{"log_info": null, "log_file": null, "log_format": "default"}"#, to: .warning), .warning)
        XCTAssertEqual(try settings(.error).applying(nil).level, .error)
        XCTAssertEqual(try apply(#"{"log_info": true, "log_verbose_level": 0, "log_warning": true, "log_error": true}"#, to: .critical), .info)
    }

    func testWhatOneThresholdCannotHoldAndBadValuesAreRefused() {
        func refusal(_ body: String, _ level: Logger.Level = .notice) -> (Int, String)? {
            do {
                _ = try apply(body, to: level)
                return nil
            } catch let error as KernelHTTPError {
                return (error.status, error.message)
            } catch {
                return (0, "\(error)")
            }
        }
        XCTAssertEqual(refusal(#"{"log_file": "/tmp/x.log"}"#)?.0, 501)
        XCTAssertEqual(refusal(#"{"log_file": "/tmp/x.log"}"#)?.1, "log file location can not be updated through network protocol")
        XCTAssertEqual(refusal(#"{"log_info": "yes"}"#)?.1, "attempt to access JSON non-boolean as boolean")
        XCTAssertEqual(refusal(#"{"log_verbose_level": -1}"#)?.1, "attempt to access JSON non-unsigned-integer as unsigned-integer")
        XCTAssertEqual(refusal(#"{"log_verbose_level": 1.5}"#)?.0, 400)
        XCTAssertEqual(refusal(#"{"log_format": "ISO8601"}"#)?.0, 400)
        XCTAssertEqual(refusal(#"{"log_format": "json"}"#)?.1, "invalid argument for --log_format, got: json")
        XCTAssertEqual(refusal(#"{"log_format": "json"}"#)?.0, 503, "Triton's status for it")
        // Named switches one threshold cannot hold together.
        XCTAssertEqual(refusal(#"{"log_warning": true, "log_error": false}"#)?.0, 400)
        XCTAssertEqual(refusal(#"{"log_info": false, "log_verbose_level": 1}"#)?.0, 400)
        XCTAssertTrue(refusal(#"{"log_info": true, "log_error": false}"#)?.1.contains("one threshold level") == true)
    }
}
