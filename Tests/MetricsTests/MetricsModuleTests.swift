import CoreMetrics
import Foundation
import KernelConfig
import KernelCore
@testable import KernelMetrics
import NIOCore
import Prometheus
import Routing
import XCTest

/// The `metrics:` and `health:` directives through the real loader and the location's handler; the request
/// observer and this process's exposition on their own registries.
final class MetricsModuleTests: XCTestCase {
    private var runtime: KernelRuntime!
    private var directory = ""

    override func setUpWithError() throws {
        runtime = KernelRuntime.standalone(threads: 1, level: .critical)
        directory = NSTemporaryDirectory() + "kernel-metrics-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
        try runtime.eventLoopGroup.syncShutdownGracefully()
    }

    private func makeRequest(_ path: String, method: String = "GET") -> KernelRequest {
        KernelRequest(method: method, uri: path, path: path, query: "", version: .http1_1, headers: ["Host": "localhost"],
                      connection: ConnectionInfo(protocolName: "http", listener: "127.0.0.1:8080", remoteAddress: nil, localAddress: nil))
    }

    private func body(_ response: KernelResponse) -> String {
        if case .buffer(let buffer) = response.body { return String(buffer: buffer) }
        return ""
    }

    private func exchange(server: String = "api", location: String = "/v2", status: Int = 200, nanoseconds: UInt64 = 2_000_000,
                          upstream: UpstreamReport? = nil) -> FinishedExchange {
        FinishedExchange(request: makeRequest("/v2"), route: RouteInfo(serverName: server, location: location), status: status,
                         bodyBytesSent: 0, bytesSent: 0, startNanoseconds: 1_000, endNanoseconds: 1_000 + nanoseconds,
                         upstream: upstream)
    }

    // MARK: The request observer

    func testCountsRequestsByServerLocationAndStatusWithALatencyHistogram() {
        let registry = PrometheusCollectorRegistry()
        let observer = RequestMetrics(registry: registry)
        observer.exchangeFinished(exchange())
        observer.exchangeFinished(exchange())
        observer.exchangeFinished(exchange(status: 404, nanoseconds: 3_000_000_000))
        observer.exchangeFinished(exchange(server: "", location: ""))
        let families = PrometheusExposition.parse(registry.emitToString())
        func value(_ name: String, _ labels: [String: String]) -> Double? {
            families.flatMap(\.samples).first { $0.name == name && $0.labels == labels }?.value
        }
        XCTAssertEqual(value("kernel_http_requests_total", ["server": "api", "location": "/v2", "status": "200"]), 2)
        XCTAssertEqual(value("kernel_http_requests_total", ["server": "api", "location": "/v2", "status": "404"]), 1)
        XCTAssertEqual(value("kernel_http_requests_total", ["server": "", "location": "", "status": "200"]), 1)
        XCTAssertEqual(value("kernel_http_request_duration_seconds_count", ["server": "api", "location": "/v2"]), 3)
        XCTAssertEqual(value("kernel_http_request_duration_seconds_bucket", ["server": "api", "location": "/v2", "le": "0.0025"]), 2)
        XCTAssertEqual(value("kernel_http_request_duration_seconds_bucket", ["server": "api", "location": "/v2", "le": "+Inf"]), 3)
        let sum = value("kernel_http_request_duration_seconds_sum", ["server": "api", "location": "/v2"]) ?? 0
        XCTAssertEqual(sum, 3.004, accuracy: 1e-9)
        XCTAssertEqual(families.first { $0.name == "kernel_http_requests_total" }?.type, "counter")
        XCTAssertFalse(families.first { $0.name == "kernel_http_requests_total" }?.help.isEmpty ?? true)
    }

    func testCountsOneRetryPerExtraAttempt() {
        let registry = PrometheusCollectorRegistry()
        let observer = RequestMetrics(registry: registry)
        let attempts = [UpstreamAttempt(address: "127.0.0.1:1", status: nil, responseTime: 0),
                        UpstreamAttempt(address: "127.0.0.1:2", status: 502, responseTime: 0),
                        UpstreamAttempt(address: "127.0.0.1:3", status: 200, responseTime: 0)]
        observer.exchangeFinished(exchange(upstream: UpstreamReport(group: "backend", attempts: attempts)))
        observer.exchangeFinished(exchange(upstream: UpstreamReport(group: "backend", attempts: [attempts[2]])))
        let samples = PrometheusExposition.parse(registry.emitToString()).flatMap(\.samples)
        XCTAssertEqual(samples.first { $0.name == "kernel_upstream_retries_total" }?.labels, ["upstream": "backend"])
        XCTAssertEqual(samples.first { $0.name == "kernel_upstream_retries_total" }?.value, 2)
    }

    // MARK: This process's answer

