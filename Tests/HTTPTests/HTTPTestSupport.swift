import Foundation
import KernelConfig
import KernelCore
import Logging
import NIOPosix
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import XCTest
@testable import HTTP

/// Records what the fake producers saw, shared between a test and its router.
final class TestProbe: Sendable {
    /// Completes the `/slow` response when the test decides.
    let pendingSlow = NIOLockedValueBox<EventLoopPromise<KernelResponse>?>(nil)
    let streamCancelled = NIOLockedValueBox(false)
    let streamPulls = NIOLockedValueBox(0)
    /// The body stream an unbuffered request handed to `/unbuffered`.
    let bodyStream = NIOLockedValueBox<RequestBodyStream?>(nil)
}

/// Answers with where its request's body was: `memory N`, `file N` (spooled) or, for a stream, hands it to the
/// probe and answers when the test completes `probe.pendingSlow`.
struct BodyPlaceHandler: RequestHandler {
    let use: RequestBodyUse
    let probe: TestProbe
    var requestBodyUse: RequestBodyUse { use }

    func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        switch request.bodySource {
        case .file(let file)?:
            return context.eventLoop.makeSucceededFuture(.text(200, "file \(file.length)"))
        case .stream(let stream)?:
            probe.bodyStream.withLockedValue { $0 = stream }
            let promise = context.eventLoop.makePromise(of: KernelResponse.self)
            probe.pendingSlow.withLockedValue { $0 = promise }
            return promise.futureResult
        case nil:
            return context.eventLoop.makeSucceededFuture(.text(200, "memory \(request.body?.readableBytes ?? 0)"))
        }
    }
}

/// Counts `read` calls that reach the socket: whether the connection asks for more input.
final class ReadCounter: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = ByteBuffer
    var reads = 0
    func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }
}

/// The length of the `/big` body: several `SendProgress` slices.
let bigBodyLength = 100_000

/// A small router for the codec tests:
/// `/hello` → 200 "hello"; `/connection` → the connection's serial and request number; `/big` → 200 with `bigBodyLength` bytes; `/echo` echoes the body (limit 100 bytes); `/stream`, `/stream-length`, `/stream-broken`
/// stream "ab" "cd" "ef"; `/declared-length` has no body and `Content-Length: 1234`; `/slow` answers when the test completes `probe.pendingSlow`; anything else → 404.
struct TestRouter: RequestRouter {
    let probe: TestProbe
    let accessLog: AccessLog?

    func route(_ request: KernelRequest) -> RouteDecision {
        let probe = self.probe
        let handler: any RequestHandler
        var limit: Int? = 1 << 20
        switch request.path {
        case "/hello":
            handler = StaticResponseHandler(.text(200, "hello"))
        case "/spooled", "/unbuffered":
            let buffering = RequestBodyBuffering(bufferSize: 16, tempPath: NSTemporaryDirectory() + "kernel-http-test-bodies")
            return RouteDecision(route: RouteInfo(), handler: BodyPlaceHandler(use: request.path == "/spooled" ? .spooled : .streamed, probe: probe),
                                 maxBodySize: nil, accessLog: accessLog, bodyBuffering: buffering)
        case "/big":
            handler = StaticResponseHandler(.text(200, String(repeating: "b", count: bigBodyLength)))
        case "/echo":
            limit = 100
            handler = ClosureHandler { request, context in
                var response = KernelResponse(status: 200, headers: ["Content-Type": "application/octet-stream"],
                                              body: request.body.map { .buffer($0) } ?? .empty)
                response.headers.add("X-Method", request.method)
                return context.eventLoop.makeSucceededFuture(response)
            }
        case "/stream", "/stream-length", "/stream-broken":
            let path = request.path
            handler = ClosureHandler { _, context in
                let parts = NIOLockedValueBox(["ab", "cd", "ef"])
                let eventLoop = context.eventLoop
                let stream = ResponseBodyStream(next: {
                    probe.streamPulls.withLockedValue { $0 += 1 }
                    let part = parts.withLockedValue { $0.isEmpty ? nil : $0.removeFirst() }
                    if path == "/stream-broken", part == "cd" {
                        return eventLoop.makeFailedFuture(KernelHTTPError(502, "upstream broke off"))
                    }
                    return eventLoop.makeSucceededFuture(part.map { ByteBuffer(string: $0) })
                }, cancel: { probe.streamCancelled.withLockedValue { $0 = true } })
                var headers: HeaderFields = ["Content-Type": "text/plain"]
                if path == "/stream-length" { headers.add("Content-Length", "6") }
                return eventLoop.makeSucceededFuture(KernelResponse(status: 200, headers: headers, body: .stream(stream)))
            }
        case "/inspect":
            handler = ClosureHandler { request, context in
                let c = request.connection
                var text = "\(request.method) uri=\(request.uri) path=\(request.path) query=\(request.query) \(request.version)\n"
                text += "listener=\(c.listener) protocol=\(c.protocolName) remote=\(c.remoteIP) local=\(c.localAddress.map { "\($0)" } ?? "-")\n"
                for field in request.headers { text += "\(field.name)=\(field.value)\n" }
                return context.eventLoop.makeSucceededFuture(.text(200, text))
            }
        case "/connection":
            // `$connection` and `$connection_requests`.
            handler = ClosureHandler { request, context in
                context.eventLoop.makeSucceededFuture(.text(200, "\(request.connection.id) \(request.connection.requestNumber)"))
            }
        case "/declared-length":
            // No body, and the length a GET would have: what `uwsgi_pass` gives for HEAD.
            handler = StaticResponseHandler(KernelResponse(status: 200, headers: ["Content-Type": "text/plain", "Content-Length": "1234"],
                                                           body: .empty))
        case "/slow":
            handler = ClosureHandler { _, context in
                let promise = context.eventLoop.makePromise(of: KernelResponse.self)
                probe.pendingSlow.withLockedValue { $0 = promise }
                return promise.futureResult
            }
        default:
            handler = StaticResponseHandler(.error(404, "not found"))
        }
        return RouteDecision(route: RouteInfo(), handler: handler, maxBodySize: limit, accessLog: accessLog)
    }
}

