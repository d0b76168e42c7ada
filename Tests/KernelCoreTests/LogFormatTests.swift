import Foundation
import KernelConfig
import KernelCore
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import XCTest

/// `log_format` lines rendered from the registry, and the request-finish observers the access log is one of.
final class LogFormatTests: XCTestCase {
    private func request(_ target: String = "/", headers: HeaderFields = [:]) -> KernelRequest {
        let (path, query) = KernelRequest.splitTarget(target) ?? (target, "")
        let connection = ConnectionInfo(protocolName: "http", listener: "127.0.0.1:8080",
                                        remoteAddress: try! SocketAddress(ipAddress: "192.0.2.7", port: 40000),
                                        localAddress: try! SocketAddress(ipAddress: "127.0.0.1", port: 8080))
        return KernelRequest(method: "GET", uri: target, path: path, query: query, version: .http1_1, headers: headers,
                             connection: connection)
    }

    private func finished(_ request: KernelRequest, status: Int = 200, bodyBytes: Int = 5, upstream: UpstreamReport? = nil,
                          seconds: Double = 0.0123) -> FinishedExchange {
        FinishedExchange(request: request, route: RouteInfo(serverName: "api.example", location: "/v1/"), status: status,
                         bodyBytesSent: bodyBytes, bytesSent: bodyBytes + 100, startNanoseconds: 5_000_000_000,
                         endNanoseconds: 5_000_000_000 + UInt64(seconds * 1e9), upstream: upstream)
    }

