import KernelCore
import NIOCore

/// The `metrics:` location directive's handler: the metrics of every process of the group, merged, in Prometheus
/// text format 0.0.4 (what a Prometheus server scrapes from `/metrics`).
///
/// It gathers the `"metrics"` query from every process (`ProcessSupervision.gather`: this process alone with
/// `processes: 0`), parses each answer, sums the samples that have the same name and labels, and renders the sum.
/// A process that does not answer within `gatherTimeout` is left out of this answer. GET and HEAD only, as nginx's
/// `stub_status`.
struct MetricsHandler: RequestHandler {
    static let contentType = "text/plain; version=0.0.4; charset=utf-8"
    /// The prefix of Triton's metric names.
    static let tritonPrefix = "nv_"

    let runtime: KernelRuntime
    let gatherTimeout: TimeAmount
    /// Whether the answer keeps Triton's families (`nv_*`, the inference module's `metrics.inference`), so that
    /// what was written for Triton's `/metrics` reads this one. Off by default: their names are Triton's, which
    /// Prometheus' naming rules (and so `promtool check metrics`) fault for units and suffixes.
    var includesTriton = false

    func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        guard request.method == "GET" || request.method == "HEAD" else {
            return context.eventLoop.makeFailedFuture(
                KernelHTTPError(405, "method \(request.method) not allowed on \(request.path)", headers: ["Allow": "GET, HEAD"]))
        }
        let runtime = self.runtime
        let timeout = gatherTimeout
        let includesTriton = self.includesTriton
        let promise = context.eventLoop.makePromise(of: KernelResponse.self)
        promise.completeWithTask {
            let answers = await runtime.supervision.gather("metrics", timeout: timeout)
            let families = answers.map { PrometheusExposition.parse(String(decoding: $0.body, as: UTF8.self)) }
            var merged = PrometheusExposition.merge(families)
            if !includesTriton { merged.removeAll { $0.name.hasPrefix(Self.tritonPrefix) } }
            return .text(200, PrometheusExposition.render(merged), contentType: Self.contentType)
        }
        return promise.futureResult
    }
}

/// The `health:` location directive's handler: `health: ready` answers whether this process should get traffic
/// (`KernelRuntime.notReadyReasons`), `health: live` whether it is alive (it answers: that is all liveness asks,
/// so a process whose models still load, or that is stopping, is alive).
///
/// 200 with `{"ready":true}` / `{"live":true}`; not ready is 503 with the reasons
/// (`{"ready":false,"not_ready":[{"check":"models","name":"demo","reason":"loading"}]}`), which is what
/// Kubernetes' probes and load balancers' health checks act on.
struct HealthHandler: ImmediateRequestHandler {
    enum Probe: String, CaseIterable {
        case ready, live
    }

    let probe: Probe
    let runtime: KernelRuntime

    func response(to request: KernelRequest, context: RequestContext) -> KernelResponse {
        guard request.method == "GET" || request.method == "HEAD" else {
            var response = KernelResponse.error(405, "method \(request.method) not allowed on \(request.path)")
            response.headers.add("Allow", "GET, HEAD")
            return response
        }
        switch probe {
        case .live:
            return .text(200, "{\"live\":true}", contentType: "application/json")
        case .ready:
            let reasons = runtime.notReadyReasons()
            return .text(reasons.isEmpty ? 200 : 503, HealthBody.readiness(reasons), contentType: "application/json")
        }
    }
}
