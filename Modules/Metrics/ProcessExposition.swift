import KernelCore
import Prometheus
#if canImport(Glibc)
import Glibc
#endif

/// This process's answer to the gathered `"metrics"` query: Prometheus text format 0.0.4 of its registry, plus
/// what is read when asked rather than recorded as it happens (open connections per listener, each upstream
/// peer's state, resident memory), plus the answers of the `metrics.*` queries modules registered (the listen
/// queues' `metrics.listen`, the inference module's Triton metrics `metrics.inference`).
struct ProcessExposition: Sendable {
    let runtime: KernelRuntime
    let registry: PrometheusCollectorRegistry

    /// The responder registered as `"metrics"` in `runtime.processQueries`.
    func answer() async -> [UInt8] {
        Array(PrometheusExposition.render(await families()).utf8)
    }

    func families() async -> [PrometheusFamily] {
        var text = String(decoding: registry.emitToBuffer(), as: UTF8.self)
        for query in runtime.processQueries.queryNames(withPrefix: "metrics.") {
            if let answer = await runtime.processQueries.answer(query) {
                text += "\n" + String(decoding: answer, as: UTF8.self)
            }
        }
        let recorded = PrometheusExposition.parse(text)
        var merged = PrometheusExposition.merge([recorded, readNow()])
        for index in merged.indices {
            guard let known = KernelMetricFamilies.all[merged[index].name] else { continue }
            if merged[index].help.isEmpty { merged[index].help = known.help }
            if merged[index].type == "untyped" { merged[index].type = known.type }
        }
        return merged
    }

    /// The families read when asked.
    func readNow() -> [PrometheusFamily] {
        var families: [PrometheusFamily] = []
        let listeners = runtime.listenerStatus
        if !listeners.isEmpty {
            families.append(family("kernel_connections_open", listeners.map {
                PrometheusSample(name: "kernel_connections_open", labels: ["listener": $0.boundAddress], value: Double($0.openConnections))
            }))
        }
        let groups = runtime.currentGeneration?.upstreamGroups ?? []
        let peers = groups.flatMap { group in
            group.peerStates().map {
                PrometheusSample(name: "kernel_upstream_peer_up", labels: ["upstream": group.name, "peer": $0.address], value: $0.up ? 1 : 0)
            }
        }
        if !peers.isEmpty { families.append(family("kernel_upstream_peer_up", peers)) }
        if let resident = ResidentMemory.bytes() {
            let worker = runtime.supervision.workerNumber
            families.append(family("kernel_process_resident_memory_bytes", [
                PrometheusSample(name: "kernel_process_resident_memory_bytes",
                                 labels: ["worker": worker < 0 ? "master" : String(worker)], value: Double(resident)),
            ]))
        }
        return families
    }

    private func family(_ name: String, _ samples: [PrometheusSample]) -> PrometheusFamily {
        let known = KernelMetricFamilies.all[name]
        return PrometheusFamily(name: name, type: known?.type ?? "untyped", help: known?.help ?? "", samples: samples)
    }
}

/// The resident set size of this process, from `/proc/self/statm` (its second field, in pages).
enum ResidentMemory {
    static func bytes() -> Int? {
        let descriptor = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        let fields = String(decoding: buffer[..<count], as: UTF8.self).split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return nil }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
