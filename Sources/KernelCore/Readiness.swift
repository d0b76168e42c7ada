import NIOCore

/// One thing that keeps this process from being ready, as `/healthz` and `/v2/health/ready` report it.
public struct NotReadyReason: Sendable, Equatable {
    /// What kind of condition failed: `models`, `upstream`, `stopping`, `listener`, `configuration`.
    public var check: String
    /// What it concerns (a model's name, a group's name, a listener's address); empty when nothing in particular.
    public var name: String
    /// Why, in a few words (`loading`, `no live peer`).
    public var reason: String

    public init(check: String, name: String = "", reason: String) {
        self.check = check
        self.name = name
        self.reason = reason
    }
}

/// A condition of a configuration's readiness that a module knows (the inference module: models loaded and
/// warmed). Added with `Registrar.addReadinessCheck`; asked on every readiness probe, so it must be cheap and must
/// not block.
public protocol ReadinessCheck: Sendable {
    /// What is not ready now; empty when this condition holds.
    func notReady() -> [NotReadyReason]
}

extension KernelRuntime {
    /// What keeps this process from being ready now; empty when it is ready.
    ///
    /// Ready means: not stopping (`stopping`, set at the start of a stop, before listeners close), a configuration
    /// running with every listener open, every readiness check of its modules holding (models loaded and warmed),
    /// and every upstream group a location uses having a live peer. Liveness asks none of this: a process that
    /// answers is alive, whatever its models are doing.
    public func notReadyReasons() -> [NotReadyReason] {
        var reasons: [NotReadyReason] = []
        if stopping.isStopping {
            reasons.append(NotReadyReason(check: "stopping", reason: "the kernel is stopping"))
        }
        guard let generation = currentGeneration else {
            reasons.append(NotReadyReason(check: "configuration", reason: "no configuration is running yet"))
            return reasons
        }
        let listeners = listenerStatus
        for spec in generation.listenerSpecs {
            let address = spec.address.description
            let open = listeners.contains { $0.address == address && $0.protocolName == spec.protocolName && $0.isOpen }
            if !open, listenerManager.manager != nil {
                reasons.append(NotReadyReason(check: "listener", name: "\(spec.protocolName) \(address)", reason: "not open"))
            }
        }
        for check in generation.readinessChecks { reasons.append(contentsOf: check.notReady()) }
        for group in generation.upstreamGroups where generation.usedUpstreamGroupNames.contains(group.name) {
            let peers = group.peerStates()
            if !peers.contains(where: \.up) {
                let reason = peers.isEmpty ? "no peer (nothing resolved yet)" : "no live peer (\(peers.count) down)"
                reasons.append(NotReadyReason(check: "upstream", name: group.name, reason: reason))
            }
        }
        return reasons
    }
}

/// The JSON bodies of the health endpoints.
public enum HealthBody {
    /// `{"ready":true}`, or `{"ready":false,"not_ready":[{"check":"models","name":"demo","reason":"loading"},...]}`.
    public static func readiness(_ reasons: [NotReadyReason]) -> String {
        guard !reasons.isEmpty else { return "{\"ready\":true}" }
        var buffer = ByteBufferAllocator().buffer(capacity: 64 * reasons.count + 32)
        buffer.writeStaticString("{\"ready\":false,\"not_ready\":[")
        for (index, reason) in reasons.enumerated() {
            if index > 0 { buffer.writeStaticString(",") }
            buffer.writeStaticString("{\"check\":")
            JSONText.writeQuoted(reason.check, into: &buffer)
            if !reason.name.isEmpty {
                buffer.writeStaticString(",\"name\":")
                JSONText.writeQuoted(reason.name, into: &buffer)
            }
            buffer.writeStaticString(",\"reason\":")
            JSONText.writeQuoted(reason.reason, into: &buffer)
            buffer.writeStaticString("}")
        }
        buffer.writeStaticString("]}")
        return String(buffer: buffer)
    }
}
