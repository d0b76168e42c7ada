import Foundation
import KernelCore
@testable import Routing
import XCTest

/// `routing.log_format` and `access_log: {format: NAME}` as decoded from YAML.
final class LogFormatConfigTests: XCTestCase {
    func testNamedFormatsAreWrittenByTheServersThatNameThem() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              log_format:
                short: '$status $request_uri $upstream_addr $request_time'
                api:
                  escape: json
                  format: ['{"uri":"$uri",', '"agent":"$http_user_agent","status":$status}']
                raw: {escape: none, format: '$http_x_raw'}
              servers:
                - server_name: a
                  access_log: {path: short.log, format: short}
                  locations:
                    - location: /api/
                      access_log: {path: api.log, format: api}
                      return: 200 "api"
                    - location: /
                      return: 200 "x"
                - server_name: b
                  access_log: {path: raw.log, format: raw}
                  return: 204
            """)
        XCTAssertEqual(fixture.decision("/", host: "a").accessLog?.format.name, "short")
        _ = try fixture.respond("/?q=1", host: "a")
        _ = try fixture.respond("/api/x", host: "a", headers: [("User-Agent", "say \"hi\"")])
        _ = try fixture.respond("/", host: "b", headers: [("X-Raw", "a\"b")])
        let time = try requestTime(in: "\(fixture.directory)/short.log")
        XCTAssertEqual(try String(contentsOfFile: "\(fixture.directory)/short.log", encoding: .utf8), "200 /?q=1 - \(time)\n",
                       "without an upstream, $upstream_addr is \"-\"")
        XCTAssertEqual(try String(contentsOfFile: "\(fixture.directory)/api.log", encoding: .utf8),
                       "{\"uri\":\"/api/x\",\"agent\":\"say \\\"hi\\\"\",\"status\":200}\n")
        XCTAssertEqual(try String(contentsOfFile: "\(fixture.directory)/raw.log", encoding: .utf8), "a\"b\n")
    }

    /// The last field of the only line of `path`, checked to be nginx's `%T.%03M`.
    private func requestTime(in path: String) throws -> String {
        let line = try String(contentsOfFile: path, encoding: .utf8)
        let time = String(line.dropLast().split(separator: " ").last ?? "")
        XCTAssertNotNil(time.range(of: #"^\d+\.\d{3}$"#, options: .regularExpression), time)
        return time
    }

    func testNamedGroupsOfRegexLocationsAreVariablesOfEveryTemplate() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            routing:
              log_format:
                ids: '$uri model=$model version=[$version]'
              servers:
                - access_log: {path: ids.log, format: ids}
                  locations:
                    - location: "~ ^/v2/models/(?<model>[^/]+)(?:/versions/(?<version>\\\\d+))?/infer$"
                      return: 200 "m=$model"
                    - location: /
                      return: 200 "[$model]"
            """)
        XCTAssertEqual(try fixture.respond("/v2/models/demo/versions/3/infer").body, "m=demo")
        _ = try fixture.respond("/v2/models/demo/infer")
        XCTAssertEqual(try fixture.respond("/other").body, "[]", "outside its location a named group is not found")
        XCTAssertEqual(try String(contentsOfFile: "\(fixture.directory)/ids.log", encoding: .utf8),
                       "/v2/models/demo/versions/3/infer model=demo version=[3]\n/v2/models/demo/infer model=demo version=[]\n/other model=- version=[-]\n")
    }

    func testFormatErrorsNameTheirPlace() throws {
        let fixture = try RoutingFixture()
        XCTAssertEqual(fixture.loadError("""
            routing:
              log_format:
                main: '$remote_addr $nosuch'
              servers:
                - return: 200
            """), "FILE:3:11: routing.log_format.main: unknown \"nosuch\" variable")
        XCTAssertEqual(fixture.loadError("""
            routing:
              log_format:
                combined: '$remote_addr'
              servers:
                - return: 200
            """), "FILE:3:15: routing.log_format.combined: duplicate log_format name \"combined\"")
        XCTAssertEqual(fixture.loadError("""
            routing:
              log_format:
                main: {escape: xml, format: '$uri'}
              servers:
                - return: 200
            """), "FILE:3:20: routing.log_format.main.escape: expected one of default, json, none, found \"xml\"")
        XCTAssertEqual(fixture.loadError("""
            routing:
              log_format:
                main: '$uri'
              servers:
                - access_log: {path: a.log, format: mian}
                  return: 200
            """), "FILE:5:41: routing.servers[0].access_log.format: unknown log format \"mian\" (known: combined, json, main)")
    }
}
