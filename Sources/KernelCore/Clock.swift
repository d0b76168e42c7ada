#if canImport(Glibc)
import Glibc
#endif

/// The one clock helper of the kernel: monotonic time for durations, wall time for what is shown to people.
public enum KernelClock {
    /// Monotonic nanoseconds (`CLOCK_MONOTONIC`): for durations, never shown as a date.
    @inline(__always)
    public static func monotonicNanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// Wall-clock milliseconds since the epoch (`$msec`, Triton's `last_inference`).
    public static func wallClockMilliseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return UInt64(time.tv_sec) * 1000 + UInt64(time.tv_nsec) / 1_000_000
    }
}
