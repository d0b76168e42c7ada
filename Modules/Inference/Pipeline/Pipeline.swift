#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Where one step's time went.
public struct PipelineStepTiming: Sendable {
    public var name: String
    /// From the step's start to its value.
    public var nanoseconds: UInt64
    /// For a model step: the model, the requests it made (one per batch of rows), the longest any of them waited in
    /// the queue, their compute time summed, and the largest batch (rows, with other requests') one of them ran in.
    public var model: String?
    public var requests = 0
    public var queueNanoseconds: UInt64 = 0
    public var computeNanoseconds: UInt64 = 0
    public var batchSize = 0
}

/// A request's run through a pipeline: the last step's value and every step's timing.
public struct PipelineRun: Sendable {
    public var output: PipelineValue
    public var timings: [PipelineStepTiming]
}

/// The thread pool the built-in operations run on: decoding, resizing and box finding never run on an event loop.
///
/// One thread per core: the operations are compute-bound, and the models' own threads run beside them.
public enum PipelineThreadPool {
    public static let shared: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: System.coreCount)
        pool.start()
        return pool
    }()
}

/// A configured pipeline bound to its generation's models.
///
/// Steps run in order. Consecutive built-in operations run as one job on the thread pool; a model step submits
/// each batch of rows of its input as one request to the model's scheduler (so it batches with every other
/// request to that model), with the request's deadline, priority and cancellation, and continues when all answered.
/// The request's cancellation and deadline are checked before every step too.
public final class Pipeline: Sendable {
    public let configuration: PipelineConfiguration
    let repository: ModelRepository
    let runtimeLibrary: String?
    let pool: NIOThreadPool
    /// `configuration.lastReaders`, and for each step the values to drop once it has run.
    private let releasedAfter: [[Int]]
    /// Character lists read from recognition models' metadata, by model name (read on first use).
    private let characterLists = NIOLockedValueBox<[String: [String]]>([:])
    /// `max_in_flight`'s line; nil without a limit.
    let admission: PipelineAdmission?

    public init(configuration: PipelineConfiguration, repository: ModelRepository, runtimeLibrary: String?,
                pool: NIOThreadPool = PipelineThreadPool.shared) {
        self.configuration = configuration
        self.repository = repository
        self.runtimeLibrary = runtimeLibrary
        self.pool = pool
        admission = configuration.maxInFlight > 0 ? PipelineAdmission(limit: configuration.maxInFlight) : nil
        var released = [[Int]](repeating: [], count: configuration.steps.count)
        for (value, reader) in configuration.lastReaders.enumerated() where reader < configuration.steps.count {
            released[reader].append(value)
        }
        releasedAfter = released
    }

    /// Drops the values no step after `step` reads.
    private func release(after step: Int, in state: RunState) {
        for value in releasedAfter[step] { state.values[value] = nil }
    }

    /// Runs the pipeline on `upload`.
    public func run(_ upload: ImageUpload, options: SubmitOptions, on eventLoop: any EventLoop) -> EventLoopFuture<PipelineRun> {
        guard let admission else { return runSteps(upload, options: options, on: eventLoop) }
        let name = configuration.name
        return admission.admit(on: eventLoop, deadline: options.deadline, cancellation: options.cancellation,
                               expired: { KernelHTTPError(504, "pipeline '\(name)' did not start before the request's deadline") },
                               left: { KernelHTTPError(499, "the client closed the request") })
            .flatMap {
                let run = self.runSteps(upload, options: options, on: eventLoop)
                run.whenComplete { _ in admission.release() }
                return run
            }
    }

    private func runSteps(_ upload: ImageUpload, options: SubmitOptions, on eventLoop: any EventLoop) -> EventLoopFuture<PipelineRun> {
        let state = RunState(upload: upload, count: configuration.steps.count)
        return step(0, state: state, options: options, on: eventLoop).map {
            PipelineRun(output: state.values[self.configuration.output]!, timings: state.timings)
        }
    }

    /// The values of one run, touched by one step at a time (the futures order them).
    private final class RunState: @unchecked Sendable {
        let upload: ImageUpload
        var values: [PipelineValue?]
        var timings: [PipelineStepTiming] = []
        init(upload: ImageUpload, count: Int) {
            self.upload = upload
            values = Array(repeating: nil, count: count)
        }
        func inputs(of step: PipelineStep) -> [PipelineValue] {
            step.inputs.map { $0 < 0 ? .upload(upload) : values[$0]! }
        }
    }

