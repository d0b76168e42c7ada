#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KernelCore
import NIOConcurrencyHelpers
import NIOCore

/// One region of a POSIX shared memory object that a client registered through Triton's system shared memory
/// extension: `byteSize` bytes from `offset` of the object `key` names (`shm_open`).
///
/// The object stays open (its descriptor) while the region is registered and while a request that uses it still
/// runs, so a client that unlinks the object after registering it (`destroy_shared_memory_region`) keeps it usable,
/// as with Triton's mapping. Tensors are read and written with `pread`/`pwrite` rather than through a mapping: an
/// object the client shrinks after registering it (`ftruncate`) is a short read answered 400, where a mapping would
/// take the process down with SIGBUS.
public final class SharedMemoryRegion: Sendable {
    public let name: String
    public let key: String
    /// Where the region starts in the object.
    public let offset: Int
    public let byteSize: Int
    private let descriptor: CInt

    init(name: String, key: String, offset: Int, byteSize: Int, descriptor: CInt) {
        self.name = name
        self.key = key
        self.offset = offset
        self.byteSize = byteSize
        self.descriptor = descriptor
    }

    deinit { close(descriptor) }

    /// The key prefix Triton keeps for its Python backend's own regions, refused as Triton refuses it.
    static let reservedKeyPrefix = "triton_python_backend_shm_region_"

    /// Opens the object `key` names and checks that it holds the region, with Triton's statuses and words, in
    /// Triton's order. `offset` and `byteSize` are the request's (JSON unsigned integers, to 2^64-1).
    static func open(name: String, key: String, offset: UInt64, byteSize: UInt64) throws -> SharedMemoryRegion {
        // All slashes name no object (Triton's check); glibc refuses any other slash after the leading ones, so
        // a key cannot reach outside /dev/shm.
        let bare = key.drop { $0 == "/" }
        guard !bare.isEmpty else {
            throw KernelHTTPError(400, "cannot register shared memory region '\(name)' - invalid shm key '\(key)'")
        }
        guard !bare.hasPrefix(reservedKeyPrefix) else {
            throw KernelHTTPError(400, "cannot register shared memory region '\(name)' with key '\(key)' as the key contains the reserved prefix '\(reservedKeyPrefix)'")
        }
        let descriptor = shm_open(key, O_RDWR, 0o600)
        guard descriptor >= 0 else {
            throw KernelHTTPError(500, "Unable to open shared memory region: '\(key)' (\(String(cString: strerror(errno))))")
        }
        var status = stat()
        guard fstat(descriptor, &status) == 0, status.st_mode & S_IFMT == S_IFREG, status.st_size >= 0 else {
            close(descriptor)
            throw KernelHTTPError(500, "Invalid shared memory region: '\(key)'")
        }
        let (end, overflow) = offset.addingReportingOverflow(byteSize)
        guard !overflow, end <= UInt64(status.st_size) else {
            close(descriptor)
            throw KernelHTTPError(400, "failed to register shared memory region '\(name)': invalid args (offset \(offset) + byte_size \(byteSize) is beyond the \(status.st_size) bytes of '\(key)')")
        }
        guard byteSize > 0 else {
            // Triton's mmap of 0 bytes fails with EINVAL ("unable to process address space").
            close(descriptor)
            throw KernelHTTPError(400, "failed to register shared memory region '\(name)': unable to process address space: byte_size must be at least 1")
        }
        return SharedMemoryRegion(name: name, key: key, offset: Int(offset), byteSize: Int(byteSize), descriptor: descriptor)
    }

    /// Triton's checks of the part of the region a tensor names (`shared_memory_offset` from the region's start,
    /// `shared_memory_byte_size`, JSON unsigned integers to 2^64-1), in Triton's order and words.
    func checkPart(offset: UInt64, byteSize: UInt64) throws {
        guard offset < UInt64(self.byteSize) else {
            throw KernelHTTPError(400, "Invalid offset for shared memory region: '\(name)'")
        }
        guard byteSize <= UInt64.max - offset else {
            throw KernelHTTPError(400, "Integer overflow detected: byte_size (\(byteSize)) + offset (\(offset)) exceeds maximum value (\(UInt64.max)) for region '\(name)'")
        }
        guard offset + byteSize <= UInt64(self.byteSize) else {
            throw KernelHTTPError(400, "Invalid offset + byte size for shared memory region: '\(name)'")
        }
    }

