#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KernelCore
import NIOCore

/// Triton's shared memory extensions: `/v2/systemsharedmemory[/region/{name}]/status|register|unregister`, and the
/// CUDA ones (`/v2/cudasharedmemory/...`), which this server, having no GPU, answers as Triton's build without GPU
/// support does: no CUDA region can be registered, and the status lists none.
///
/// Statuses and words are Triton's. Registering and unregistering are refused (501) unless `inference.allow_client_shm`
/// is on, as Triton refuses them unless started with `--allow-client-shm=true`; the status answers either way.
extension InferenceHandler {
    /// The answer to a shared memory path (`rest` starts with `systemsharedmemory` or `cudasharedmemory`).
    func sharedMemoryRoute(_ rest: ArraySlice<Substring>, request: KernelRequest,
                           context: RequestContext) throws -> EventLoopFuture<KernelResponse> {
        let isSystem = rest.first == "systemsharedmemory"
        let name: String?
        switch rest.count {
        case 2: name = nil
        case 4 where rest[rest.startIndex + 1] == "region": name = String(rest[rest.startIndex + 2])
        default: throw KernelHTTPError(404, "not found: \(request.path)")
        }
        let action = rest.last!
        guard ["status", "register", "unregister"].contains(action) else { throw KernelHTTPError(404, "not found: \(request.path)") }
        let isRead = action == "status"
        guard isRead ? request.method == "GET" || request.method == "HEAD" : request.method == "POST" else {
            throw KernelHTTPError(405, "method \(request.method) not allowed on \(request.path)",
                                  headers: ["Allow": isRead ? "GET, HEAD" : "POST"])
        }
        let registry = sharedMemory
        if isRead {
            let answer = isSystem ? try systemStatus(name) : try cudaStatus(name)
            return context.eventLoop.makeSucceededFuture(answer)
        }
        guard registry.allowsClientRegions else {
            throw KernelHTTPError(501, "Client shared memory is disabled. Set 'allow_client_shm: true' in the inference section of the configuration to enable.")
        }
        let kind = isSystem ? "system" : "cuda"
        let command: SharedMemoryCommand
        if action == "register" {
            guard let name else { throw KernelHTTPError(400, "'region name' is necessary to register \(kind) shared memory region") }
            guard isSystem else {
                throw KernelHTTPError(400, "failed to register CUDA shared memory region: '\(name)', GPUs not supported")
            }
            command = try registration(name, body: request.body)
        } else {
            // CUDA: nothing of that kind is ever registered, so there is nothing to remove (Triton's 200).
            guard isSystem else { return context.eventLoop.makeSucceededFuture(Self.sharedMemoryDone) }
            command = name.map { .unregister(name: $0) } ?? .unregisterAll
        }
        let logger = context.logger
        guard let supervision, supervision.isSupervised else {
            let outcome = command.run(on: registry)
            if outcome.status == 200 { logger.info("\(command.logText)") }
            return context.eventLoop.makeSucceededFuture(try Self.sharedMemoryResponse(outcome))
        }
        // Every worker process runs it (this one included); one started later replays the registrations still
        // standing.
        let promise = context.eventLoop.makePromise(of: KernelResponse.self)
        promise.completeWithTask {
            let answers = await supervision.share(command.text, key: command.key, memory: command.memory, timeout: .seconds(10))
            let outcome = SharedCommandOutcome.combine(answers, own: getpid())
            if outcome.status == 200 {
                logger.info("\(command.logText)")
            } else if case .register(let name, _, _, _) = command, answers.contains(where: { SharedCommandOutcome(encoded: $0.body)?.status == 200 }) {
                // Registered in some processes only (another still had the name, awaiting its unregister): undone
                // everywhere, so that every process answers for the name alike.
                let undo = SharedMemoryCommand.unregister(name: name)
                _ = await supervision.share(undo.text, key: undo.key, memory: undo.memory, timeout: .seconds(10))
            }
            return try Self.sharedMemoryResponse(outcome)
        }
        return promise.futureResult
    }

    /// A register request's checked fields, and the region opened here once: what it is refused for (a name in
    /// use, an object that cannot be opened or is too small) is answered without troubling other processes.
    private func registration(_ name: String, body: ByteBuffer?) throws -> SharedMemoryCommand {
        let parsed = try RepositoryRequestBody(body, what: "shared memory register").value
        guard let keyValue = parsed?["key"] else { throw KernelHTTPError(400, "Shared memory register request has no 'key' field") }
        guard let key = keyValue.stringValue else { throw KernelHTTPError(400, "attempt to access JSON non-string as string") }
        func size(_ value: JSONValue) throws -> UInt64 {
            guard case .number(let number) = value, let size = number.uint64 else {
                throw KernelHTTPError(400, "attempt to access JSON non-unsigned-integer as unsigned-integer")
            }
            return size
        }
        let offset = try parsed?["offset"].map(size) ?? 0
        guard let sizeValue = parsed?["byte_size"] else {
            throw KernelHTTPError(400, "Shared memory register request has no 'byte_size' field")
        }
        let byteSize = try size(sizeValue)
        try sharedMemory.checkRoom(for: name)
        _ = try SharedMemoryRegion.open(name: name, key: key, offset: offset, byteSize: byteSize)
        return .register(name: name, key: key, offset: offset, byteSize: byteSize)
    }

