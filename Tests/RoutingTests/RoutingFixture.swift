import Foundation
import KernelConfig
import KernelCore
import NIOCore
@testable import Routing
import XCTest

/// A location directive contributed by a module other than routing, as `uwsgi_pass` or `inference` are: answers
/// with its value, the option key it read from the location mapping and the location's prefix.
enum EchoTestModule: KernelModule {
    static let configurationKey = "echo"
    static let roles: Set<KernelRole> = [.edge, .worker]
    static func decode(_ value: ConfigValue, registrar: Registrar) throws {
        try value.mapping().finish()
    }
    static func register(_ configuration: Void, into registrar: Registrar) throws {
        registrar.addLocationHandler("echo_pass", capabilities: .proxies) { value, location, context in
            let target = value.isNull ? "-" : try value.string()
            let option = try location.optional("echo_option")?.string() ?? "-"
            let text = "\(target) \(option) \(context.prefix ?? "nil") \(context.match)"
            return StaticResponseHandler(.text(200, text))
        }
    }
}

/// Loads YAML through the real `ConfigurationLoader` and sends requests through `KernelRuntime.begin`.
final class RoutingFixture {
    let runtime: KernelRuntime
    let directory: String
    private var counter = 0

    init() throws {
        runtime = KernelRuntime.standalone(threads: 1, level: .critical)
        directory = NSTemporaryDirectory() + "kernel-routing-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: directory)
        try? runtime.eventLoopGroup.syncShutdownGracefully()
    }

    /// Writes `yaml` to a new file and returns its path.
    func write(_ yaml: String, name: String? = nil) throws -> String {
        counter += 1
        let path = "\(directory)/\(name ?? "kernel-\(counter).yaml")"
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Loads `yaml` and makes it the current generation.
    @discardableResult
    func load(_ yaml: String, mode: Registrar.Mode = .run, withEcho: Bool = false,
              modules extra: [ModuleDescriptor] = []) throws -> KernelGeneration {
        let file = try write(yaml)
        let modules = (withEcho ? [ModuleDescriptor(EchoTestModule.self)] : []) + extra + [ModuleDescriptor(RoutingModule.self)]
        let generation = try ConfigurationLoader(modules: modules, role: .both)
            .load(file: file, runtime: runtime, mode: mode, number: 1)
        runtime.install(generation)
        return generation
    }

    /// The error text loading `yaml` gives, with the temporary file's path replaced by `FILE`.
    func loadError(_ yaml: String, withEcho: Bool = false, modules: [ModuleDescriptor] = [],
                   file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            try load(yaml, mode: .check, withEcho: withEcho, modules: modules)
            XCTFail("expected a configuration error", file: file, line: line)
            return ""
        } catch {
            return "\(error)".replacingOccurrences(of: "\(directory)/kernel-\(counter).yaml", with: "FILE")
        }
    }

    func request(_ target: String, host: String? = nil, listener: String = "127.0.0.1:8080", method: String = "GET",
                 headers: [(String, String)] = [], scheme: String = "http") -> KernelRequest {
        let (path, query) = KernelRequest.splitTarget(target)!
        var fields = HeaderFields()
        if let host { fields.add("Host", host) }
        for (name, value) in headers { fields.add(name, value) }
        let connection = ConnectionInfo(protocolName: "http", listener: listener,
                                        remoteAddress: try! SocketAddress(ipAddress: "192.0.2.7", port: 40000),
                                        localAddress: try! SocketAddress(ipAddress: "127.0.0.1", port: 8080),
                                        scheme: scheme)
        return KernelRequest(method: method, uri: target, path: path, query: query, version: .http1_1,
                             headers: fields, connection: connection)
    }

    /// The decision the current generation's router makes.
    func decision(_ target: String, host: String? = nil, listener: String = "127.0.0.1:8080") -> RouteDecision {
        runtime.begin(request(target, host: host, listener: listener), on: runtime.eventLoopGroup.next()).decision
    }

    /// The response to a request, after filters and handler.
    func respond(_ target: String, host: String? = nil, listener: String = "127.0.0.1:8080",
                 headers: [(String, String)] = [], scheme: String = "http") throws -> (status: Int, headers: HeaderFields, body: String, decision: RouteDecision) {
        let request = self.request(target, host: host, listener: listener, headers: headers, scheme: scheme)
        let exchange = runtime.begin(request, on: runtime.eventLoopGroup.next())
        let response = try exchange.respond(request).wait()
        exchange.finish(request, status: response.status, bodyBytesSent: response.body.knownLength ?? 0)
        var body = ""
        if case .buffer(let buffer) = response.body { body = String(buffer: buffer) }
        return (response.status, response.headers, body, exchange.decision)
    }
}
