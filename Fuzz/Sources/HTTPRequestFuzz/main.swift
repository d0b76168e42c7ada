import FuzzSupport
import KernelConfig
@testable import KernelCore  // `KernelRuntime.install` is a package-level test seam
import Logging
import NIOCore
import NIOEmbedded
import NIOPosix
@testable import HTTP

/// SwiftPM links an executable target with its `main` renamed to `<target>_main`; this is it, handing control to
/// libFuzzer (whose own `main` is then not linked).
@_cdecl("HTTPRequestFuzz_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv) { data, size in fuzzHTTPRequest(data, size) }
}

/// libFuzzer's entry point. The payload (after the two split bytes, see `SplitInput`) is the bytes a client sends:
///
/// 1. the head scanner, the head parser and the chunked body decoder, fed the payload whole and then in the reads
///    the split bytes choose: the outcome, the head, the body and the bytes consumed must be the same both ways;
/// 2. a whole connection (`HTTPConnectionHandler` on an `EmbeddedChannel`, with a `KernelRuntime` and a router of
///    echo, streamed and fixed answers), fed the payload whole and then in those reads: the bytes written back must
///    be the same (apart from `Date`), and never a response without a status line.
///
/// Any refusal is fine; a trap, a hang or a difference is a finding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTPRequest(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let input = SplitInput(start, count)
    // A payload in one read is already the whole run.
    let whole = ConnectionRun(reads: input.payload.isEmpty ? [] : [0..<input.payload.count], payload: input.payload)
    guard input.reads.count > 1 else { return 0 }
    checkParserSplits(input)
    let split = ConnectionRun(reads: input.reads, payload: input.payload)
    check(whole.output == split.output, "connection output differs when the input is split: whole \(quoted(whole.output)), split \(quoted(split.output))")
    return 0
}

// MARK: - The parsers

/// Limits small enough that fuzz inputs reach them: 256-byte lines, 1 KiB heads, 64 KiB chunked trailers.
private let maxLine = 256
private let maxHead = 1024

private struct ParserResult: Equatable {
    var scan: HTTPHeadScanner.Outcome
    var head: String?
    var chunked: ChunkedBodyDecoder.Outcome?
    var body: [UInt8] = []
    var consumed = 0
}

private func checkParserSplits(_ input: SplitInput) {
    let payload = UnsafeRawBufferPointer(input.payload)
    let whole = parse(payload, reads: payload.isEmpty ? [] : [0..<payload.count])
    let split = parse(payload, reads: input.reads)
    check(whole == split, "parser outcome differs when the input is split: whole \(whole), split \(split)")
}

private func parse(_ payload: UnsafeRawBufferPointer, reads: [Range<Int>]) -> ParserResult {
    var scanner = HTTPHeadScanner(maxLineLength: maxLine, maxHeadLength: maxHead)
    var outcome = HTTPHeadScanner.Outcome.needMore
    var readIndex = 0
    // The scanner sees the same unconsumed input again, longer after each read.
    while readIndex < reads.count, outcome == .needMore {
        outcome = scanner.scan(UnsafeRawBufferPointer(rebasing: payload[0..<reads[readIndex].upperBound]))
        readIndex += 1
    }
    var result = ParserResult(scan: outcome)
    guard case .complete(let start, let end) = outcome else { return result }
    check(start <= end && end <= payload.count, "head range \(start)..<\(end) outside \(payload.count) bytes")
    let head: HTTPRequestHead
    switch HTTPRequestHeadParser.parse(UnsafeRawBufferPointer(rebasing: payload[start..<end])) {
    case .failure(let error):
        result.head = "error \(error.status) \(error.logMessage)"
        return result
    case .success(let parsed):
        head = parsed
        result.head = "\(parsed.method) \(parsed.target) \(parsed.version) \(parsed.headers.map { "\($0.name)=\($0.value)" }) "
            + "length=\(parsed.contentLength.map(String.init) ?? "-") chunked=\(parsed.chunked)"
        check(!(parsed.chunked && parsed.contentLength != nil), "both Content-Length and chunked accepted")
        if let length = parsed.contentLength { check(length >= 0, "negative Content-Length") }
    }
    guard head.chunked else { return result }

    // The body reads: what followed the head in the read that completed it, then the remaining reads.
    var decoder = ChunkedBodyDecoder(maxTrailerLength: maxHead)
    var pending = ByteBuffer()
    var body = ByteBuffer()
    var fed = end
    var chunkedOutcome = ChunkedBodyDecoder.Outcome.needMore
    let limit = 4096
    var cuts = [end..<(readIndex > 0 ? reads[readIndex - 1].upperBound : end)]
    cuts += reads[readIndex...]
    for cut in cuts where chunkedOutcome == .needMore {
        let bytes = UnsafeRawBufferPointer(rebasing: payload[max(cut.lowerBound, end)..<max(cut.upperBound, end)])
        pending.writeBytes(bytes)
        fed += bytes.count
        chunkedOutcome = decoder.decode(&pending, into: &body, limit: limit)
        check(body.readableBytes <= limit, "chunked body over the limit: \(body.readableBytes) bytes")
    }
    result.chunked = chunkedOutcome
    result.body = Array(body.readableBytesView)
    if chunkedOutcome == .done { result.consumed = fed - pending.readableBytes }
    return result
}

// MARK: - A whole connection

