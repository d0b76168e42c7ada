import KernelCore
import Logging
import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One HTTP/1.1 connection: parses requests, drives each through the kernel's request path (`ExchangeDriver`) in
/// order, and writes the responses, with nginx's limits, timeouts and keep-alive rules.
///
/// The rules live in `HTTPConnectionStateMachine`, a value this handler feeds with events; the handler does the
/// I/O its answers call for. Timers, watched writes and the lingering close are `ConnectionTimers`, shared with
/// the other listeners. Requests and their bodies are read in HTTPConnectionRequests.swift, responses written in
/// HTTPConnectionResponses.swift.
public final class HTTPConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    // The mutable state below is touched only on the connection's event loop, and every access ends before the
    // next begins (an event is applied to the state machine, then its actions run). Swift's dynamic exclusivity
    // check on each access of a class's stored property is then pure cost, several times per request on the
    // hot path: it is switched off for these properties, as the standard library and swift-collections do for
    // theirs.
    let settings: HTTPConnectionSettings
    let runtime: KernelRuntime
    @exclusivity(unchecked) var connection: ConnectionInfo
    @exclusivity(unchecked) var machine: HTTPConnectionStateMachine
    let timers = ConnectionTimers()
    /// Received bytes not consumed yet.
    @exclusivity(unchecked) var input: ByteBuffer?
    @exclusivity(unchecked) var scanner: HTTPHeadScanner
    /// The request under way.
    @exclusivity(unchecked) var current: InFlightExchange?
    /// How its body is read while it is.
    @exclusivity(unchecked) var bodyReader: HTTPRequestBodyReader?
    /// How a body its handler does not use is read and dropped (it may outlive its request).
    @exclusivity(unchecked) var bodyDiscarder: HTTPRequestBodyReader?
    /// When the discarding of a body that outlived its answer gives up (nginx's `lingering_time`).
    @exclusivity(unchecked) var discardDeadline: NIODeadline?
    @exclusivity(unchecked) var serial: UInt64 = 0
    /// Inside `channelRead`: writes are flushed once at `channelReadComplete` (one syscall for pipelined responses).
    @exclusivity(unchecked) var inReadCycle = false
    @exclusivity(unchecked) var flushPending = false
    /// Guards `process` against re-entry when a response completes synchronously inside it.
    @exclusivity(unchecked) private var inProcessLoop = false
    @exclusivity(unchecked) private var readHeld = false
    @exclusivity(unchecked) var dateCache = HTTPDateCache()

    /// A handler for a connection accepted on `settings.listener`.
    public init(settings: HTTPConnectionSettings, runtime: KernelRuntime) {
        self.settings = settings
        self.runtime = runtime
        connection = ConnectionInfo(protocolName: "http", listener: settings.listener, remoteAddress: nil, localAddress: nil)
        connection.id = ConnectionInfo.nextID()
        machine = HTTPConnectionStateMachine(keepaliveRequests: settings.keepaliveRequests)
        scanner = HTTPHeadScanner(maxLineLength: settings.maxLineLength, maxHeadLength: settings.maxHeadLength)
    }

    var inputPending: Bool { (input?.readableBytes ?? 0) > 0 }
    /// Part of a request head was received.
    var requestBytesSeen: Bool { scanner.hasSeenRequestBytes || inputPending }
    /// A socket error was logged: the close it causes is not logged again.
    private var socketErrorLogged = false

    // MARK: - Channel events

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { becameActive(context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timers.cancelAll()
    }

    public func channelActive(context: ChannelHandlerContext) {
        becameActive(context)
        context.fireChannelActive()
    }

    private func becameActive(_ context: ChannelHandlerContext) {
        guard let timer = machine.channelActive() else { return }
        connection.remoteAddress = context.channel.remoteAddress
        connection.localAddress = context.channel.localAddress
        arm(timer, context)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // While closing (after an error response), input is drained and dropped: nothing behind it is processed.
        guard machine.acceptsInput else { return }
        var bytes = unwrapInboundIn(data)
        if var buffered = input, buffered.readableBytes > 0 {
            input = nil  // keep the storage uniquely referenced so that appending does not copy it
            buffered.writeBuffer(&bytes)
            input = buffered
        } else {
            input = bytes
        }
        inReadCycle = true
        process(context)
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        inReadCycle = false
        if flushPending {
            flushPending = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    public func read(context: ChannelHandlerContext) {
        if machine.shouldRead(bufferedInput: input?.readableBytes ?? 0, maxBufferedInput: settings.maxBufferedInput,
                              bodyStreamFull: current?.bodyStream?.isFull ?? false) {
            context.read()
        } else {
            readHeld = true
        }
    }

    func resumeReads(_ context: ChannelHandlerContext) {
        if readHeld {
            readHeld = false
            context.read()
        }
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if let resumed = machine.writabilityChanged(writable: context.channel.isWritable,
                                                    writesPending: timers.pendingWrites > 0, inputPending: inputPending) {
            if resumed.stopSendTimeout { timers.clear(.send) }
            if resumed.armKeepalive { arm(.keepalive, context) }
            process(context)
            resumeReads(context)
        }
        context.fireChannelWritabilityChanged()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        timers.cancelAll()
        if current == nil, !socketErrorLogged, machine.phase == .awaitingHead, requestBytesSeen {
            // Part of a head and then the end: nginx's info line for it (there is no request to log it under).
            runtime.logger.info("client prematurely closed connection while reading client request headers, client: \(connection.remoteIP), server: \(settings.listener)")
        }
        let abandoned = machine.channelInactive()
        if let inFlight = current {
            current = nil
            inFlight.responseStream?.cancel()
            inFlight.abandonBodyStream("client prematurely closed connection")
            if abandoned == .clientLeft {
                // Work queued for it (a model's queue) is dropped before it runs.
                inFlight.exchange.context.cancellation?.cancel("client prematurely closed connection")
                // 499: the client went away before its response was written (nginx's code for it).
                runtime.logger.info("client prematurely closed connection, client: \(connection.remoteIP), server: \(settings.listener), request: \"\(inFlight.request.requestLine)\"")
                inFlight.finish(status: 499)
            } else {
                inFlight.finish()
            }
        }
        input = nil
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Resets and other socket errors are the client's doing: logged at info, as nginx does.
        runtime.logger.info("\(describeSocketError(error)) while \(machine.phaseDescription(requestBytesSeen: requestBytesSeen)), client: \(connection.remoteIP), server: \(settings.listener)")
        socketErrorLogged = true
        context.close(promise: nil)
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            // Idle: close now. Otherwise the request under way is answered with `Connection: close`.
            if let close = machine.quiesce(requestBytesSeen: requestBytesSeen) { execute(close, context) }
            return
        }
        if let event = event as? ChannelEvent, event == .inputClosed {
            execute(machine.inputClosed(), context)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: - Requests

    /// Parses and handles whatever complete requests the buffered input holds, one at a time.
    func process(_ context: ChannelHandlerContext) {
        guard !inProcessLoop else { return }
        inProcessLoop = true
        defer { inProcessLoop = false }
        while true {
            // Writability matters only when there is input to parse: the channel is asked only then.
            let available = inputPending
            switch machine.nextStep(inputAvailable: available, writable: available && context.channel.isWritable) {
            case .stop(let dropInput):
                if dropInput { input = nil }
                return
            case .waitForWritability:
                // A client that does not read its responses gets no more of them processed (send_timeout runs).
                timers.startSendTimeout(settings.sendTimeout, for: self, context: context)
                return
            case .parseHead:
                guard parseHead(context) else { return }
            case .readBody:
                readBody(context)
                if machine.phase == .readingBody { return }
            case .feedBodyStream:
                feedBodyStream(context)
                return
            case .discardBody:
                discardBody(context)
                if machine.discardingBody { return }
            }
        }
    }

    // MARK: - Upgrades

    /// A `101` that upgrades the connection (a proxied WebSocket): the head goes out, then the connection is
    /// handed to the upgrade's tunnel and this handler leaves the pipeline, so nothing after the head is parsed as
    /// HTTP. The exchange finishes (access log, with the tunnelled bytes) when the tunnel closes. A connection that
    /// cannot be upgraded answers 502 and the far end is closed.
    func upgradeConnection(_ response: KernelResponse, _ upgrade: any ConnectionUpgrade, _ inFlight: InFlightExchange,
                           _ context: ChannelHandlerContext) -> Bool {
        switch machine.upgradeReady() {
        case nil:
            upgrade.cancel()
            return false
        case false?:
            upgrade.cancel()
            runtime.logger.error("upstream answered 101 to a request that cannot be upgraded, client: \(connection.remoteIP), server: \(settings.listener), request: \"\(inFlight.request.requestLine)\"")
            var refused = KernelResponse.error(502, "bad gateway")
            refused.upstream = response.upstream
            return exchangeResponded(refused, serial: inFlight.serial, context: context)
        case true?:
            break
        }
        inFlight.status = 101
        inFlight.upstream = response.upstream
        var out = context.channel.allocator.buffer(capacity: 192 + response.headers.count * 48)
        HTTPResponseHeadWriter.write(status: 101, reason: response.reasonPhrase, headers: response.headers, framing: .none,
                                     close: false, serverLine: settings.serverLine, date: dateCache.current(), into: &out,
                                     upgrading: true)
        let headBytes = out.readableBytes
        inFlight.bytesSent = headBytes
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        flushPending = false
        timers.cancelAll()
        let buffered = input
        input = nil
        current = nil
        bodyReader = nil
        upgrade.start(client: context.channel, buffered: buffered).assumeIsolated().whenComplete { result in
            if case .success(let end) = result {
                inFlight.bodyBytesSent = end.bytesToClient
                inFlight.bytesSent = headBytes + end.bytesToClient
            }
            inFlight.finish()
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        return true
    }

    // MARK: - Timers

    func arm(_ timer: HTTPConnectionStateMachine.Timer, _ context: ChannelHandlerContext) {
        timers.set(.read, after: settings.duration(of: timer), for: self, context: context)
    }
}