    /// The `[...]` time of a combined line, checked for nginx's `$time_local` shape.
    private func timeLocal(in line: String) throws -> String {
        let open = try XCTUnwrap(line.firstIndex(of: "[")), close = try XCTUnwrap(line.firstIndex(of: "]"))
        let time = String(line[line.index(after: open)..<close])
        XCTAssertNotNil(time.range(of: #"^\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}$"#, options: .regularExpression), time)
        return time
    }

    func testCombinedIsTheLineTheKernelAlwaysWrote() throws {
        // The line before the registry, built the way it was: remote address, "- -", the time, then request,
        // referer and agent escaped as nginx escapes them, "-" for a missing referer.
        let plain = LogFormat.combined.line(for: finished(request("/a?b=1", headers: ["User-Agent": "curl/8.5"])))
        XCTAssertEqual(plain, "192.0.2.7 - - [\(try timeLocal(in: plain))] \"GET /a?b=1 HTTP/1.1\" 200 5 \"-\" \"curl/8.5\"")

        let hostile = request("/x\"y", headers: HeaderFields([("Referer", "http://r/\\"), ("User-Agent", "a\u{1}b é\u{7f}")]))
        let line = LogFormat.combined.line(for: finished(hostile, status: 404, bodyBytes: 0))
        XCTAssertEqual(line, "192.0.2.7 - - [\(try timeLocal(in: line))] \"GET /x\\x22y HTTP/1.1\" 404 0 \"http://r/\\x5C\" \"a\\x01b \\xC3\\xA9\\x7F\"")

        let emptyReferer = LogFormat.combined.line(for: finished(request(headers: ["Referer": ""])))
        XCTAssertTrue(emptyReferer.hasSuffix("200 5 \"\" \"-\""), "an empty header is empty, a missing one \"-\": \(emptyReferer)")
    }

    func testPredefinedJSONKeepsItsFields() throws {
        let line = LogFormat.json.line(for: finished(request("/q\"x", headers: ["User-Agent": "tab\there"])))
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        XCTAssertEqual(object.keys.sorted(), ["body_bytes_sent", "http_referer", "http_user_agent", "location", "protocol",
                                              "remote_addr", "request", "request_time", "server_name", "status", "time"])
        XCTAssertEqual(object["request"] as? String, "GET /q\"x HTTP/1.1")
        XCTAssertEqual(object["http_user_agent"] as? String, "tab\there")
        XCTAssertEqual(object["http_referer"] as? String, "")
        XCTAssertEqual(object["status"] as? Int, 200)
        XCTAssertEqual(object["request_time"] as? Double, 0.012)
        XCTAssertTrue(line.contains("\"status\":200,\"body_bytes_sent\":5,\"request_time\":0.012,"), line)
        XCTAssertTrue(line.hasSuffix("\"server_name\":\"api.example\",\"location\":\"/v1/\",\"protocol\":\"http\"}"), line)
    }

    func testEscapeJSONAndNone() throws {
        let hostile = request("/", headers: HeaderFields([("X-Data", "q\"b\\s\nl\u{1}é")]))
        let json = try LogFormat(name: "j", escape: .json, "{\"d\":\"$http_x_data\",\"m\":\"$http_missing\"}")
        let line = json.line(for: finished(hostile))
        XCTAssertEqual(line, "{\"d\":\"q\\\"b\\\\s\\nl\\u0001é\",\"m\":\"\"}", "a variable not found is empty in JSON")
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        XCTAssertEqual(object["d"], "q\"b\\s\nl\u{1}é")

        let none = try LogFormat(name: "n", escape: .none, "$http_x_data|$http_missing")
        XCTAssertEqual(none.line(for: finished(hostile)), "q\"b\\s\nl\u{1}é|-")
        let byDefault = try LogFormat(name: "d", "$http_x_data|$http_missing")
        XCTAssertEqual(byDefault.line(for: finished(hostile)), "q\\x22b\\x5Cs\\x0Al\\x01\\xC3\\xA9|-")
    }

    func testNamedFormatWithUpstreamAndRequestTime() throws {
        let format = try LogFormat(name: "upstream",
                                   "$remote_addr \"$request\" $status $upstream_addr $upstream_status $upstream_response_time $request_time $request_id")
        let upstream = UpstreamReport(group: "backend", attempts: [
            UpstreamAttempt(address: "127.0.0.1:6001", status: 502, responseTime: 0.004),
            UpstreamAttempt(address: "127.0.0.1:6002", status: 200, responseTime: 1.5),
        ])
        let request = request("/v1/x")
        let line = format.line(for: finished(request, upstream: upstream, seconds: 1.5123))
        let id = try VariableTemplate("$request_id").render(request, route: RouteInfo())
        XCTAssertEqual(line, "192.0.2.7 \"GET /v1/x HTTP/1.1\" 200 127.0.0.1:6001, 127.0.0.1:6002 502, 200 0.004, 1.500 1.512 \(id)")
        XCTAssertEqual(format.line(for: finished(request)), "192.0.2.7 \"GET /v1/x HTTP/1.1\" 200 - - - 0.012 \(id)",
                       "without an upstream the upstream variables are not found")
    }

    func testUnknownVariableInAFormat() {
        XCTAssertThrowsError(try LogFormat(name: "x", "$remote_addr $upstream_adr")) { error in
            XCTAssertEqual("\(error)", "unknown \"upstream_adr\" variable")
        }
    }

    // MARK: Observers

    final class Recorder: RequestFinishObserver {
        let seen = NIOLockedValueBox<[FinishedExchange]>([])
        func exchangeFinished(_ exchange: FinishedExchange) { seen.withLockedValue { $0.append(exchange) } }
    }

    /// A module that installs a fixed router and, when configured so, an observer through the registrar.
    enum ObservingModule: KernelModule {
        nonisolated(unsafe) static var recorder: Recorder? = nil
        static let configurationKey = "observe"
        static let roles: Set<KernelRole> = [.edge, .worker]
        static func decode(_ value: ConfigValue, registrar: Registrar) throws -> Bool { try value.bool() }
        static func register(_ observe: Bool, into registrar: Registrar) throws {
            registrar.setRouter(FixedRouter())
            if observe, let recorder { registrar.addFinishObserver(recorder) }
        }
    }

    struct FixedRouter: RequestRouter {
        let decision = RouteDecision(route: RouteInfo(serverName: "s", location: "/"),
                                     handler: StaticResponseHandler(.text(200, "hi")), maxBodySize: nil, accessLog: nil)
        func route(_ request: KernelRequest) -> RouteDecision { decision }
    }

    private func load(observe: Bool, runtime: KernelRuntime) throws {
        let file = NSTemporaryDirectory() + "kernel-observe-\(getpid())-\(UUID().uuidString).yaml"
        try "observe: \(observe)\n".write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let generation = try ConfigurationLoader(modules: [ModuleDescriptor(ObservingModule.self)], role: .both)
            .load(file: file, runtime: runtime, mode: .run, number: 1)
        runtime.install(generation)
    }

    func testRegisteredObserverSeesStatusBytesTimingAndUpstreamOnce() throws {
        let runtime = KernelRuntime.standalone(threads: 1, level: .error)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let recorder = Recorder()
        ObservingModule.recorder = recorder
        try load(observe: true, runtime: runtime)

        let request = request("/x")
        let exchange = runtime.begin(request, on: EmbeddedEventLoop())
        let upstream = UpstreamReport(group: "g", attempts: [UpstreamAttempt(address: "10.0.0.1:80", status: 200, responseTime: 0.1)])
        exchange.finish(request, status: 200, bodyBytesSent: 2, bytesSent: 40, upstream: upstream)
        exchange.finish(request, status: 500, bodyBytesSent: 0)
        let seen = recorder.seen.withLockedValue { $0 }
        XCTAssertEqual(seen.count, 1, "an exchange finishes once")
        XCTAssertEqual(seen.first?.status, 200)
        XCTAssertEqual(seen.first?.bodyBytesSent, 2)
        XCTAssertEqual(seen.first?.bytesSent, 40)
        XCTAssertEqual(seen.first?.upstream?.attempts.first?.address, "10.0.0.1:80")
        XCTAssertEqual(seen.first?.route.serverName, "s")
        XCTAssertEqual(seen.first?.request.uri, "/x")
        XCTAssertGreaterThanOrEqual(seen.first!.endNanoseconds, seen.first!.startNanoseconds)
        XCTAssertGreaterThan(seen.first!.startNanoseconds, 0)

        // A client that left before its response: 499, body bytes not counted beyond what was sent.
        let left = runtime.begin(request, on: EmbeddedEventLoop())
        left.finish(request, status: 499, bodyBytesSent: 0)
        XCTAssertEqual(recorder.seen.withLockedValue { $0.last?.status }, 499)
        XCTAssertEqual(recorder.seen.withLockedValue { $0.last?.bytesSent }, 0, "without a count of the head, the body bytes")
        ObservingModule.recorder = nil
    }

    func testAccessLogIsAnObserverWritingItsFormat() throws {
        let path = NSTemporaryDirectory() + "kernel-access-\(getpid())-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let log = AccessLog(file: try LogFile(path: path), format: try LogFormat(name: "short", "$status $request_uri $body_bytes_sent"))
        let observer: any RequestFinishObserver = log
        observer.exchangeFinished(finished(request("/a?b"), status: 499, bodyBytes: 0))
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "499 /a?b 0\n")
    }
}

final class ErrorLogEscapingTests: XCTestCase {
    func testControlCharactersInAMessageCannotStartANewLine() {
        XCTAssertEqual(ErrorLogHandler.escapingControlCharacters("unknown model 'a\nb'\r\t\u{7F}"),
                       "unknown model 'a\\x0Ab'\\x0D\\x09\\x7F")
        XCTAssertEqual(ErrorLogHandler.escapingControlCharacters("plain text, é"), "plain text, é")
    }
}
