import Atomics
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// How a location keeps request bodies: nginx's `client_body_buffer_size` and `client_body_temp_path`.
public struct RequestBodyBuffering: Sendable, Equatable {
    /// Bytes of a body held in memory; a larger body is spooled to a temporary file.
    public var bufferSize: Int
    /// The directory of the temporary files; nil is `client_body_temp` beside the pid file (nginx keeps it under
    /// its prefix).
    public var tempPath: String?

    /// nginx's default on 64-bit platforms.
    public static let defaultBufferSize = 16 * 1024
    public static let `default` = RequestBodyBuffering(bufferSize: defaultBufferSize, tempPath: nil)

    public init(bufferSize: Int = RequestBodyBuffering.defaultBufferSize, tempPath: String? = nil) {
        self.bufferSize = bufferSize
        self.tempPath = tempPath
    }
}

/// What a handler needs of a request body.
public enum RequestBodyUse: Sendable {
    /// The whole body in memory, as `KernelRequest.body` (a spooled body is read back for it): models.
    case memory
    /// The body where it is: in memory, or the spooled file in `KernelRequest.bodySource` (read in parts: a
    /// proxy).
    case spooled
    /// The handler runs as soon as the head is routed and reads the body while it arrives
    /// (`KernelRequest.bodySource` is a stream): `uwsgi_request_buffering off`.
    case streamed
    /// The body is not used: the handler runs as soon as the head is routed, and the connection reads the body
    /// and drops it, after the answer if need be, before the next request (nginx's discarding of the body of a
    /// `return`, a 404, a redirect).
    case discarded
}

/// A request body that is not in memory.
public enum RequestBodySource: Sendable {
    /// Spooled to a temporary file (the body was larger than `client_body_buffer_size`).
    case file(SpooledRequestBody)
    /// Arriving while the handler runs.
    case stream(RequestBodyStream)

    /// The body's length when known.
    public var length: Int64? {
        switch self {
        case .file(let file): return file.length
        case .stream(let stream): return stream.length
        }
    }
}

/// The largest body a handler can get in memory: a `ByteBuffer` holds at most `UInt32.max` bytes.
public let maxInMemoryBodySize = Int(UInt32.max)

/// A request body spooled to a temporary file. The file was unlinked right after it was created, so it disappears
/// when the last reference to this object goes (the descriptor is closed then), however the request ends.
public final class SpooledRequestBody: @unchecked Sendable {
    /// Where the file was created (for log lines; it has no name any more).
    public let path: String
    public let length: Int64
    // Written only before the object is shared; read by `pread` from any thread, which needs no lock.
    private let descriptor: CInt

    init(path: String, length: Int64, descriptor: CInt) {
        self.path = path
        self.length = length
        self.descriptor = descriptor
    }

    deinit { close(descriptor) }

    /// Reads up to `count` bytes from `offset` on a thread of `NIOThreadPool.singleton`, never on the event loop.
    public func read(from offset: Int64, count: Int, allocator: ByteBufferAllocator,
                     on eventLoop: any EventLoop) -> EventLoopFuture<ByteBuffer> {
        let wanted = Int(min(Int64(count), max(0, length - offset)))
        guard wanted > 0 else { return eventLoop.makeSucceededFuture(allocator.buffer(capacity: 0)) }
        return NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) {
            try self.readNow(from: offset, count: wanted, allocator: allocator)
        }
    }

    /// The whole body in one buffer, read off the event loop: for handlers that need it in memory.
    public func readAll(allocator: ByteBufferAllocator, on eventLoop: any EventLoop) -> EventLoopFuture<ByteBuffer> {
        guard length <= Int64(maxInMemoryBodySize) else {
            return eventLoop.makeFailedFuture(RequestBodyError.tooLargeForMemory(length))
        }
        return read(from: 0, count: Int(length), allocator: allocator, on: eventLoop)
    }

    private func readNow(from offset: Int64, count: Int, allocator: ByteBufferAllocator) throws -> ByteBuffer {
        // The file holds exactly `length` bytes: a short read is a truncated file.
        try TemporaryFile.read(from: descriptor, path: path, offset: offset, count: count, allocator: allocator)
    }
}

/// Why a body could not be kept or given back.
public enum RequestBodyError: Error, CustomStringConvertible {
    /// A temporary file could not be created, written or read (nginx's `[crit]` lines); the client gets 500.
    case io(String)
    /// The handler needs the body in memory and it is larger than a buffer can be; the client gets 413.
    case tooLargeForMemory(Int64)
    /// An unbuffered body will not arrive whole: the client left, timed out, or its request was answered.
    case clientAborted(String)

    public var description: String {
        switch self {
        case .io(let message): return message
        case .tooLargeForMemory(let length): return "request body of \(length) bytes is too large to be held in memory"
        case .clientAborted(let reason): return reason
        }
    }
}

