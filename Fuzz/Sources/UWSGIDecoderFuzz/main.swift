import FuzzSupport
import KernelUpstream
import NIOCore
import NIOEmbedded
import UWSGI

/// SwiftPM links an executable target with its `main` renamed to `<target>_main`; this is it, handing control to
/// libFuzzer (whose own `main` is then not linked).
@_cdecl("UWSGIDecoderFuzz_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv) { data, size in fuzzUWSGIDecoders(data, size) }
}

/// libFuzzer's entry point. The payload (after the split bytes, see `SplitInput`, and one byte whose low bit makes
/// the answer one to `HEAD`) goes to the uwsgi request decoder (the worker side, driven as its connection handler
/// drives it) and to the upstream response decoder (the `uwsgi_pass` side, in a `ByteToMessageHandler`), each
/// fed the payload whole and then in the reads the split bytes choose. Besides the same parts both ways, it
/// checks: at most one head, no vars block over `buffer_size` accepted, never more body than `CONTENT_LENGTH`,
/// a body ending exactly at `CONTENT_LENGTH`, final statuses 200-999 (interim 1xx heads are skipped), no body after a HEAD's head. Any decoding error
/// is fine; a crash, a hang or a broken invariant is a finding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzUWSGIDecoders(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let input = SplitInput(start, count, controlBytes: 1)
    let whole: [Range<Int>] = input.payload.isEmpty ? [] : [0..<input.payload.count]
    let isHead = input.control[0] & 1 == 1
    let request = decodeRequest(input.payload, reads: whole)
    let response = decodeResponse(input.payload, reads: whole, isHead: isHead)
    // A payload in one read is already the whole run.
    guard input.reads.count > 1 else { return 0 }
    check(request == decodeRequest(input.payload, reads: input.reads), "request decoder parts differ when the input is split")
    check(response == decodeResponse(input.payload, reads: input.reads, isHead: isHead), "response decoder parts differ when the input is split")
    return 0
}

/// What a decoder made of an input: each head as its fields in order, the body bytes joined, whether it ended,
/// its error.
private struct Decoded: Equatable {
    var heads: [[String]] = []
    var body: [UInt8] = []
    var ends = 0
    var error: String?
}

private let maxBlock = 4096

private func decodeRequest(_ payload: UnsafeBufferPointer<UInt8>, reads: [Range<Int>]) -> Decoded {
    var decoder = UWSGIRequestDecoder(maxBlockSize: maxBlock)
    var buffer = ByteBuffer()
    var result = Decoded()
    var announced = 0
    func take(_ part: UWSGIRequestPart) {
        switch part {
        case .head(let head):
            check(result.heads.isEmpty, "more than one request on a connection")
            check(head.variables.encodedSize <= maxBlock, "vars block over buffer_size accepted")
            check(head.contentLength >= 0, "negative CONTENT_LENGTH")
            announced = head.contentLength
            var fields = [String(head.modifier1), String(head.modifier2), String(head.contentLength)]
            for variable in head.variables { fields += [variable.name, variable.value] }
            result.heads.append(fields)
        case .body(let body):
            check(!result.heads.isEmpty && result.ends == 0, "body outside a request")
            result.body += body.readableBytesView
            check(result.body.count <= announced, "more body than CONTENT_LENGTH")
        case .end:
            check(result.body.count == announced, "body length differs from CONTENT_LENGTH")
            result.ends += 1
        case .ping:
            check(result.heads.isEmpty, "a ping after a request head")
            result.heads.append(["ping"])
        }
    }
    do {
        for read in reads {
            buffer.writeBytes(UnsafeBufferPointer(rebasing: payload[read]))
            while let part = try decoder.next(from: &buffer) { take(part) }
        }
        try decoder.endOfInput(&buffer)
    } catch {
        result.error = "\(error)"
    }
    check(result.ends <= 1, "more than one end")
    return result
}

private func decodeResponse(_ payload: UnsafeBufferPointer<UInt8>, reads: [Range<Int>], isHead: Bool) -> Decoded {
    let channel = EmbeddedChannel()
    try! channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(UpstreamResponseDecoder(parser: UWSGIResponseParser(maxHeadSize: maxBlock), isHeadRequest: isHead)))
    var result = Decoded()
    func collect() {
        while let part = try? channel.readInbound(as: UpstreamResponsePart.self) {
            switch part {
            case .head(let head):
                check(result.heads.isEmpty, "more than one response head")
                check((200...999).contains(head.status), "status out of range, or an interim 1xx head passed on")
                var fields = [String(head.status), head.reason ?? "-"]
                for field in head.headers { fields += [field.name, field.value] }
                result.heads.append(fields)
            case .body(let body):
                check(!result.heads.isEmpty && result.ends == 0, "body outside a response")
                check(!isHead, "a body after the head of a HEAD answer")
                result.body += body.readableBytesView
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
    // After an error the pipeline is torn down without reading more.
    if result.error != nil { _ = try? channel.finish() }
    check(result.ends <= 1, "more than one end")
    return result
}
