import KernelConfig
@testable import KernelCore
import Logging
import NIOCore
import NIOEmbedded
import XCTest

/// Appends its name to a response header on the way out, so the order of filters is visible.
private struct TaggingFilter: RequestFilter {
    let name: String
    func handle(_ request: KernelRequest, context: RequestContext, next: FilterNext) -> EventLoopFuture<KernelResponse> {
        next(request, context: context).map { response in
            var response = response
            response.headers.add("X-Filter", name)
            return response
        }
    }
}

/// Answers in the request's place without calling the rest of the chain, as a CORS preflight does.
private struct AnsweringFilter: RequestFilter {
    func handle(_ request: KernelRequest, context: RequestContext, next: FilterNext) -> EventLoopFuture<KernelResponse> {
        context.eventLoop.makeSucceededFuture(KernelResponse(status: 204, headers: [:], body: .empty))
    }
}

private struct FailingHandler: RequestHandler {
    let error: any Error
    func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        context.eventLoop.makeFailedFuture(error)
    }
}

private struct PlainError: Error {}

/// Answers through its future only, as a proxy or a model does.
private struct FutureOnlyHandler: RequestHandler {
    func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        context.eventLoop.makeSucceededFuture(.text(202, "later"))
    }
}

final class FilterChainTests: XCTestCase {
    private let loop = EmbeddedEventLoop()

    private func run(_ chain: FilterChain, _ handler: any RequestHandler) throws -> KernelResponse {
        let request = KernelRequest(method: "GET", uri: "/", path: "/", query: "", version: .http1_1, headers: [:],
                                    connection: ConnectionInfo(protocolName: "http", listener: "-", remoteAddress: nil, localAddress: nil))
        return try chain.run(request, context: context(), handler: handler).wait()
    }

    private func context() -> RequestContext {
        RequestContext(eventLoop: loop, logger: Logger(label: "test"), route: RouteInfo())
    }

    private func start(_ chain: FilterChain, _ handler: any RequestHandler) -> PendingResponse {
        let request = KernelRequest(method: "GET", uri: "/", path: "/", query: "", version: .http1_1, headers: [:],
                                    connection: ConnectionInfo(protocolName: "http", listener: "-", remoteAddress: nil, localAddress: nil))
        return chain.start(request, context: context(), handler: handler)
    }

    func testAnImmediateAnswerWithoutFiltersNeedsNoFuture() throws {
        guard case .ready(let response) = start(FilterChain(filters: []), StaticResponseHandler(.text(200, "ok"))) else {
            return XCTFail("a static answer without filters is ready at once")
        }
        XCTAssertEqual(response.status, 200)
        // A filter must see the response, so it goes through the future path.
        guard case .future(let filtered) = start(FilterChain(filters: [TaggingFilter(name: "f")]), StaticResponseHandler(.text(200, "ok"))) else {
            return XCTFail("filters run on futures")
        }
        XCTAssertEqual(try filtered.wait().headers["X-Filter"], "f")
        guard case .future(let later) = start(FilterChain(filters: []), FutureOnlyHandler()) else {
            return XCTFail("a handler without an immediate answer is waited for")
        }
        XCTAssertEqual(try later.wait().status, 202)
        guard case .future(let failed) = start(FilterChain(filters: []), FailingHandler(error: KernelHTTPError(503, "busy"))) else {
            return XCTFail("a failing handler is waited for")
        }
        XCTAssertEqual(try failed.wait().status, 503, "the future path still turns errors into responses")
    }

    func testFiltersWrapTheHandlerInOrder() throws {
        let chain = FilterChain(filters: [TaggingFilter(name: "outer"), TaggingFilter(name: "inner")])
        let response = try run(chain, StaticResponseHandler(.text(200, "ok")))
        XCTAssertEqual(response.status, 200)
        // The inner filter sees the response first on its way out.
        XCTAssertEqual(response.headers.values("X-Filter"), ["inner", "outer"])
    }

    func testALocationChainOrdersModuleWideAndDirectiveFiltersByPhase() throws {
        let runtime = KernelRuntime.standalone(threads: 1, level: .critical)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        XCTAssertTrue(Registrar(role: .both, mode: .check, configurationFile: "-", runtime: runtime).filterChain([]).isEmpty,
                      "no filter anywhere: the empty chain, hence the fast path")
        let registrar = Registrar(role: .both, mode: .check, configurationFile: "-", runtime: runtime)
        registrar.addFilter(TaggingFilter(name: "module-headers"), phase: .headers)
        registrar.addFilter(TaggingFilter(name: "module-rewrite"), phase: .rewrite)
        registrar.addLocationFilter("late", phase: .headers) { value, _, _ in TaggingFilter(name: try value.string()) }
        registrar.addLocationFilter("early", phase: .rewrite) { value, _, _ in TaggingFilter(name: try value.string()) }
        let yaml = try YAMLParser(environment: [:]).parse("late: directive-headers\nearly: directive-rewrite\n", file: "t.yaml")
        let mapping = try ConfigValue(node: yaml, path: "").mapping()
        let built = try registrar.locationFilterDirectives.map { directive in
            try directive.make(mapping.required(directive.key), in: mapping, context: .server)
        }
        let chain = registrar.filterChain(built.reversed())
        let response = try run(chain, StaticResponseHandler(.text(200, "ok")))
        // Outermost first: rewrite (module-wide, then directive), then headers (module-wide, then directive); the
        // response header lists them innermost first.
        XCTAssertEqual(response.headers.values("X-Filter"),
                       ["directive-headers", "module-headers", "directive-rewrite", "module-rewrite"])
    }

    func testAListenersRefusalGetsTheHeaderPhaseFiltersOnly() throws {
        let runtime = KernelRuntime.standalone(threads: 1, level: .critical)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let registrar = Registrar(role: .both, mode: .check, configurationFile: "-", runtime: runtime)
        registrar.addFilter(TaggingFilter(name: "headers"), phase: .headers)
        registrar.addFilter(TaggingFilter(name: "access"), phase: .access)
        let chain = registrar.filterChain([])
        let request = KernelRequest(method: "POST", uri: "/", path: "/", query: "", version: .http1_1, headers: [:],
                                    connection: ConnectionInfo(protocolName: "http", listener: "-", remoteAddress: nil, localAddress: nil))
        let refused = chain.decorate(.error(413, "request body too large"), for: request, context: context())
        XCTAssertEqual(refused.status, 413)
        XCTAssertEqual(refused.headers.values("X-Filter"), ["headers"], "only the headers phase sees a refusal")
        // A filter that would answer in the refusal's place (a preflight) leaves the refusal as it was.
        let answering = FilterChain(filters: [AnsweringFilter()], headerFilters: [AnsweringFilter()])
        let kept = answering.decorate(.error(413, "request body too large"), for: request, context: context())
        XCTAssertEqual(kept.status, 413)
        guard case .buffer = kept.body else { return XCTFail("the refusal's own body stays") }
    }

    func testHTTPErrorsBecomeTheirStatusAndOtherErrors500() throws {
        let chain = FilterChain(filters: [])
        let notFound = try run(chain, FailingHandler(error: KernelHTTPError(404, "unknown model \"x\"")))
        XCTAssertEqual(notFound.status, 404)
        guard case .buffer(let body) = notFound.body else { return XCTFail("expected a buffer body") }
        XCTAssertEqual(String(buffer: body), #"{"error":"unknown model \"x\""}"#)
        XCTAssertEqual(try run(chain, FailingHandler(error: PlainError())).status, 500)
    }
}
