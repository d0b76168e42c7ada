import Foundation
import KernelConfig
import KernelCore
import NIOCore
import Routing
import UWSGI
import XCTest

/// `uwsgi_param` values compiled from YAML against the configuration's variable registry.
final class UWSGIParamVariablesTests: XCTestCase {
    func testParamsUseCapturesNamedGroupsAndCoreVariables() throws {
        let directory = NSTemporaryDirectory() + "kernel-uwsgi-params-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/kernel.yaml"
        try """
            uwsgi: {}
            routing:
              servers:
                - locations:
                    - location: "~ ^/app/(?<tenant>[a-z]+)/(.*)$"
                      uwsgi_pass: 127.0.0.1:6666
                      uwsgi_param: {SCRIPT_NAME: /app/$tenant, PATH_INFO: /$2, X_ID: $request_id, X_COOKIE: $cookie_sid}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let runtime = KernelRuntime.standalone(threads: 1, level: .critical)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let generation = try ConfigurationLoader(modules: [ModuleDescriptor(UWSGIModule.self), ModuleDescriptor(RoutingModule.self)],
                                                 role: .edge).load(file: file, runtime: runtime, mode: .check, number: 1)
        runtime.install(generation)
        let connection = ConnectionInfo(protocolName: "http", listener: "127.0.0.1:8080",
                                        remoteAddress: try SocketAddress(ipAddress: "10.0.0.1", port: 5000), localAddress: nil)
        let request = KernelRequest(method: "GET", uri: "/app/acme/a/b", path: "/app/acme/a/b", query: "", version: .http1_1,
                                    headers: ["Cookie": "sid=42"], connection: connection)
        let exchange = runtime.begin(request, on: runtime.eventLoopGroup.next())
        let handler = try XCTUnwrap(exchange.decision.handler as? UWSGIPassHandler)
        let variables = handler.configuration.variables(for: request, route: exchange.decision.route)
        XCTAssertEqual(variables["SCRIPT_NAME"], "/app/acme")
        XCTAssertEqual(variables["PATH_INFO"], "/a/b")
        XCTAssertEqual(variables["X_COOKIE"], "42")
        let id = try VariableTemplate("$request_id").render(request, route: exchange.decision.route)
        XCTAssertEqual(variables["X_ID"], id)
        exchange.finish(request, status: 200, bodyBytesSent: 0)
    }

    func testBufferingHeaderRulesAndClientAbortAreReadFromTheLocation() throws {
        let directory = NSTemporaryDirectory() + "kernel-uwsgi-directives-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/kernel.yaml"
        try """
            kernel: {pid: run/kernel.pid}
            uwsgi: {}
            routing:
              servers:
                - uwsgi_hide_header: X-Powered-By
                  locations:
                    - location: /default/
                      uwsgi_pass: 127.0.0.1:6666
                    - location: /tuned/
                      uwsgi_pass: 127.0.0.1:6666
                      uwsgi_buffering: off
                      uwsgi_buffers: "16 8k"
                      uwsgi_max_temp_file_size: 0
                      uwsgi_temp_path: spool
                      uwsgi_pass_header: [X-Accel-Redirect, X-Pad]
                      uwsgi_ignore_client_abort: on
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let runtime = KernelRuntime.standalone(threads: 1, level: .critical)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let generation = try ConfigurationLoader(modules: [ModuleDescriptor(UWSGIModule.self), ModuleDescriptor(RoutingModule.self)],
                                                 role: .edge).load(file: file, runtime: runtime, mode: .check, number: 1)
        runtime.install(generation)
        func handler(_ path: String) throws -> UWSGIPassHandler {
            let request = KernelRequest(method: "GET", uri: path, path: path, query: "", version: .http1_1, headers: [:],
                                        connection: ConnectionInfo(protocolName: "http", listener: "l", remoteAddress: nil, localAddress: nil))
            let exchange = runtime.begin(request, on: runtime.eventLoopGroup.next())
            defer { exchange.finish(request, status: 200, bodyBytesSent: 0) }
            return try XCTUnwrap(exchange.decision.handler as? UWSGIPassHandler)
        }
        let plain = try handler("/default/x")
        XCTAssertTrue(plain.configuration.buffering.enabled)
        XCTAssertEqual(plain.configuration.buffering.memorySize, 8 * 4096)
        XCTAssertEqual(plain.configuration.buffering.maxTempFileSize, 1 << 30)
        XCTAssertEqual(plain.configuration.buffering.tempPath, directory + "/run/uwsgi_temp", "beside the pid file")
        XCTAssertEqual(plain.configuration.headerRules.hidden, ["x-powered-by"], "inherited from the server")
        XCTAssertTrue(plain.cancelsWhenClientLeaves)
        let tuned = try handler("/tuned/x")
        XCTAssertFalse(tuned.configuration.buffering.enabled)
        XCTAssertEqual(tuned.configuration.buffering.memorySize, 16 * 8192)
        XCTAssertEqual(tuned.configuration.buffering.maxTempFileSize, 0)
        XCTAssertEqual(tuned.configuration.buffering.tempPath, directory + "/spool")
        XCTAssertEqual(tuned.configuration.headerRules.passed, ["x-accel-redirect", "x-pad"])
        XCTAssertFalse(tuned.cancelsWhenClientLeaves, "uwsgi_ignore_client_abort on")
    }
}
