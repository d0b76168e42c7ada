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
            return SharedCommandOutcome(status: 500, message: "a repository command that cannot be read").encoded
        }
        guard let repository = ServingRepositories.shared.newest(identity: command.repository) else { return [] }
        return await command.run(on: repository)
    }

    /// Runs the command on `repository`'s operations thread and answers with its outcome
    /// (`SharedCommandOutcome.encoded`).
    func run(on repository: ModelRepository) async -> [UInt8] {
        do {
            let body = RepositoryRequestBody(value: request)
            let parameters = action == .load ? try body.loadParameters(modelName: model) : ModelLoadParameters()
            let model = model, action = action
            try await repository.operationsPool.runIfActive {
                if action == .load { try repository.load(model, parameters: parameters) } else { try repository.unload(model) }
            }
            return SharedCommandOutcome(status: 200, message: "").encoded
        } catch let error as KernelHTTPError {
            return SharedCommandOutcome(status: error.status, message: error.message).encoded
        } catch is NIOThreadPoolError.ThreadPoolInactive {
            return SharedCommandOutcome(status: 503, message: "the kernel is stopping").encoded
        } catch {
            return SharedCommandOutcome(status: 500, message: "\(error)").encoded
        }
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
