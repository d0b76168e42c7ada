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

    /// Opens the object `key` names and checks that it holds the region, with Triton's statuses and words.
    static func open(name: String, key: String, offset: Int, byteSize: Int) throws -> SharedMemoryRegion {
        // All slashes name no object (Triton's check); glibc refuses any other slash after the leading ones, so
        // a key cannot reach outside /dev/shm.
        guard key.contains(where: { $0 != "/" }) else {
            throw KernelHTTPError(400, "cannot register shared memory region '\(name)' - invalid shm key '\(key)'")
        }
        guard byteSize > 0 else {
            // Triton's mmap of 0 bytes fails with EINVAL; said plainly here.
            throw KernelHTTPError(400, "failed to register shared memory region '\(name)': byte_size must be at least 1")
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
        guard !overflow, end <= Int(status.st_size) else {
            close(descriptor)
            throw KernelHTTPError(400, "failed to register shared memory region '\(name)': invalid args (offset \(offset) + byte_size \(byteSize) is beyond the \(status.st_size) bytes of '\(key)')")
        }
        return SharedMemoryRegion(name: name, key: key, offset: offset, byteSize: byteSize, descriptor: descriptor)
    }

    /// Triton's checks of the part of the region a tensor names (`shared_memory_offset` from the region's start,
    /// `shared_memory_byte_size`).
    func checkPart(offset: Int, byteSize: Int) throws {
        guard offset < self.byteSize else {
            throw KernelHTTPError(400, "Invalid offset for shared memory region: '\(name)'")
        }
        guard byteSize <= self.byteSize - offset else {
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
/// One registry serves a configuration's inference locations; every worker process of a group holds the same
/// regions (the handler shares each change, `SharedMemoryCommand`). A reload starts with none, as it starts with
/// only the configured models.
public final class SharedMemoryRegistry: Sendable {
    /// `inference.allow_client_shm` (Triton's `--allow-client-shm`): whether clients may register regions at all.
    /// Off, register and unregister answer 501, as Triton's do by default.
    public let allowsClientRegions: Bool
    /// The most regions registered at once: each keeps a descriptor open.
    public static let maximumRegions = 1024
    private let regions = NIOLockedValueBox<[String: SharedMemoryRegion]>([:])

    public init(allowsClientRegions: Bool) {
        self.allowsClientRegions = allowsClientRegions
    }

    /// Refuses a name already registered, or a registry that is full: checked before a register is shared.
    func checkRoom(for name: String) throws {
        try regions.withLockedValue { regions in try Self.checkRoom(for: name, in: regions) }
    }

    private static func checkRoom(for name: String, in regions: [String: SharedMemoryRegion]) throws {
        guard regions[name] == nil else { throw KernelHTTPError(400, "shared memory region '\(name)' already in manager") }
        guard regions.count < maximumRegions else {
            throw KernelHTTPError(400, "failed to register shared memory region '\(name)': \(maximumRegions) regions are registered, the most the server holds; unregister one first")
        }
    }

    /// Opens and registers a region.
    func register(name: String, key: String, offset: Int, byteSize: Int) throws {
        try checkRoom(for: name)
        let region = try SharedMemoryRegion.open(name: name, key: key, offset: offset, byteSize: byteSize)
        try regions.withLockedValue { regions in
            try Self.checkRoom(for: name, in: regions)
            regions[name] = region
        }
    }

    /// Forgets a region (none of that name is no error, as in Triton). Requests that use it keep it until they end.
    func unregister(_ name: String) {
        _ = regions.withLockedValue { $0.removeValue(forKey: name) }
    }

    func unregisterAll() {
        regions.withLockedValue { $0.removeAll() }
    }

    /// The region a tensor names, or Triton's 404.
    func region(named name: String) throws -> SharedMemoryRegion {
        guard let region = regions.withLockedValue({ $0[name] }) else {
            throw KernelHTTPError(404, "Unable to find shared memory region: '\(name)'")
        }
        return region
    }

    /// Every region, by name (Triton's status lists them sorted).
    func all() -> [SharedMemoryRegion] {
        regions.withLockedValue { Array($0.values) }.sorted { $0.name < $1.name }
    }

    func contains(_ name: String) -> Bool {
        regions.withLockedValue { $0[name] != nil }
    }
}

/// Where a tensor lives in shared memory: an input's or a requested output's `shared_memory_region`,
/// `shared_memory_byte_size` and `shared_memory_offset` parameters, checked against the region.
public struct SharedMemoryTensor: Sendable, Equatable {
    let region: SharedMemoryRegion
    /// From the region's start.
    let offset: Int
    let byteSize: Int

    var regionName: String { region.name }

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
        func size(_ key: String) throws -> Int {
            guard let value = parameters[key], !value.isNull else { return 0 }
            guard case .number(let number) = value, let size = number.int64, size >= 0 else {
                throw KernelHTTPError(400, "Unable to parse '\(key)': attempt to access JSON non-unsigned-integer as unsigned-integer")
            }
            return Int(size)
        }
        let offset = try size("shared_memory_offset")
        let byteSize = try size("shared_memory_byte_size")
        guard let registry else { throw KernelHTTPError(404, "Unable to find shared memory region: '\(name)'") }
        let region = try registry.region(named: name)
        try region.checkPart(offset: offset, byteSize: byteSize)
        return SharedMemoryTensor(region: region, offset: offset, byteSize: byteSize)
    }
}
