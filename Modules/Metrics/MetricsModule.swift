import KernelConfig
import KernelCore
import NIOConcurrencyHelpers
import NIOCore

/// Operations endpoints for monitoring: the `metrics:` location directive (Prometheus metrics of every process of
/// the group, as nginx's `stub_status` is a location directive) and the `health:` location directive (`ready` or
/// `live`, for Kubernetes probes and load balancers).
///
/// Always enabled, in every role. Every process registers its `"metrics"` query responder, so a process that
/// answers `/metrics` can gather its siblings' metrics. Requests are counted (`kernel_http_requests_total`,
/// latency histograms) only in a configuration that mounts `metrics:` or the status page somewhere: nobody reads
/// them otherwise. The
/// top-level `metrics` key takes no options (the directive is written in a location).
public enum MetricsModule: KernelModule {
    public struct Configuration: Sendable {}

    public static let configurationKey = "metrics"
    public static let roles: Set<KernelRole> = [.edge, .worker]
    public static var enabledWithoutKey: Bool { true }

    /// How long `/metrics` waits for each process's answer by default.
    static let defaultGatherTimeout = TimeAmount.seconds(2)

    public static func decode(_ value: ConfigValue, registrar: Registrar) throws -> Configuration {
        guard case .mapping = value.node else {
            throw value.error("metrics: the top-level key takes no options; mount the metrics in a location (location = /metrics with metrics: {})")
        }
        try value.mapping().finish()
        return Configuration()
    }

    public static func register(_ configuration: Configuration, into registrar: Registrar) throws {
        let runtime = registrar.runtime
        let registry = KernelMetricsSystem.registry
        if registrar.mode == .run {
            let exposition = ProcessExposition(runtime: runtime, registry: registry)
            runtime.processQueries.register("metrics") { await exposition.answer() }
        }
        // Requests are counted once some directive that reads the counts (`metrics:`, the status page) asks.
        registrar.setRequestMetricsObserver { RequestMetrics(registry: registry) }
        registrar.addLocationHandler("metrics") { [weak registrar] value, _, _ in
            let directive = try decodeDirective(value)
            registrar?.wantRequestMetrics()
            return MetricsHandler(runtime: runtime, gatherTimeout: directive.gatherTimeout, includesTriton: directive.triton)
        }
        registrar.addLocationHandler("health") { value, _, _ in
            let probe = try value.oneOf(HealthHandler.Probe.allCases.map(\.rawValue))
            return HealthHandler(probe: HealthHandler.Probe(rawValue: probe)!, runtime: runtime)
        }
    }

    /// What a `metrics:` location directive says.
    struct Directive: Equatable {
        var gatherTimeout = MetricsModule.defaultGatherTimeout
        /// `triton: true`: Triton's `nv_inference_*` families too (`MetricsHandler.includesTriton`).
        var triton = false
    }

    /// `metrics: {}` (or `metrics: true`), with an optional `gather_timeout` and `triton`.
    static func decodeDirective(_ value: ConfigValue) throws -> Directive {
        if case .scalar = value.node {
            guard try value.bool() else { throw value.expected("true or a mapping ({})") }
            return Directive()
        }
        let mapping = try value.mapping()
        var directive = Directive()
        directive.triton = try mapping.optional("triton")?.bool() ?? false
        var timeout = defaultGatherTimeout
        if let configured = mapping.optional("gather_timeout") {
            let duration = try configured.duration()
            guard duration.milliseconds > 0 else { throw configured.expected("a duration above 0") }
            timeout = .milliseconds(duration.milliseconds)
        }
        try mapping.finish()
        directive.gatherTimeout = timeout
        return directive
    }
}
