import KernelCore
import NIOCore

/// Applies a `CORSPolicy`: answers preflights at the edge (204, never passed on) and adds the CORS headers to
/// the answers of allowed origins. A disallowed origin gets no CORS header at all, so the browser refuses it. The
/// policy owns every `Access-Control-*` field of the answer: those the application or an `add_header` set are
/// replaced.
struct CORSFilter: RequestFilter {
    let policy: CORSPolicy

    func handle(_ request: KernelRequest, context: RequestContext, next: FilterNext) -> EventLoopFuture<KernelResponse> {
        guard let origin = request.headers["Origin"] else {
            // Not a cross-origin call; the answer still varies with Origin when origins are echoed.
            return policy.echoesOrigin ? next(request, context: context).map(Self.varyOnOrigin) : next(request, context: context)
        }
        let allowed = policy.allows(origin)
        if request.method == "OPTIONS", let requested = request.headers["Access-Control-Request-Method"] {
            return context.eventLoop.makeSucceededFuture(preflight(origin: origin, allowed: allowed, method: requested,
                                                                    request: request, context: context))
        }
        guard allowed else {
            return next(request, context: context).map { Self.varyOnOrigin(Self.withoutCORSHeaders($0)) }
        }
        return next(request, context: context).map { response in
            var response = Self.withoutCORSHeaders(response)
            addOrigin(origin, to: &response.headers)
            if !policy.exposeHeaders.isEmpty {
                response.headers.replace("Access-Control-Expose-Headers", policy.exposeHeaders.joined(separator: ", "))
            }
            return response
        }
    }

    /// The answer to a preflight: 204, with the CORS headers when the origin and the method are allowed.
    private func preflight(origin: String, allowed: Bool, method: String, request: KernelRequest,
                           context: RequestContext) -> KernelResponse {
        var response = KernelResponse(status: 204)
        Self.addVary("Origin", to: &response.headers)
        let methodAllowed = policy.allowMethods.contains(method.uppercased())
        guard allowed, methodAllowed else {
            context.logger.info("CORS preflight refused: origin \"\(origin)\", method \"\(method)\" not allowed, request: \"\(request.requestLine)\", location: \"\(context.route.location)\"")
            return response
        }
        addOrigin(origin, to: &response.headers)
        response.headers.add("Access-Control-Allow-Methods", policy.allowMethods.joined(separator: ", "))
        if let headers = policy.allowHeaders {
            if !headers.isEmpty { response.headers.add("Access-Control-Allow-Headers", headers.joined(separator: ", ")) }
        } else if let requested = request.headers["Access-Control-Request-Headers"], !requested.isEmpty {
            response.headers.add("Access-Control-Allow-Headers", requested)
            Self.addVary("Access-Control-Request-Headers", to: &response.headers)
        }
        if let maxAge = policy.maxAge { response.headers.add("Access-Control-Max-Age", String(maxAge)) }
        return response
    }

    private func addOrigin(_ origin: String, to headers: inout HeaderFields) {
        if policy.echoesOrigin {
            headers.replace("Access-Control-Allow-Origin", origin)
            Self.addVary("Origin", to: &headers)
        } else {
            headers.replace("Access-Control-Allow-Origin", "*")
        }
        if policy.allowCredentials { headers.replace("Access-Control-Allow-Credentials", "true") }
    }

    /// The response without the `Access-Control-*` fields an application or an inner `add_header` set: the
    /// policy owns them (two `Access-Control-Allow-Origin` values make a browser refuse the answer).
    private static func withoutCORSHeaders(_ response: KernelResponse) -> KernelResponse {
        guard response.headers.contains(where: { $0.name.utf8.count > 15 && $0.name.lowercased().hasPrefix("access-control-") }) else {
            return response
        }
        var response = response
        var kept = HeaderFields()
        for (name, value) in response.headers where !name.lowercased().hasPrefix("access-control-") { kept.add(name, value) }
        response.headers = kept
        return response
    }

    private static func varyOnOrigin(_ response: KernelResponse) -> KernelResponse {
        var response = response
        addVary("Origin", to: &response.headers)
        return response
    }

    /// Adds `name` to `Vary` unless it is there already (or `Vary: *`).
    static func addVary(_ name: String, to headers: inout HeaderFields) {
        guard let vary = headers["Vary"] else {
            headers.add("Vary", name)
            return
        }
        let present = vary.split(separator: ",").map { $0.filter { $0 != " " && $0 != "\t" }.lowercased() }
        if present.contains("*") || present.contains(name.lowercased()) { return }
        headers.replace("Vary", vary + ", " + name)
    }
}
