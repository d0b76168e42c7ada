import KernelConfig
import NIOCore

/// What the router decided for a request head, before its body is read.
///
/// Routers prepare one per location when the configuration is loaded and hand out that same object, so routing a
/// request allocates nothing (a regex location adds its captures with `withCaptures`).
public final class RouteDecision: Sendable {
    public let route: RouteInfo
    public let handler: any RequestHandler
    /// The location's filters around `handler`, built when the configuration loaded; empty for most locations,
    /// which then answer without a future when the handler can (`RequestExchange.start`).
    public let filters: FilterChain
    /// `client_max_body_size` in bytes; nil means no limit (nginx's `0`).
    public let maxBodySize: Int?
    /// The server's access log, or nil when off.
    public let accessLog: AccessLog?
    /// `client_body_buffer_size` and `client_body_temp_path` of the location.
    public let bodyBuffering: RequestBodyBuffering

    public init(route: RouteInfo, handler: any RequestHandler, filters: FilterChain = .empty, maxBodySize: Int?,
                accessLog: AccessLog?, bodyBuffering: RequestBodyBuffering = .default) {
        self.route = route
        self.handler = handler
        self.filters = filters
        self.maxBodySize = maxBodySize
        self.accessLog = accessLog
        self.bodyBuffering = bodyBuffering
    }

    /// The same decision with a regex location's captures (`$1`...) and its named groups' numbers.
    public func withCaptures(_ captures: [String], names: [String: Int] = [:]) -> RouteDecision {
        RouteDecision(route: RouteInfo(serverName: route.serverName, location: route.location, captures: captures,
                                       captureNames: names),
                      handler: handler, filters: filters, maxBodySize: maxBodySize, accessLog: accessLog,
                      bodyBuffering: bodyBuffering)
    }

    /// The same location's limits, log and filters around another handler (the 301 of a proxying `/dir/`).
    public func withHandler(_ handler: any RequestHandler) -> RouteDecision {
        RouteDecision(route: route, handler: handler, filters: filters, maxBodySize: maxBodySize, accessLog: accessLog,
                      bodyBuffering: bodyBuffering)
    }
}

/// Chooses the virtual server and location of a request (the routing module provides the real one).
public protocol RequestRouter: Sendable {
    /// Called with the request head (body not read yet).
    func route(_ request: KernelRequest) -> RouteDecision
}

/// The router used when no `routing:` is configured: every request gets 404.
public struct NotFoundRouter: RequestRouter {
    private let decision: RouteDecision

    /// `filters`: the module-wide filters, which answer a 404 too.
    public init(filters: FilterChain = .empty) {
        decision = RouteDecision(route: RouteInfo(), handler: StaticResponseHandler(.error(404, "not found")),
                                 filters: filters, maxBodySize: 1 << 20, accessLog: nil)
    }

    public func route(_ request: KernelRequest) -> RouteDecision { decision }
}

/// A handler that always answers with the same response (a class: the request path reaches it through an
/// existential, and a reference is cheaper to pass along than the response it holds).
public final class StaticResponseHandler: ImmediateRequestHandler {
    public let response: KernelResponse
    public init(_ response: KernelResponse) { self.response = response }
    public func response(to request: KernelRequest, context: RequestContext) -> KernelResponse { response }
}

/// Builds a location's handler from its YAML value: how a module contributes a location directive
/// (`uwsgi_pass: 127.0.0.1:6666`, `inference: {}`) that the routing module does not know itself.
///
/// `value` is the directive's value; `location` is the whole location mapping, from which the factory reads its
/// own option keys (`uwsgi_param`, `uwsgi_read_timeout`): keys nobody reads are reported as unknown afterwards.
public typealias LocationHandlerFactory = (_ value: ConfigValue, _ location: ConfigMapping, _ context: LocationContext) throws -> any RequestHandler

/// Builds a filter from a filter directive's YAML value (`add_header`, `cors`): how a module contributes a directive
/// that wraps whatever handler a location has.
///
/// Called once for each server and location that writes the directive, with the mapping it is written in (the
/// factory reads its option keys there). At server level `context.match` is empty and `context.prefix` nil.
public typealias LocationFilterFactory = (_ value: ConfigValue, _ mapping: ConfigMapping, _ context: LocationContext) throws -> any RequestFilter

/// What a location handler directive does beyond answering, declared when it is registered
/// (`Registrar.addLocationHandler(_:capabilities:factory:)`), so the router need not guess it from the name.
public struct LocationHandlerCapabilities: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Passes requests to an upstream (`uwsgi_pass`, `proxy_pass`). As in nginx, a prefix location ending in `/`
    /// (`/api/`) then also answers the path without the slash (`/api`) with a 301 to the location.
    public static let proxies = LocationHandlerCapabilities(rawValue: 1 << 0)
    /// Serves the request path relative to the location's prefix (`LocationContext.prefix`), so it needs a prefix
    /// location (`/models/`, `^~ /v2`): an exact or regex location is a configuration error.
    public static let stripsPrefix = LocationHandlerCapabilities(rawValue: 1 << 1)
}

/// What a location handler or filter factory knows of the location it is built for.
public struct LocationContext: Sendable {
    /// The location's match as written (`^~ /v2/`); empty for a directive written at server level.
    public var match: String
    /// The location's prefix or exact path when it has one (for handlers that strip it), else nil.
    public var prefix: String?
    /// The location's `absolute_redirect`, `port_in_redirect` and `server_name_in_redirect`, for handlers that
    /// make or rewrite a `Location`.
    public var redirects: RedirectStyle
    public init(match: String, prefix: String?, redirects: RedirectStyle = .default) {
        self.match = match
        self.prefix = prefix
        self.redirects = redirects
    }

    /// The context of a filter directive written in a server rather than a location.
    public static let server = LocationContext(match: "", prefix: nil)
}
