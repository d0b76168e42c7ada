import KernelConfig
import KernelCore
import Logging
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// One `uwsgi_param`: a variable name and its value template.
public struct UWSGIParam: Sendable {
    public var name: String
    public var value: UWSGIParamTemplate
    /// nginx's `if_not_empty`: the variable is left out when its value is empty.
    public var ifNotEmpty: Bool

    public init(name: String, value: UWSGIParamTemplate, ifNotEmpty: Bool = false) {
        self.name = name
        self.value = value
        self.ifNotEmpty = ifNotEmpty
    }

    /// The params of nginx's stock `uwsgi_params` file, in its order.
    public static let stock: [UWSGIParam] = [
        ("QUERY_STRING", "$query_string", false), ("REQUEST_METHOD", "$request_method", false),
        ("CONTENT_TYPE", "$content_type", false), ("CONTENT_LENGTH", "$content_length", false),
        ("REQUEST_URI", "$request_uri", false), ("PATH_INFO", "$document_uri", false),
        ("DOCUMENT_ROOT", "$document_root", false), ("SERVER_PROTOCOL", "$server_protocol", false),
        ("REQUEST_SCHEME", "$scheme", false), ("HTTPS", "$https", true),
        ("REMOTE_ADDR", "$remote_addr", false), ("REMOTE_PORT", "$remote_port", false),
        ("SERVER_PORT", "$server_port", false), ("SERVER_NAME", "$server_name", false),
    ].map { UWSGIParam(name: $0.0, value: try! UWSGIParamTemplate(parsing: $0.1), ifNotEmpty: $0.2) }

    /// The stock params with `overrides` applied: a param of the same name is replaced in place, others follow.
    public static func merged(_ overrides: [UWSGIParam]) -> [UWSGIParam] {
        var params = stock
        for param in overrides {
            if let index = params.firstIndex(where: { $0.name == param.name }) {
                params[index] = param
            } else {
                params.append(param)
            }
        }
        return params
    }
}

/// The options of one `uwsgi_pass` location.
public struct UWSGIPassConfiguration: Sendable {
    /// The upstream group (a single peer for `uwsgi_pass 127.0.0.1:6666`).
    public var group: any UpstreamGroup
    /// The vars sent, in order: the stock `uwsgi_params` with the location's `uwsgi_param` applied.
    public var params: [UWSGIParam]
    public var connectTimeout: TimeAmount
    public var readTimeout: TimeAmount
    public var sendTimeout: TimeAmount
    public var passRequestHeaders: Bool
    /// nginx's `uwsgi_request_buffering`: on, the body is read whole (memory, then a temporary file) before the
    /// upstream is contacted; off, it is sent to the upstream while it arrives.
    public var requestBuffering = true
    /// The largest response head accepted (nginx `uwsgi_buffer_size`).
    public var bufferSize: Int
    public var modifier1: UInt8
    public var modifier2: UInt8
    /// Addresses of named peers resolved when the configuration was loaded (nginx resolves `uwsgi_pass host:port`
    /// at start-up too), so that no request waits for a blocking name lookup on its event loop.
    public var resolved: [PeerAddress: SocketAddress] = [:]

    public init(group: any UpstreamGroup, params: [UWSGIParam] = UWSGIParam.stock, connectTimeout: TimeAmount = .seconds(60),
                readTimeout: TimeAmount = .seconds(60), sendTimeout: TimeAmount = .seconds(60),
                passRequestHeaders: Bool = true, bufferSize: Int = 4096, modifier1: UInt8 = 0, modifier2: UInt8 = 0) {
        self.group = group
        self.params = params
        self.connectTimeout = connectTimeout
        self.readTimeout = readTimeout
        self.sendTimeout = sendTimeout
        self.passRequestHeaders = passRequestHeaders
        self.bufferSize = bufferSize
        self.modifier1 = modifier1
        self.modifier2 = modifier2
    }

