import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A model version that loaded: its signature and its scheduler (which owns the sessions).
public final class LoadedModel: Sendable {
    public let configuration: ModelConfiguration
    public let signature: ModelSignature
    public let scheduler: ModelScheduler
    /// Inference requests routed to this version that have not reached its queue yet.
    let leases = RoutingLeases()

    public init(configuration: ModelConfiguration, signature: ModelSignature, scheduler: ModelScheduler) {
        self.configuration = configuration
        self.signature = signature
        self.scheduler = scheduler
    }
}

/// The requests routed to a model version on their way to its queue (decoding their body on an event loop).
///
/// A lease is taken under the repository's lock while the version is ready, so none is taken once the version
/// has left routing; a version leaving routing (an unload, a reload's replaced sessions, a version its policy no
/// longer serves) stops its scheduler only after the last lease is released. Then every request routed to it is
/// in its queue, and the scheduler's drain answers it: none meets a stopped queue.
final class RoutingLeases: @unchecked Sendable {
    /// `true` while no lease is held; guards `held`.
    private let lock = ConditionLock<Bool>(value: true)
    private var held = 0

    func take() {
        lock.lock()
        held += 1
        lock.unlock(withValue: false)
    }

    func release() {
        lock.lock()
        held -= 1
        lock.unlock(withValue: held == 0)
    }

    /// Leases held now.
    var count: Int {
        lock.lock()
        defer { lock.unlock() }
        return held
    }

    /// Blocks (a thread-pool thread, never an event loop) until no lease is held.
    func waitUntilReleased() {
        lock.lock(whenValue: true)
        lock.unlock()
    }
}

/// Where a model version stands.
public enum ModelState: Sendable {
    case loading
    case ready(LoadedModel)
    /// Not serving: it failed to load (the message says why, in ORT's own words), or it was unloaded.
    case failed(String)
    /// Taken out of routing; finishing the requests it has queued or running before its sessions are released.
    case unloading

    /// Triton's name of the state, as the repository index reports it.
    var indexName: String {
        switch self {
        case .loading: return "LOADING"
        case .ready: return "READY"
        case .failed: return "UNAVAILABLE"
        case .unloading: return "UNLOADING"
        }
    }
}

/// What a model's versions were loaded from: when polling finds the same, nothing changed.
struct VersionSource: Sendable, Equatable {
    var model: FileStamp?
    var settings: FileStamp?
    /// When a load request gave the version's settings or files (Triton's `config`, `file:`): such a version is
    /// never the same source as the repository's files, so the next load without them loads it again.
    var loadRequest: UInt64? = nil
}

/// One version of a model and where it stands.
struct ModelVersion: Sendable {
    var configuration: ModelConfiguration
    var state: ModelState
    var source: VersionSource?
}

/// One model: its versions, and whether an unload took it out on purpose (it then does not hold readiness back).
struct ModelEntry: Sendable {
    var name: String
    var versions: [Int: ModelVersion] = [:]
    /// The versions and sources the last load asked for (what polling compares with the disk).
    var requested: [Int: VersionSource] = [:]
    var unloaded = false
    /// From `models:` (loaded from its path, never rescanned) rather than the repository directory.
    var configured: ModelConfiguration?
    /// The last error met scanning the model's directory (logged once, not at every poll).
    var scanError: String?
}

/// How a request names a model version: the version it reaches, or why it reaches none.
public enum ModelResolution: Sendable {
    case ready(LoadedModel)
    /// Triton's 404 (NOT_FOUND): no such model or no such version.
    case notFound(String)
    /// Triton's 404 (NOT_FOUND) too, but of a model that exists: the request names no version and none is ready
    /// (loading, failed, unloaded). Its `/ready` is a plain 400, as for a version that is not ready.
    case noVersionReady(String)
    /// Triton's 503 (UNAVAILABLE): the version the request names exists but is not ready.
    case notReady(String)
}

/// One line of `POST /v2/repository/index` (Triton's `{name, version, state, reason}`).
public struct RepositoryIndexEntry: Sendable, Equatable {
    public var name: String
    public var version: String?
    public var state: String?
    public var reason: String?
}

