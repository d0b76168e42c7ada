import KernelConfig
import KernelCore
import NIOCore
@testable import Routing
import XCTest

/// On the way in adds its name to the request's `X-Trace`, on the way out to the response's `X-Filter`: the order
/// of filters around the handler is visible from both sides.
private struct TraceFilter: RequestFilter {
    let name: String
    func handle(_ request: KernelRequest, context: RequestContext, next: FilterNext) -> EventLoopFuture<KernelResponse> {
        var request = request
        request.headers.add("X-Trace", name)
        return next(request, context: context).map { response in
            var response = response
            response.headers.add("X-Filter", name)
            return response
        }
    }
}

/// Answers with the `X-Trace` values it received, at once (so that without filters it takes the fast path).
private struct TraceHandler: ImmediateRequestHandler {
    func response(to request: KernelRequest, context: RequestContext) -> KernelResponse {
        .text(200, request.headers.values("X-Trace").joined(separator: ","))
    }
}

/// Filter and handler directives as the modules before routing contribute them (`add_header`, `cors`,
/// `proxy_pass`), declared only for these tests.
private enum FilterTestModule: KernelModule {
    static let configurationKey = "filters_test"
    static let roles: Set<KernelRole> = [.edge, .worker]

    static func decode(_ value: ConfigValue, registrar: Registrar) throws -> Bool {
        let mapping = try value.mapping()
        let moduleWide = try mapping.optional("module_wide")?.bool() ?? false
        try mapping.finish()
        return moduleWide
    }

    static func register(_ moduleWide: Bool, into registrar: Registrar) throws {
        if moduleWide { registrar.addFilter(TraceFilter(name: "module"), phase: .access) }
        // Declared before the rewrite one: phases, not declaration order, decide who runs first.
        registrar.addLocationFilter("test_headers", phase: .headers) { value, _, _ in
            TraceFilter(name: "headers:\(try value.string())")
        }
        registrar.addLocationFilter("test_rewrite", phase: .rewrite) { value, mapping, context in
            // Reads an option key of its own from the mapping it is written in.
            let suffix = try mapping.optional("test_rewrite_suffix")?.string() ?? ""
            let level = context.match.isEmpty ? "server" : context.match
            return TraceFilter(name: "rewrite:\(try value.string())\(suffix)@\(level)")
        }
        registrar.addLocationFilter("test_strict", phase: .access) { value, _, _ in
            guard try value.string() == "on" else { throw value.expected("on") }
            return TraceFilter(name: "strict")
        }
        registrar.addLocationHandler("trace") { _, _, _ in TraceHandler() }
        registrar.addLocationHandler("relay", capabilities: .proxies) { _, _, _ in StaticResponseHandler(.text(200, "relay")) }
        registrar.addLocationHandler("fake_pass") { _, _, _ in StaticResponseHandler(.text(200, "fake")) }
        registrar.addLocationHandler("mounted", capabilities: .stripsPrefix) { _, _, context in
            StaticResponseHandler(.text(200, context.prefix ?? "nil"))
        }
    }
}

final class LocationFilterTests: XCTestCase {
    private let module = ModuleDescriptor(FilterTestModule.self)