    /// `count` bytes from `offset` of the region (checked with `checkPart`), read into a new buffer.
    func read(offset: Int, count: Int) throws -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: count)
        guard count > 0 else { return buffer }
        try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
            var done = 0
            while done < count {
                let got = pread(descriptor, raw.baseAddress! + done, count - done, off_t(self.offset + offset + done))
                if got < 0, errno == EINTR { continue }
                guard got > 0 else { throw shrunk(got < 0 ? String(cString: strerror(errno)) : "end of the object") }
                done += got
            }
            return count
        }
        return buffer
    }

    /// Writes `raw` at `offset` of the region (checked to fit by the caller).
    func write(_ raw: UnsafeRawBufferPointer, offset: Int) throws {
        var done = 0
        while done < raw.count {
            let put = pwrite(descriptor, raw.baseAddress! + done, raw.count - done, off_t(self.offset + offset + done))
            if put < 0, errno == EINTR { continue }
            guard put > 0 else { throw shrunk(put < 0 ? String(cString: strerror(errno)) : "no progress") }
            done += put
        }
    }

    private func shrunk(_ reason: String) -> KernelHTTPError {
        KernelHTTPError(400, "shared memory region '\(name)' cannot be used: '\(key)' no longer holds the \(byteSize) bytes registered from offset \(offset) (\(reason))")
    }
}

/// The system shared memory regions clients registered (Triton's `SharedMemoryManager`), by name.
///
/// As in Triton, a region unregistered while requests use it stays registered (listed, usable, its name taken)
/// until the last of them ends (`SharedMemoryUse`), and goes then.
///
/// One registry serves a configuration's inference locations; every worker process of a group holds the same
/// regions (the handler shares each change, `SharedMemoryCommand`). A reload starts with none, as it starts with
/// only the configured models.
public final class SharedMemoryRegistry: Sendable {
    /// `inference.allow_client_shm` (Triton's `--allow-client-shm`): whether clients may register regions at all.
    /// Off, register and unregister answer 501, as Triton's do by default.
    public let allowsClientRegions: Bool
    /// The most regions registered at once: each keeps a descriptor open.
    public static let maximumRegions = 1024
    private struct Entry {
        var region: SharedMemoryRegion
        /// Requests using the region now.
        var users = 0
        /// Unregistered while in use: it goes when `users` comes to 0.
        var awaitingUnregister = false
    }

    private let regions = NIOLockedValueBox<[String: Entry]>([:])

    public init(allowsClientRegions: Bool) {
        self.allowsClientRegions = allowsClientRegions
    }

    /// Refuses a name already registered, or a registry that is full: checked before a register is shared.
    func checkRoom(for name: String) throws {
        try regions.withLockedValue { regions in try Self.checkRoom(for: name, in: regions) }
    }

    private static func checkRoom(for name: String, in regions: [String: Entry]) throws {
        guard regions[name] == nil else { throw KernelHTTPError(400, "shared memory region '\(name)' already in manager") }
        guard regions.count < maximumRegions else {
            throw KernelHTTPError(400, "failed to register shared memory region '\(name)': \(maximumRegions) regions are registered, the most the server holds; unregister one first")
        }
    }

    /// Opens and registers a region.
    func register(name: String, key: String, offset: UInt64, byteSize: UInt64) throws {
        try checkRoom(for: name)
        let region = try SharedMemoryRegion.open(name: name, key: key, offset: offset, byteSize: byteSize)
        try regions.withLockedValue { regions in
            try Self.checkRoom(for: name, in: regions)
            regions[name] = Entry(region: region)
        }
    }

    /// Forgets a region (none of that name is no error, as in Triton); one in use goes when its last request ends.
    func unregister(_ name: String) {
        regions.withLockedValue { regions in Self.unregister(name, in: &regions) }
    }

    func unregisterAll() {
        regions.withLockedValue { regions in
            for name in Array(regions.keys) { Self.unregister(name, in: &regions) }
        }
    }

    private static func unregister(_ name: String, in regions: inout [String: Entry]) {
        guard let entry = regions[name] else { return }
        if entry.users > 0 { regions[name]!.awaitingUnregister = true } else { regions[name] = nil }
    }