    /// `GET /v2/systemsharedmemory[/region/{name}]/status`: `[{"name", "key", "offset", "byte_size"}]`, by name.
    private func systemStatus(_ name: String?) throws -> KernelResponse {
        var regions = sharedMemory.all()
        if let name {
            regions = regions.filter { $0.name == name }
            guard !regions.isEmpty else { throw KernelHTTPError(404, "Unable to find system shared memory region: '\(name)'") }
        }
        return json { writer in
            writer.byte(UInt8(ascii: "["))
            for (index, region) in regions.enumerated() {
                if index > 0 { writer.byte(UInt8(ascii: ",")) }
                writer.raw("{\"name\":")
                writer.string(region.name)
                writer.raw(",\"key\":")
                writer.string(region.key)
                writer.raw(",\"offset\":")
                writer.integer(region.offset)
                writer.raw(",\"byte_size\":")
                writer.integer(region.byteSize)
                writer.byte(UInt8(ascii: "}"))
            }
            writer.byte(UInt8(ascii: "]"))
        }
    }

    /// `GET /v2/cudasharedmemory[/region/{name}]/status`: never a region.
    private func cudaStatus(_ name: String?) throws -> KernelResponse {
        guard let name else { return json { $0.raw("[]") } }
        if sharedMemory.contains(name) {
            throw KernelHTTPError(404, "The region named '\(name)' is registered as system shared memory, not CUDA shared memory")
        }
        throw KernelHTTPError(404, "Unable to find cuda shared memory region: '\(name)'")
    }

    /// Register and unregister answer 200 with no body, as Triton's.
    private static var sharedMemoryDone: KernelResponse {
        KernelResponse(status: 200, headers: ["Content-Type": "application/json"])
    }

    private static func sharedMemoryResponse(_ outcome: SharedCommandOutcome) throws -> KernelResponse {
        guard outcome.status == 200 else { throw KernelHTTPError(outcome.status, outcome.message) }
        return sharedMemoryDone
    }
}

/// A change of the system shared memory regions, as every worker process runs it (`ProcessSupervision.share`):
/// `inference.shm <JSON>`.
enum SharedMemoryCommand: Equatable {
    case register(name: String, key: String, offset: UInt64, byteSize: UInt64)
    case unregister(name: String)
    case unregisterAll

    static let name = "inference.shm"

    /// The command's text: its name and a JSON object (names and keys may hold any character).
    var text: String {
        var writer = JSONWriter(buffer: ByteBuffer())
        switch self {
        case .register(let name, let key, let offset, let byteSize):
            writer.raw("{\"register\":")
            writer.string(name)
            writer.raw(",\"key\":")
            writer.string(key)
            writer.raw(",\"offset\":")
            writer.integer(offset)
            writer.raw(",\"byte_size\":")
            writer.integer(byteSize)
            writer.byte(UInt8(ascii: "}"))
        case .unregister(let name):
            writer.raw("{\"unregister\":")
            writer.string(name)
            writer.byte(UInt8(ascii: "}"))
        case .unregisterAll:
            writer.raw("{\"unregister_all\":true}")
        }
        return Self.name + " " + String(buffer: writer.buffer)
    }

    /// What the master remembers it under: one key per region name, and for unregistering them all the key that
    /// replaces every region's (`SharedCommandLog`: a resetting key ending in `*`).
    var key: String {
        switch self {
        case .register(let name, _, _, _), .unregister(let name): return Self.name + " region " + name
        case .unregisterAll: return Self.name + " region *"
        }
    }

    /// How the master keeps it for workers started later: a registration instead of what its name had; an
    /// unregister not at all (a worker that starts after it has no region of that name anyway).
    var memory: SharedCommandMemory {
        if case .register = self { return .instead }
        return .forgetting
    }

    /// Reads a command's argument (the text after its name); nil when it is none of these.
    init?(argument: Substring) {
        guard let value = try? JSONReader.parse(Array(argument.utf8)) else { return nil }
        if let name = value["register"]?.stringValue, let key = value["key"]?.stringValue,
           case .number(let offset)? = value["offset"], let offset = offset.uint64,
           case .number(let byteSize)? = value["byte_size"], let byteSize = byteSize.uint64 {
            self = .register(name: name, key: key, offset: offset, byteSize: byteSize)
        } else if let name = value["unregister"]?.stringValue {
            self = .unregister(name: name)
        } else if value["unregister_all"]?.boolValue == true {
            self = .unregisterAll
        } else {
            return nil
        }
    }

    func run(on registry: SharedMemoryRegistry) -> SharedCommandOutcome {
        do {
            switch self {
            case .register(let name, let key, let offset, let byteSize):
                try registry.register(name: name, key: key, offset: offset, byteSize: byteSize)
            case .unregister(let name):
                registry.unregister(name)
            case .unregisterAll:
                registry.unregisterAll()
            }
            return SharedCommandOutcome(status: 200, message: "")
        } catch let error as KernelHTTPError {
            return SharedCommandOutcome(status: error.status, message: error.message)
        } catch {
            return SharedCommandOutcome(status: 500, message: "\(error)")
        }
    }

    /// The responder of `inference.shm` commands in a worker process.
    static func respond(to argument: Substring, registry: SharedMemoryRegistry) -> [UInt8] {
        guard let command = SharedMemoryCommand(argument: argument) else {
            return SharedCommandOutcome(status: 500, message: "a shared memory command that cannot be read").encoded
        }
        return command.run(on: registry).encoded
    }

    /// The info line of a change made.
    var logText: String {
        switch self {
        case .register(let name, let key, let offset, let byteSize):
            return "system shared memory region '\(name)' registered: \(byteSize) bytes of '\(key)' from offset \(offset)"
        case .unregister(let name): return "system shared memory region '\(name)' unregistered"
        case .unregisterAll: return "every system shared memory region unregistered"
        }
    }
}