/// The models of one configuration generation, shared by the loading service and the protocol handlers: the
/// `models:` entries and the model repository's models, each with its versions. It is the generation's readiness
/// check for models: ready once every model that should serve has a version loaded and warmed up.
public final class ModelRepository: ReadinessCheck, Sendable {
    /// The `models:` entries.
    public let configurations: [ModelConfiguration]
    /// The repository directory and how it changes, nil without `model_repository`.
    public let settings: RepositorySettings?
    let layout: ModelRepositoryLayout?
    let entries: NIOLockedValueBox<[String: ModelEntry]>
    /// Set while the loading service runs: what load, unload and polling need.
    let loader = NIOLockedValueBox<ModelLoader?>(nil)
    /// Serialises loads, unloads and polls (held on `operationsPool`'s thread, never on an event loop).
    let operations = NIOLock()
    /// The thread loads, unloads and polls run on, one after the other (started and shut down by the loading
    /// service). Not the shared pool: its few threads (one per core) serve the index, spooled request bodies and
    /// name resolution for every request, and loads waiting for a load of many seconds would hold them all.
    let operationsPool = NIOThreadPool(numberOfThreads: 1)
    /// The error of the last poll that could not read the repository directory (logged once until it changes).
    let pollError = NIOLockedValueBox<String?>(nil)

    public convenience init(configurations: [ModelConfiguration]) {
        self.init(configurations: configurations, repository: nil)
    }

    public init(configurations: [ModelConfiguration], repository: RepositorySettings?,
                memoryDefaults: SessionMemoryOptions = SessionMemoryOptions()) {
        self.configurations = configurations
        settings = repository
        layout = repository.map { ModelRepositoryLayout(path: $0.path, memoryDefaults: memoryDefaults) }
        var entries: [String: ModelEntry] = [:]
        for configuration in configurations {
            var entry = ModelEntry(name: configuration.name, configured: configuration)
            entry.versions[configuration.versionNumber] = ModelVersion(configuration: configuration, state: .loading)
            entries[configuration.name] = entry
        }
        for model in repository?.models ?? [] {
            var entry = ModelEntry(name: model.name)
            if let startup = repository?.startupModels, !startup.contains(model.name) {
                // Not loaded until a load request asks for it, and not waited for by readiness.
                entry.unloaded = true
                entries[model.name] = entry
                continue
            }
            for configuration in model.versions {
                entry.versions[configuration.versionNumber] = ModelVersion(configuration: configuration, state: .loading)
            }
            entries[model.name] = entry
        }
        self.entries = NIOLockedValueBox(entries)
    }

    /// How `load`/`unload` behave: `none` without a repository.
    public var control: RepositoryControl { settings?.control ?? .none }

    /// What names this repository to the other worker processes (`RepositoryCommand.repository`): its directory,
    /// "" with `models:` entries only.
    var identity: String { settings?.path ?? "" }

    /// The configuration of `name`'s version that requests without a version reach (the highest ready one, else the
    /// highest known), or nil when no such model is known.
    public func configuration(_ name: String) -> ModelConfiguration? {
        entries.withLockedValue { entries in
            guard let entry = entries[name] else { return nil }
            return ModelRepository.defaultVersion(of: entry)?.configuration ?? entry.configured
        }
    }

    /// The state of the version of `name` that requests without a version reach.
    public func state(_ name: String) -> ModelState? {
        entries.withLockedValue { entries in
            entries[name].flatMap { ModelRepository.defaultVersion(of: $0)?.state }
        }
    }

    /// Sets the state of `name`'s configured version (or of its only version).
    func setState(_ state: ModelState, for name: String) {
        entries.withLockedValue { entries in
            guard var entry = entries[name], let version = entry.configured?.versionNumber ?? entry.versions.keys.max() else { return }
            entry.versions[version]?.state = state
            entries[name] = entry
        }
    }

    /// The highest ready version, else the highest version.
    static func defaultVersion(of entry: ModelEntry) -> ModelVersion? {
        // One pass, no filtered copy: this runs for every request that names no version.
        var highest: (number: Int, version: ModelVersion)?
        var highestReady: (number: Int, version: ModelVersion)?
        for (number, version) in entry.versions {
            if number > highest?.number ?? Int.min { highest = (number, version) }
            if case .ready = version.state, number > highestReady?.number ?? Int.min { highestReady = (number, version) }
        }
        return (highestReady ?? highest)?.version
    }

