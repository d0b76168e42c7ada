/// The counts of one Prometheus histogram: cumulative bucket counts by upper bound (`_bucket{le="..."}`), with its
/// `_sum` and `_count`. The status page sums them across labels and processes and subtracts earlier readings from
/// later ones, which cumulative buckets allow: the difference of two readings is the histogram of what happened
/// in between.
public struct HistogramCounts: Sendable, Equatable {
    /// Cumulative count of observations at or below each upper bound, `+Inf` included.
    public var buckets: [Double: Double]
    public var sum: Double
    public var count: Double

    public init(buckets: [Double: Double] = [:], sum: Double = 0, count: Double = 0) {
        self.buckets = buckets
        self.sum = sum
        self.count = count
    }

    public static let empty = HistogramCounts()

    /// Adds another histogram with the same or other bucket bounds (a bound missing on one side counts 0 there).
    public mutating func add(_ other: HistogramCounts) {
        for (bound, value) in other.buckets { buckets[bound, default: 0] += value }
        sum += other.sum
        count += other.count
    }

    /// What was observed since `earlier`, a reading of the same process; when a count went down the process's
    /// histogram started again (it was replaced, or reloaded its metrics), and everything it holds is new.
    public func since(_ earlier: HistogramCounts) -> HistogramCounts {
        var difference = HistogramCounts(sum: sum - earlier.sum, count: count - earlier.count)
        for (bound, value) in buckets {
            let before = earlier.buckets[bound] ?? 0
            guard value >= before else { return self }
            difference.buckets[bound] = value - before
        }
        guard difference.count >= 0, earlier.buckets.keys.allSatisfy({ buckets[$0] != nil }) else { return self }
        return difference
    }

    /// The number of observations: the `+Inf` bucket, or `_count` when the buckets lack it.
    public var observations: Double { buckets[.infinity] ?? count }

    /// The `q`-quantile (0...1) the way Prometheus's `histogram_quantile` estimates it: find the bucket the rank
    /// falls in and interpolate linearly inside it, the first bucket starting at 0. A rank in the `+Inf` bucket
    /// gives the highest finite bound. nil when nothing was observed.
    public func quantile(_ q: Double) -> Double? {
        let bounds = buckets.keys.sorted()
        guard let last = bounds.last, q >= 0, q <= 1 else { return nil }
        // Counts are cumulative; one summed from processes that lost a sample may dip, so keep them rising.
        var cumulative: [Double] = []
        var highest = 0.0
        for bound in bounds {
            highest = max(highest, buckets[bound] ?? 0)
            cumulative.append(highest)
        }
        let total = last == .infinity ? cumulative[cumulative.count - 1] : max(count, cumulative[cumulative.count - 1])
        guard total > 0 else { return nil }
        let rank = q * total
        guard let index = cumulative.firstIndex(where: { $0 >= rank }) else {
            return bounds.last(where: { $0 != .infinity })
        }
        let upper = bounds[index]
        if upper == .infinity { return index > 0 ? bounds[index - 1] : nil }
        let lower = index > 0 ? bounds[index - 1] : min(0, upper)
        let lowerCount = index > 0 ? cumulative[index - 1] : 0
        let inBucket = cumulative[index] - lowerCount
        guard inBucket > 0 else { return upper }
        return lower + (upper - lower) * (rank - lowerCount) / inBucket
    }

    /// The mean observation (`_sum / _count`); nil when nothing was observed.
    public var mean: Double? { count > 0 ? sum / count : nil }
}

/// A counter's increase between two readings of one process: a counter that went down was started again, so its
/// whole value is the increase (Prometheus's `rate` treats resets the same way).
func counterIncrease(from earlier: Double, to later: Double) -> Double {
    later >= earlier ? later - earlier : later
}
