import KernelConfig
import KernelCore
import Logging
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// nginx's `proxy_buffering` and `uwsgi_buffering` with their buffers and temporary file, for one location: how far
/// an upstream's answer is read ahead of the client.
public struct UpstreamBuffering: Sendable, Equatable {
    /// On: the answer is read from the upstream ahead of the client, so that the upstream (a uWSGI worker, a
    /// backend connection) is let go while a slow client is still being written to. Off, or an upstream's
    /// `X-Accel-Buffering: no`: each part is read only when the client has taken the one before.
    public var enabled = true
    /// `*_buffers NUMBER SIZE` as one total: how much is held in memory.
    public var memorySize = 8 * 4096
    /// `*_max_temp_file_size`: beyond the memory, up to this much of the answer waits in a temporary file; 0
    /// keeps it to the memory (then the upstream waits for the client).
    public var maxTempFileSize: Int64 = 1024 * 1024 * 1024
    /// `*_temp_path`: where the temporary files are made.
    public var tempPath: String

    public init(tempPath: String) {
        self.tempPath = tempPath
    }

    /// The location keys of a protocol's buffering (`prefix` is `proxy` or `uwsgi`).
    public static func keys(prefix: String) -> [String] {
        ["buffering", "buffers", "max_temp_file_size", "temp_path"].map { prefix + "_" + $0 }
    }

    /// Reads `PREFIX_buffering`, `PREFIX_buffers`, `PREFIX_max_temp_file_size` and `PREFIX_temp_path` (relative to
    /// the file that names it) from a location; `defaultTempPath` when it names none.
    public static func decode(_ location: ConfigMapping, prefix: String, defaultTempPath: String) throws -> UpstreamBuffering {
        var buffering = UpstreamBuffering(tempPath: defaultTempPath)
        if let flag = location.optional(prefix + "_buffering") { buffering.enabled = try flag.bool() }
        if let buffers = location.optional(prefix + "_buffers") { buffering.memorySize = try decodeBuffers(buffers) }
        if let value = location.optional(prefix + "_max_temp_file_size") {
            buffering.maxTempFileSize = Int64(try value.size().bytes)
        }
        if let value = location.optional(prefix + "_temp_path") {
            buffering.tempPath = ConfigPath.resolve(try value.nonEmptyString(), in: ConfigPath.directory(of: value.mark.file))
        }
        return buffering
    }

    /// `*_buffers: "8 4k"`: the total a buffered answer may hold in memory.
    public static func decodeBuffers(_ value: ConfigValue) throws -> Int {
        let what = "\"NUMBER SIZE\" such as \"8 4k\""
        guard let text = value.node.scalarText else { throw value.expected(what) }
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard parts.count == 2, let count = Int(parts[0]), (2...1024).contains(count),
              let size = ByteSize(parsing: String(parts[1])), size.bytes >= 512, size.bytes <= 1 << 20 else {
            throw value.expected(what + " (2 to 1024 buffers of 512 bytes to 1m)")
        }
        return count * size.bytes
    }

    /// The answer as the client gets it: an upstream's `X-Accel-Buffering` (`yes`/`no`) honoured, as nginx does in
    /// both directions, and hidden unless `passAccelHeader`; a streamed body read ahead when buffering is on. The
    /// engine's own answers (a 502, a 504: no head came from a peer) pass as they are.
    public func apply(to response: KernelResponse, passAccelHeader: Bool, logger: Logger,
                      eventLoop: any EventLoop) -> KernelResponse {
        guard response.upstream?.attempts.last?.headerTime != nil else { return response }
        var response = response
        var buffered = enabled
        if let accel = response.headers["X-Accel-Buffering"] {
            if accel.equalsCaseInsensitive("no") { buffered = false }
            if accel.equalsCaseInsensitive("yes") { buffered = true }
            if !passAccelHeader { response.headers.remove("X-Accel-Buffering") }
        }
        if buffered, case .stream(let stream) = response.body {
            response.body = .stream(UpstreamResponseBuffer(stream, settings: self, logger: logger, eventLoop: eventLoop).stream)
        }
        return response
    }
}

/// Reads an upstream answer ahead of the client: up to `memorySize` bytes in memory, then into a temporary file up
/// to `maxTempFileSize`, so that the upstream is let go once it has sent everything, however slowly the client
/// reads (nginx's buffering, which is what keeps a uWSGI worker from waiting on a slow client). What is held when
/// the client asks goes out at once, joined, so reading ahead never holds a part back: server-sent events pass as
/// they come. Lives on the request's event loop.
///
/// Order is kept by one rule: a part goes to memory only while the file holds nothing unread, so whatever is in
/// memory is older than whatever is in the file.
public final class UpstreamResponseBuffer: @unchecked Sendable {
    /// The most read back from the file for one part of the client's.
    static let fileReadSize = 64 * 1024

    private let upstream: ResponseBodyStream
    private let settings: UpstreamBuffering
    private let logger: Logger
    private let eventLoop: any EventLoop
    private var memory = CircularBuffer<ByteBuffer>()
    private var memoryBytes = 0
    private var descriptor: CInt = -1
    private var path = ""
    /// Bytes of the file already handed to the client, and written to it: the unread part lies between. Both go
    /// back to 0 when the client has caught up, so the file is reused from its start.
    private var fileRead: Int64 = 0
    private var fileWritten: Int64 = 0
    private var reading = false
    private var ended = false
    private var failure: (any Error)?
    private var waiter: EventLoopPromise<ByteBuffer?>?
    private var cancelled = false

