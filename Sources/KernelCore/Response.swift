import NIOCore

/// A response body that arrives in parts (a proxied upstream answering while it reads).
///
/// The consumer pulls: it calls `next()` again only after it wrote the previous part, which gives backpressure.
/// `next()` returns nil at the end; a failed future means the producer broke off (the consumer then closes the
/// connection, as nginx does when an upstream fails mid-body). `cancel()` tells the producer the client is gone.
public struct ResponseBodyStream: Sendable {
    public let next: @Sendable () -> EventLoopFuture<ByteBuffer?>
    public let cancel: @Sendable () -> Void

    public init(next: @escaping @Sendable () -> EventLoopFuture<ByteBuffer?>, cancel: @escaping @Sendable () -> Void) {
        self.next = next
        self.cancel = cancel
    }
}

/// A producer's failure that its producer has logged already, with its own words and context (an upstream's
/// `recv() failed (104: Connection reset by peer) while reading upstream, ..., upstream: "..."`): the consumer
/// that closes the connection for it logs nothing more, so one failure is one error-log line, as in nginx.
public struct LoggedBodyFailure: Error, Sendable, CustomStringConvertible {
    public let underlying: any Error
    public init(_ underlying: any Error) { self.underlying = underlying }
    public var description: String { "\(underlying)" }
}

/// The body of a `KernelResponse`.
public enum ResponseBody: Sendable {
    case empty
    case buffer(ByteBuffer)
    /// Parts pulled one after another; the length is in `Content-Length` when the producer knows it.
    case stream(ResponseBodyStream)

    /// The length when known without reading.
    public var knownLength: Int? {
        switch self {
        case .empty: return 0
        case .buffer(let buffer): return buffer.readableBytes
        case .stream: return nil
        }
    }
}

/// A response, in the one shape every handler produces and every protocol module writes.
public struct KernelResponse: Sendable {
    public var status: Int
    /// The reason phrase; nil means the standard one for `status`.
    public var reason: String?
    public var headers: HeaderFields
    public var body: ResponseBody
    /// The upstream peers tried for this response, set by proxying handlers (`$upstream_addr`, ...).
    public var upstream: UpstreamReport?
    /// What the handler that made it reports for its module's variables (`$inference_queue_time`); nil for most.
    public var handlerReport: (any HandlerReport)?
    /// With a `101` status: the far end the client's connection is joined to once the head is written (an
    /// upgraded upstream connection). nil for every other response.
    public var upgrade: (any ConnectionUpgrade)?

    public init(status: Int, reason: String? = nil, headers: HeaderFields = [:], body: ResponseBody = .empty,
                upstream: UpstreamReport? = nil) {
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.upstream = upstream
    }

    /// A response with a text body (`return 200 "hello"`).
    public static func text(_ status: Int, _ text: String, contentType: String = "text/plain") -> KernelResponse {
        var buffer = ByteBufferAllocator().buffer(capacity: text.utf8.count)
        buffer.writeString(text)
        return KernelResponse(status: status, headers: ["Content-Type": contentType], body: .buffer(buffer))
    }

    /// The JSON error body every kernel error uses: `{"error":"..."}` (also the Open Inference Protocol's shape).
    public static func error(_ status: Int, _ message: String) -> KernelResponse {
        var buffer = ByteBufferAllocator().buffer(capacity: message.utf8.count + 16)
        buffer.writeStaticString("{\"error\":")
        JSONText.writeQuoted(message, into: &buffer)
        buffer.writeStaticString("}")
        return KernelResponse(status: status, headers: ["Content-Type": "application/json"], body: .buffer(buffer))
    }

    /// The reason phrase written on the status line.
    public var reasonPhrase: String { reason ?? HTTPStatusText.reason(for: status) }
}

/// An error a handler throws to answer with a given status and a JSON error body.
public struct KernelHTTPError: Error, Sendable, CustomStringConvertible {
    public var status: Int
    public var message: String
    /// Headers the error response carries (`Allow` on a 405).
    public var headers: HeaderFields
    public init(_ status: Int, _ message: String, headers: HeaderFields = [:]) {
        self.status = status
        self.message = message
        self.headers = headers
    }
    public var description: String { "\(status): \(message)" }
}

/// Standard reason phrases.
public enum HTTPStatusText {
    public static func reason(for status: Int) -> String {
        switch status {
        case 100: return "Continue"
        case 101: return "Switching Protocols"
        case 200: return "OK"
        case 201: return "Created"
        case 202: return "Accepted"
        case 204: return "No Content"
        case 206: return "Partial Content"
        case 301: return "Moved Permanently"
        case 302: return "Moved Temporarily"
        case 303: return "See Other"
        case 304: return "Not Modified"
        case 307: return "Temporary Redirect"
        case 308: return "Permanent Redirect"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Not Allowed"
        case 406: return "Not Acceptable"
        case 408: return "Request Time-out"
        case 409: return "Conflict"
        case 410: return "Gone"
        case 411: return "Length Required"
        case 412: return "Precondition Failed"
        case 413: return "Request Entity Too Large"
        case 414: return "Request-URI Too Large"
        case 415: return "Unsupported Media Type"
        case 416: return "Requested Range Not Satisfiable"
        case 421: return "Misdirected Request"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Temporarily Unavailable"
        case 504: return "Gateway Time-out"
        case 505: return "HTTP Version Not Supported"
        default: return status < 300 ? "OK" : "Unknown"
        }
    }
}
