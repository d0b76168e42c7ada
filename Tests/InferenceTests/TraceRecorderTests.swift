@testable import Inference
import KernelCore
import Logging
import XCTest

/// Triton's trace extension below HTTP: updates checked as Triton checks them, sampling by rate and count, and the
/// command worker processes share.
final class TraceRecorderTests: XCTestCase {
    private func recorder(file: String = "/tmp/kernel-unit-trace-never-written.json") -> TraceRecorder {
        var configured = TraceSettings()
        configured.file = file
        return TraceRecorder(configured: configured, workerNumber: 0, logger: Logger(label: "test"))
    }

    private func update(_ json: String) throws -> TraceUpdate {
        try TraceUpdate(try JSONReader.parse(Array(json.utf8)))
    }

    func testSamplingTakesEveryRateThRequestWhileTheCountLasts() throws {
        let recorder = recorder()
        XCTAssertNil(recorder.sample(model: "m"), "off: nothing is sampled")
        _ = try recorder.update(model: nil, try update(#"{"trace_level": ["TIMESTAMPS"], "trace_rate": "3", "trace_count": "2"}"#))
        let sampled = (1...12).map { _ in recorder.sample(model: "m") != nil }
        XCTAssertEqual(sampled, [false, false, true, false, false, true] + Array(repeating: false, count: 6))
        XCTAssertEqual(recorder.settings(model: nil).count, 0)
        // A model of its own samples on its own count; others still follow the (spent) global settings.
        _ = try recorder.update(model: "m", try update(#"{"trace_count": "-1", "trace_rate": "1"}"#))
        XCTAssertNotNil(recorder.sample(model: "m"))
        XCTAssertNil(recorder.sample(model: "other"))
        XCTAssertEqual(recorder.overrides(of: "m"), TraceOverrides(level: nil, rate: 1, count: -1, logFrequency: nil))
        _ = try recorder.update(model: "m", try update(#"{"trace_count": null, "trace_rate": null}"#))
        XCTAssertEqual(recorder.overrides(of: "m"), TraceOverrides())
        XCTAssertEqual(recorder.settings(model: "m"), recorder.settings(model: nil))
    }

    func testUpdatesAreCheckedAsTritonChecksThem() throws {
        func status(_ json: String, on recorder: TraceRecorder) -> Int? {
            do {
                _ = try recorder.update(model: nil, try update(json))
                return nil
            } catch let error as KernelHTTPError {
                return error.status
            } catch {
                return -1
            }
        }
        let withFile = recorder()
        XCTAssertEqual(status(#"{"trace_file": "x"}"#, on: withFile), 501)
        XCTAssertEqual(status(#"{"trace_rate": "x"}"#, on: withFile), 400)
        XCTAssertEqual(status(#"{"trace_rate": 4}"#, on: withFile), 400)
        XCTAssertEqual(status(#"{"trace_count": "-2"}"#, on: withFile), 400)
        XCTAssertEqual(status(#"{"log_frequency": "-1"}"#, on: withFile), 400)
        XCTAssertEqual(status(#"{"trace_level": ["OFF", "TENSORS"]}"#, on: withFile), 400)
        XCTAssertEqual(status(#"{"trace_level": ["LOUD"]}"#, on: withFile), 400)
        XCTAssertNil(status(#"{"trace_level": ["TENSORS", "TIMESTAMPS"]}"#, on: withFile))
        XCTAssertEqual(withFile.settings(model: nil).level.names, ["TIMESTAMPS", "TENSORS"])
        XCTAssertEqual(status(#"{"trace_level": ["TIMESTAMPS"]}"#, on: recorder(file: "")), 400)
        XCTAssertNil(status("{}", on: recorder(file: "")))
    }

    func testTheSharedCommandReadsBackAsItWasWritten() throws {
        var global = TraceSettings()
        global.level = [.timestamps, .tensors]
        global.rate = 7
        global.count = 3
        global.logFrequency = 2
        let commands = [TraceCommand(model: nil, global: global, overrides: nil),
                        TraceCommand(model: "m é", global: nil, overrides: TraceOverrides(level: [], rate: nil, count: 5, logFrequency: nil))]
        for command in commands {
            XCTAssertEqual(TraceCommand(argument: command.text.dropFirst(TraceCommand.name.count + 1)), command)
        }
        XCTAssertNotEqual(commands[0].key, commands[1].key)
        let recorder = recorder()
        _ = TraceCommand.respond(to: commands[0].text.dropFirst(TraceCommand.name.count + 1), recorder: recorder)
        var expected = global
        expected.file = "/tmp/kernel-unit-trace-never-written.json"
        XCTAssertEqual(recorder.settings(model: nil), expected)
        XCTAssertNil(TraceCommand(argument: #"{"model": null}"#))
    }
}