    /// The vars block nginx would send for `request`: params first (empty `if_not_empty` ones left out), then one
    /// `HTTP_*` var per request header name (repeated fields joined with `, `, cookies with `; `), except those a
    /// param of the same name already carries. `Transfer-Encoding` is not passed: the body goes out de-chunked with
    /// its length in `CONTENT_LENGTH`.
    public func variables(for request: KernelRequest, route: RouteInfo) -> UWSGIVariables {
        var variables = UWSGIVariables()
        for param in params {
            let value = param.value.evaluate(request, route: route)
            if param.ifNotEmpty && value.isEmpty { continue }
            variables.append(param.name, value)
        }
        guard passRequestHeaders else { return variables }
        // Repeated fields are joined by their name, case-insensitively, as nginx links them: two names that only
        // map to the same variable (`X-Forwarded-For`, and `X_Forwarded_For` where `underscores_in_headers` lets
        // it in) stay two variables and are never merged into one value.
        var order: [HeaderName] = []
        var merged: [HeaderName: (name: String, values: [String])] = [:]
        for (name, value) in request.headers {
            let key = HeaderName(name)
            if merged[key] == nil { order.append(key); merged[key] = (name, []) }
            merged[key]!.values.append(value)
        }
        let paramNames = Set(params.lazy.map(\.name).filter { $0.hasPrefix("HTTP_") })
        for key in order {
            let entry = merged[key]!
            let variable = UWSGIPassConfiguration.variableName(forHeader: entry.name)
            guard !paramNames.contains(variable), variable != "HTTP_TRANSFER_ENCODING" else { continue }
            variables.append(variable, entry.values.joined(separator: entry.name.equalsCaseInsensitive("Cookie") ? "; " : ", "))
        }
        return variables
    }

    /// A header name compared and hashed without ASCII case (nginx's `lowcase_key`), with no lowered copy made.
    struct HeaderName: Hashable {
        let name: String

        init(_ name: String) { self.name = name }

        static func == (a: HeaderName, b: HeaderName) -> Bool { a.name.equalsCaseInsensitive(b.name) }

        func hash(into hasher: inout Hasher) {
            for byte in name.utf8 { hasher.combine((byte >= 65 && byte <= 90) ? byte | 0x20 : byte) }
        }
    }

    /// `X-Foo-Bar` → `HTTP_X_FOO_BAR`.
    public static func variableName(forHeader name: String) -> String {
        var out = "HTTP_"
        for byte in name.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"): out.unicodeScalars.append(Unicode.Scalar(byte - 32))
            case UInt8(ascii: "-"): out.append("_")
            default: out.unicodeScalars.append(Unicode.Scalar(byte))
            }
        }
        return out
    }
}

/// The `uwsgi_pass` handler: sends the request to a uwsgi application server (uWSGI, a kernel worker) and
/// streams its answer back.
public struct UWSGIPassHandler: RequestHandler {
    public let configuration: UWSGIPassConfiguration

    public init(configuration: UWSGIPassConfiguration) { self.configuration = configuration }

    /// The body is streamed to the upstream from where it is: memory, the spooled file, or (buffering off) the
    /// connection, so it is never loaded into memory whole.
    public var requestBodyUse: RequestBodyUse { configuration.requestBuffering ? .spooled : .streamed }

    public func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        let variables = configuration.variables(for: request, route: context.route)
        guard let packet = variables.encodedPacket(modifier1: configuration.modifier1, modifier2: configuration.modifier2) else {
            context.logger.error("uwsgi request is too big: \(variables.encodedSize), client: \(request.connection.remoteIP), request: \"\(request.requestLine)\"")
            return context.eventLoop.makeSucceededFuture(.error(502, "request head too large for uwsgi"))
        }
        let upstream = UWSGIUpstreamRequest(configuration: configuration, request: request, context: context, packet: packet)
        return upstream.start()
    }
}

/// Why one attempt at a peer failed, and what the client gets for it.
enum UWSGIUpstreamFailure: Error {
    /// Connection refused, reset, unreachable, broken pipe, invalid answer: 502.
    case error(String)
    /// Connect, send or read timeout: 504.
    case timeout(String)

    var response: KernelResponse {
        switch self {
        case .error: return .error(502, "bad gateway")
        case .timeout: return .error(504, "gateway timeout")
        }
    }

    var message: String {
        switch self {
        case .error(let text), .timeout(let text): return text
        }
    }
}

/// One proxied request: picks peers, connects, sends the packet and body, and waits for the answer's head.
/// Lives on the request's event loop.
final class UWSGIUpstreamRequest: @unchecked Sendable {
    let configuration: UWSGIPassConfiguration
    let request: KernelRequest
    let context: RequestContext
    let packet: ByteBuffer
    let promise: EventLoopPromise<KernelResponse>
    private var tried: [PeerAddress] = []
    private var lastFailure: UWSGIUpstreamFailure?
    private var sendError: (any Error)?

