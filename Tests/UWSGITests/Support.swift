import KernelCore
import KernelUpstream
import NIOCore
import NIOEmbedded
import XCTest
@testable import UWSGI

/// A vars block and packet built by hand, byte by byte, independent of the encoder under test.
func handMadePacket(_ pairs: [(String, String)], modifier1: UInt8 = 0, modifier2: UInt8 = 0, body: [UInt8] = []) -> [UInt8] {
    var vars: [UInt8] = []
    for (key, value) in pairs {
        let k = Array(key.utf8), v = Array(value.utf8)
        vars += [UInt8(k.count & 0xff), UInt8(k.count >> 8)] + k + [UInt8(v.count & 0xff), UInt8(v.count >> 8)] + v
    }
    return [modifier1, UInt8(vars.count & 0xff), UInt8(vars.count >> 8), modifier2] + vars + body
}

func buffer(_ bytes: [UInt8]) -> ByteBuffer {
    var buffer = ByteBufferAllocator().buffer(capacity: bytes.count)
    buffer.writeBytes(bytes)
    return buffer
}

func buffer(_ text: String) -> ByteBuffer { buffer(Array(text.utf8)) }

/// Everything a request decoder produced.
struct DecodedRequest {
    var heads: [UWSGIRequestHead] = []
    var body: [UInt8] = []
    var ends = 0
    var pings = 0
}

func decoderChannel(maxBlockSize: Int = 4096) throws -> EmbeddedChannel {
    let channel = EmbeddedChannel()
    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(UWSGIRequestDecoder(maxBlockSize: maxBlockSize)))
    return channel
}

func drainRequest(_ channel: EmbeddedChannel) throws -> DecodedRequest {
    var result = DecodedRequest()
    while let part = try channel.readInbound(as: UWSGIRequestPart.self) {
        switch part {
        case .head(let head): result.heads.append(head)
        case .body(let part): result.body += Array(part.readableBytesView)
        case .end: result.ends += 1
        case .ping: result.pings += 1
        }
    }
    return result
}

/// The upstream engine's response decoder with the uwsgi parser, as `uwsgi_pass` reads answers.
func uwsgiResponseDecoder(maxHeadSize: Int = 4096, isHeadRequest: Bool = false) -> ByteToMessageHandler<UpstreamResponseDecoder> {
    ByteToMessageHandler(UpstreamResponseDecoder(parser: UWSGIResponseParser(maxHeadSize: maxHeadSize), isHeadRequest: isHeadRequest))
}

/// The uwsgi parser's error inside the engine's "invalid answer" error.
func uwsgiError(_ error: any Error) -> UWSGIResponseError? {
    (error as? UpstreamInvalidResponse)?.underlying as? UWSGIResponseError
}

/// Everything a response decoder produced.
struct DecodedResponse {
    var heads: [UpstreamResponseHead] = []
    var body: [UInt8] = []
    var ends = 0
    var excess: [String] = []
}

func drainResponse(_ channel: EmbeddedChannel) throws -> DecodedResponse {
    var result = DecodedResponse()
    while let part = try channel.readInbound(as: UpstreamResponsePart.self) {
        switch part {
        case .head(let head): result.heads.append(head)
        case .body(let part): result.body += Array(part.readableBytesView)
        case .end: result.ends += 1
        case .excess(let warning): result.excess.append(warning)
        }
    }
    return result
}

/// A router that sends every request to one handler, with a body limit.
struct FixedRouter: RequestRouter {
    var handler: any RequestHandler
    var maxBodySize: Int? = 1 << 20
    func route(_ request: KernelRequest) -> RouteDecision {
        RouteDecision(route: RouteInfo(serverName: "test", location: "/"), handler: handler, maxBodySize: maxBodySize, accessLog: nil)
    }
}

/// Answers with the request's method, path, query, a few headers and its body, as JSON-free text.
struct EchoHandler: RequestHandler {
    func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        var out = ByteBufferAllocator().buffer(capacity: 256)
        out.writeString("\(request.method) \(request.path) ?\(request.query) \(request.version) \(request.connection.scheme) \(request.connection.remoteIP)\n")
        for (name, value) in request.headers { out.writeString("\(name): \(value)\n") }
        if let body = request.body { out.writeImmutableBuffer(body) }
        return context.eventLoop.makeSucceededFuture(KernelResponse(status: 200, headers: ["Content-Type": "text/plain"], body: .buffer(out)))
    }
}

/// A runtime whose current generation routes everything to `handler`.
func makeRuntime(handler: any RequestHandler = EchoHandler(), maxBodySize: Int? = 1 << 20) -> KernelRuntime {
    let runtime = KernelRuntime.standalone(threads: 1, level: .critical)
    runtime.install(KernelGeneration(router: FixedRouter(handler: handler, maxBodySize: maxBodySize), runtime: runtime))
    return runtime
}

/// An embedded worker connection: the whole uwsgi server pipeline.
func serverChannel(runtime: KernelRuntime, bufferSize: Int = 4096) throws -> EmbeddedChannel {
    let channel = EmbeddedChannel()
    let settings = UWSGIListenerSettings(listener: "127.0.0.1:6666", bufferSize: bufferSize,
                                         clientBodyTimeout: .seconds(60), sendTimeout: .seconds(60))
    try settings.syncConfigure(channel, runtime: runtime)
    try channel.connect(to: SocketAddress(ipAddress: "10.0.0.9", port: 5555)).wait()
    return channel
}

func readAllOutbound(_ channel: EmbeddedChannel) throws -> String {
    var bytes: [UInt8] = []
    while let part = try channel.readOutbound(as: ByteBuffer.self) { bytes += Array(part.readableBytesView) }
    return String(decoding: bytes, as: UTF8.self)
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
