import KernelCore
import NIOCore

/// Triton's statistics of every worker process, summed: with `kernel.processes` each worker counts the requests it
/// served, and the statistics extension answers for the whole server, as Triton's one process does.
///
/// Each worker answers the query `inference.stats <repository directory>` with the `model_stats` entries of every
/// version it has loaded from that repository; the worker that took the request sums them per version.
enum WorkerStatistics {
    /// The command query's name (`ProcessQueryRegistry.registerCommand`); the argument is the repository's identity.
    static let name = "inference.stats"

    /// One model version's statistics.
    struct Entry {
        var name: String
        var version: String
        var statistics: ModelStatistics
    }

    /// This process's answer: a JSON array of the `model_stats` entries of the newest serving repository with the
    /// identity `argument`; empty when there is none.
    static func respond(to argument: Substring) -> [UInt8] {
        guard let repository = ServingRepositories.shared.newest(identity: String(argument)) else { return [] }
        var writer = JSONWriter(buffer: ByteBuffer())
        writer.byte(UInt8(ascii: "["))
        for (index, model) in repository.loadedModels.enumerated() {
            if index > 0 { writer.byte(UInt8(ascii: ",")) }
            model.scheduler.currentStatistics.write(name: model.signature.name, version: model.signature.version, into: &writer)
        }
        writer.byte(UInt8(ascii: "]"))
        return Array(buffer: writer.buffer)
    }

    /// The answers summed per model version, in the order the versions first appear (the master first, then the
    /// workers by pid); an answer that cannot be read counts for nothing.
    static func merge(_ answers: [ProcessAnswer]) -> [Entry] {
        var entries: [Entry] = []
        var positions: [String: Int] = [:]
        for answer in answers where !answer.body.isEmpty {
            guard let items = (try? JSONReader.parse(answer.body))?.arrayValue else { continue }
            for item in items {
                guard let name = item["name"]?.stringValue, let version = item["version"]?.stringValue,
                      let statistics = ModelStatistics(json: item) else { continue }
                let key = "\(name)\u{0}\(version)"
                if let position = positions[key] {
                    entries[position].statistics.add(statistics)
                } else {
                    positions[key] = entries.count
                    entries.append(Entry(name: name, version: version, statistics: statistics))
                }
            }
        }
        return entries
    }
}
