import NIOCore

/// One request on a connection, from its routed head to its finish: what the exchange driver keeps for it.
///
/// A class: a connection handler updates it in place many times per request, and a struct held in an optional
/// would be copied whole (with a reference count per field) on each of those accesses.
public final class InFlightExchange {
    // Used on the connection's event loop only, one access at a time: the dynamic exclusivity check of each
    // access is switched off for the hot fields (see `HTTPConnectionHandler`).
    /// The connection's count of exchanges: a callback that arrives for an older one is ignored.
    public let serial: UInt64
    public let exchange: RequestExchange
    @exclusivity(unchecked) public var request: KernelRequest
    /// The body read so far, while it is read before the handler runs.
    @exclusivity(unchecked) public var body = RequestBodyCollector()
    /// The declared body length, when the framing gives one: sizes the body sink's memory.
    public var declaredBodyLength: Int64?
    /// The body still arriving while the handler already runs (`uwsgi_request_buffering off`).
    @exclusivity(unchecked) public var bodyStream: RequestBodyStream?
    /// The streamed response body being written.
    @exclusivity(unchecked) public var responseStream: ResponseBodyStream?
    /// The status of the response (0 until there is one).
    @exclusivity(unchecked) public var status = 0
    /// Response body bytes written (`$body_bytes_sent`).
    @exclusivity(unchecked) public var bodyBytesSent = 0
    /// Bytes handed to the channel for the response: head, body and framing (`$bytes_sent`).
    @exclusivity(unchecked) public var bytesSent = 0
    /// The response's upstream report, for the finish observers.
    @exclusivity(unchecked) public var upstream: UpstreamReport?
    /// The response's handler report, for the finish observers.
    @exclusivity(unchecked) public var handlerReport: (any HandlerReport)?

    public init(serial: UInt64, exchange: RequestExchange, request: KernelRequest) {
        self.serial = serial
        self.exchange = exchange
        self.request = request
    }

    /// The client will not send the rest of an unbuffered body: the handler reading it is told.
    public func abandonBodyStream(_ reason: String) {
        guard let stream = bodyStream else { return }
        bodyStream = nil
        stream.fail(RequestBodyError.clientAborted(reason))
    }

    /// Finishes the exchange (access log, observers, generation) with what was sent; `status` overrides the
    /// response's (499 when the client left first).
    public func finish(status: Int? = nil) {
        exchange.finish(request, status: status ?? self.status, bodyBytesSent: bodyBytesSent, bytesSent: bytesSent,
                        upstream: upstream, handlerReport: handlerReport)
    }
}

extension RequestExchange {
    /// Whether a body of `length` bytes is within the location's `client_max_body_size`; a listener refuses a
    /// larger one with 413 before reading a byte of it.
    public func admitsBody(ofLength length: Int) -> Bool {
        guard let limit = maxBodySize else { return true }
        return length <= limit
    }
}

/// The request path every listener drives the same way: `KernelRuntime.begin` routes the head, the body is
/// checked against the location's limit and read (`RequestBodyCollector`), `start` runs the filters and the
/// handler, the response is written (`ResponsePump` for a streamed body) and `InFlightExchange.finish` ends it.
public enum ExchangeDriver {
    /// Routes `request` (`begin`, before its body is read) and opens its in-flight record.
    public static func begin(_ request: KernelRequest, serial: UInt64, runtime: KernelRuntime,
                             on eventLoop: any EventLoop) -> InFlightExchange {
        InFlightExchange(serial: serial, exchange: runtime.begin(request, on: eventLoop), request: request)
    }

    /// Moves a collected body into the request, ready for `start`.
    public static func bodyComplete(_ inFlight: InFlightExchange) {
        inFlight.body.finish(into: &inFlight.request)
    }