    /// The region a tensor names, taken for the request until its `SharedMemoryUse` ends; or Triton's 404.
    func use(_ name: String) throws -> SharedMemoryUse {
        guard let region = regions.withLockedValue({ regions -> SharedMemoryRegion? in
            regions[name]?.users += 1
            return regions[name]?.region
        }) else {
            throw KernelHTTPError(404, "Unable to find shared memory region: '\(name)'")
        }
        return SharedMemoryUse(region: region, registry: self)
    }

    /// A request has done with `region`: an unregistered region goes with its last user.
    fileprivate func release(_ region: SharedMemoryRegion) {
        regions.withLockedValue { regions in
            guard let entry = regions[region.name], entry.region === region else { return }
            regions[region.name]!.users -= 1
            if entry.users == 1, entry.awaitingUnregister { regions[region.name] = nil }
        }
    }

    /// The region of `name` without taking it (tests).
    func region(named name: String) throws -> SharedMemoryRegion {
        guard let region = regions.withLockedValue({ $0[name]?.region }) else {
            throw KernelHTTPError(404, "Unable to find shared memory region: '\(name)'")
        }
        return region
    }

    /// Every region, by name (Triton's status lists them sorted).
    func all() -> [SharedMemoryRegion] {
        regions.withLockedValue { $0.values.map(\.region) }.sorted { $0.name < $1.name }
    }

    func contains(_ name: String) -> Bool {
        regions.withLockedValue { $0[name] != nil }
    }
}

/// A request's hold on a registered region, from its decoding to its answer: while one lasts, unregistering
/// the region leaves it registered (Triton's deferred unregister).
public final class SharedMemoryUse: Sendable {
    let region: SharedMemoryRegion
    private let registry: SharedMemoryRegistry

    fileprivate init(region: SharedMemoryRegion, registry: SharedMemoryRegistry) {
        self.region = region
        self.registry = registry
    }

    deinit { registry.release(region) }
}

/// Where a tensor lives in shared memory: an input's or a requested output's `shared_memory_region`,
/// `shared_memory_byte_size` and `shared_memory_offset` parameters, checked against the region.
public struct SharedMemoryTensor: Sendable, Equatable {
    let use: SharedMemoryUse
    var region: SharedMemoryRegion { use.region }
    /// From the region's start.
    let offset: Int
    let byteSize: Int

    public static func == (a: SharedMemoryTensor, b: SharedMemoryTensor) -> Bool {
        a.region === b.region && a.offset == b.offset && a.byteSize == b.byteSize
    }

    /// Writes an output into the part, which must hold it (Triton's words and status when it does not).
    func write(_ tensor: Tensor, output: String) throws {
        guard tensor.byteCount <= byteSize else {
            throw KernelHTTPError(500, "shared memory size specified with the request for output '\(output)' (\(byteSize) bytes) should be at least \(tensor.byteCount) bytes to hold the results")
        }
        try tensor.withUnsafeBytes { try region.write($0, offset: offset) }
    }

    /// The tensor `parameters` name, or nil when they name no region. Triton's statuses: an unknown region 404, a
    /// part outside it 400.
    static func from(_ parameters: JSONValue?, registry: SharedMemoryRegistry?) throws -> SharedMemoryTensor? {
        guard let parameters, let regionValue = parameters["shared_memory_region"] else { return nil }
        guard let name = regionValue.stringValue else {
            throw KernelHTTPError(400, "Unable to parse 'shared_memory_region': attempt to access JSON non-string as string")
        }
        func size(_ key: String) throws -> UInt64 {
            guard let value = parameters[key], !value.isNull else { return 0 }
            guard case .number(let number) = value, let size = number.uint64 else {
                throw KernelHTTPError(400, "Unable to parse '\(key)': attempt to access JSON non-unsigned-integer as unsigned-integer")
            }
            return size
        }
        let offset = try size("shared_memory_offset")
        let byteSize = try size("shared_memory_byte_size")
        guard let registry else { throw KernelHTTPError(404, "Unable to find shared memory region: '\(name)'") }
        let use = try registry.use(name)
        // Within the region, so both fit in an Int.
        try use.region.checkPart(offset: offset, byteSize: byteSize)
        return SharedMemoryTensor(use: use, offset: Int(offset), byteSize: Int(byteSize))
    }
}
