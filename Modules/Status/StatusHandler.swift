import KernelCore
import NIOCore

/// The `status` location: the page (`GET /status`) and, at the same path, the JSON it reads every second
/// (`GET /status?format=json`). The query names the format rather than a sub-path so the page works under any
/// location, exact (`= /status`) or prefix.
struct StatusHandler: RequestHandler {
    let sampler: StatusSampler

    enum Format: Equatable { case page, json }

    /// The `format` argument of a query string: absent or `html` is the page, `json` the data; another value is a
    /// 400 (the last `format` given wins).
    static func format(ofQuery query: String) -> Result<Format, KernelHTTPError> {
        var chosen = Format.page
        for argument in query.split(separator: "&") {
            let parts = argument.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.first == "format" else { continue }
            let value = parts.count > 1 ? parts[1] : ""
            switch value {
            case "json": chosen = .json
            case "html": chosen = .page
            default:
                return .failure(KernelHTTPError(400, "status: unknown format \"\(value)\" (format=json or format=html)"))
            }
        }
        return .success(chosen)
    }

    func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        guard request.method == "GET" || request.method == "HEAD" else {
            return context.eventLoop.makeFailedFuture(
                KernelHTTPError(405, "method \(request.method) not allowed on \(request.path)", headers: ["Allow": "GET, HEAD"]))
        }
        switch Self.format(ofQuery: request.query) {
        case .failure(let error):
            return context.eventLoop.makeFailedFuture(error)
        case .success(.page):
            return context.eventLoop.makeSucceededFuture(Self.page)
        case .success(.json):
            let sampler = self.sampler
            return context.eventLoop.makeFutureWithTask {
                var response = KernelResponse.text(200, await sampler.reportJSON(), contentType: "application/json")
                response.headers.add("Cache-Control", "no-store")
                return response
            }
        }
    }

    /// The page: one document with its style and script inline. The policy lets it load nothing from anywhere
    /// and talk only to its own origin, so it works with no network and cannot be made to fetch elsewhere.
    static let page: KernelResponse = {
        var response = KernelResponse.text(200, StatusPage.html, contentType: "text/html; charset=utf-8")
        response.headers.add("Cache-Control", "no-store")
        response.headers.add("Content-Security-Policy",
                             "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        response.headers.add("X-Content-Type-Options", "nosniff")
        return response
    }()
}