    public init(_ upstream: ResponseBodyStream, settings: UpstreamBuffering, logger: Logger, eventLoop: any EventLoop) {
        self.upstream = upstream
        self.settings = settings
        self.logger = logger
        self.eventLoop = eventLoop
    }

    deinit {
        if descriptor >= 0 { close(descriptor) }
    }

    /// The stream the client pulls.
    public var stream: ResponseBodyStream {
        ResponseBodyStream(next: { self.next() }, cancel: { self.cancel() })
    }

    /// Whether a temporary file was made (for tests and log lines).
    var usedTemporaryFile: Bool { !path.isEmpty }

    private var fileHoldsUnread: Bool { fileWritten > fileRead }

    private func next() -> EventLoopFuture<ByteBuffer?> {
        guard eventLoop.inEventLoop else { return eventLoop.flatSubmit { self.next() } }
        if cancelled { return eventLoop.makeSucceededFuture(nil) }
        if var first = memory.popFirst() {
            while let part = memory.popFirst() { first.writeImmutableBuffer(part) }
            memoryBytes = 0
            fill()
            return eventLoop.makeSucceededFuture(first)
        }
        if fileHoldsUnread {
            let count = Int(min(Int64(Self.fileReadSize), fileWritten - fileRead))
            do {
                let part = try TemporaryFile.read(from: descriptor, path: path, offset: fileRead, count: count,
                                                  allocator: ByteBufferAllocator())
                fileRead += Int64(count)
                if fileRead == fileWritten {
                    // Caught up: the next parts go to memory again, and the file is written from its start.
                    fileRead = 0
                    fileWritten = 0
                    _ = lseek(descriptor, 0, SEEK_SET)
                }
                fill()
                return eventLoop.makeSucceededFuture(part)
            } catch {
                return failNow(error)
            }
        }
        if let failure { return eventLoop.makeFailedFuture(failure) }
        if ended {
            closeFile()
            return eventLoop.makeSucceededFuture(nil)
        }
        let promise = eventLoop.makePromise(of: ByteBuffer?.self)
        waiter = promise
        fill()
        return promise.futureResult
    }

    /// Room for one more part: in memory while the file holds nothing unread, else in the file up to its limit.
    private var hasRoom: Bool {
        if !fileHoldsUnread, memoryBytes < settings.memorySize { return true }
        return settings.maxTempFileSize > 0 && fileWritten < settings.maxTempFileSize
    }

    /// One more upstream read, unless one is under way or there is no room.
    private func fill() {
        guard !reading, !ended, !cancelled, failure == nil, hasRoom else { return }
        reading = true
        upstream.next().hop(to: eventLoop).assumeIsolated().whenComplete { result in
            self.reading = false
            guard !self.cancelled else { return }
            switch result {
            case .success(.some(let part)):
                if let waiter = self.waiter {
                    // Someone waits only when nothing is held: the part goes straight to them.
                    self.waiter = nil
                    waiter.succeed(part)
                } else if !self.hold(part) {
                    return
                }
                self.fill()
            case .success(.none):
                self.ended = true
                if let waiter = self.waiter {
                    self.waiter = nil
                    waiter.succeed(nil)
                }
            case .failure(let error):
                self.failure = error
                if let waiter = self.waiter {
                    self.waiter = nil
                    waiter.fail(error)
                }
            }
        }
    }

    /// Keeps `part` in memory or in the file; false when the file could not be written (the answer has failed).
    private func hold(_ part: ByteBuffer) -> Bool {
        if !fileHoldsUnread, memoryBytes < settings.memorySize || settings.maxTempFileSize == 0 {
            memory.append(part)
            memoryBytes += part.readableBytes
            return true
        }
        do {
            if descriptor < 0 {
                (descriptor, path) = try TemporaryFile.create(in: settings.tempPath)
                logger.warning("an upstream response is buffered to a temporary file \(path) while reading upstream")
            }
            try TemporaryFile.write(part, to: descriptor, path: path)
            fileWritten += Int64(part.readableBytes)
            return true
        } catch {
            // nginx's [crit] for a temp file it cannot write; the answer cannot be completed.
            logger.critical("\(error) while reading upstream")
            failure = LoggedBodyFailure(error)
            upstream.cancel()
            return false
        }
    }

    private func failNow(_ error: any Error) -> EventLoopFuture<ByteBuffer?> {
        logger.critical("\(error) while sending to client")
        let logged = LoggedBodyFailure(error)
        failure = logged
        cancel()
        return eventLoop.makeFailedFuture(logged)
    }

    private func closeFile() {
        if descriptor >= 0 { close(descriptor) }
        descriptor = -1
        fileRead = 0
        fileWritten = 0
    }

    private func cancel() {
        guard eventLoop.inEventLoop else { return eventLoop.execute { self.cancel() } }
        guard !cancelled else { return }
        cancelled = true
        memory.removeAll()
        memoryBytes = 0
        closeFile()
        upstream.cancel()
        if let waiter {
            self.waiter = nil
            waiter.succeed(nil)
        }
    }
}