    init(configuration: UWSGIPassConfiguration, request: KernelRequest, context: RequestContext, packet: ByteBuffer) {
        self.configuration = configuration
        self.request = request
        self.context = context
        self.packet = packet
        promise = context.eventLoop.makePromise(of: KernelResponse.self)
    }

    private var eventLoop: any EventLoop { context.eventLoop }

    func start() -> EventLoopFuture<KernelResponse> {
        if eventLoop.inEventLoop { attempt() } else { eventLoop.execute { self.attempt() } }
        return promise.futureResult
    }

    /// nginx's error-log suffix naming the request.
    private func suffix(_ peer: PeerAddress?) -> String {
        var text = ", client: \(request.connection.remoteIP), server: \(context.route.serverName), request: \"\(request.requestLine)\""
        if let peer { text += ", upstream: \"uwsgi://\(peer)\"" }
        if let host = request.headers["Host"] { text += ", host: \"\(host)\"" }
        return text
    }

    private func attempt() {
        let group = configuration.group
        guard tried.count < max(1, group.maxTries), let peer = group.pick(for: request, excluding: tried) else {
            if let lastFailure {
                promise.succeed(lastFailure.response)
            } else {
                context.logger.error("no live upstreams while connecting to upstream\(suffix(nil)), upstream: \"uwsgi://\(group.name)\"")
                promise.succeed(.error(502, "no live upstreams"))
            }
            return
        }
        tried.append(peer)
        let handler = UWSGIUpstreamHandler(readTimeout: configuration.readTimeout, eventLoop: eventLoop)
        let decoder = UWSGIResponseDecoder(maxHeadSize: configuration.bufferSize, isHeadRequest: request.method == "HEAD")
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.autoRead, value: false)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([ByteToMessageHandler(decoder), handler])
                }
            }
        let connecting: EventLoopFuture<any Channel>
        switch peer {
        case .tcp(let host, let port):
            do {
                let address: SocketAddress
                if let known = configuration.resolved[peer] {
                    address = known
                } else if let literal = try? SocketAddress(ipAddress: host, port: port) {
                    address = literal
                } else {
                    // A name from an upstream group that was not resolved at load time.
                    address = try SocketAddress.makeAddressResolvingHost(host, port: port)
                }
                connecting = bootstrap.connect(to: address)
            } catch {
                connecting = eventLoop.makeFailedFuture(error)
            }
        case .unix(let path):
            connecting = bootstrap.connect(unixDomainSocketPath: path)
        }
        connecting.hop(to: eventLoop).whenComplete { result in
            switch result {
            case .success(let channel):
                self.connected(channel, peer: peer, handler: handler)
            case .failure(let error):
                let failure = UWSGIUpstreamRequest.connectFailure(error)
                handler.fail(failure)
                self.context.logger.error("\(failure.message) while connecting to upstream\(self.suffix(peer))")
                group.report(peer, outcome: .failure)
                self.lastFailure = failure
                self.attempt()
            }
        }
    }

    static func connectFailure(_ error: any Error) -> UWSGIUpstreamFailure {
        if let error = error as? ChannelError, case .connectTimeout = error {
            return .timeout("upstream timed out (110: Connection timed out)")
        }
        if let error = error as? NIOConnectionError, let first = error.connectionErrors.first {
            return connectFailure(first.error)
        }
        if let error = error as? IOError {
            return .error("connect() failed (\(error.errnoCode): \(String(cString: strerror(error.errnoCode))))")
        }
        return .error("connect() failed (\(error))")
    }

    private func connected(_ channel: any Channel, peer: PeerAddress, handler: UWSGIUpstreamHandler) {
        let group = configuration.group
        let logger = context.logger
        // Send: the packet head, then the body, part after part.
        let sender = UWSGIRequestSender(channel: channel, sendTimeout: configuration.sendTimeout, eventLoop: eventLoop) {
            handler.fail(UWSGIUpstreamFailure.timeout("upstream timed out (110: Connection timed out) while sending request to upstream"))
        }
        sender.send(packet: packet, request: request).whenComplete { result in
            if case .failure(let error) = result {
                // A failure of the request's own (a timeout, the client's body broken off) ends the exchange and is
                // logged with it; a failed write shows as the upstream closing.
                if let failure = error as? UWSGIUpstreamFailure { handler.fail(failure) }
                self.sendError = error
            }
            handler.requestSent()
        }
        handler.startReading()
        handler.headFuture.whenComplete { result in
            switch result {
            case .success(let head):
                group.report(peer, outcome: .success)
                self.promise.succeed(self.response(head, handler: handler))
            case .failure(let error):
                let failure: UWSGIUpstreamFailure
                switch error {
                case let known as UWSGIUpstreamFailure:
                    failure = known
                case let invalid as UWSGIResponseError:
                    if invalid == .prematureCloseInHead, let sendError = self.sendError {
                        failure = .error("writev() failed (\(UWSGIUpstreamRequest.describe(sendError))) while sending request to upstream")
                    } else {
                        failure = .error("\(invalid) while reading response header from upstream")
                    }
                default:
                    failure = .error("recv() failed (\(UWSGIUpstreamRequest.describe(error))) while reading response header from upstream")
                }
                logger.error("\(failure.message)\(self.suffix(peer))")
                group.report(peer, outcome: .failure)
                channel.close(promise: nil)
                self.promise.succeed(failure.response)
            }
        }
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? IOError { return "\(error.errnoCode): \(String(cString: strerror(error.errnoCode)))" }
        return "\(error)"
    }

    /// The client-facing response: hop-by-hop fields and the ones nginx hides by default are dropped.
    private func response(_ head: UWSGIResponseHead, handler: UWSGIUpstreamHandler) -> KernelResponse {
        var headers = HeaderFields()
        for (name, value) in head.headers {
            let lower = name.lowercased()
            if UWSGIUpstreamRequest.hiddenHeaders.contains(lower) || lower.hasPrefix("x-accel-") { continue }
            headers.add(name, value)
        }
        let body: ResponseBody
        if let whole = handler.takeWholeBody() {
            if request.method == "HEAD" {
                // The upstream's Content-Length (the length a GET would have) stays for HEAD, as nginx passes it.
                // Without one the length is unknown: an empty stream says so, and no length goes out.
                if head.headers["Content-Length"] != nil {
                    body = .empty
                } else {
                    let eventLoop = self.eventLoop
                    body = .stream(ResponseBodyStream(next: { eventLoop.makeSucceededFuture(nil) }, cancel: {}))
                }
            } else if whole.readableBytes == 0 {
                body = .empty
                if head.headers["Content-Length"] == nil, !(head.status == 204 || head.status == 304) {
                    headers.add("Content-Length", "0")
                }
            } else {
                body = .buffer(whole)
            }
        } else {
            let logger = context.logger
            let suffix = self.suffix(nil)
            body = .stream(ResponseBodyStream(
                next: { handler.next(logger: logger, suffix: suffix) },
                cancel: { handler.cancel() }))
        }
        return KernelResponse(status: head.status, reason: head.reason, headers: headers, body: body)
    }

    static let hiddenHeaders: Set<String> = ["connection", "keep-alive", "transfer-encoding", "proxy-connection",
                                             "upgrade", "date", "server", "x-pad"]
}

