/// The history handed from one process to another, so a page served by a worker that just started (a respawn, a
/// recycle, a reload's new workers) or by a new configuration in the same process still shows the minutes before.
///
/// Every process that samples answers the gathered query `status.history` with its points as text, one line per
/// point and one per model of it:
/// ```
/// point <time> <seconds> <requests> <latency histogram>
/// model <batch size> <queue duration> <compute duration> <failures> <name>
/// ```
/// A histogram is `<sum>/<count>/<bound>=<count>,...` (bounds as Swift prints them, `inf` included). Only the
/// kernel's own processes read it; an answer that does not parse whole is ignored.
enum StatusHistoryTransfer {
    static let query = "status.history"
    /// Answered in-process only: which sampler answers `query` now (an opaque token of the sampler).
    static let ownerQuery = "status.history.owner"

    static func encode<Points: Sequence<StatusPoint>>(_ points: Points) -> [UInt8] {
        var text = ""
        for point in points {
            let increase = point.increase
            text += "point \(point.time) \(point.seconds) \(increase.requests) \(encode(increase.requestDuration))\n"
            for (name, model) in increase.models.sorted(by: { $0.key < $1.key }) {
                text += "model \(encode(model.batchSize)) \(encode(model.queueDuration)) \(encode(model.computeDuration)) \(model.failures) \(name)\n"
            }
        }
        return Array(text.utf8)
    }

    static func decode(_ bytes: [UInt8]) -> [StatusPoint]? {
        var points: [StatusPoint] = []
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: false)
            switch fields.first {
            case "point":
                guard fields.count == 5, let time = Double(fields[1]), let seconds = Double(fields[2]), seconds > 0,
                      let requests = Double(fields[3]), let latency = histogram(fields[4]) else { return nil }
                var increase = ProcessCounters()
                increase.requests = requests
                increase.requestDuration = latency
                points.append(StatusPoint(time: time, seconds: seconds, increase: increase))
            case "model":
                guard fields.count == 6, !points.isEmpty, let batch = histogram(fields[1]), let queue = histogram(fields[2]),
                      let compute = histogram(fields[3]), let failures = Double(fields[4]), !fields[5].isEmpty else { return nil }
                var model = ModelCounters()
                model.batchSize = batch
                model.queueDuration = queue
                model.computeDuration = compute
                model.failures = failures
                points[points.count - 1].increase.models[String(fields[5])] = model
            default:
                return nil
            }
        }
        return points
    }

    private static func encode(_ histogram: HistogramCounts) -> String {
        let buckets = histogram.buckets.keys.sorted().map { "\($0)=\(histogram.buckets[$0]!)" }
        return "\(histogram.sum)/\(histogram.count)/" + buckets.joined(separator: ",")
    }

    private static func histogram(_ text: Substring) -> HistogramCounts? {
        let parts = text.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, let sum = Double(parts[0]), let count = Double(parts[1]) else { return nil }
        var histogram = HistogramCounts(sum: sum, count: count)
        for bucket in parts[2].split(separator: ",") {
            let pair = bucket.split(separator: "=", maxSplits: 1)
            guard pair.count == 2, let bound = Double(pair[0]), !bound.isNaN, let value = Double(pair[1]) else { return nil }
            histogram.buckets[bound] = value
        }
        return histogram
    }
}
