import KernelConfig
import Logging
import NIOCore

/// Long-running work of a module that belongs to one configuration generation (a model backend, a health check).
///
/// `start` runs before the generation's listeners open (load and warm up models); a failure aborts the startup or
/// the reload. `stop` runs after the generation is retired and its last request finished, in reverse order.
/// `abort` replaces `stop` on a fast stop (`-s stop`): work still queued is dropped, not done.
public protocol KernelService: AnyObject, Sendable {
    var name: String { get }
    func start() async throws
    func stop() async
    func abort() async
}

extension KernelService {
    /// By default a fast stop is a stop.
    public func abort() async { await stop() }
}

/// How modules contribute to a configuration generation, once, while it is built.
///
/// Used from one thread while the configuration is loaded; the generation built from it is immutable.
public final class Registrar: @unchecked Sendable {
    /// Whether the configuration is only being checked (`kernel -t`): nothing is opened or started.
    public enum Mode: Sendable { case run, check }

    public let role: KernelRole
    public let mode: Mode
    /// The configuration file, as given on the command line.
    public let configurationFile: String
    public let runtime: KernelRuntime
    public var logger: Logger { runtime.logger }
    public var eventLoopGroup: any EventLoopGroup { runtime.eventLoopGroup }

    private(set) var listeners: [ListenerSpec] = []
    private(set) var filters: [(phase: FilterPhase, order: Int, filter: any RequestFilter)] = []
    private(set) var router: (any RequestRouter)?
    private(set) var services: [any KernelService] = []
    private var locationHandlers: [String: LocationHandlerFactory] = [:]
    private var upstreamGroups: [String: any UpstreamGroup] = [:]
    private(set) var finishObservers: [any RequestFinishObserver] = []

    /// The variables templates of this configuration may use: the core's, and those modules add here
    /// (`registrar.variables.register("name") { context in ... }`). Modules register in the module list's order,
    /// so a module's variables are there for the templates of the modules after it (routing comes last).
    public var variables = VariableRegistry.standard

    init(role: KernelRole, mode: Mode, configurationFile: String, runtime: KernelRuntime) {
        self.role = role
        self.mode = mode
        self.configurationFile = configurationFile
        self.runtime = runtime
    }

    /// The directory of the configuration file: relative paths in it (models, includes) resolve against it.
    public var configurationDirectory: String { ConfigPath.directory(of: configurationFile) }

    /// `path` made absolute against the configuration directory.
    public func resolvePath(_ path: String) -> String {
        ConfigPath.resolve(path, in: configurationDirectory)
    }

    public func addListener(_ listener: ListenerSpec) { listeners.append(listener) }

    public func addFilter(_ filter: any RequestFilter, phase: FilterPhase) {
        filters.append((phase, filters.count, filter))
    }

    /// Declares a location directive (`uwsgi_pass`, `inference`) and how to build its handler.
    public func addLocationHandler(_ key: String, factory: @escaping LocationHandlerFactory) {
        locationHandlers[key] = factory
    }

    /// The factory of a location directive declared by an active module.
    public func locationHandler(_ key: String) -> LocationHandlerFactory? { locationHandlers[key] }

    /// Location directives declared so far, sorted.
    public var locationHandlerKeys: [String] { locationHandlers.keys.sorted() }

    public func setRouter(_ router: any RequestRouter) { self.router = router }

    public func addService(_ service: any KernelService) { services.append(service) }

    /// Makes an upstream group (`upstream NAME { ... }`) available to proxy handlers by name.
    public func addUpstreamGroup(_ group: any UpstreamGroup) { upstreamGroups[group.name] = group }

    public func upstreamGroup(named name: String) -> (any UpstreamGroup)? { upstreamGroups[name] }

    /// Adds an observer of every finished exchange of this configuration (metrics, stats); the routes' access
    /// logs are observers too, attached by the router.
    public func addFinishObserver(_ observer: any RequestFinishObserver) { finishObservers.append(observer) }

    /// Filters in run order: by phase, then by registration order (the module list's order).
    var orderedFilters: [any RequestFilter] {
        filters.sorted { ($0.phase, $0.order) < ($1.phase, $1.order) }.map(\.filter)
    }
}