    func testTheProcessAnswerFillsHelpAndAddsMemoryAndTheListenAnswer() async {
        let registry = PrometheusCollectorRegistry()
        // As a module records through swift-metrics: no help text.
        let factory = PrometheusMetricsFactory(registry: registry)
        Counter(label: "kernel_model_failures_total", dimensions: [("model", "demo")], factory: factory).increment(by: 3)
        runtime.processQueries.register("metrics.listen") {
            Array("# TYPE kernel_listen_overflows_total counter\nkernel_listen_overflows_total{listener=\"127.0.0.1:8080\"} 4\n".utf8)
        }
        let families = await ProcessExposition(runtime: runtime, registry: registry).families()
        let failures = families.first { $0.name == "kernel_model_failures_total" }
        XCTAssertEqual(failures?.samples.first?.value, 3)
        XCTAssertEqual(failures?.help, KernelMetricFamilies.all["kernel_model_failures_total"]?.help)
        XCTAssertEqual(families.first { $0.name == "kernel_listen_overflows_total" }?.samples.first?.value, 4)
        let memory = families.first { $0.name == "kernel_process_resident_memory_bytes" }
        XCTAssertEqual(memory?.type, "gauge")
        XCTAssertEqual(memory?.samples.first?.labels, ["worker": "0"])
        XCTAssertGreaterThan(memory?.samples.first?.value ?? 0, 1_000_000)
    }

    // MARK: Through the loader

    private func load(_ yaml: String) throws {
        let file = directory + "/kernel.yaml"
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        let modules = [ModuleDescriptor(MetricsModule.self), ModuleDescriptor(RoutingModule.self)]
        runtime.install(try ConfigurationLoader(modules: modules, role: .edge)
            .load(file: file, runtime: runtime, mode: .run, number: 1))
    }

    private func respond(_ path: String, method: String = "GET") throws -> KernelResponse {
        let request = makeRequest(path, method: method)
        let exchange = runtime.begin(request, on: runtime.eventLoopGroup.next())
        let response = try exchange.respond(request).wait()
        exchange.finish(request, status: response.status, bodyBytesSent: 0)
        return response
    }

    func testMetricsLocationAnswersTheMergedTextFormat() throws {
        try load("""
            routing:
              servers:
                - server_name: api
                  locations:
                    - location: = /metrics
                      metrics: {}
                    - location: /
                      return: 200 "hello"
            """)
        XCTAssertEqual(try respond("/").status, 200)
        XCTAssertEqual(try respond("/").status, 200)
        let response = try respond("/metrics")
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(response.headers["Content-Type"], "text/plain; version=0.0.4; charset=utf-8")
        let samples = PrometheusExposition.parse(body(response)).flatMap(\.samples)
        let hello = samples.first { $0.name == "kernel_http_requests_total" && $0.labels == ["server": "api", "location": "/", "status": "200"] }
        // The registry is the process's: other tests may have counted into it too, so at least these two.
        XCTAssertGreaterThanOrEqual(hello?.value ?? 0, 2)
        XCTAssertTrue(samples.contains { $0.name == "kernel_process_resident_memory_bytes" })
        XCTAssertEqual(try respond("/metrics", method: "POST").status, 405)
        XCTAssertEqual(try respond("/metrics", method: "POST").headers["Allow"], "GET, HEAD")
    }

    func testMetricsDirectiveOptions() throws {
        let location = { (value: String) in """
            routing:
              servers:
                - locations:
                    - location: /metrics
                      metrics: \(value)
            """ }
        XCTAssertNoThrow(try load(location("true")))
        XCTAssertNoThrow(try load(location("{gather_timeout: 500ms}")))
        XCTAssertThrowsError(try load(location("{gather_timeout: 0}")))
        XCTAssertThrowsError(try load(location("{interval: 1s}")))
        XCTAssertThrowsError(try load(location("false")))
        XCTAssertThrowsError(try load("metrics: {path: /metrics}\n"))
    }

    func testHealthLiveAndReady() throws {
        try load("""
            routing:
              servers:
                - locations:
                    - location: = /healthz
                      health: ready
                    - location: = /livez
                      health: live
            """)
        let ready = try respond("/healthz")
        XCTAssertEqual(ready.status, 200)
        XCTAssertEqual(body(ready), #"{"ready":true}"#)
        XCTAssertEqual(ready.headers["Content-Type"], "application/json")
        XCTAssertEqual(body(try respond("/livez")), #"{"live":true}"#)
        XCTAssertEqual(try respond("/healthz", method: "DELETE").status, 405)

        runtime.stopping.markStopping()
        let stopping = try respond("/healthz")
        XCTAssertEqual(stopping.status, 503)
        XCTAssertEqual(body(stopping), #"{"ready":false,"not_ready":[{"check":"stopping","reason":"the kernel is stopping"}]}"#)
        XCTAssertEqual(try respond("/livez").status, 200, "a stopping process is still alive")
    }

    func testHealthDirectiveTakesReadyOrLive() throws {
        XCTAssertThrowsError(try load("""
            routing:
              servers:
                - locations:
                    - location: /h
                      health: started
            """))
    }

    func testReadinessBodyEscapesAndListsEveryReason() {
        XCTAssertEqual(HealthBody.readiness([NotReadyReason(check: "models", name: "a\"b", reason: "loading"),
                                             NotReadyReason(check: "upstream", name: "backend", reason: "no live peer (1 down)")]),
                       #"{"ready":false,"not_ready":[{"check":"models","name":"a\"b","reason":"loading"},{"check":"upstream","name":"backend","reason":"no live peer (1 down)"}]}"#)
    }
}
