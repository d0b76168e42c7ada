import KernelCore
import NIOCore

/// What a proxy protocol module (uwsgi, HTTP `proxy_pass`) supplies to the upstream engine: nginx's per-protocol
/// `create_request` and `process_header` hooks. The engine does everything else (peers, connects, timeouts,
/// retries, the body in both directions, backpressure, error answers).
public protocol UpstreamProtocol: Sendable {
    associatedtype Parser: UpstreamResponseParser

    /// The scheme log lines name peers with (`upstream: "uwsgi://127.0.0.1:6666"`).
    var scheme: String { get }

    /// nginx's `create_request`: the bytes sent before the request body (a uwsgi vars packet, an HTTP request
    /// head). Called once per request; every attempt sends the same head. Throws `UpstreamRequestRefused` for a
    /// request the protocol cannot carry.
    func makeRequestHead(for request: KernelRequest, context: RequestContext,
                         allocator: ByteBufferAllocator) throws -> ByteBuffer

    /// How one part of the request body goes on the wire (identity for uwsgi, a chunk for chunked HTTP).
    func frameRequestBodyPart(_ part: ByteBuffer) -> ByteBuffer

    /// What follows the last part of the request body (nothing for uwsgi, `0\r\n\r\n` for chunked HTTP).
    func requestBodyTrailer(allocator: ByteBufferAllocator) -> ByteBuffer?

    /// nginx's `process_header`: a fresh parser for one attempt's answer.
    func makeResponseParser(for request: KernelRequest) -> Parser

    /// Whether a response header is kept from the client, beside the hop-by-hop ones and `Date`/`Server` that the
    /// engine always drops (nginx's `*_hide_header` defaults). `name` is as the upstream sent it: compared without
    /// ASCII case (no lowered copy is made per header of every answer).
    func hidesResponseHeader(_ name: String) -> Bool

    /// The response the client gets, made from the engine's: the protocol's own rewriting of an upstream's answer
    /// (`proxy_redirect`, `X-Accel-Buffering`). Called once per request on its event loop, with whatever the
    /// engine answers (its own 502 or 504 too), so a handler needs no future of its own to map the engine's.
    /// The default passes the response on as it is.
    func finishResponse(_ response: KernelResponse, request: KernelRequest, context: RequestContext) -> KernelResponse
}

extension UpstreamProtocol {
    public func frameRequestBodyPart(_ part: ByteBuffer) -> ByteBuffer { part }
    public func requestBodyTrailer(allocator: ByteBufferAllocator) -> ByteBuffer? { nil }
    public func hidesResponseHeader(_ name: String) -> Bool { false }
    public func finishResponse(_ response: KernelResponse, request: KernelRequest, context: RequestContext) -> KernelResponse {
        response
    }
}

/// A request the protocol cannot send (a uwsgi vars block over 64k): answered without contacting a peer.
public struct UpstreamRequestRefused: Error, Sendable {
    /// The error-log message (nginx's words), the request's details are appended.
    public var logMessage: String
    /// The client's answer.
    public var response: KernelResponse

    public init(logMessage: String, response: KernelResponse) {
        self.logMessage = logMessage
        self.response = response
    }
}

/// Parses the head of one upstream answer from the bytes as they arrive.
public protocol UpstreamResponseParser: Sendable {
    /// Parses the head from the start of `buffer`, consuming what it used; nil when more bytes are needed.
    /// Interim heads (`1xx`) are the protocol's to skip. A thrown error is an invalid answer (502, nginx's
    /// `invalid_header`); its description is the log message ("upstream sent invalid header: ...").
    mutating func parseHead(_ buffer: inout ByteBuffer) throws -> UpstreamResponseHead?
}

/// The final head of an upstream's answer and how its body is delimited.
public struct UpstreamResponseHead: Sendable {
    public var status: Int
    /// The reason phrase as sent; nil when the upstream sent none.
    public var reason: String?
    /// The answer's fields. A parser may leave out those the engine drops from every answer anyway (hop-by-hop
    /// fields but `Upgrade` on a `101`, `Date`, `Server`), and read what it needs of them itself.
    public var headers: HeaderFields
    /// How the body that follows is delimited on the wire. The engine makes it `.none` itself for HEAD requests
    /// and 204/304 answers.
    public var framing: UpstreamBodyFraming
    /// Whether the peer keeps the connection open for another request once this answer's body has ended (an
    /// HTTP/1.1 answer without `Connection: close` whose body is framed by length or chunks). Only such a
    /// connection may go back to a group's keepalive pool. A `101 Switching Protocols` head turns the connection
    /// into a tunnel instead.
    public var reusable: Bool

    public init(status: Int, reason: String?, headers: HeaderFields, framing: UpstreamBodyFraming, reusable: Bool = false) {
        self.status = status
        self.reason = reason
        self.headers = headers
        self.framing = framing
        self.reusable = reusable
    }
}

/// How an upstream answer's body is delimited.
public enum UpstreamBodyFraming: Sendable {
    /// No body.
    case none
    /// Exactly this many bytes (`Content-Length`).
    case length(Int64)
    /// Everything until the peer closes the connection.
    case untilClose
    /// A protocol's own encoding (HTTP's chunked transfer coding), decoded by the protocol.
    case decoded(any UpstreamBodyDecoder)
}

/// Decodes a body in a protocol's own encoding (chunked). The engine hands it the bytes after the head, read
/// after read, and calls it until it needs more data.
public protocol UpstreamBodyDecoder: Sendable {
    /// Decodes from the start of `buffer`, consuming what it used. A thrown error is an invalid answer; its
    /// description is the log message.
    mutating func decode(_ buffer: inout ByteBuffer) throws -> UpstreamBodyDecoding
}

/// One step of an `UpstreamBodyDecoder`.
public enum UpstreamBodyDecoding: Sendable {
    /// Payload bytes of the body.
    case part(ByteBuffer)
    /// More input is needed.
    case needMoreData
    /// The body ended. The decoder consumes its whole encoding first (for chunked: the last chunk, any
    /// trailer fields and the final CRLF): bytes left after the end are not the answer's, and keep its connection
    /// from going back to a keepalive pool.
    case end
}
