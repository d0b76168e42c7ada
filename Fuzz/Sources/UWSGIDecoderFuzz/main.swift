import NIOCore
import NIOEmbedded
import UWSGI

/// libFuzzer's driver, called from the executable's entry point below.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

/// SwiftPM links an executable target with its `main` renamed to `<target>_main`; this is it, handing control to
/// libFuzzer (whose own `main` is then not linked).
@_cdecl("UWSGIDecoderFuzz_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { data, size in fuzzUWSGIDecoders(data, size) }
}

/// libFuzzer's entry point: the input is fed to the uwsgi request decoder (in two reads split where the first byte
/// says, to exercise the incremental paths) and to the upstream response decoder. Any decoding error is fine;
/// a crash, a hang, a leak or an over-long body is a finding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzUWSGIDecoders(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: start, count: count)
    let split = count > 0 ? Int(bytes[0]) % (count + 1) : 0
    fuzzRequestDecoder(bytes, split: split)
    fuzzResponseDecoder(bytes, split: split)
    return 0
}

private func feed(_ channel: EmbeddedChannel, _ bytes: UnsafeBufferPointer<UInt8>, split: Int) {
    var first = channel.allocator.buffer(capacity: split)
    first.writeBytes(UnsafeBufferPointer(rebasing: bytes[..<split]))
    var second = channel.allocator.buffer(capacity: bytes.count - split)
    second.writeBytes(UnsafeBufferPointer(rebasing: bytes[split...]))
    do {
        try channel.writeInbound(first)
        try channel.writeInbound(second)
    } catch {
        // Rejected input: the expected outcome for most of it.
    }
    _ = try? channel.finish()
}

private func fuzzRequestDecoder(_ bytes: UnsafeBufferPointer<UInt8>, split: Int) {
    let channel = EmbeddedChannel()
    try! channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(UWSGIRequestDecoder(maxBlockSize: 4096)))
    feed(channel, bytes, split: split)
    var heads = 0
    var bodyBytes = 0
    var announced = 0
    while let part = try? channel.readInbound(as: UWSGIRequestPart.self) {
        switch part {
        case .head(let head):
            heads += 1
            announced = head.contentLength
            precondition(head.variables.encodedSize <= 4096, "vars block over buffer_size accepted")
        case .body(let body): bodyBytes += body.readableBytes
        case .end: precondition(bodyBytes == announced, "body length differs from CONTENT_LENGTH")
        case .ping: precondition(heads == 0, "a ping after a request head")
        }
    }
    precondition(heads <= 1, "more than one request on a connection")
    precondition(bodyBytes <= announced, "more body than CONTENT_LENGTH")
}

private func fuzzResponseDecoder(_ bytes: UnsafeBufferPointer<UInt8>, split: Int) {
    let channel = EmbeddedChannel()
    try! channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(UWSGIResponseDecoder(maxHeadSize: 4096)))
    feed(channel, bytes, split: split)
    var heads = 0
    while let part = try? channel.readInbound(as: UWSGIResponsePart.self) {
        if case .head(let head) = part {
            heads += 1
            precondition((200...999).contains(head.status), "status out of range, or an interim 1xx head passed on")
        }
    }
    precondition(heads <= 1, "more than one response head")
}