/// Collects a request body as it is read: up to `client_body_buffer_size` in memory, the rest in a temporary file
/// under `client_body_temp_path`, as nginx does. Both listeners (HTTP and uwsgi) read bodies through it.
///
/// Lives on the connection's event loop. Writes to the file are plain `write(2)` calls on the event loop, as
/// nginx makes them without `aio`: the page cache takes them. A body that fits stays the received bytes (a slice
/// of the input, no copy) when it arrives in one read.
public final class RequestBodySink {
    private let buffering: RequestBodyBuffering
    private let tempDirectory: String
    private let logger: Logger
    private let allocator: ByteBufferAllocator
    private var memory: ByteBuffer?
    private var memoryIsOwned = false
    /// The declared body length, when the framing gives one: the in-memory buffer is sized to it.
    private let expectedLength: Int64?
    private var descriptor: CInt = -1
    private var path = ""
    /// Body bytes taken so far (Int64: bodies may exceed 4 GiB).
    public private(set) var received: Int64 = 0

    /// `tempDirectory` is the resolved `client_body_temp_path`; `expectedLength` the declared length, if any.
    public init(buffering: RequestBodyBuffering, tempDirectory: String, logger: Logger, allocator: ByteBufferAllocator,
                expectedLength: Int64? = nil) {
        self.buffering = buffering
        self.expectedLength = expectedLength
        self.tempDirectory = tempDirectory
        self.logger = logger
        self.allocator = allocator
    }

    deinit {
        if descriptor >= 0 { close(descriptor) }
    }

    /// Whether the body went to a temporary file.
    public var isSpooled: Bool { descriptor >= 0 }

    /// Adds body bytes. Throws `RequestBodyError.io` when the temporary file cannot be made or written.
    public func append(_ part: ByteBuffer) throws {
        let count = part.readableBytes
        guard count > 0 else { return }
        received += Int64(count)
        if descriptor >= 0 {
            try write(part)
            return
        }
        let held = memory?.readableBytes ?? 0
        if held + count <= buffering.bufferSize {
            if memory == nil {
                memory = part
            } else {
                if !memoryIsOwned {
                    // As nginx sizes its body buffer: the declared length when it fits, never a whole
                    // `client_body_buffer_size` up front (16m per request for a small body would be mapped and
                    // unmapped each time); without a length the buffer grows as bytes come.
                    let wanted = expectedLength.map { min($0, Int64(buffering.bufferSize)) } ?? Int64(held + count)
                    var owned = allocator.buffer(capacity: max(Int(wanted), held + count))
                    owned.writeImmutableBuffer(memory!)
                    memory = owned
                    memoryIsOwned = true
                }
                memory!.writeImmutableBuffer(part)
            }
            return
        }
        try openTemporaryFile()
        if let memory { try write(memory) }
        memory = nil
        try write(part)
    }

    /// The complete body: in memory (nil when empty), or the spooled file.
    public func finish() -> (memory: ByteBuffer?, file: SpooledRequestBody?) {
        if descriptor >= 0 {
            let file = SpooledRequestBody(path: path, length: received, descriptor: descriptor)
            descriptor = -1
            return (nil, file)
        }
        defer { memory = nil }
        return (memory, nil)
    }

    private func openTemporaryFile() throws {
        (descriptor, path) = try TemporaryFile.create(in: tempDirectory)
        logger.warning("a client request body is buffered to a temporary file \(path)")
    }

    private func write(_ buffer: ByteBuffer) throws {
        try TemporaryFile.write(buffer, to: descriptor, path: path)
    }
}

/// The temporary files of request bodies and of buffered upstream answers, made as nginx makes them: a name of
/// ten digits in the temp path (created on first use, mode 0700), unlinked at once so that the file goes with its
/// descriptor however its request ends. Plain `write(2)` and `pread(2)` calls, as nginx makes them without `aio`:
/// the page cache takes them.
public enum TemporaryFile {
    /// A sequence number, unique per process; another process using the same directory makes `O_EXCL` fail and
    /// the next number is tried.
    private static let sequence = ManagedAtomic<UInt64>(0)

    /// A new nameless file in `directory`: its descriptor, and the path it was made at (for log lines).
    public static func create(in directory: String) throws -> (descriptor: CInt, path: String) {
        var createdDirectory = false
        var attempts = 0
        while true {
            attempts += 1
            let number = String(sequence.wrappingIncrementThenLoad(ordering: .relaxed))
            let candidate = directory + "/" + String(repeating: "0", count: max(0, 10 - number.count)) + number
            let fd = open(candidate, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd >= 0 {
                unlink(candidate)
                return (fd, candidate)
            }
            let code = errno
            if code == ENOENT, !createdDirectory {
                createdDirectory = true
                try makeDirectories(directory)
                continue
            }
            if code == EEXIST, attempts < 100 { continue }
            throw RequestBodyError.io("open() \"\(candidate)\" failed (\(code): \(String(cString: strerror(code))))")
        }
    }

    /// `mkdir -p` with mode 0700, as nginx creates its temp paths.
    public static func makeDirectories(_ directory: String) throws {
        var prefix = directory.hasPrefix("/") ? "" : "."
        for component in directory.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o700) != 0, errno != EEXIST {
                throw RequestBodyError.io("mkdir() \"\(prefix)\" failed (\(errno): \(String(cString: strerror(errno))))")
            }
        }
    }

    /// Writes all of `buffer` at the file's end.
    public static func write(_ buffer: ByteBuffer, to descriptor: CInt, path: String) throws {
        try buffer.withUnsafeReadableBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw RequestBodyError.io("write() \"\(path)\" failed (\(errno): \(String(cString: strerror(errno))))")
                }
                offset += n
            }
        }
    }

    /// Reads `count` bytes from `offset` into a new buffer; a short read (the file holds fewer) is an error.
    public static func read(from descriptor: CInt, path: String, offset: Int64, count: Int,
                            allocator: ByteBufferAllocator) throws -> ByteBuffer {
        var buffer = allocator.buffer(capacity: count)
        var done = 0
        while done < count {
            let got = try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count - done) { pointer -> Int in
                while true {
                    let n = pread(descriptor, pointer.baseAddress, count - done, off_t(offset + Int64(done)))
                    if n >= 0 { return n }
                    if errno != EINTR { throw RequestBodyError.io("pread() \"\(path)\" failed (\(errno): \(String(cString: strerror(errno))))") }
                }
            }
            guard got > 0 else { throw RequestBodyError.io("pread() \"\(path)\" returned a short read") }
            done += got
        }
        return buffer
    }
}