/// One connection on an `EmbeddedChannel` with the HTTP handler, a test router and an access log file.
final class HTTPHarness {
    let runtime: KernelRuntime
    let loop = EmbeddedEventLoop()
    let channel: EmbeddedChannel
    let probe = TestProbe()
    let accessLogPath: String
    let errorLogPath: String

    init(_ configure: (inout HTTPConfiguration) -> Void = { _ in }) throws {
        let stem = NSTemporaryDirectory() + "kernel-http-test-\(getpid())-\(UUID().uuidString)"
        accessLogPath = stem + ".access.log"
        errorLogPath = stem + ".error.log"
        let destination = ErrorLogHandler.Destination(file: try LogFile(path: errorLogPath), level: .info)
        runtime = KernelRuntime(eventLoopGroup: MultiThreadedEventLoopGroup(numberOfThreads: 1),
                                logger: Logger(label: "kernel") { _ in ErrorLogHandler(destination: destination) },
                                logFiles: LogFileRegistry(), errorLog: destination)
        let accessLog = AccessLog(file: try LogFile(path: accessLogPath), format: .combined)
        runtime.install(KernelGeneration(router: TestRouter(probe: probe, accessLog: accessLog), runtime: runtime))
        var configuration = HTTPConfiguration(listen: [HTTPListenAddress(text: "127.0.0.1:8080",
                                                                         address: .tcp(host: "127.0.0.1", port: 8080))])
        configure(&configuration)
        channel = EmbeddedChannel(loop: loop)
        let settings = HTTPConnectionSettings(configuration: configuration, listener: "127.0.0.1:8080")
        try channel.pipeline.syncOperations.addHandler(HTTPConnectionHandler(settings: settings, runtime: runtime))
        try channel.bind(to: SocketAddress(ipAddress: "127.0.0.1", port: 8080)).wait()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40000)).wait()
    }

    deinit {
        _ = try? channel.finish()
        try? FileManager.default.removeItem(atPath: accessLogPath)
        try? FileManager.default.removeItem(atPath: errorLogPath)
        try? runtime.eventLoopGroup.syncShutdownGracefully()
    }

    func send(_ text: String) throws {
        try channel.writeInbound(channel.allocator.buffer(string: text))
    }

    func send(bytes: [UInt8]) throws {
        try channel.writeInbound(channel.allocator.buffer(bytes: bytes))
    }

    /// Everything written since the last call, with the `Date` value replaced by `-`.
    func output() throws -> String {
        var text = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
            text += String(buffer: buffer)
        }
        return text.components(separatedBy: "\r\n").map { $0.hasPrefix("Date: ") ? "Date: -" : $0 }.joined(separator: "\r\n")
    }

    /// Statuses of the access log lines written so far.
    func loggedStatuses() throws -> [Int] {
        let text = (try? String(contentsOfFile: accessLogPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            // `ip - - [time] "request" status bytes "referer" "agent"`
            let parts = line.split(separator: "\"", omittingEmptySubsequences: false)
            guard parts.count > 2 else { return nil }
            return Int(parts[2].split(separator: " ").first ?? "")
        }
    }

    /// Error-log lines so far, without the time and pid prefix (`[info] message`).
    func errorLogLines() -> [String] {
        let text = (try? String(contentsOfFile: errorLogPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map { line in
            guard let bracket = line.firstIndex(of: "["), let colon = line.range(of: "#0: ") else { return String(line) }
            let level = line[bracket...].prefix { $0 != " " }
            return "\(level) \(line[colon.upperBound...])"
        }
    }

    var isOpen: Bool { channel.isActive }
}

/// The exact bytes of a response as the handler writes them (with `Date: -`).
func response(_ status: String, _ headers: [String] = [], body: String = "", close: Bool = false, server: String = "kernel/\(kernelVersion)") -> String {
    var text = "HTTP/1.1 \(status)\r\nServer: \(server)\r\nDate: -\r\n"
    for header in headers { text += header + "\r\n" }
    text += close ? "Connection: close\r\n\r\n" : "Connection: keep-alive\r\n\r\n"
    return text + body
}

func hello(close: Bool = false) -> String {
    response("200 OK", ["Content-Type: text/plain", "Content-Length: 5"], body: "hello", close: close)
}

func jsonError(_ status: String, _ message: String) -> String {
    let body = "{\"error\":\"\(message)\"}"
    return response(status, ["Content-Type: application/json", "Content-Length: \(body.utf8.count)"], body: body, close: true)
}

/// Holds write completions until the test releases them: a socket whose peer reads slowly.
final class WriteGate: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private var held: [EventLoopPromise<Void>] = []

    var heldCount: Int { held.count }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        context.write(data, promise: nil)
        if let promise { held.append(promise) }
    }

    /// Completes the oldest held write.
    func releaseOne() {
        if !held.isEmpty { held.removeFirst().succeed(()) }
    }

    /// Completes every held write.
    func releaseAll() {
        while !held.isEmpty { releaseOne() }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // A closed socket fails what it has not sent, as NIO's socket channels do.
        if mode == .all {
            let pending = held
            held = []
            for promise in pending { promise.fail(ChannelError.ioOnClosedChannel) }
        }
        context.close(mode: mode, promise: promise)
    }
}