    func testAHandlerAndTwoFiltersRunInPhaseOrder() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            filters_test: {}
            routing:
              servers:
                - locations:
                    - location: /both
                      test_headers: h
                      test_rewrite: r
                      test_rewrite_suffix: "!"
                      trace: true
            """, modules: [module])
        let answer = try fixture.respond("/both")
        XCTAssertEqual(answer.status, 200)
        // On the way in the rewrite filter (outer) comes first; on the way out the headers filter (inner) does.
        XCTAssertEqual(answer.body, "rewrite:r!@/both,headers:h")
        XCTAssertEqual(answer.headers.values("X-Filter"), ["headers:h", "rewrite:r!@/both"])
        XCTAssertEqual(answer.decision.filters.filters.count, 2, "the chain is in the decision, built at load")
        XCTAssertTrue(fixture.decision("/both").filters.filters.first is TraceFilter)
    }

    func testModuleWideFiltersJoinTheLocationChainByPhase() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            filters_test: {module_wide: true}
            routing:
              servers:
                - locations:
                    - location: /both
                      test_headers: h
                      test_rewrite: r
                      trace: true
                    - location: /none
                      trace: true
            """, modules: [module])
        XCTAssertEqual(try fixture.respond("/both").body, "rewrite:r@/both,module,headers:h")
        XCTAssertEqual(try fixture.respond("/none").body, "module")
        XCTAssertEqual(try fixture.respond("/elsewhere").headers.values("X-Filter"), ["module"],
                       "a server's 404 passes the module-wide filters too")
    }

    func testServerLevelFiltersAreInheritedUnlessTheLocationWritesThem() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            filters_test: {}
            routing:
              servers:
                - test_headers: server
                  test_rewrite: s
                  locations:
                    - location: /inherit
                      trace: true
                    - location: /override
                      test_headers: location
                      trace: true
                    - location: /api/
                      test_headers: api
                      relay: backend
            """, modules: [module])
        XCTAssertEqual(try fixture.respond("/inherit").body, "rewrite:s@server,headers:server")
        // The location's value replaces the server's entirely for that directive; the other is still inherited.
        let override = try fixture.respond("/override")
        XCTAssertEqual(override.body, "rewrite:s@server,headers:location")
        XCTAssertEqual(override.headers.values("X-Filter"), ["headers:location", "rewrite:s@server"])
        // The server's own answers (no location matched) have the server's filters.
        let notFound = try fixture.respond("/missing")
        XCTAssertEqual(notFound.status, 404)
        XCTAssertEqual(notFound.headers.values("X-Filter"), ["headers:server", "rewrite:s@server"])
        // The 301 of a proxying location is the location's answer: its filters apply.
        let redirect = try fixture.respond("/api")
        XCTAssertEqual(redirect.status, 301)
        XCTAssertEqual(redirect.headers.values("X-Filter"), ["headers:api", "rewrite:s@server"])
    }

    func testAServerReturnPassesTheServerFilters() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            filters_test: {}
            routing:
              servers:
                - test_headers: server
                  return: 200 "moved"
            """, modules: [module])
        let answer = try fixture.respond("/any")
        XCTAssertEqual(answer.body, "moved")
        XCTAssertEqual(answer.headers.values("X-Filter"), ["headers:server"])
    }

    func testALocationWithoutFiltersAnswersWithoutAFuture() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            filters_test: {}
            routing:
              servers:
                - server_name: plain.example
                  locations:
                    - location: /
                      return: 200 "plain"
                    - location: /trace
                      trace: true
                    - location: /filtered
                      test_headers: h
                      return: 200 "filtered"
                - server_name: inherits.example
                  test_headers: server
                  locations:
                    - location: /
                      return: 200 "inherited"
            """, modules: [module])
        func start(_ target: String, host: String) -> PendingResponse {
            let request = fixture.request(target, host: host)
            let exchange = fixture.runtime.begin(request, on: fixture.runtime.eventLoopGroup.next())
            defer { exchange.finish(request, status: 200, bodyBytesSent: 0) }
            return exchange.start(request)
        }
        for target in ["/", "/trace"] {
            guard case .ready(let response) = start(target, host: "plain.example") else {
                XCTFail("\(target): a location without filters answers at once"); continue
            }
            XCTAssertEqual(response.status, 200)
        }
        XCTAssertTrue(fixture.decision("/", host: "plain.example").filters.isEmpty)
        for (target, host) in [("/filtered", "plain.example"), ("/", "inherits.example")] {
            guard case .future(let future) = start(target, host: host) else {
                XCTFail("\(host)\(target): a filter sees the response, so it is waited for"); continue
            }
            XCTAssertEqual(try future.wait().headers.values("X-Filter").count, 1)
        }
    }

    func testProxyingIsACapabilityNotAName() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            filters_test: {}
            routing:
              servers:
                - locations:
                    - location: /relay/
                      relay: backend
                    - location: /fake/
                      fake_pass: backend
                    - location: /kept/
                      relay: backend
                      absolute_redirect: off
            """, modules: [module])
        let redirect = try fixture.respond("/relay?a=1", host: "example.com")
        XCTAssertEqual(redirect.status, 301)
        XCTAssertEqual(redirect.headers["Location"], "http://example.com:8080/relay/?a=1", "absolute, as nginx sends it")
        XCTAssertEqual(try fixture.respond("/kept", host: "example.com").headers["Location"], "/kept/")
        XCTAssertEqual(try fixture.respond("/fake").status, 404, "a _pass name without .proxies does not redirect")
        XCTAssertEqual(try fixture.respond("/fake/x").body, "fake")
    }

    func testPrefixStrippingHandlersNeedAPrefixLocation() throws {
        let fixture = try RoutingFixture()
        try fixture.load("""
            filters_test: {}
            routing:
              servers:
                - locations:
                    - location: ^~ /models/
                      mounted: true
            """, modules: [module])
        XCTAssertEqual(try fixture.respond("/models/x").body, "/models/")
        for match in ["\"= /models\"", "\"~ ^/models\""] {
            let yaml = """
                filters_test: {}
                routing:
                  servers:
                    - locations:
                        - location: \(match)
                          mounted: true
                """
            XCTAssertEqual(fixture.loadError(yaml, modules: [module]),
                           "FILE:6:20: routing.servers[0].locations[0].mounted: \"mounted\" serves the paths under its location's prefix: it needs a prefix location (/path/ or ^~ /path), found \(match)")
        }
    }

    func testFilterDirectiveErrorsNameTheirPlace() {
        let fixture = try! RoutingFixture()
        XCTAssertEqual(fixture.loadError("""
            filters_test: {}
            routing:
              servers:
                - locations:
                    - location: /
                      test_strict: off
                      trace: true
            """, modules: [module]),
            "FILE:6:24: routing.servers[0].locations[0].test_strict: expected on, found \"off\"")
        XCTAssertEqual(fixture.loadError("""
            filters_test: {}
            routing:
              servers:
                - test_strict: maybe
                  locations:
                    - location: /
                      trace: true
            """, modules: [module]),
            "FILE:4:20: routing.servers[0].test_strict: expected on, found \"maybe\"")
        // Filters do not count as handlers: two handlers are still an error, a filter alone is no handler.
        XCTAssertEqual(fixture.loadError("""
            filters_test: {}
            routing:
              servers:
                - locations:
                    - location: /
                      test_headers: h
                      trace: true
                      return: 200
            """, modules: [module]),
            "FILE:8:19: routing.servers[0].locations[0].return: a location has one handler, found \"trace\" and \"return\"")
        XCTAssertEqual(fixture.loadError("""
            filters_test: {}
            routing:
              servers:
                - locations:
                    - location: /
                      test_headers: h
            """, modules: [module]),
            "FILE:5:11: routing.servers[0].locations[0]: missing a handler (one of: fake_pass, mounted, relay, return, trace)")
    }
}
