import Logging
import NIOCore

/// What a request is handled with: the virtual server and location the router chose.
///
/// Made once per location when the configuration is loaded (and per request only for a regex location's captures),
/// so passing it along is one reference count.
public final class RouteInfo: Sendable {
    /// The first `server_name` of the chosen server (`$server_name`), or empty.
    public let serverName: String
    /// The chosen location as written (`= /`, `^~ /images/`), or empty when nothing matched.
    public let location: String
    /// Regex captures of a `~`/`~*` location ($1...), empty otherwise.
    public let captures: [String]
    /// The group numbers of the regex's named groups (`(?<id>...)`), by name: what the variable `$id` reads.
    public let captureNames: [String: Int]

    public init(serverName: String = "", location: String = "", captures: [String] = [],
                captureNames: [String: Int] = [:]) {
        self.serverName = serverName
        self.location = location
        self.captures = captures
        self.captureNames = captureNames
    }
}

/// What a handler and a filter get beside the request.
public struct RequestContext: Sendable {
    /// The event loop of the connection the request arrived on; futures returned must be on it or hop to it.
    public let eventLoop: any EventLoop
    /// The error log.
    public var logger: Logger
    public let route: RouteInfo
    /// What the request is doing, for the harakiri log line; nil unless `kernel.harakiri` is set. Handlers note
    /// their waits here (`context.activity?.note("waiting for upstream ...")`).
    public let activity: RequestActivity?
    /// Cancelled when the client leaves before its answer is complete; nil where nobody can tell (probes).
    public let cancellation: RequestCancellation?
    /// The location's `client_max_body_size` in bytes (nil: no limit): what a handler that expands a body (a
    /// compressed one) holds the expanded bytes to.
    public let maxBodySize: Int?

    public init(eventLoop: any EventLoop, logger: Logger, route: RouteInfo, activity: RequestActivity? = nil,
                cancellation: RequestCancellation? = nil, maxBodySize: Int? = nil) {
        self.eventLoop = eventLoop
        self.logger = logger
        self.route = route
        self.activity = activity
        self.cancellation = cancellation
        self.maxBodySize = maxBodySize
    }
}

/// Produces the response to a request: a `return`, a proxied upstream, a model.
public protocol RequestHandler: Sendable {
    func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse>

    /// The response at once, for a handler that has it without waiting (`return`, fixed answers); nil means that
    /// `handle` must be called. A response given here spares the request path a future. The default is nil.
    func immediateResponse(to request: KernelRequest, context: RequestContext) -> KernelResponse?

    /// What the handler needs of the body. The default, `.memory`, gives it the whole body in `request.body`.
    var requestBodyUse: RequestBodyUse { get }

    /// Whether the handler queues work that should be dropped when the client leaves (a model's queue): its
    /// requests' contexts then carry a `RequestCancellation` the connection fires. The default, false, spares the
    /// other handlers' requests the allocation.
    var cancelsWhenClientLeaves: Bool { get }

    /// Whether `respond(to:context:with:)` is the handler's own way of answering, with no future made per
    /// request (a proxy completes its answer from an upstream's callbacks): a location without filters then
    /// calls it instead of `handle`. The default is false.
    var answersThroughCallback: Bool { get }

    /// Answers `request` by calling `respond` exactly once, on `context.eventLoop` (possibly before returning).
    /// Errors are answers too (a 502, a 504): there is no failure. The default waits for `handle`'s future.
    func respond(to request: KernelRequest, context: RequestContext, with respond: @escaping (KernelResponse) -> Void)
}

extension RequestHandler {
    public func immediateResponse(to request: KernelRequest, context: RequestContext) -> KernelResponse? { nil }
    public var requestBodyUse: RequestBodyUse { .memory }
    public var cancelsWhenClientLeaves: Bool { false }
    public var answersThroughCallback: Bool { false }

    public func respond(to request: KernelRequest, context: RequestContext, with respond: @escaping (KernelResponse) -> Void) {
        let logger = context.logger
        handle(request, context: context).hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let response): respond(response)
            case .failure(let error): respond(FilterChain.errorResponse(error, logger: logger))
            }
        }
    }
}

/// A handler that always has its answer at once (`return`, fixed answers, redirects): it writes only `response`,
/// and both ways of asking for it come from here.
public protocol ImmediateRequestHandler: RequestHandler {
    func response(to request: KernelRequest, context: RequestContext) -> KernelResponse
}

extension ImmediateRequestHandler {
    /// An answer made from the head alone: the body, if any, is discarded while (or after) it goes out.
    public var requestBodyUse: RequestBodyUse { .discarded }

    public func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        context.eventLoop.makeSucceededFuture(response(to: request, context: context))
    }

    public func immediateResponse(to request: KernelRequest, context: RequestContext) -> KernelResponse? {
        response(to: request, context: context)
    }
}

/// The response of a request: there at once, or to be waited for.
public enum PendingResponse: Sendable {
    /// The handler answered at once and the location has no filter.
    case ready(KernelResponse)
    /// The response to come; the future does not fail (errors have become error responses).
    case future(EventLoopFuture<KernelResponse>)
}

/// A handler whose answer is given: what the header filters wrap when they decorate a listener's refusal.
struct FixedResponseHandler: ImmediateRequestHandler {
    let response: KernelResponse