    private func step(_ index: Int, state: RunState, options: SubmitOptions, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        guard index < configuration.steps.count else { return eventLoop.makeSucceededVoidFuture() }
        do { try checkStillWanted(options) } catch { return eventLoop.makeFailedFuture(error) }
        let steps = configuration.steps
        if case .model(let model) = steps[index].kind {
            return runModel(model, step: index, state: state, options: options, on: eventLoop).flatMap {
                self.step(index + 1, state: state, options: options, on: eventLoop)
            }
        }
        // The operations up to the next model step, in one job.
        var end = index
        while end < steps.count, case .operation = steps[end].kind { end += 1 }
        return pool.runIfActive(eventLoop: eventLoop) {
            for position in index..<end {
                guard case .operation(let operation) = steps[position].kind else { continue }
                try self.checkStillWanted(options)
                let started = KernelClock.monotonicNanoseconds()
                let value = try OCROperations.run(operation, state.inputs(of: steps[position]),
                                                  characters: { try self.characters(model: $0) })
                state.values[position] = value
                self.release(after: position, in: state)
                state.timings.append(PipelineStepTiming(name: steps[position].name,
                                                        nanoseconds: KernelClock.monotonicNanoseconds() &- started))
            }
        }.flatMap { self.step(end, state: state, options: options, on: eventLoop) }
    }

    /// 499 when the client has gone (nobody reads the answer), 504 past the request's deadline.
    private func checkStillWanted(_ options: SubmitOptions) throws {
        if options.cancellation?.isCancelled == true {
            throw KernelHTTPError(499, "the client closed the request")
        }
        if let deadline = options.deadline, deadline <= .now() {
            throw KernelHTTPError(504, "pipeline '\(configuration.name)' did not finish before the request's deadline")
        }
    }

    private func runModel(_ model: String, step index: Int, state: RunState, options: SubmitOptions,
                          on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let step = configuration.steps[index]
        guard case .tensors(let input) = state.inputs(of: step)[0] else {
            return eventLoop.makeFailedFuture(KernelHTTPError(500, "pipeline step got values of the wrong kind"))
        }
        // A routing lease until the rows are queued: a version retired meanwhile drains them instead of refusing.
        let loaded: LoadedModel
        switch repository.resolve(model, version: nil, takingLease: true) {
        case .ready(let model): loaded = model
        case .notFound(let message), .noVersionReady(let message), .notReady(let message):
            return eventLoop.makeFailedFuture(KernelHTTPError(503, message))
        }
        var submitOptions = options
        if submitOptions.priority == 0 { submitOptions.priority = configuration.priority }
        let started = KernelClock.monotonicNanoseconds()
        let futures = input.groups.map { loaded.scheduler.submit($0, options: submitOptions, on: eventLoop) }
        loaded.leases.release()
        return EventLoopFuture.whenAllSucceed(futures, on: eventLoop).map { results in
            var timing = PipelineStepTiming(name: step.name, nanoseconds: KernelClock.monotonicNanoseconds() &- started,
                                            model: model, requests: results.count)
            for result in results {
                timing.queueNanoseconds = max(timing.queueNanoseconds, result.timing.queueNanoseconds)
                let compute = result.timing.compute
                timing.computeNanoseconds &+= compute.inputNanoseconds &+ compute.inferNanoseconds &+ compute.outputNanoseconds
                timing.batchSize = max(timing.batchSize, result.timing.batchSize)
            }
            state.values[index] = .tensors(TensorGroups(groups: results.map(\.outputs), items: input.items,
                                                        itemCount: input.itemCount))
            self.release(after: index, in: state)
            state.timings.append(timing)
        }
    }

    /// The character list of recognition model `model` (its metadata `character`), read once.
    func characters(model: String) throws -> [String] {
        if let known = characterLists.withLockedValue({ $0[model] }) { return known }
        guard let configuration = repository.configuration(model) else {
            throw KernelHTTPError(500, "no model '\(model)' is configured")
        }
        let path = try ONNXRuntime.locate(configured: runtimeLibrary, environment: ProcessEnvironment.all())
        let runtime = try ONNXRuntime.open(path: path)
        guard let text = try runtime.customMetadata(modelPath: configuration.path, key: "character") else {
            throw KernelHTTPError(500, "model '\(model)' has no \"character\" list in its metadata")
        }
        let list = OCRText.characterList(metadata: text)
        characterLists.withLockedValue { $0[model] = list }
        return list
    }
}

/// Reads what the pipelines need from their model files (recognition models' character lists) when the generation
/// starts, after the models load, so no request pays for it. A failure is logged; the request that needs the list
/// then tries again and answers 500 with the reason.
final class PipelineLoadingService: KernelService {
    let name = "pipelines"
    let pipelines: [Pipeline]
    let logger: Logger

    init(pipelines: [Pipeline], logger: Logger) {
        self.pipelines = pipelines
        self.logger = logger
    }

    func start() async throws {
        let pipelines = self.pipelines
        let logger = self.logger
        try await NIOThreadPool.singleton.runIfActive {
            for pipeline in pipelines {
                for step in pipeline.configuration.steps {
                    guard case .operation(.ctcDecode(let model)) = step.kind else { continue }
                    do {
                        let count = try pipeline.characters(model: model).count
                        logger.notice("inference: pipeline '\(pipeline.configuration.name)' ready: step '\(step.name)' decodes \(count) classes of model '\(model)'")
                    } catch {
                        logger.error("inference: pipeline '\(pipeline.configuration.name)': step '\(step.name)' cannot read the character list of model '\(model)': \(error)")
                    }
                }
            }
        }
    }

    func stop() async {}
}
