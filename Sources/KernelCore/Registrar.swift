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
    /// The directory of the pid file, under which the temp paths lie by default (`proxy_temp`, `uwsgi_temp`), as
    /// nginx keeps them under its prefix. Set from `kernel.pid` before the modules load.
    public internal(set) var runDirectory = "."
    public let runtime: KernelRuntime
    public var logger: Logger { runtime.logger }
    public var eventLoopGroup: any EventLoopGroup { runtime.eventLoopGroup }

    private(set) var listeners: [ListenerSpec] = []
    private(set) var filters: [(phase: FilterPhase, order: Int, filter: any RequestFilter)] = []
    private(set) var router: (any RequestRouter)?
    private(set) var services: [any KernelService] = []
    private var locationHandlers: [String: (capabilities: LocationHandlerCapabilities, factory: LocationHandlerFactory)] = [:]
    private var locationFilters: [LocationFilterDirective] = []
    /// Set once a location's chain has been made: module-wide filters added later would be missing from it.
    private var madeFilterChain = false
    private var upstreamGroups: [String: any UpstreamGroup] = [:]
    private var upstreamProbers: [String: any UpstreamProber] = [:]
    private(set) var finishObservers: [any RequestFinishObserver] = []
    private(set) var readinessChecks: [any ReadinessCheck] = []
    /// Names of the groups handlers asked for (`upstreamGroup(named:)`): the groups a location uses.
    private(set) var usedUpstreamGroupNames: Set<String> = []

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

    /// Adds a filter that runs for every location, before the location's own filter directives of the same phase.
    /// Only modules listed before routing can add one (the routing module builds each location's chain).
    public func addFilter(_ filter: any RequestFilter, phase: FilterPhase) {
        precondition(!madeFilterChain, "a module-wide filter was added after the locations' filter chains were built")
        filters.append((phase, filters.count, filter))
    }

    /// Declares a location directive (`uwsgi_pass`, `inference`): the content handler of the locations that write
    /// it (a location has one), what it can do beyond answering, and how to build it.
    public func addLocationHandler(_ key: String, capabilities: LocationHandlerCapabilities = [],
                                   factory: @escaping LocationHandlerFactory) {
        precondition(locationFilter(key) == nil, "location directive \"\(key)\" declared as a filter and a handler")
        locationHandlers[key] = (capabilities, factory)
    }

    /// Declares option keys of a location handler that a server may write for all its locations (nginx's
    /// `proxy_set_header`, `uwsgi_param`, the `*_timeout`s at server level): a location that does not write one
    /// reads the server's. A location's own value replaces the server's whole, as nginx merges them.
    public func addServerInheritedKeys(_ keys: [String]) { serverInheritedKeys.formUnion(keys) }

    /// Keys declared by `addServerInheritedKeys`.
    public private(set) var serverInheritedKeys: Set<String> = []

    /// The factory of a location directive declared by an active module.
    public func locationHandler(_ key: String) -> LocationHandlerFactory? { locationHandlers[key]?.factory }

    /// The capabilities a location directive was declared with (empty for an unknown key).
    public func locationHandlerCapabilities(_ key: String) -> LocationHandlerCapabilities {
        locationHandlers[key]?.capabilities ?? []
    }

    /// Location directives declared so far, sorted.
    public var locationHandlerKeys: [String] { locationHandlers.keys.sorted() }

    /// Declares a filter directive (`add_header`, `cors`): written in a server or a location, any number of them
    /// beside the location's handler. A location that writes it uses its own value; one that does not inherits the
    /// server's (nginx's rule for `add_header` and most array directives). Filters of one phase run in the order
    /// their directives were declared (the module list's order).
    public func addLocationFilter(_ key: String, phase: FilterPhase, factory: @escaping LocationFilterFactory) {
        precondition(locationHandlers[key] == nil && locationFilter(key) == nil, "location directive \"\(key)\" declared twice")
        locationFilters.append(LocationFilterDirective(key: key, phase: phase, order: locationFilters.count, factory: factory))
    }

    /// The filter directive `key`, when an active module declared it.
    public func locationFilter(_ key: String) -> LocationFilterDirective? { locationFilters.first { $0.key == key } }

    /// Filter directives declared so far, in declaration order.
    public var locationFilterDirectives: [LocationFilterDirective] { locationFilters }

    /// The chain of one location: the module-wide filters and the location's directive filters (its own or the
    /// inherited ones), by phase; within a phase module-wide filters first, then directives in declaration order.
    public func filterChain(_ directiveFilters: [DirectiveFilter]) -> FilterChain {
        madeFilterChain = true
        guard !filters.isEmpty || !directiveFilters.isEmpty else { return .empty }
        let moduleWide = filters.map { (phase: $0.phase, group: 0, order: $0.order, filter: $0.filter) }
        let directives = directiveFilters.map { (phase: $0.phase, group: 1, order: $0.order, filter: $0.filter) }
        let ordered = (moduleWide + directives).sorted { ($0.phase, $0.group, $0.order) < ($1.phase, $1.group, $1.order) }
        return FilterChain(filters: ordered.map(\.filter),
                           headerFilters: ordered.filter { $0.phase == .headers }.map(\.filter))
    }

    public func setRouter(_ router: any RequestRouter) { self.router = router }

    public func addService(_ service: any KernelService) { services.append(service) }

    /// Makes an upstream group (`upstream NAME { ... }`) available to proxy handlers by name.
    public func addUpstreamGroup(_ group: any UpstreamGroup) { upstreamGroups[group.name] = group }

    /// The group `name`, when one was added. A handler that asks for a group uses it: the group then counts for
    /// readiness (a used group with no live peer makes the process not ready).
    public func upstreamGroup(named name: String) -> (any UpstreamGroup)? {
        guard let group = upstreamGroups[name] else { return nil }
        usedUpstreamGroupNames.insert(name)
        return group
    }

    /// Every upstream group added, by name.
    var allUpstreamGroups: [any UpstreamGroup] { upstreamGroups.keys.sorted().map { upstreamGroups[$0]! } }

    /// Makes a protocol's health-check prober available by scheme (`http`, `uwsgi`).
    public func addUpstreamProber(scheme: String, _ prober: any UpstreamProber) { upstreamProbers[scheme] = prober }

    /// The prober of a scheme, if a module registered one.
    public func upstreamProber(scheme: String) -> (any UpstreamProber)? { upstreamProbers[scheme] }

    /// Makes the observer that counts requests for the metrics (`kernel_http_requests_total`, latency
    /// histograms): set by the module that owns the metrics. Nothing counts until some directive asks for it with
    /// `wantRequestMetrics()`, so a configuration that reads no request metrics pays nothing per request.
    public func setRequestMetricsObserver(_ make: @escaping () -> any RequestFinishObserver) {
        requestMetricsObserver = make
    }

    /// Asks for requests to be counted in this configuration's metrics (a `metrics:` location, the status page,
    /// which shows the same counts). The observer is added once however often it is asked for.
    public func wantRequestMetrics() {
        guard !countsRequests, let make = requestMetricsObserver else { return }
        countsRequests = true
        addFinishObserver(make())
    }

    private var requestMetricsObserver: (() -> any RequestFinishObserver)?
    private var countsRequests = false

    /// Adds an observer of every finished exchange of this configuration (metrics, stats); the routes' access
    /// logs are observers too, attached by the router.
    public func addFinishObserver(_ observer: any RequestFinishObserver) { finishObservers.append(observer) }

    /// Adds a condition of this configuration's readiness (models loaded and warmed): `/healthz` and
    /// `/v2/health/ready` answer 503 while any check reports something not ready.
    public func addReadinessCheck(_ check: any ReadinessCheck) { readinessChecks.append(check) }
}

/// A filter directive a module declared with `Registrar.addLocationFilter`.
public struct LocationFilterDirective {
    /// The YAML key (`add_header`).
    public let key: String
    public let phase: FilterPhase
    /// Its place among the filter directives: the run order within a phase.
    let order: Int
    let factory: LocationFilterFactory

    /// Builds the directive's filter from its value in `mapping` (a server or a location).
    public func make(_ value: ConfigValue, in mapping: ConfigMapping, context: LocationContext) throws -> DirectiveFilter {
        DirectiveFilter(key: key, phase: phase, order: order, filter: try factory(value, mapping, context))
    }
}

/// A filter built from one directive, with what orders it in a location's chain.
public struct DirectiveFilter: Sendable {
    /// The directive's key: a location's value replaces the server's of the same key.
    public let key: String
    public let phase: FilterPhase
    let order: Int
    public let filter: any RequestFilter
}