/// A request body pulled while it arrives (`uwsgi_request_buffering off`), with backpressure: the connection reads
/// from the client only while the consumer keeps up.
///
/// The consumer calls `next()` again only after the previous part completed; nil is the end, a failed future means
/// the client broke off (or timed out). The producer (the protocol module) `push`es parts, `finish`es or `fail`s,
/// and is told through `onDemand` when the consumer wants more.
public final class RequestBodyStream: @unchecked Sendable {
    /// The body's length when the client declared it.
    public let length: Int64?
    private let eventLoop: any EventLoop
    // Loop-bound state: touched only on `eventLoop` (`next` hops there).
    private var parts = CircularBuffer<ByteBuffer>()
    private var bufferedBytes = 0
    private var ended = false
    private var failure: (any Error)?
    private var waiter: EventLoopPromise<ByteBuffer?>?
    private var demand: (() -> Void)?
    private var received: [() -> Void] = []

    /// Parts held beyond this make the producer stop reading from the client.
    public static let highWatermark = 256 * 1024

    public init(length: Int64?, eventLoop: any EventLoop) {
        self.length = length
        self.eventLoop = eventLoop
    }

    // MARK: producer side (on the event loop)

    /// Called (on the event loop) whenever the consumer has taken what was held: the producer may read again.
    public func onDemand(_ callback: @escaping () -> Void) {
        eventLoop.preconditionInEventLoop()
        demand = callback
    }

    /// Whether the consumer is behind: the producer should not read more from the client.
    public var isFull: Bool {
        eventLoop.preconditionInEventLoop()
        return bufferedBytes >= RequestBodyStream.highWatermark
    }

    public func push(_ part: ByteBuffer) {
        eventLoop.preconditionInEventLoop()
        guard !ended, failure == nil, part.readableBytes > 0 else { return }
        if let waiter {
            self.waiter = nil
            waiter.succeed(part)
        } else {
            parts.append(part)
            bufferedBytes += part.readableBytes
        }
    }

    public func finish() {
        eventLoop.preconditionInEventLoop()
        guard !ended, failure == nil else { return }
        ended = true
        if let waiter, parts.isEmpty {
            self.waiter = nil
            waiter.succeed(nil)
        }
        let callbacks = received
        received = []
        for callback in callbacks { callback() }
    }

    /// Runs `callback` on the event loop once the client has sent the whole body (at once when it already has);
    /// never when the body fails. For what counts from the end of the body, as `harakiri` does.
    public func whenReceived(_ callback: @escaping () -> Void) {
        eventLoop.preconditionInEventLoop()
        guard failure == nil else { return }
        if ended {
            callback()
        } else {
            received.append(callback)
        }
    }

    public func fail(_ error: any Error) {
        eventLoop.preconditionInEventLoop()
        guard !ended, failure == nil else { return }
        failure = error
        parts.removeAll()
        bufferedBytes = 0
        received = []
        if let waiter {
            self.waiter = nil
            waiter.fail(error)
        }
    }

    // MARK: consumer side

    /// The next part, nil at the end.
    public func next() -> EventLoopFuture<ByteBuffer?> {
        if eventLoop.inEventLoop { return pull() }
        return eventLoop.flatSubmit { self.pull() }
    }

    private func pull() -> EventLoopFuture<ByteBuffer?> {
        if let part = parts.popFirst() {
            bufferedBytes -= part.readableBytes
            if parts.isEmpty { demand?() }
            return eventLoop.makeSucceededFuture(part)
        }
        if let failure { return eventLoop.makeFailedFuture(failure) }
        if ended { return eventLoop.makeSucceededFuture(nil) }
        precondition(waiter == nil, "RequestBodyStream.next called again before the previous part arrived")
        let promise = eventLoop.makePromise(of: ByteBuffer?.self)
        waiter = promise
        demand?()
        return promise.futureResult
    }
}