/// Writes one request to the upstream: the packet head, then the body from memory, from the spooled file or from
/// the client connection (`uwsgi_request_buffering off`). The next part is read only once the previous one was
/// written, so memory stays bounded by one part whatever the body's size; `uwsgi_send_timeout` is the longest time
/// without progress between two writes (as nginx measures it), so a large body that keeps moving never times out.
/// Lives on the upstream channel's event loop.
final class UWSGIRequestSender: @unchecked Sendable {
    /// Bytes read from a spooled file per part.
    static let filePartSize = 256 * 1024

    private let channel: any Channel
    private let eventLoop: any EventLoop
    private let watch: SendTimeoutWatch
    private let done: EventLoopPromise<Void>

    init(channel: any Channel, sendTimeout: TimeAmount, eventLoop: any EventLoop, onTimeout: @escaping () -> Void) {
        self.channel = channel
        self.eventLoop = eventLoop
        watch = SendTimeoutWatch(timeout: sendTimeout, eventLoop: eventLoop, onTimeout: onTimeout)
        done = eventLoop.makePromise(of: Void.self)
    }

    /// Completes once the whole request is written, or fails (the channel closed, the client's body broke off).
    func send(packet: ByteBuffer, request: KernelRequest) -> EventLoopFuture<Void> {
        write(packet, promise: nil)
        switch request.bodySource {
        case .file(let file)?:
            sendFile(file, from: 0)
        case .stream(let stream)?:
            sendStream(stream)
        case nil:
            let written = eventLoop.makePromise(of: Void.self)
            write(request.body ?? channel.allocator.buffer(capacity: 0), promise: written)
            written.futureResult.assumeIsolated().whenComplete { self.finish($0) }
        }
        done.futureResult.assumeIsolated().whenComplete { _ in self.watch.stop() }
        return done.futureResult
    }

