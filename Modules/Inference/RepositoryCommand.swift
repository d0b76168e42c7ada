import KernelCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A load or unload of the repository extension as every worker process runs it: the receiving process shares it
/// (`ProcessSupervision.share`), so that each worker loads the same model, and a worker started later replays it.
///
/// As a command query it is `inference.repository {"action":..,"model":..,"repository":..,"request":<body>}`: the
/// request's own JSON body rides along unchanged, and each process reads its parameters with the same
/// `RepositoryRequestBody` the HTTP handler uses.
struct RepositoryCommand: Sendable {
    /// The command query's name (`ProcessQueryRegistry.registerCommand`).
    static let name = "inference.repository"

    enum Action: String, Sendable { case load, unload }

    var action: Action
    var model: String
    /// The repository directory of the configuration that took the request ("" with `models:` entries only): a
    /// process whose configuration serves another repository leaves the command alone.
    var repository: String
    /// The request's body, parsed.
    var request: JSONValue?

    /// The command query's text: `request` is the body as it came, which has parsed as a JSON object.
    static func text(action: Action, model: String, repository: String, body: ByteBuffer?) -> String {
        var writer = JSONWriter(buffer: ByteBuffer())
        writer.raw("{\"action\":")
        writer.string(action.rawValue)
        writer.raw(",\"model\":")
        writer.string(model)
        writer.raw(",\"repository\":")
        writer.string(repository)
        writer.raw(",\"request\":")
        if let body, body.readableBytes > 0 { writer.buffer.writeImmutableBuffer(body) } else { writer.raw("null") }
        writer.byte(UInt8(ascii: "}"))
        return name + " " + String(buffer: writer.buffer)
    }

    /// The master remembers the latest command of each model and repository.
    static func key(model: String, repository: String) -> String {
        "\(name) \(repository) \(model)"
    }

    init(action: Action, model: String, repository: String, request: JSONValue?) {
        self.action = action
        self.model = model
        self.repository = repository
        self.request = request
    }

    init?(argument: Substring) {
        guard let value = try? JSONReader.parse(ByteBuffer(string: String(argument))),
              let action = value["action"]?.stringValue.flatMap(Action.init(rawValue:)),
              let model = value["model"]?.stringValue, let repository = value["repository"]?.stringValue else { return nil }
        self.action = action
        self.model = model
        self.repository = repository
        if case .null = value["request"] ?? .null { request = nil } else { request = value["request"] }
    }

    /// This process's answer to the command query with `argument`: the outcome of running it on the newest serving
    /// repository it names; empty when this process serves no such repository (another pool's configuration, or
    /// none loaded yet).
    static func respond(to argument: Substring) async -> [UInt8] {
        guard let command = RepositoryCommand(argument: argument) else {
            return Outcome(status: 500, message: "a repository command that cannot be read").encoded
        }
        guard let repository = ServingRepositories.shared.newest(identity: command.repository) else { return [] }
        return await command.run(on: repository)
    }

    /// Runs the command on `repository`'s operations thread and answers with its outcome (`Outcome.encoded`).
    func run(on repository: ModelRepository) async -> [UInt8] {
        do {
            let body = RepositoryRequestBody(value: request)
            let parameters = action == .load ? try body.loadParameters(modelName: model) : ModelLoadParameters()
            let model = model, action = action
            try await repository.operationsPool.runIfActive {
                if action == .load { try repository.load(model, parameters: parameters) } else { try repository.unload(model) }
            }
            return Outcome(status: 200, message: "").encoded
        } catch let error as KernelHTTPError {
            return Outcome(status: error.status, message: error.message).encoded
        } catch is NIOThreadPoolError.ThreadPoolInactive {
            return Outcome(status: 503, message: "the kernel is stopping").encoded
        } catch {
            return Outcome(status: 500, message: "\(error)").encoded
        }
    }

    /// One process's outcome: its status (200 when done) and Triton's message otherwise.
    struct Outcome: Sendable, Equatable {
        var status: Int
        var message: String

        var encoded: [UInt8] {
            var writer = JSONWriter(buffer: ByteBuffer())
            writer.raw("{\"status\":")
            writer.integer(status)
            writer.raw(",\"error\":")
            writer.string(message)
            writer.byte(UInt8(ascii: "}"))
            return Array(buffer: writer.buffer)
        }

        init(status: Int, message: String) {
            self.status = status
            self.message = message
        }

        init?(encoded: [UInt8]) {
            guard let value = try? JSONReader.parse(encoded), let message = value["error"]?.stringValue,
                  case .number(let number)? = value["status"], let status = number.int64 else { return nil }
            self.status = Int(status)
            self.message = message
        }
    }

    /// What the request answers, from every process's outcome: done when all are; otherwise the failure of the
    /// process that took the request if it failed, else the first other one's, naming the worker. `own` is the
    /// pid of the process that took the request.
    static func combine(_ answers: [ProcessAnswer], own: Int32) -> Outcome {
        var failures: [(answer: ProcessAnswer, outcome: Outcome)] = []
        var answered = 0
        for answer in answers where !answer.body.isEmpty {
            answered += 1
            guard let outcome = Outcome(encoded: answer.body) else {
                failures.append((answer, Outcome(status: 500, message: "an unreadable answer")))
                continue
            }
            if outcome.status != 200 { failures.append((answer, outcome)) }
        }
        guard answered > 0 else { return Outcome(status: 503, message: "no process answered the request") }
        if let mine = failures.first(where: { $0.answer.pid == own }) { return mine.outcome }
        guard let first = failures.first else { return Outcome(status: 200, message: "") }
        let who: String
        switch first.answer.source {
        case .worker(let number): who = "worker process \(number) (pid \(first.answer.pid))"
        case .master: who = "the master process"
        }
        return Outcome(status: first.outcome.status, message: "\(who): \(first.outcome.message)")
    }
}

/// The repositories whose loading service runs in this process, oldest first. A shared command goes to the newest
/// one it names: during a reload the new generation's (its models are the ones that will serve), and after a
/// reload that failed, the generation that kept serving (the failed one's service stopped and left).
final class ServingRepositories: Sendable {
    static let shared = ServingRepositories()

    private let repositories = NIOLockedValueBox<[ModelRepository]>([])

    func add(_ repository: ModelRepository) {
        repositories.withLockedValue { $0.append(repository) }
    }

    func remove(_ repository: ModelRepository) {
        repositories.withLockedValue { $0.removeAll { $0 === repository } }
    }

    func newest(identity: String) -> ModelRepository? {
        repositories.withLockedValue { $0.last { $0.identity == identity } }
    }
}