    /// Runs the filters and the handler. A ready response (a `return`, no filter) is handed over at once, with no
    /// future; a later one on the connection's event loop. A failed future (a broken filter: the chain turns
    /// handler errors into responses) becomes a 500.
    public static func start<Connection: DrivenConnection>(_ inFlight: InFlightExchange, for owner: Connection,
                                                           context: ChannelHandlerContext) {
        if inFlight.exchange.answersThroughCallback(inFlight.request) {
            startThroughCallback(inFlight, for: owner, context: context)
            return
        }
        let responded: EventLoopFuture<KernelResponse>
        switch inFlight.exchange.start(inFlight.request) {
        case .ready(let response):
            _ = owner.exchangeResponded(response, serial: inFlight.serial, context: context)
            return
        case .future(let future):
            responded = future
        }
        let serial = inFlight.serial
        let exchange = inFlight.exchange
        // `kernel.harakiri`: a handler that has not answered in time is answered 504 by the watch instead.
        let harakiri = HarakiriWatch.arm(inFlight, for: owner, context: context)
        responded.hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
            if let harakiri, !harakiri.handlerAnswered() {
                if case .success(let late) = result, case .stream(let stream) = late.body { stream.cancel() }
                return
            }
            let response: KernelResponse
            switch result {
            case .success(let value):
                response = value
            case .failure(let error):
                exchange.context.logger.error("handler failed: \(error)")
                response = .error(500, "internal error")
            }
            if !owner.exchangeResponded(response, serial: serial, context: context), case .stream(let stream) = response.body {
                stream.cancel()
            }
        }
    }
}

extension ExchangeDriver {
    /// A handler that answers through a callback (a proxy, a location without filters): no future, no mapping of
    /// one; the answer is handed to the connection as it comes, on its event loop.
    static func startThroughCallback<Connection: DrivenConnection>(_ inFlight: InFlightExchange, for owner: Connection,
                                                                   context: ChannelHandlerContext) {
        let serial = inFlight.serial
        // Armed before the handler runs: it may answer before `respond` returns.
        let harakiri = HarakiriWatch.arm(inFlight, for: owner, context: context)
        inFlight.exchange.respond(to: inFlight.request) { response in
            if let harakiri, !harakiri.handlerAnswered() {
                if case .stream(let stream) = response.body { stream.cancel() }
                return
            }
            if !owner.exchangeResponded(response, serial: serial, context: context), case .stream(let stream) = response.body {
                stream.cancel()
            }
        }
    }
}

/// Writes a streamed response body with backpressure: the next part is asked for only once the previous one
/// was written, so the producer (an upstream, a model) never runs ahead of the socket.
public enum ResponsePump {
    /// Asks `stream` for its next part; the owner gets it in `responsePartArrived`.
    public static func pull<Connection: DrivenConnection>(_ stream: ResponseBodyStream, serial: UInt64,
                                                          for owner: Connection, context: ChannelHandlerContext) {
        stream.next().hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
            owner.responsePartArrived(result, serial: serial, context: context)
        }
    }

    /// A promise for the last write of a part: the owner hears in `responsePartWritten` when the part has left.
    public static func partPromise<Connection: DrivenConnection>(serial: UInt64, for owner: Connection,
                                                                 context: ChannelHandlerContext) -> EventLoopPromise<Void> {
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.assumeIsolated().whenComplete { result in
            owner.responsePartWritten(result, serial: serial, context: context)
        }
        return promise
    }
}

/// Collects a request body read before its handler runs: a first part that fits `client_body_buffer_size` is kept
/// as received (a slice of the input, no copy, the common case); once more comes, everything goes to a
/// `RequestBodySink` (memory up to the buffer size, then a temporary file).
public struct RequestBodyCollector {
    private var held: ByteBuffer?
    private var sink: RequestBodySink?

    public init() {}

    /// Adds `part`. Throws when the temporary file cannot be made or written.
    public mutating func append(_ part: ByteBuffer, for inFlight: InFlightExchange, allocator: ByteBufferAllocator) throws {
        guard part.readableBytes > 0 else { return }
        if sink == nil {
            if held == nil, part.readableBytes <= inFlight.exchange.decision.bodyBuffering.bufferSize {
                held = part
                return
            }
            let sink = inFlight.exchange.makeBodySink(allocator: allocator, expectedLength: inFlight.declaredBodyLength)
            self.sink = sink
            if let held {
                self.held = nil
                try sink.append(held)
            }
        }
        try sink!.append(part)
    }

    /// Moves the body into `request` (`body`, nil when empty, and `bodySource` when it was spooled to a file).
    public mutating func finish(into request: inout KernelRequest) {
        if let sink {
            let (memory, file) = sink.finish()
            request.body = memory
            if let file { request.bodySource = .file(file) }
            self.sink = nil
        } else if let held {
            request.body = held
            self.held = nil
        }
    }
}
