import KernelConfig
import KernelCore
import NIOConcurrencyHelpers
import NIOCore

/// A live status page: the `status` location directive serves one self-contained HTML page that redraws itself
/// every second from the JSON next to it (`?format=json`): requests/s and latency percentiles of the last minutes,
/// the worker processes, the upstream peers and the models, for the whole process group.
///
/// Always available, as `add_header` is; the optional top-level `status:` mapping sets how much history is kept
/// (`history: 5m`). The history is sampled only when a location writes `status`.
public enum StatusModule: KernelModule {
    public struct Configuration: Sendable {
        /// How far back the charts reach.
        public var history: TimeAmount = .minutes(5)
    }

    public static let configurationKey = "status"
    public static let roles: Set<KernelRole> = [.edge, .worker]
    public static var enabledWithoutKey: Bool { true }

    /// The bounds of `history`: at least a few points to draw, at most an hour of one-second points.
    static let historyRange: ClosedRange<Int64> = 10_000...3_600_000

    public static func decode(_ value: ConfigValue, registrar: Registrar) throws -> Configuration {
        let mapping = try value.mapping()
        var configuration = Configuration()
        if let history = mapping.optional("history") {
            let duration = try history.duration()
            guard historyRange.contains(duration.milliseconds) else {
                throw history.error("status: history must be between 10s and 1h, found \"\(duration)\"")
            }
            configuration.history = .milliseconds(duration.milliseconds / 1000 * 1000)
        }
        try mapping.finish()
        return configuration
    }

    public static func register(_ configuration: Configuration, into registrar: Registrar) throws {
        // One sampler for every status location of this configuration, a service only once one is written.
        let sampler = StatusSampler(supervision: registrar.runtime.supervision, queries: registrar.runtime.processQueries,
                                    logger: registrar.logger, history: configuration.history)
        let added = NIOLockedValueBox(false)
        // A master (worker number -1) answers no request, so it has no page to sample for.
        let samples = registrar.mode == .run && registrar.runtime.supervision.workerNumber >= 0
        // Weak: the registrar keeps this factory, so a strong capture would keep every configuration's registrar.
        registrar.addLocationHandler("status") { [weak registrar] value, _, _ in
            if case .scalar = value.node {
                guard try value.bool() else { throw value.expected("true or a mapping ({})") }
            } else {
                try value.mapping().finish()
            }
            // The page shows the request counts of the metrics: ask for them to be kept.
            registrar?.wantRequestMetrics()
            if samples, added.withLockedValue({ added in defer { added = true }; return !added }) {
                registrar?.addService(sampler)
            }
            return StatusHandler(sampler: sampler)
        }
    }
}