    /// Writes and flushes `buffer` in watched slices; `promise` completes with the last.
    private func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?) {
        SendProgress.forEachSlice(of: buffer) { slice, isLast in
            let written = (isLast ? promise : nil) ?? eventLoop.makePromise(of: Void.self)
            watch.writeStarted()
            written.futureResult.assumeIsolated().whenComplete { _ in self.watch.writeCompleted() }
            channel.write(slice, promise: written)
        }
        channel.flush()
    }

    private func finish(_ result: Result<Void, any Error>) {
        switch result {
        case .success: done.succeed(())
        case .failure(let error): done.fail(error)
        }
    }

    private func sendFile(_ file: SpooledRequestBody, from offset: Int64) {
        guard offset < file.length else {
            done.succeed(())
            return
        }
        file.read(from: offset, count: UWSGIRequestSender.filePartSize, allocator: channel.allocator, on: eventLoop)
            .assumeIsolated().whenComplete { result in
                switch result {
                case .success(let part):
                    self.writeThen(part) { self.sendFile(file, from: offset + Int64(part.readableBytes)) }
                case .failure(let error):
                    self.done.fail(UWSGIUpstreamFailure.error("\(error) while sending request to upstream"))
                }
            }
    }

    private func sendStream(_ stream: RequestBodyStream) {
        stream.next().hop(to: eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(.some(let part)):
                self.writeThen(part) { self.sendStream(stream) }
            case .success(.none):
                let flushed = self.eventLoop.makePromise(of: Void.self)
                self.channel.writeAndFlush(self.channel.allocator.buffer(capacity: 0), promise: flushed)
                flushed.futureResult.assumeIsolated().whenComplete { self.finish($0) }
            case .failure(let error):
                // The client broke off or timed out: the upstream gets no more (its connection closes).
                self.done.fail(UWSGIUpstreamFailure.error("\(error) while sending request to upstream"))
            }
        }
    }

    /// Writes `part` and calls `next` once it is written; a failed write ends the request.
    private func writeThen(_ part: ByteBuffer, _ next: @escaping () -> Void) {
        let written = eventLoop.makePromise(of: Void.self)
        write(part, promise: written)
        written.futureResult.assumeIsolated().whenComplete { result in
            switch result {
            case .success: next()
            case .failure(let error): self.done.fail(error)
            }
        }
    }
}

