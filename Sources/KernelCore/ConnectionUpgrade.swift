import NIOCore

/// The far end of a connection upgrade (`101 Switching Protocols`, a WebSocket): a response that carries one
/// tells its listener to write the `101` head and then hand the client's connection over, so that bytes flow
/// both ways between the client and the far end until either closes. A proxy handler (the upstream engine)
/// supplies it; the HTTP listener drives it.
public protocol ConnectionUpgrade: AnyObject, Sendable {
    /// Joins `client` to the far end, once the `101` head was written to it. `buffered` holds bytes the client
    /// sent behind its request head, which go to the far end first. The tunnel adds its own handler at the end
    /// of `client`'s pipeline; the listener's handler must leave the pipeline right after this call, so that no
    /// byte is parsed as HTTP any more. Called once, on `client`'s event loop. The future completes (never fails)
    /// when both connections are closed.
    func start(client: any Channel, buffered: ByteBuffer?) -> EventLoopFuture<ConnectionUpgradeEnd>

    /// The `101` will not be written (the client left, the listener cannot upgrade): the far end is closed.
    func cancel()
}

/// What an upgraded connection carried, for the access log.
public struct ConnectionUpgradeEnd: Sendable {
    /// Bytes sent to the client through the tunnel (after the `101` head).
    public var bytesToClient: Int
    /// Bytes the client sent through the tunnel.
    public var bytesFromClient: Int

    public init(bytesToClient: Int, bytesFromClient: Int) {
        self.bytesToClient = bytesToClient
        self.bytesFromClient = bytesFromClient
    }
}
