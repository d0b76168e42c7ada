import KernelConfig
import NIOCore

/// What the router decided for a request head, before its body is read.
///
/// Routers prepare one per location when the configuration is loaded and hand out that same object, so routing a
/// request allocates nothing (a regex location adds its captures with `withCaptures`).
public final class RouteDecision: Sendable {
    public let route: RouteInfo
    public let handler: any RequestHandler
    /// `client_max_body_size` in bytes; nil means no limit (nginx's `0`).
    public let maxBodySize: Int?
    /// The server's access log, or nil when off.
    public let accessLog: AccessLog?
    /// `client_body_buffer_size` and `client_body_temp_path` of the location.
    public let bodyBuffering: RequestBodyBuffering

    public init(route: RouteInfo, handler: any RequestHandler, maxBodySize: Int?, accessLog: AccessLog?,
                bodyBuffering: RequestBodyBuffering = .default) {
        self.route = route
        self.handler = handler
        self.maxBodySize = maxBodySize
        self.accessLog = accessLog
        self.bodyBuffering = bodyBuffering
    }

    /// The same decision with a regex location's captures (`$1`...) and its named groups' numbers.
    public func withCaptures(_ captures: [String], names: [String: Int] = [:]) -> RouteDecision {
        RouteDecision(route: RouteInfo(serverName: route.serverName, location: route.location, captures: captures,
                                       captureNames: names),
                      handler: handler, maxBodySize: maxBodySize, accessLog: accessLog, bodyBuffering: bodyBuffering)
    }
}

/// Chooses the virtual server and location of a request (the routing module provides the real one).
public protocol RequestRouter: Sendable {
    /// Called with the request head (body not read yet).
    func route(_ request: KernelRequest) -> RouteDecision
}

/// The router used when no `routing:` is configured: every request gets 404.
public struct NotFoundRouter: RequestRouter {
    public init() {}
    public func route(_ request: KernelRequest) -> RouteDecision {
        RouteDecision(route: RouteInfo(), handler: StaticResponseHandler(.error(404, "not found")),
                      maxBodySize: 1 << 20, accessLog: nil)
    }
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

/// What a location handler factory knows of the location it is built for.
public struct LocationContext: Sendable {
    /// The location's match as written (`^~ /v2/`).
    public var match: String
    /// The location's prefix or exact path when it has one (for handlers that strip it), else nil.
    public var prefix: String?
    public init(match: String, prefix: String?) {
        self.match = match
        self.prefix = prefix
    }
}