/// The upstream connection's reading side: collects the head, then hands body parts to the consumer one pull at a
/// time, reading from the socket only when the consumer wants more (the channel has `autoRead` off).
final class UWSGIUpstreamHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = UWSGIResponsePart

    private let readTimeout: TimeAmount
    private let eventLoop: any EventLoop
    private var context: ChannelHandlerContext?
    private let headPromise: EventLoopPromise<UWSGIResponseHead>
    private var pendingHead: UWSGIResponseHead?
    private var headDelivered = false
    private var parts = CircularBuffer<ByteBuffer>()
    private var ended = false
    private var failure: (any Error)?
    private var waiter: EventLoopPromise<ByteBuffer?>?
    private var readTimer: Scheduled<Void>?
    private var sent = false
    private var closed = false

    init(readTimeout: TimeAmount, eventLoop: any EventLoop) {
        self.readTimeout = readTimeout
        self.eventLoop = eventLoop
        headPromise = eventLoop.makePromise(of: UWSGIResponseHead.self)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        readTimer?.cancel()
    }

    var headFuture: EventLoopFuture<UWSGIResponseHead> { headPromise.futureResult }

    func startReading() {
        context?.read()
    }

    /// The request is written: from now on `uwsgi_read_timeout` runs while an answer is awaited.
    func requestSent() {
        sent = true
        if !headDelivered { armReadTimer(phase: "reading response header from upstream") }
    }

    func fail(_ error: any Error) {
        guard !closed else { return }
        deliver(error: error)
        context?.close(promise: nil)
    }

    private func armReadTimer(phase: String) {
        readTimer?.cancel()
        guard let context else { return }
        readTimer = context.eventLoop.assumeIsolated().scheduleTask(in: readTimeout) { [self] in
            fail(UWSGIUpstreamFailure.timeout("upstream timed out (110: Connection timed out) while \(phase)"))
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if sent || headDelivered { armReadTimer(phase: headDelivered ? "reading upstream" : "reading response header from upstream") }
        switch unwrapInboundIn(data) {
        case .head(let head):
            pendingHead = head
        case .body(let part):
            if let waiter, parts.isEmpty, headDelivered {
                self.waiter = nil
                waiter.succeed(part)
            } else {
                parts.append(part)
            }
        case .end:
            ended = true
            readTimer?.cancel()
            if let waiter, parts.isEmpty {
                self.waiter = nil
                waiter.succeed(nil)
            }
            closed = true
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        deliverHeadIfReady()
        if !headDelivered {
            context.read()
        } else if waiter != nil, parts.isEmpty, !ended {
            context.read()
        } else if waiter == nil {
            readTimer?.cancel()
        }
        context.fireChannelReadComplete()
    }

    /// The head goes out once a whole read has been decoded, so that a small answer that came in one read is
    /// handed over as one buffer instead of a stream.
    private func deliverHeadIfReady() {
        guard !headDelivered, let head = pendingHead else { return }
        headDelivered = true
        pendingHead = nil
        headPromise.succeed(head)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        deliverHeadIfReady()
        deliver(error: error)
        closed = true
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        deliverHeadIfReady()
        readTimer?.cancel()
        closed = true
        if !ended { deliver(error: failure ?? UWSGIResponseError.prematureCloseInHead) }
        context.fireChannelInactive()
    }

    private func deliver(error: any Error) {
        readTimer?.cancel()
        if !headDelivered {
            headDelivered = true
            headPromise.fail(error)
            return
        }
        guard !ended, failure == nil else { return }
        failure = error
        if let waiter {
            self.waiter = nil
            waiter.fail(error)
        }
    }

    /// The whole body when it has already arrived (small answers), else nil.
    func takeWholeBody() -> ByteBuffer? {
        guard ended, failure == nil else { return nil }
        guard var first = parts.popFirst() else { return ByteBuffer() }
        while let part = parts.popFirst() { first.writeImmutableBuffer(part) }
        return first
    }

    func next(logger: Logger, suffix: String) -> EventLoopFuture<ByteBuffer?> {
        if eventLoop.inEventLoop { return pull(logger: logger, suffix: suffix) }
        return eventLoop.flatSubmit { self.pull(logger: logger, suffix: suffix) }
    }

    private func pull(logger: Logger, suffix: String) -> EventLoopFuture<ByteBuffer?> {
        if let part = parts.popFirst() { return eventLoop.makeSucceededFuture(part) }
        if ended { return eventLoop.makeSucceededFuture(nil) }
        if let failure {
            logger.error("\(describeBodyFailure(failure))\(suffix)")
            return eventLoop.makeFailedFuture(failure)
        }
        precondition(waiter == nil, "ResponseBodyStream.next called again before the previous part arrived")
        let promise = eventLoop.makePromise(of: ByteBuffer?.self)
        waiter = promise
        armReadTimer(phase: "reading upstream")
        context?.read()
        return promise.futureResult.flatMapErrorThrowing { error in
            logger.error("\(self.describeBodyFailure(error))\(suffix)")
            throw error
        }
    }

    private func describeBodyFailure(_ error: any Error) -> String {
        switch error {
        case let failure as UWSGIUpstreamFailure: return failure.message
        case let invalid as UWSGIResponseError: return "\(invalid) while reading upstream"
        default: return "recv() failed (\(UWSGIUpstreamRequest.describe(error))) while reading upstream"
        }
    }

    func cancel() {
        let close: @Sendable () -> Void = { [self] in
            parts.removeAll()
            if !ended { ended = true; closed = true; self.context?.close(promise: nil) }
            if let waiter { self.waiter = nil; waiter.succeed(nil) }
        }
        if eventLoop.inEventLoop { close() } else { eventLoop.execute(close) }
    }
}
