import KernelCore
import NIOCore

/// Serves a pipeline on a location (`pipeline: ocr`): `POST` an image, get its text lines back.
///
/// The answer is JSON, `{"lines": [{"box": [[x, y] x4], "text": ..., "score": ...}], "timings": {step: {...}}}`,
/// with a `Server-Timing` header naming every step; `?text_only=1` answers only the texts, one line each, as
/// text/plain. Errors are `{"error": "..."}` with 400 (not an image, a bad form), 413 (more pixels than
/// `max_pixels`), 503 (a model not ready or its queue full), 504 (past the request's deadline).
public struct PipelineHandler: RequestHandler {
    public let pipeline: Pipeline

    public init(pipeline: Pipeline) { self.pipeline = pipeline }

    /// A client that leaves takes its queued model steps out of the models' queues (`RequestContext.cancellation`).
    public var cancelsWhenClientLeaves: Bool { true }

    public func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
        guard request.method == "POST" else {
            return context.eventLoop.makeFailedFuture(KernelHTTPError(405, "method \(request.method) not allowed on \(request.path): use POST", headers: ["Allow": "POST"]))
        }
        let textOnly = PipelineHandler.queryFlag(request.query, "text_only")
        let upload = ImageUpload(body: request.body ?? ByteBuffer(), contentType: request.headers["Content-Type"])
        // `X-Kernel-Priority` (as for a model) over the pipeline's own `priority`; every model step queues at it.
        let priority: Int
        do { priority = try RequestPriority.header(of: request) ?? 0 } catch { return context.eventLoop.makeFailedFuture(error) }
        let options = SubmitOptions(deadline: ForwardedDeadline.deadline(of: request), priority: priority,
                                    cancellation: context.cancellation)
        let started = KernelClock.monotonicNanoseconds()
        let logger = context.logger
        let name = pipeline.configuration.name
        return pipeline.run(upload, options: options, on: context.eventLoop).map { run in
            let total = KernelClock.monotonicNanoseconds() &- started
            var response = textOnly ? PipelineHandler.textAnswer(run) : PipelineHandler.jsonAnswer(run, total: total)
            response.headers.replace("Server-Timing", PipelineHandler.serverTiming(run.timings, total: total))
            return response
        }.flatMapErrorThrowing { error in
            // Clients' mistakes are logged at info, the kernel's own at error: none is lost silently.
            if let failure = error as? KernelHTTPError, failure.status < 500 || failure.status == 503 || failure.status == 504 {
                logger.info("pipeline '\(name)': \(failure.status) \(failure.message)")
            } else {
                logger.error("pipeline '\(name)' failed: \(error)")
            }
            throw error
        }
    }

    /// Whether `name` is set to 1/true/yes in the query string.
    static func queryFlag(_ query: String, _ name: String) -> Bool {
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts[0] == name[...] else { continue }
            let value = parts.count > 1 ? parts[1].lowercased() : "1"
            return value == "1" || value == "true" || value == "yes"
        }
        return false
    }

    static func milliseconds(_ nanoseconds: UInt64) -> Double { (Double(nanoseconds) / 1_000).rounded() / 1_000 }

    /// `Server-Timing: decode;dur=1.2, det;dur=30.5, ..., total;dur=50.1` (milliseconds).
    static func serverTiming(_ timings: [PipelineStepTiming], total: UInt64) -> String {
        (timings.map { "\($0.name);dur=\(milliseconds($0.nanoseconds))" } + ["total;dur=\(milliseconds(total))"])
            .joined(separator: ", ")
    }

    static func lines(of run: PipelineRun) -> [OCRLine] {
        if case .lines(let lines) = run.output { return lines }
        return []
    }

    static func textAnswer(_ run: PipelineRun) -> KernelResponse {
        let text = lines(of: run).map { $0.text + "\n" }.joined()
        return .text(200, text, contentType: "text/plain; charset=utf-8")
    }

    static func jsonAnswer(_ run: PipelineRun, total: UInt64) -> KernelResponse {
        var writer = JSONWriter(buffer: ByteBufferAllocator().buffer(capacity: 1024))
        writer.raw("{\"lines\":[")
        for (index, line) in lines(of: run).enumerated() {
            if index > 0 { writer.byte(UInt8(ascii: ",")) }
            writer.raw("{\"box\":[")
            for (pointIndex, point) in line.box.enumerated() {
                if pointIndex > 0 { writer.byte(UInt8(ascii: ",")) }
                writer.byte(UInt8(ascii: "["))
                writer.float(point.x)
                writer.byte(UInt8(ascii: ","))
                writer.float(point.y)
                writer.byte(UInt8(ascii: "]"))
            }
            writer.raw("],\"text\":")
            writer.string(line.text)
            writer.raw(",\"score\":")
            writer.double(line.score)
            writer.byte(UInt8(ascii: "}"))
        }
        writer.raw("],\"timings\":{")
        for timing in run.timings {
            writer.string(timing.name)
            writer.raw(":{\"ms\":")
            writer.double(milliseconds(timing.nanoseconds))
            if let model = timing.model {
                writer.raw(",\"model\":")
                writer.string(model)
                writer.raw(",\"requests\":")
                writer.integer(timing.requests)
                writer.raw(",\"queue_ms\":")
                writer.double(milliseconds(timing.queueNanoseconds))
                writer.raw(",\"compute_ms\":")
                writer.double(milliseconds(timing.computeNanoseconds))
                writer.raw(",\"batch_size\":")
                writer.integer(timing.batchSize)
            }
            writer.raw("},")
        }
        writer.raw("\"total\":{\"ms\":")
        writer.double(milliseconds(total))
        writer.raw("}}}")
        return KernelResponse(status: 200, headers: ["Content-Type": "application/json"], body: .buffer(writer.buffer))
    }
}
