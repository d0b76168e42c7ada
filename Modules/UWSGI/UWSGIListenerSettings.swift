import KernelCore
import NIOCore

/// Limits of one uwsgi listener (the worker side).
public struct UWSGIListenerSettings: Sendable {
    /// The configured address, as written (`127.0.0.1:6666`, `unix:/run/kernel.sock`).
    public var listener: String
    /// The largest vars block accepted (uWSGI `buffer-size`).
    public var bufferSize: Int
    /// Longest pause between two reads while the request (vars and body) is read.
    public var clientBodyTimeout: TimeAmount
    /// Longest pause between two successful writes of the response.
    public var sendTimeout: TimeAmount

    public init(listener: String, bufferSize: Int = 4096, clientBodyTimeout: TimeAmount = .seconds(60),
                sendTimeout: TimeAmount = .seconds(60)) {
        self.listener = listener
        self.bufferSize = bufferSize
        self.clientBodyTimeout = clientBodyTimeout
        self.sendTimeout = sendTimeout
    }

    /// Adds the uwsgi request pipeline to an accepted connection.
    public func configure(_ channel: any Channel, runtime: KernelRuntime) -> EventLoopFuture<Void> {
        let settings = self
        if channel.eventLoop.inEventLoop {
            return channel.eventLoop.makeCompletedFuture { try settings.syncConfigure(channel, runtime: runtime) }
        }
        return channel.eventLoop.submit { try settings.syncConfigure(channel, runtime: runtime) }
    }

    func syncConfigure(_ channel: any Channel, runtime: KernelRuntime) throws {
        // One handler per connection: nginx opens a connection per request, so each handler added is paid per
        // request.
        try channel.pipeline.syncOperations.addHandler(UWSGIServerHandler(runtime: runtime, settings: self))
    }
}
