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
}
