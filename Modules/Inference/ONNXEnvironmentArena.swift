#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOConcurrencyHelpers

/// The CPU arena a model with `arena_extend_strategy: same_as_requested` allocates from.
///
/// ONNX Runtime's C API gives the CPU execution provider no per-session arena settings: a session's own arena always
/// grows by powers of two (`kNextPowerOfTwo`, which is what `next_power_of_two` leaves in place). The other strategy
/// comes from an arena registered on the environment (`CreateArenaCfgV2` + `CreateAndRegisterAllocator`), which
/// sessions with `session.use_env_allocators` share. The environment holds one CPU allocator, so it is registered
/// once per environment, the first time a model asks for it, and lives as long as the environment.
extension ONNXRuntime {
    private struct Registered { weak var runtime: ONNXRuntime? }
    /// Runtimes whose environment has the arena (checked by identity: a released runtime's slot may be reused).
    private static let arenas = NIOLockedValueBox<[ObjectIdentifier: Registered]>([:])

    /// The session options a model's memory settings need, registering the environment's arena when they ask for it.
    func sessionOptions(for configuration: ModelConfiguration) throws -> SessionOptions {
        let usesArena = configuration.memory.arenaExtendStrategy == .sameAsRequested
        if usesArena { try registerSameAsRequestedArena() }
        return SessionOptions(intraOpThreads: configuration.intraOpThreads, interOpThreads: configuration.interOpThreads,
                              memory: configuration.memory, useEnvironmentAllocators: usesArena)
    }

    private func registerSameAsRequestedArena() throws {
        try ONNXRuntime.arenas.withLockedValue { arenas in
            if arenas[ObjectIdentifier(self)]?.runtime === self { return }
            var config: OpaquePointer?
            let key = strdup("arena_extend_strategy")
            defer { free(key) }
            var keys: [UnsafePointer<CChar>?] = [UnsafePointer(key)]
            var values: [Int] = [1]  // kSameAsRequested
            try api.check(api.createArenaCfgV2(&keys, &values, 1, &config), "creating the CPU arena configuration")
            defer { api.releaseArenaCfg(config) }
            var arenaInfo: OpaquePointer?
            // OrtArenaAllocator (1), OrtMemTypeDefault (0): the environment's allocator is an arena.
            try api.check(api.createCpuMemoryInfo(1, 0, &arenaInfo), "creating the CPU arena memory info")
            defer { api.releaseMemoryInfo(arenaInfo) }
            try api.check(api.createAndRegisterAllocator(environment, arenaInfo, config), "registering the CPU arena")
            arenas[ObjectIdentifier(self)] = Registered(runtime: self)
        }
    }
}
