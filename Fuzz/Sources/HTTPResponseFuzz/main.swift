import FuzzSupport
@testable import HTTP
import KernelUpstream
import NIOCore
import NIOEmbedded

/// SwiftPM links an executable target with its `main` renamed to `<target>_main`; this is it, handing control to
/// libFuzzer (whose own `main` is then not linked).
@_cdecl("HTTPResponseFuzz_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv) { data, size in fuzzHTTPResponse(data, size) }
}

/// libFuzzer's entry point. The payload (after the split bytes, see `SplitInput`, and one byte whose low bit makes
/// the answer one to `HEAD` and whose next bit says the request asked for an `Upgrade`) is an upstream's answer to
/// `proxy_pass`: `ProxyResponseParser` and `ProxyChunkedDecoder` in the engine's `UpstreamResponseDecoder`, fed
/// whole and then in the reads the split bytes choose. Besides the same parts both ways, it checks: at most one
/// head; a final status 200-599, or 101 only to an upgrade; never `Content-Length` twice nor beside
/// `Transfer-Encoding`; never more body than the `Content-Length`; no body after a HEAD's, a 204's or a 304's head.
/// After a 101 the bytes are the tunnel's (another protocol's), passed on as they come: they may be anything.
/// Any decoding error is fine; a crash, a hang or a broken invariant is a finding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTPResponse(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let input = SplitInput(start, count, controlBytes: 1)
    let whole: [Range<Int>] = input.payload.isEmpty ? [] : [0..<input.payload.count]
    let isHead = input.control[0] & 1 == 1
    let upgrade = input.control[0] & 2 == 2
    let response = decode(input.payload, reads: whole, isHead: isHead, upgrade: upgrade)
    guard input.reads.count > 1 else { return 0 }
    check(response == decode(input.payload, reads: input.reads, isHead: isHead, upgrade: upgrade),
          "response decoder parts differ when the input is split")
    return 0
}

/// What the decoder made of an input: the head's fields, the body bytes joined, whether it ended, its error.
private struct Decoded: Equatable {
    var heads: [[String]] = []
    var body: [UInt8] = []
    var ends = 0
    var error: String?
}

private func decode(_ payload: UnsafeBufferPointer<UInt8>, reads: [Range<Int>], isHead: Bool, upgrade: Bool) -> Decoded {
    let channel = EmbeddedChannel()
    let parser = ProxyResponseParser(maxHeadSize: 4096, upgradeRequested: upgrade, isHeadRequest: isHead)
    try! channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(UpstreamResponseDecoder(parser: parser, isHeadRequest: isHead)))
    var result = Decoded()
    var declared: Int64?
    var bodiless = isHead
    func collect() {
        while let part = try? channel.readInbound(as: UpstreamResponsePart.self) {
            switch part {
            case .head(let head):
                check(result.heads.isEmpty, "more than one response head")
                check((200...599).contains(head.status) || (head.status == 101 && upgrade), "status \(head.status) passed on")
                let lengths = head.headers.values("Content-Length")
                check(lengths.count <= 1, "Content-Length twice")
                check(lengths.isEmpty || head.headers.values("Transfer-Encoding").isEmpty, "Content-Length with Transfer-Encoding")
                if case .length(let length) = head.framing { declared = length }
                if head.status == 204 || head.status == 304 { bodiless = true }
                var fields = [String(head.status), head.reason ?? "-", String(head.reusable)]
                for field in head.headers { fields += [field.name, field.value] }
                result.heads.append(fields)
            case .body(let body):
                check(!result.heads.isEmpty && result.ends == 0, "body outside a response")
                check(!bodiless, "a body after the head of a bodiless answer")
                result.body += body.readableBytesView
                if let declared { check(Int64(result.body.count) <= declared, "more body than Content-Length") }
            case .end:
                result.ends += 1
            }
        }
    }
    do {
        for read in reads {
            var buffer = channel.allocator.buffer(capacity: read.count)
            buffer.writeBytes(UnsafeBufferPointer(rebasing: payload[read]))
            try channel.writeInbound(buffer)
            collect()
        }
        _ = try channel.finish()
    } catch {
        result.error = "\(error)"
    }
    collect()
    if result.error != nil { _ = try? channel.finish() }
    check(result.ends <= 1, "more than one end")
    return result
}
