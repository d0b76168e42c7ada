import Foundation
import KernelConfig
import KernelCore
import NIOCore
import Routing
import Status
import XCTest

/// The `status` directive through the real loader and the routing module, answered from a `metrics` responder of
/// this process (the single process of `processes: 0`).
final class StatusModuleTests: XCTestCase {
    private var runtime: KernelRuntime!
    private var directory = ""

    override func setUpWithError() throws {
        runtime = KernelRuntime.standalone(threads: 1, level: .critical)
        directory = NSTemporaryDirectory() + "kernel-status-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
        try runtime.eventLoopGroup.syncShutdownGracefully()
    }

    private func load(_ yaml: String) throws {
        let file = directory + "/kernel.yaml"
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        let modules = [ModuleDescriptor(StatusModule.self), ModuleDescriptor(RoutingModule.self)]
        runtime.install(try ConfigurationLoader(modules: modules, role: .edge)
            .load(file: file, runtime: runtime, mode: .run, number: 1))
    }

    private func loadError(_ yaml: String) -> String {
        do {
            try load(yaml)
            XCTFail("expected a configuration error")
            return ""
        } catch {
            return "\(error)".replacingOccurrences(of: directory + "/kernel.yaml", with: "FILE")
        }
    }

    private func respond(_ target: String, method: String = "GET") throws -> (KernelResponse, String) {
        let (path, query) = KernelRequest.splitTarget(target)!
        let connection = ConnectionInfo(protocolName: "http", listener: "127.0.0.1:8080",
                                        remoteAddress: try SocketAddress(ipAddress: "192.0.2.7", port: 40000),
                                        localAddress: try SocketAddress(ipAddress: "127.0.0.1", port: 8080))
        let request = KernelRequest(method: method, uri: target, path: path, query: query, version: .http1_1,
                                    headers: ["Host": "localhost"], connection: connection)
        let exchange = runtime.begin(request, on: runtime.eventLoopGroup.next())
        let response = try exchange.respond(request).wait()
        exchange.finish(request, status: response.status, bodyBytesSent: 0)
        guard case .buffer(let body) = response.body else { return (response, "") }
        return (response, String(buffer: body))
    }

    static let config = """
        routing:
          servers:
            - locations:
                - location: = /status
                  status: {}
        """

    func testTheLocationServesThePageAndTheJSONOfEveryProcess() throws {
        runtime.processQueries.register("metrics") {
            Array("kernel_http_requests_total{server=\"\",location=\"/\",status=\"200\"} 17\n".utf8)
        }
        try load(Self.config)
        let (page, html) = try respond("/status")
        XCTAssertEqual(page.status, 200)
        XCTAssertEqual(page.headers["Content-Type"], "text/html; charset=utf-8")
        XCTAssertTrue(html.hasPrefix("<!DOCTYPE html>"))
        let (data, json) = try respond("/status?format=json")
        XCTAssertEqual(data.status, 200)
        XCTAssertEqual(data.headers["Content-Type"], "application/json")
        XCTAssertEqual(data.headers["Cache-Control"], "no-store")
        XCTAssertTrue(json.contains(#""processes":1,"#), json)
        XCTAssertTrue(json.contains(#""requests_total":17,"#), json)
        XCTAssertTrue(json.contains(#""workers":[{"pool":"main","number":0,"pid":\#(getpid()),"state":"serving","requests":17,"#), json)
    }

    func testOtherMethodsAndFormatsAreRefused() throws {
        try load(Self.config)
        let (post, _) = try respond("/status", method: "POST")
        XCTAssertEqual(post.status, 405)
        XCTAssertEqual(post.headers["Allow"], "GET, HEAD")
        XCTAssertEqual(try respond("/status?format=yaml").0.status, 400)
    }

    func testConfigurationErrorsNameTheirPlace() {
        XCTAssertEqual(loadError("status:\n  history: 2s\n" + Self.config),
                       "FILE:2:12: status.history: status: history must be between 10s and 1h, found \"2s\"")
        XCTAssertTrue(loadError("status:\n  keep: 1m\n" + Self.config).contains("keep"))
        XCTAssertTrue(loadError(Self.config.replacingOccurrences(of: "status: {}", with: "status: {page: x}")).contains("page"))
        XCTAssertTrue(loadError(Self.config.replacingOccurrences(of: "status: {}", with: "status: false")).contains("true or a mapping"))
    }
}
