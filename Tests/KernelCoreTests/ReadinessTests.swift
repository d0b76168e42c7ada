@testable import KernelCore
import NIOCore
import XCTest

/// `KernelRuntime.notReadyReasons`: each condition of readiness on its own.
final class ReadinessTests: XCTestCase {
    private struct FixedCheck: ReadinessCheck {
        let reasons: [NotReadyReason]
        func notReady() -> [NotReadyReason] { reasons }
    }

    private struct Group: UpstreamGroup {
        let name: String
        let states: [UpstreamPeerState]
        var peers: [PeerAddress] { [] }
        var maxTries: Int { 1 }
        func begin(_ request: KernelRequest, excluding excluded: [PeerAddress]) -> PeerLease? { nil }
        func peerStates() -> [UpstreamPeerState] { states }
    }

    private var runtime: KernelRuntime!

    override func setUp() { runtime = KernelRuntime.standalone(threads: 1, level: .critical) }
    override func tearDownWithError() throws { try runtime.eventLoopGroup.syncShutdownGracefully() }

    private func registrar() -> Registrar { Registrar(role: .edge, mode: .run, configurationFile: "-", runtime: runtime) }

    private func install(_ registrar: Registrar) -> KernelGeneration {
        let generation = KernelGeneration(number: 1, core: CoreConfiguration(), registrar: registrar, activeModules: [])
        runtime.install(generation)
        return generation
    }

    func testNotReadyBeforeAnyConfigurationRuns() {
        XCTAssertEqual(runtime.notReadyReasons(), [NotReadyReason(check: "configuration", reason: "no configuration is running yet")])
    }

    func testModuleChecksAreAsked() {
        let registrar = registrar()
        registrar.addReadinessCheck(FixedCheck(reasons: [NotReadyReason(check: "models", name: "demo", reason: "loading")]))
        _ = install(registrar)
        XCTAssertEqual(runtime.notReadyReasons(), [NotReadyReason(check: "models", name: "demo", reason: "loading")])
    }

    func testAUsedGroupNeedsALivePeerAndAnUnusedOneDoesNot() {
        let registrar = registrar()
        registrar.addUpstreamGroup(Group(name: "backend", states: [UpstreamPeerState(address: "127.0.0.1:1", up: false),
                                                                   UpstreamPeerState(address: "127.0.0.1:2", up: false)]))
        registrar.addUpstreamGroup(Group(name: "half", states: [UpstreamPeerState(address: "127.0.0.1:3", up: false),
                                                                UpstreamPeerState(address: "127.0.0.1:4", up: true)]))
        registrar.addUpstreamGroup(Group(name: "unused", states: [UpstreamPeerState(address: "127.0.0.1:5", up: false)]))
        registrar.addUpstreamGroup(Group(name: "unresolved", states: []))
        for name in ["backend", "half", "unresolved"] { XCTAssertNotNil(registrar.upstreamGroup(named: name)) }
        _ = install(registrar)
        XCTAssertEqual(runtime.notReadyReasons(), [
            NotReadyReason(check: "upstream", name: "backend", reason: "no live peer (2 down)"),
            NotReadyReason(check: "upstream", name: "unresolved", reason: "no peer (nothing resolved yet)"),
        ])
    }

    func testAStoppingProcessIsNotReady() {
        _ = install(registrar())
        XCTAssertEqual(runtime.notReadyReasons(), [])
        runtime.stopping.markStopping()
        XCTAssertEqual(runtime.notReadyReasons(), [NotReadyReason(check: "stopping", reason: "the kernel is stopping")])
    }

    func testEveryListenerMustBeOpen() async throws {
        let registrar = registrar()
        let spec = ListenerSpec(protocolName: "http", address: .tcp(host: "127.0.0.1", port: 0)) { channel, _ in
            channel.eventLoop.makeSucceededVoidFuture()
        }
        registrar.addListener(spec)
        let generation = install(registrar)
        let manager = ListenerManager(runtime: runtime)
        runtime.listenerManager.set(manager)
        XCTAssertEqual(runtime.notReadyReasons(), [NotReadyReason(check: "listener", name: "http 127.0.0.1:0", reason: "not open")])
        let (opened, _) = try await manager.apply(generation.listeners)
        XCTAssertEqual(runtime.notReadyReasons(), [])
        let port = opened[0].serverChannel.withLockedValue { $0 }?.localAddress?.port ?? 0
        XCTAssertNotEqual(port, 0)
        XCTAssertEqual(runtime.listenerStatus, [ListenerStatus(protocolName: "http", address: "127.0.0.1:0",
                                                               boundAddress: "127.0.0.1:\(port)", openConnections: 0, isOpen: true)])
        try await opened[0].serverChannel.withLockedValue { $0 }?.close()
        XCTAssertEqual(runtime.notReadyReasons(), [NotReadyReason(check: "listener", name: "http 127.0.0.1:0", reason: "not open")])
        await manager.shutdown(timeout: .zero)
    }
}
