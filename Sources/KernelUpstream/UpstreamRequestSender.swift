import KernelCore
import NIOCore

/// Writes one request to the upstream: the protocol's head, then the body from memory, from the spooled file or
/// from the client connection (unbuffered), each part framed by the protocol. The next part is read only once the
/// previous one was written, so memory stays bounded by one part whatever the body's size; `*_send_timeout` is
/// the longest time without progress between two writes (as nginx measures it, through `SendTimeoutWatch`), so a
/// large body that keeps moving never times out. Lives on the upstream channel's event loop.
final class UpstreamRequestSender: @unchecked Sendable {
    /// Bytes read from a spooled file per part.
    static var filePartSize: Int { 256 * 1024 }

    private let channel: any Channel
    private let eventLoop: any EventLoop
    private let hooks: any UpstreamProtocol
    private let watch: SendTimeoutWatch
    /// Called once, when the whole request is written or sending failed (a callback, not a future: one object
    /// fewer per request on the path every proxied request takes).
    private var completion: ((Result<Void, any Error>) -> Void)?

    init(channel: any Channel, hooks: any UpstreamProtocol, sendTimeout: TimeAmount, eventLoop: any EventLoop,
         onTimeout: @escaping () -> Void) {
        self.channel = channel
        self.hooks = hooks
        self.eventLoop = eventLoop
        watch = SendTimeoutWatch(timeout: sendTimeout, eventLoop: eventLoop, onTimeout: onTimeout)
    }

    /// The log message of a send that made no progress within `*_send_timeout`.
    static let timeoutMessage = "upstream timed out (110: Connection timed out) while sending request to upstream"

    /// A request that is its head alone (no body, no trailer, one slice: the common GET) is written here, with no
    /// sender object, and the send timeout's watch is made only when the flush could not write it at once (the
    /// reader then holds it until the write completes: `UpstreamConnectionHandler.watchSend`). False, and nothing
    /// written, for any other request.
    static func sendHeadOnly(_ head: ByteBuffer, of request: KernelRequest, hooks: any UpstreamProtocol, channel: any Channel,
                             sendTimeout: TimeAmount, reader: UpstreamConnectionHandler,
                             completion: @escaping (Result<Void, any Error>) -> Void) -> Bool {
        guard request.bodySource == nil, (request.body?.readableBytes ?? 0) == 0, head.readableBytes <= SendProgress.sliceSize,
              hooks.requestBodyTrailer(allocator: channel.allocator) == nil else { return false }
        let promise = channel.eventLoop.makePromise(of: Void.self)
        promise.futureResult.assumeIsolated().whenComplete(completion)
        channel.writeAndFlush(head, promise: promise)
        if !reader.isRequestSent {
            // Still waiting for the socket: timed from now, as the sender times a write the flush left pending.
            let watch = SendTimeoutWatch(timeout: sendTimeout, eventLoop: channel.eventLoop) { [reader] in
                reader.fail(UpstreamFailure.timeout(timeoutMessage))
            }
            watch.writeStarted()
            reader.watchSend(watch)
        }
        return true
    }

    /// Writes the request; `completion` is called once the whole request is written, or with the failure (the
    /// channel closed, the client's body broke off). It may be called before `send` returns.
    func send(head: ByteBuffer, request: KernelRequest, completion: @escaping (Result<Void, any Error>) -> Void) {
        self.completion = completion
        switch request.bodySource {
        case .file(let file)?:
            write(head)
            sendFile(file, from: 0)
        case .stream(let stream)?:
            write(head)
            sendStream(stream)
        case nil:
            let body = request.body.flatMap { $0.readableBytes > 0 ? hooks.frameRequestBodyPart($0) : nil }
            if let trailer = hooks.requestBodyTrailer(allocator: channel.allocator) {
                write(head)
                if let body { writeThen(body) { self.sendTrailer(trailer) } } else { sendTrailer(trailer) }
            } else {
                // Head and body (a uwsgi request: no trailer) in one flush; the last write's end is the request's.
                if body != nil { write(head, flush: false) }
                write(body ?? head) { result in self.finish(result) }
            }
        }
    }

    private func finish(_ result: Result<Void, any Error>) {
        guard let completion else { return }
        self.completion = nil
        watch.stop()
        completion(result)
    }

    /// Writes (and flushes, unless told not to) `buffer` in watched slices; `written` is called when the last
    /// has been written (or failed). One callback per slice does both, so a small request's write costs one
    /// promise and one closure.
    private func write(_ buffer: ByteBuffer, flush: Bool = true, then written: ((Result<Void, any Error>) -> Void)? = nil) {
        SendProgress.forEachSlice(of: buffer) { slice, isLast in
            let promise = eventLoop.makePromise(of: Void.self)
            watch.writeStarted(arming: false)
            if isLast, let written {
                promise.futureResult.assumeIsolated().whenComplete { result in
                    self.watch.writeCompleted()
                    written(result)
                }
            } else {
                promise.futureResult.assumeIsolated().whenComplete { _ in self.watch.writeCompleted() }
            }
            channel.write(slice, promise: promise)
        }
        if flush {
            channel.flush()
            // Only a write the flush could not finish needs the send timer.
            watch.armIfWaiting()
        }
    }

    /// After a file or streamed body: the protocol's end of the body if it has one, else (every part before was
    /// written, each waited for) the request is sent.
    private func sendTrailer() {
        if let trailer = hooks.requestBodyTrailer(allocator: channel.allocator) {
            sendTrailer(trailer)
        } else {
            finish(.success(()))
        }
    }

    /// The protocol's end of the body, whose completion says everything before it left.
    private func sendTrailer(_ trailer: ByteBuffer) {
        write(trailer) { result in self.finish(result) }
    }

    private func sendFile(_ file: SpooledRequestBody, from offset: Int64) {
        guard offset < file.length else {
            sendTrailer()
            return
        }
        file.read(from: offset, count: Self.filePartSize, allocator: channel.allocator, on: eventLoop)
            .assumeIsolated().whenComplete { result in
                switch result {
                case .success(let part):
                    self.writeThen(self.hooks.frameRequestBodyPart(part)) {
                        self.sendFile(file, from: offset + Int64(part.readableBytes))
                    }
                case .failure(let error):
                    self.finish(.failure(UpstreamFailure.error("\(error) while sending request to upstream")))
                }
            }
    }

    private func sendStream(_ stream: RequestBodyStream) {
        stream.next().hop(to: eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(.some(let part)):
                self.writeThen(self.hooks.frameRequestBodyPart(part)) { self.sendStream(stream) }
            case .success(.none):
                self.sendTrailer()
            case .failure(let error):
                // The client broke off or timed out: the upstream gets no more (its connection closes).
                self.finish(.failure(UpstreamFailure.error("\(error) while sending request to upstream")))
            }
        }
    }

    /// Writes `part` and calls `next` once it is written; a failed write ends the request.
    private func writeThen(_ part: ByteBuffer, _ next: @escaping () -> Void) {
        write(part) { result in
            switch result {
            case .success: next()
            case .failure(let error): self.finish(.failure(error))
            }
        }
    }
}
