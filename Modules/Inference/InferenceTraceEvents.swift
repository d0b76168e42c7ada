import KernelCore
import NIOCore

/// One request's trace objects, as Triton writes them (comma-separated, in the order they are reported): a
/// timestamp is `{"id":N,"timestamps":[{"name":"...","ns":T}]}`, the model's header
/// `{"id":N,"model_name":"...","model_version":V[,"request_id":"..."]}`, a tensor (level `TENSORS`)
/// `{"id":N,"activity":"TENSOR_QUEUE_INPUT","tensor":{"name":"...","data":"1,2","shape":"1,2","dtype":"FP32"}}`.
struct InferenceTraceEvents: Sendable {
    let ticket: TraceRecorder.Ticket
    private var writer = JSONWriter(buffer: ByteBuffer())

    init(_ ticket: TraceRecorder.Ticket) {
        self.ticket = ticket
    }

    private mutating func open() {
        if writer.buffer.readableBytes > 0 { writer.byte(UInt8(ascii: ",")) }
        writer.raw("{\"id\":")
        writer.integer(ticket.id)
    }

    mutating func timestamp(_ name: StaticString, _ nanoseconds: UInt64) {
        guard ticket.level.contains(.timestamps) else { return }
        open()
        writer.raw(",\"timestamps\":[{\"name\":\"")
        writer.raw(name)
        writer.raw("\",\"ns\":")
        writer.integer(nanoseconds)
        writer.raw("}]}")
    }

    mutating func header(model: ModelSignature, requestID: String?) {
        guard ticket.level.contains(.timestamps) else { return }
        open()
        writer.raw(",\"model_name\":")
        writer.string(model.name)
        writer.raw(",\"model_version\":")
        if let number = Int64(model.version) { writer.integer(number) } else { writer.string(model.version) }
        if let requestID, !requestID.isEmpty {
            writer.raw(",\"request_id\":")
            writer.string(requestID)
        }
        writer.byte(UInt8(ascii: "}"))
    }

    mutating func tensor(_ activity: StaticString, name: String, _ tensor: Tensor) {
        guard ticket.level.contains(.tensors) else { return }
        open()
        writer.raw(",\"activity\":\"")
        writer.raw(activity)
        writer.raw("\",\"tensor\":{\"name\":")
        writer.string(name)
        writer.raw(",\"data\":")
        writer.string(InferenceCodec.traceText(tensor))
        writer.raw(",\"shape\":")
        writer.string(tensor.shape.map(String.init).joined(separator: ","))
        writer.raw(",\"dtype\":")
        writer.string(tensor.dataType.rawValue)
        writer.raw("}}")
    }

    /// The objects written, comma-separated.
    var text: String { String(buffer: writer.buffer) }
}

extension InferenceCodec {
    /// The most bytes of text a traced tensor's `data` takes; a larger tensor is traced with empty data.
    static let traceTensorTextLimit = 1 << 20

    /// A tensor's elements as a trace writes them: comma-separated, as in JSON data (BYTES elements quoted), empty
    /// for FP16 and BF16 (as Triton's) and for a tensor whose text would pass `traceTensorTextLimit`.
    static func traceText(_ tensor: Tensor) -> String {
        guard tensor.dataType.hasJSONForm else { return "" }
        var bounded = BoundedJSONWriter(limit: traceTensorTextLimit, modelName: "", hasJSONData: true)
        bounded.json.buffer = ByteBufferAllocator().buffer(capacity: min(traceTensorTextLimit, 64 + tensor.byteCount * 4))
        guard (try? writeData(tensor, into: &bounded)) != nil else { return "" }
        let text = String(buffer: bounded.json.buffer)
        return String(text.dropFirst().dropLast())
    }
}