    func response(to request: KernelRequest, context: RequestContext) -> KernelResponse { response }
}

/// A handler built from a closure.
public struct ClosureHandler: RequestHandler {
    let body: @Sendable (KernelRequest, RequestContext) -> EventLoopFuture<KernelResponse>
    public init(_ body: @escaping @Sendable (KernelRequest, RequestContext) -> EventLoopFuture<KernelResponse>) {
        self.body = body
    }
    public func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        body(request, context)
    }
}

/// When a filter runs. Phases run in this order; filters of one phase run in the order of the module list.
public enum FilterPhase: Int, Sendable, Comparable, CaseIterable {
    /// Rewrites the request before anything else looks at it.
    case rewrite
    /// Decides whether the request may proceed (limits, auth); may answer at once.
    case access
    /// Edits response headers on the way out (CORS, `add_header`); may answer preflights at once.
    case headers

    public static func < (a: FilterPhase, b: FilterPhase) -> Bool { a.rawValue < b.rawValue }
}

/// Middleware: answers at once, or calls `next` and may edit the response on its way out.
public protocol RequestFilter: Sendable {
    func handle(_ request: KernelRequest, context: RequestContext, next: FilterNext) -> EventLoopFuture<KernelResponse>
}

/// The rest of the chain after a filter.
public struct FilterNext: Sendable {
    let chain: FilterChain
    let index: Int
    let handler: any RequestHandler

    public func callAsFunction(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        chain.run(from: index, request, context: context, handler: handler)
    }
}

/// The ordered filters of one location, wrapped around its handler.
///
/// Built once per location when the configuration loads (the module-wide filters of `Registrar.addFilter` and the
/// location's filter directives, by phase: `Registrar.filterChain(_:)`) and kept in its `RouteDecision`, as
/// Hummingbird builds a route's middleware stack when the route is registered: a request only walks the array.
public struct FilterChain: Sendable {
    public let filters: [any RequestFilter]
    /// The filters of the `headers` phase alone (`add_header`, `cors`): they also decorate the answers a listener
    /// makes itself for a routed request (a 413 before the body is read), as nginx's header filters see its own
    /// error pages.
    public let headerFilters: [any RequestFilter]

    public init(filters: [any RequestFilter], headerFilters: [any RequestFilter] = []) {
        self.filters = filters
        self.headerFilters = headerFilters
    }

    /// No filter: a handler with an immediate answer then needs no future (`start` gives `.ready`).
    public static let empty = FilterChain(filters: [])

    public var isEmpty: Bool { filters.isEmpty }

    /// Runs the filters from `index`, then `handler`. A thrown or failed handler becomes a JSON error response
    /// (its status when it is a `KernelHTTPError`, else 500), so protocol modules always get a response.
    public func run(from index: Int = 0, _ request: KernelRequest, context: RequestContext,
                    handler: any RequestHandler) -> EventLoopFuture<KernelResponse> {
        let future: EventLoopFuture<KernelResponse>
        if index < filters.count {
            future = filters[index].handle(request, context: context,
                                           next: FilterNext(chain: self, index: index + 1, handler: handler))
        } else {
            future = handler.handle(request, context: context)
        }
        guard index == 0 else { return future }
        return future.flatMapErrorThrowing { error in FilterChain.errorResponse(error, logger: context.logger) }
    }

    /// Like `run`, but without a future when no filter is configured and the handler answers at once: the common
    /// `return` and fixed answers then cost no allocation beyond the response.
    public func start(_ request: KernelRequest, context: RequestContext, handler: any RequestHandler) -> PendingResponse {
        if filters.isEmpty, let response = handler.immediateResponse(to: request, context: context) {
            return .ready(response)
        }
        return .future(run(request, context: context, handler: handler))
    }

    /// `response` (a listener's own refusal of `request`) as the `headers` phase filters leave it. Those filters
    /// edit a response on its way out without waiting, so the chain completes at once; a filter that would wait,
    /// or one that answers in the refusal's place (a preflight), leaves the refusal as it was.
    public func decorate(_ response: KernelResponse, for request: KernelRequest, context: RequestContext) -> KernelResponse {
        guard !headerFilters.isEmpty, context.eventLoop.inEventLoop else { return response }
        let chain = FilterChain(filters: headerFilters)
        var decorated: KernelResponse?
        chain.run(request, context: context, handler: FixedResponseHandler(response: response))
            .assumeIsolated().whenSuccess { decorated = $0 }
        // Only headers may change: a listener writes its refusal's body itself, whole.
        guard let decorated, decorated.status == response.status, case .buffer = decorated.body else { return response }
        return decorated
    }

    /// The response for a handler's error: a `KernelHTTPError`'s status, message and headers, or 500. Logged at
    /// `error` for 5xx, at `info` for what the client caused.
    public static func errorResponse(_ error: any Error, logger: Logger) -> KernelResponse {
        if let error = error as? KernelHTTPError {
            if error.status >= 500 { logger.error("\(error.message)") }
            else { logger.info("\(error.message)") }
            var response = KernelResponse.error(error.status, error.message)
            for (name, value) in error.headers { response.headers.add(name, value) }
            return response
        }
        logger.error("handler failed: \(error)")
        return .error(500, "internal error")
    }
}
