#if canImport(Glibc)
import Glibc
#endif

/// A POSIX thread of its own, for work that must not wait on (or be stalled by) the event loops: a model
/// instance's run loop, the harakiri watchdog.
public enum PosixThread {
    /// Starts a joinable thread running `body`; the system's error number when it refuses one.
    public static func start(_ body: @escaping @Sendable () -> Void) -> Result<pthread_t, ThreadStartError> {
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { raw in
            let body = Unmanaged<Body>.fromOpaque(raw!).takeRetainedValue()
            body.run()
            return nil
        }, context)
        guard result == 0 else {
            Unmanaged<Body>.fromOpaque(context).release()
            return .failure(ThreadStartError(code: result))
        }
        return .success(thread)
    }

    /// The closure handed through `pthread_create`'s context pointer.
    private final class Body {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }
}

/// `pthread_create` refused a thread.
public struct ThreadStartError: Error, CustomStringConvertible {
    public let code: Int32
    public var description: String { "pthread_create: \(code)" }
}