/// The router of the connection runs: `/echo` echoes the body (limit 4 KiB), `/small` echoes up to 8 bytes,
/// `/stream` streams three parts (without a length, so chunked to HTTP/1.1 clients), `/hello` a fixed answer;
/// anything else 404.
private struct FuzzRouter: RequestRouter {
    func route(_ request: KernelRequest) -> RouteDecision {
        let handler: any RequestHandler
        var limit: Int? = 4096
        switch request.path {
        case "/hello":
            handler = helloHandler
        case "/echo", "/small":
            if request.path == "/small" { limit = 8 }
            handler = ClosureHandler { request, context in
                let response = KernelResponse(status: 200, headers: ["Content-Type": "application/octet-stream"],
                                              body: request.body.map { .buffer($0) } ?? .empty)
                return context.eventLoop.makeSucceededFuture(response)
            }
        case "/stream":
            handler = ClosureHandler { _, context in
                let eventLoop = context.eventLoop
                let parts = StreamParts()
                let stream = ResponseBodyStream(next: { eventLoop.makeSucceededFuture(parts.next()) }, cancel: {})
                return eventLoop.makeSucceededFuture(KernelResponse(status: 200, headers: ["Content-Type": "text/plain"],
                                                                    body: .stream(stream)))
            }
        default:
            handler = notFoundHandler
        }
        return RouteDecision(route: RouteInfo(), handler: handler, maxBodySize: limit, accessLog: nil)
    }
}

/// The parts of one streamed body; used on the embedded loop only.
private final class StreamParts: @unchecked Sendable {
    private var left = ["ab", "cd", "ef"]
    func next() -> ByteBuffer? { left.isEmpty ? nil : ByteBuffer(string: left.removeFirst()) }
}

private let helloHandler = StaticResponseHandler(.text(200, "hello"))
private let notFoundHandler = StaticResponseHandler(.error(404, "not found"))

/// One runtime for all runs: its error log goes nowhere (level critical), there is no access log.
private let runtime: KernelRuntime = {
    let destination = ErrorLogHandler.Destination(file: try! LogFile(path: "/dev/null"), level: .critical)
    let runtime = KernelRuntime(eventLoopGroup: MultiThreadedEventLoopGroup(numberOfThreads: 1),
                                logger: Logger(label: "kernel") { _ in ErrorLogHandler(destination: destination) },
                                logFiles: LogFileRegistry(), errorLog: destination)
    runtime.install(KernelGeneration(router: FuzzRouter(), runtime: runtime))
    return runtime
}()

private let settings: HTTPConnectionSettings = {
    var configuration = HTTPConfiguration(listen: [HTTPListenAddress(text: "127.0.0.1:8080",
                                                                     address: .tcp(host: "127.0.0.1", port: 8080))])
    configuration.clientHeaderBufferSize = ByteSize(bytes: maxHead)
    configuration.largeHeaderBufferCount = 4
    configuration.largeHeaderBufferSize = ByteSize(bytes: maxLine)
    configuration.keepaliveRequests = 8
    return HTTPConnectionSettings(configuration: configuration, listener: "127.0.0.1:8080")
}()

private let localAddress = try! SocketAddress(ipAddress: "127.0.0.1", port: 8080)
private let remoteAddress = try! SocketAddress(ipAddress: "127.0.0.1", port: 40000)

/// Feeds `payload` to a fresh connection in `reads`, then closes it; `output` is everything written back, with
/// each `Date` value replaced by `-` and without `100 Continue` answers (sent only when the body is not there
/// yet, so they depend on the reads).
private struct ConnectionRun {
    var output: [UInt8] = []

    init(reads: [Range<Int>], payload: UnsafeBufferPointer<UInt8>) {
        let channel = EmbeddedChannel()
        try! channel.pipeline.syncOperations.addHandler(HTTPConnectionHandler(settings: settings, runtime: runtime))
        try! channel.bind(to: localAddress).wait()
        try! channel.connect(to: remoteAddress).wait()
        for read in reads where channel.isActive {
            var buffer = channel.allocator.buffer(capacity: read.count)
            buffer.writeBytes(UnsafeBufferPointer(rebasing: payload[read]))
            do { try channel.writeInbound(buffer) } catch { break }
            collect(channel)
        }
        _ = try? channel.finish(acceptAlreadyClosed: true)
        collect(channel)
        let text = output
        if !text.isEmpty {
            check(text.starts(with: Array("HTTP/1.1 ".utf8)), "output does not start with a status line: \(quoted(text))")
        }
        output = ConnectionRun.normalised(text)
    }

    private mutating func collect(_ channel: EmbeddedChannel) {
        while let buffer = try? channel.readOutbound(as: ByteBuffer.self) {
            output += buffer.readableBytesView
        }
    }

    private static let datePrefix = Array("\r\nDate: ".utf8)
    private static let interim = Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)

    static func normalised(_ bytes: [UInt8]) -> [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "H"), bytes[index...].starts(with: interim) {
                index += interim.count
                continue
            }
            if bytes[index] == 13, bytes[index...].starts(with: datePrefix) {
                result += datePrefix
                result.append(UInt8(ascii: "-"))
                index += datePrefix.count
                while index < bytes.count, bytes[index] != 13 { index += 1 }
                continue
            }
            result.append(bytes[index])
            index += 1
        }
        return result
    }
}

// MARK: - Output

private func quoted(_ bytes: [UInt8]) -> String {
    String(decoding: bytes.prefix(2000), as: UTF8.self).debugDescription
}