    /// The loaded version a request for `name` (and `version`, when the path names one) reaches.
    /// `takingLease`: a ready version's `RoutingLeases` counts the request until the caller releases it, once the
    /// request is in the version's queue. Every caller that goes on to `submit` must take one (and release it right
    /// after `submit` returns): without it, a version retired between `resolve` and `submit` answers 503.
    public func resolve(_ name: String, version: String?, takingLease: Bool = false) -> ModelResolution {
        entries.withLockedValue { entries in
            // A model of the directory that never loaded (left out by `startup_models`) is unknown, as in Triton.
            guard let entry = entries[name], !(entry.unloaded && entry.versions.isEmpty) else {
                return .notFound("Request for unknown model: '\(name)' is not found")
            }
            let chosen: ModelVersion
            if let version {
                guard InferenceConfiguration.isVersion(version), let number = Int(version), let found = entry.versions[number] else {
                    return .notFound("Request for unknown model: '\(name)' version \(version) is not found")
                }
                chosen = found
            } else {
                guard let found = ModelRepository.defaultVersion(of: entry) else {
                    return .noVersionReady("Request for unknown model: '\(name)' has no available versions")
                }
                chosen = found
            }
            if case .ready(let model) = chosen.state {
                if takingLease { model.leases.take() }
                return .ready(model)
            }
            var state = "version \(chosen.configuration.version) is not at ready state"
            if case .failed(let reason) = chosen.state { state += ": \(reason)" }
            guard version != nil else {
                // Triton's answer (NOT_FOUND) when no version is named and none is ready; what the highest version
                // is doing is said after it.
                return .noVersionReady("Request for unknown model: '\(name)' has no available versions (\(state))")
            }
            return .notReady("Request for unknown model: '\(name)' \(state)")
        }
    }

    /// The ready versions of `name`, lowest first (metadata's `versions`).
    public func readyVersions(_ name: String) -> [String] {
        entries.withLockedValue { entries in
            guard let entry = entries[name] else { return [] }
            return entry.versions.keys.sorted().compactMap { number in
                if case .ready = entry.versions[number]!.state { return String(number) }
                return nil
            }
        }
    }

    /// Whether every model that should serve does.
    public var allReady: Bool { notReady().isEmpty }

    /// Each model still loading, or that failed to load and has no version serving (a version is ready only after
    /// its warm-up ran). A model taken out by `unload` is not counted.
    public func notReady() -> [NotReadyReason] {
        entries.withLockedValue { entries in
            entries.keys.sorted().compactMap { name -> NotReadyReason? in
                let entry = entries[name]!
                guard !entry.unloaded else { return nil }
                let states = entry.versions.keys.sorted(by: >).map { entry.versions[$0]!.state }
                if states.contains(where: { if case .ready = $0 { return true } else { return false } }) { return nil }
                if states.contains(where: { if case .loading = $0 { return true } else { return false } }) {
                    return NotReadyReason(check: "models", name: name, reason: "loading")
                }
                for state in states {
                    if case .failed(let message) = state {
                        return NotReadyReason(check: "models", name: name, reason: "not loaded: \(message)")
                    }
                }
                return NotReadyReason(check: "models", name: name, reason: "not loaded: no version is available")
            }
        }
    }

    /// Every version that is ready now.
    var loadedModels: [LoadedModel] {
        entries.withLockedValue { entries in
            entries.keys.sorted().flatMap { name -> [LoadedModel] in
                let entry = entries[name]!
                return entry.versions.keys.sorted().compactMap { number in
                    if case .ready(let model) = entry.versions[number]!.state { return model }
                    return nil
                }
            }
        }
    }

    /// Triton's repository index: every model of the repository directory and of `models:`, one line per version it
    /// has a state for (a model never loaded has a line with its name alone). `readyOnly`: only ready versions.
    public func index(readyOnly: Bool) -> [RepositoryIndexEntry] {
        var names = Set(entries.withLockedValue { Array($0.keys) })
        if let layout, let found = try? layout.modelNames() { names.formUnion(found) }
        return entries.withLockedValue { entries in
            names.sorted().flatMap { name -> [RepositoryIndexEntry] in
                guard let entry = entries[name], !(entry.unloaded && entry.versions.isEmpty) else {
                    return readyOnly ? [] : [RepositoryIndexEntry(name: name)]
                }
                return entry.versions.keys.sorted().compactMap { number in
                    let version = entry.versions[number]!
                    var reason: String?
                    if case .failed(let message) = version.state { reason = message }
                    if readyOnly, case .ready = version.state {} else if readyOnly { return nil }
                    return RepositoryIndexEntry(name: name, version: String(number), state: version.state.indexName,
                                                reason: reason)
                }
            }
        }
    }
}
