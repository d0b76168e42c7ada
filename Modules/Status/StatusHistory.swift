import DequeModule

/// One second (one sampling interval) of the whole process group: what happened in it.
public struct StatusPoint: Sendable, Equatable {
    /// When the interval ended, in seconds since the epoch.
    public var time: Double
    /// The interval's length in seconds (one, or more when a reading was missed).
    public var seconds: Double
    /// What every process did in the interval, summed.
    public var increase: ProcessCounters

    public init(time: Double, seconds: Double, increase: ProcessCounters) {
        self.time = time
        self.seconds = seconds
        self.increase = increase
    }

    public var requestsPerSecond: Double { seconds > 0 ? increase.requests / seconds : 0 }
}

/// The last minutes of the process group, one point per sampling interval, kept by the process that serves the
/// status page so a page opened now already shows the recent past.
///
/// Fed readings of every process's cumulative counters, by pid. A point is what the processes counted since the
/// previous reading: a pid seen for the first time (a worker started or replaced in between) counts whole, one
/// that went away is forgotten. The first reading only sets the baseline.
public struct StatusHistory: Sendable {
    /// How many points are kept (history length / interval).
    public let capacity: Int
    public private(set) var points: Deque<StatusPoint> = []
    private var lastReading: (monotonic: Double, counters: [Int32: ProcessCounters])?

    public init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    /// Adds the reading taken at `monotonic` seconds (a clock that never jumps; it times the interval) and `wall`
    /// (seconds since the epoch; the point's time). A reading not later than the previous one is ignored (two
    /// readings raced); returns whether a point was added.
    @discardableResult
    public mutating func record(_ counters: [Int32: ProcessCounters], monotonic: Double, wall: Double) -> Bool {
        guard let last = lastReading else {
            lastReading = (monotonic, counters)
            return false
        }
        guard monotonic > last.monotonic else { return false }
        var increase = ProcessCounters()
        for (pid, reading) in counters { increase.add(reading.since(last.counters[pid])) }
        lastReading = (monotonic, counters)
        if points.count == capacity { points.removeFirst() }
        points.append(StatusPoint(time: wall, seconds: monotonic - last.monotonic, increase: increase))
        return true
    }

    /// Takes the points another process (or this process's previous configuration) kept, as the past before this
    /// history's own: those that ended before its first point (or before `now` when it has none) and within the
    /// history's length of `now`. Returns how many were taken.
    @discardableResult
    public mutating func adopt(_ earlier: [StatusPoint], now: Double, interval: Double) -> Int {
        let end = points.first?.time ?? now
        let start = now - Double(capacity) * interval
        var taken = earlier.filter { $0.time < end && $0.time > start }.sorted { $0.time < $1.time }
        if taken.count + points.count > capacity { taken.removeFirst(taken.count + points.count - capacity) }
        points.insert(contentsOf: taken, at: 0)
        return taken.count
    }

    /// The points of the last `seconds` (by their end times, counted back from the newest) summed, and the
    /// seconds they cover: what rates and percentiles over a window are made of.
    public func window(seconds: Double) -> (increase: ProcessCounters, seconds: Double) {
        guard let newest = points.last else { return (ProcessCounters(), 0) }
        var increase = ProcessCounters()
        var covered = 0.0
        for point in points.reversed() where point.time > newest.time - seconds {
            increase.add(point.increase)
            covered += point.seconds
        }
        return (increase, covered)
    }
}
