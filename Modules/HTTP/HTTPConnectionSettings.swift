import KernelConfig
import KernelCore
import NIOCore

/// What one connection needs from the `http:` section, captured when the listener is registered: connections
/// accepted after a reload get the new generation's values, those already open keep theirs.
public final class HTTPConnectionSettings: Sendable {
    /// The listener's address as configured (`ConnectionInfo.listener`).
    public let listener: String
    let clientHeaderTimeout: TimeAmount
    let clientBodyTimeout: TimeAmount
    let sendTimeout: TimeAmount
    let keepaliveTimeout: TimeAmount
    let keepaliveRequests: Int
    /// Longest request line or header line.
    let maxLineLength: Int
    /// Longest whole request head.
    let maxHeadLength: Int
    /// Bytes of pipelined input buffered while a response is produced before reading pauses.
    let maxBufferedInput: Int
    /// `Server: kernel/0.1.0\r\n` or `Server: kernel\r\n`.
    let serverLine: String
    /// `underscores_in_headers` and `ignore_invalid_headers`.
    let headerNames: HTTPHeaderNamePolicy
    /// How long unread input is drained after an error response before the socket closes (nginx `lingering_timeout`).
    let lingeringTimeout = LingeringClose.timeout
    /// How long the rest of a discarded body is read after its answer before the connection gives up on it
    /// (nginx's `lingering_time`).
    let discardTime = TimeAmount.seconds(30)

    public init(configuration: HTTPConfiguration, listener: String) {
        self.listener = listener
        clientHeaderTimeout = .milliseconds(configuration.clientHeaderTimeout.milliseconds)
        clientBodyTimeout = .milliseconds(configuration.clientBodyTimeout.milliseconds)
        sendTimeout = .milliseconds(configuration.sendTimeout.milliseconds)
        keepaliveTimeout = .milliseconds(configuration.keepaliveTimeout.milliseconds)
        // keepalive_timeout 0 disables keep-alive, as in nginx.
        keepaliveRequests = configuration.keepaliveTimeout.milliseconds > 0 ? configuration.keepaliveRequests : 0
        maxLineLength = configuration.largeHeaderBufferSize.bytes
        maxHeadLength = max(configuration.largeHeaderBufferCount * configuration.largeHeaderBufferSize.bytes,
                            configuration.clientHeaderBufferSize.bytes)
        maxBufferedInput = max(maxHeadLength, 64 * 1024)
        serverLine = configuration.serverTokens ? "Server: kernel/\(kernelVersion)\r\n" : "Server: kernel\r\n"
        headerNames = HTTPHeaderNamePolicy(underscoresAllowed: configuration.underscoresInHeaders,
                                           ignoreInvalid: configuration.ignoreInvalidHeaders)
    }

    /// The duration of a read-side timer.
    func duration(of timer: HTTPConnectionStateMachine.Timer) -> TimeAmount {
        switch timer {
        case .header: return clientHeaderTimeout
        case .body: return clientBodyTimeout
        case .keepalive: return keepaliveTimeout
        case .linger, .discard: return lingeringTimeout
        }
    }
}
