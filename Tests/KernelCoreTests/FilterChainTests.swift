import KernelCore
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

private struct FailingHandler: RequestHandler {
    let error: any Error
    func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        context.eventLoop.makeFailedFuture(error)
    }
}

private struct PlainError: Error {}

final class FilterChainTests: XCTestCase {
    private let loop = EmbeddedEventLoop()

    private func run(_ chain: FilterChain, _ handler: any RequestHandler) throws -> KernelResponse {
        let request = KernelRequest(method: "GET", uri: "/", path: "/", query: "", version: .http1_1, headers: [:],
                                    connection: ConnectionInfo(protocolName: "http", listener: "-", remoteAddress: nil, localAddress: nil))
        let context = RequestContext(eventLoop: loop, logger: Logger(label: "test"), route: RouteInfo())
        return try chain.run(request, context: context, handler: handler).wait()
    }

    func testFiltersWrapTheHandlerInOrder() throws {
        let chain = FilterChain(filters: [TaggingFilter(name: "outer"), TaggingFilter(name: "inner")])
        let response = try run(chain, StaticResponseHandler(.text(200, "ok")))
        XCTAssertEqual(response.status, 200)
        // The inner filter sees the response first on its way out.
        XCTAssertEqual(response.headers.values("X-Filter"), ["inner", "outer"])
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
