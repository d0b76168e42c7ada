import KernelCore
import NIOCore

/// Triton's trace extension: `GET`/`POST /v2/trace/setting` (the global settings) and
/// `/v2/models/{name}/trace/setting` (a model's, which start as the global ones), in Triton's shapes and words.
extension InferenceHandler {
    func traceSetting(model: String?, request: KernelRequest, context: RequestContext) throws -> EventLoopFuture<KernelResponse> {
        @Sendable func answer(_ settings: TraceSettings) -> KernelResponse { json { settings.json(into: &$0) } }
        guard request.method == "GET" || request.method == "HEAD" || request.method == "POST" else {
            throw KernelHTTPError(405, "method \(request.method) not allowed on \(request.path)", headers: ["Allow": "GET, HEAD, POST"])
        }
        // As Triton: a model's settings exist for a model that serves (and no client can make settings for
        // names of its own choosing); Triton's answers for one that does not.
        if let model {
            switch repository.resolve(model, version: nil) {
            case .ready: break
            case .notFound(let message), .noVersionReady(let message): throw KernelHTTPError(404, message)
            default: throw KernelHTTPError(400, "Request for unknown model : \(model)")
            }
        }
        switch request.method {
        case "GET", "HEAD":
            return context.eventLoop.makeSucceededFuture(answer(tracer.settings(model: model)))
        case "POST":
            let update = try TraceUpdate(RepositoryRequestBody(request.body, what: "trace setting").value)
            let next = try tracer.update(model: model, update)
            context.logger.notice("trace settings \(model.map { "of model '\($0)'" } ?? "(global)") set: level \(next.level.names.joined(separator: ",")), rate \(next.rate), count \(next.count), log_frequency \(next.logFrequency)")
            guard let supervision, supervision.isSupervised else { return context.eventLoop.makeSucceededFuture(answer(next)) }
            // Every other worker process takes the same settings; one started later replays the latest.
            let command = TraceCommand(model: model, global: model == nil ? next : nil, overrides: model.map { tracer.overrides(of: $0) })
            let promise = context.eventLoop.makePromise(of: KernelResponse.self)
            promise.completeWithTask {
                _ = await supervision.share(command.text, key: command.key, memory: .instead, timeout: .seconds(10))
                return answer(next)
            }
            return promise.futureResult
        default:
            throw KernelHTTPError(405, "method \(request.method) not allowed on \(request.path)", headers: ["Allow": "GET, HEAD, POST"])
        }
    }
}

/// Trace settings set through one worker process, as every other one takes them (`ProcessSupervision.share`):
/// `inference.trace <JSON>` with the global settings or a model's overrides as they now are, so that replaying the
/// latest gives the same settings.
struct TraceCommand: Equatable {
    var model: String?
    var global: TraceSettings?
    var overrides: TraceOverrides?

    static let name = "inference.trace"

    var key: String { Self.name + (model.map { " model " + $0 } ?? "") }

    var text: String {
        var writer = JSONWriter(buffer: ByteBuffer())
        func field(_ name: StaticString, _ value: Int?) {
            writer.raw(",\"")
            writer.raw(name)
            writer.raw("\":")
            if let value { writer.integer(value) } else { writer.raw("null") }
        }
        func level(_ value: TraceLevel?) {
            writer.raw(",\"level\":")
            if let value { writer.integer(value.rawValue) } else { writer.raw("null") }
        }
        writer.raw("{\"model\":")
        if let model { writer.string(model) } else { writer.raw("null") }
        if let global {
            writer.raw(",\"global\":true")
            level(global.level)
            field("rate", global.rate)
            field("count", global.count)
            field("log_frequency", global.logFrequency)
        } else {
            level(overrides?.level)
            field("rate", overrides?.rate)
            field("count", overrides?.count)
            field("log_frequency", overrides?.logFrequency)
        }
        writer.byte(UInt8(ascii: "}"))
        return Self.name + " " + String(buffer: writer.buffer)
    }

    init(model: String?, global: TraceSettings?, overrides: TraceOverrides?) {
        self.model = model
        self.global = global
        self.overrides = overrides
    }

    init?(argument: Substring) {
        guard let value = try? JSONReader.parse(Array(argument.utf8)) else { return nil }
        func int(_ key: String) -> Int? {
            guard case .number(let number)? = value[key], let integer = number.int64 else { return nil }
            return Int(integer)
        }
        model = value["model"]?.stringValue
        let level = int("level").map(TraceLevel.init(rawValue:))
        if value["global"]?.boolValue == true {
            guard model == nil, let level, let rate = int("rate"), let count = int("count"),
                  let frequency = int("log_frequency") else { return nil }
            var settings = TraceSettings()
            settings.level = level
            settings.rate = rate
            settings.count = count
            settings.logFrequency = frequency
            global = settings
        } else {
            guard model != nil else { return nil }
            overrides = TraceOverrides(level: level, rate: int("rate"), count: int("count"), logFrequency: int("log_frequency"))
        }
    }

    /// Runs a shared change in this process.
    static func respond(to argument: Substring, recorder: TraceRecorder) -> [UInt8] {
        guard let command = TraceCommand(argument: argument) else { return Array("unreadable trace command".utf8) }
        recorder.replace(model: command.model, global: command.global, overrides: command.overrides)
        return Array("ok".utf8)
    }
}
