import KernelCore
import NIOCore

/// Reads an HTTP/1.1 request body from the connection's input by its framing: a declared length, or chunked.
enum HTTPRequestBodyReader {
    case length(remaining: Int)
    case chunked(ChunkedBodyDecoder)

    enum Outcome: Equatable {
        case needMore
        case complete
        /// The body is refused with this error; `showPhase`: its log line names the phase (not for 413).
        case refused(HTTPRequestError, showPhase: Bool)
    }

    /// Moves the body bytes `input` holds into the exchange's collector (memory, then a temporary file). Throws when
    /// the temporary file cannot be made or written.
    mutating func read(_ input: inout ByteBuffer, into inFlight: InFlightExchange,
                       allocator: ByteBufferAllocator) throws -> Outcome {
        switch self {
        case .length(let remaining):
            let take = min(remaining, input.readableBytes)
            try inFlight.body.append(input.readSlice(length: take)!, for: inFlight, allocator: allocator)
            guard take == remaining else {
                self = .length(remaining: remaining - take)
                return .needMore
            }
            return .complete
        case .chunked(var decoder):
            var decoded = allocator.buffer(capacity: min(input.readableBytes, 1 << 16))
            let outcome = decoder.decode(&input, into: &decoded, limit: inFlight.exchange.maxBodySize)
            self = .chunked(decoder)
            try inFlight.body.append(decoded, for: inFlight, allocator: allocator)
            switch outcome {
            case .needMore: return .needMore
            case .done: return .complete
            case .failure(let error): return .refused(error, showPhase: true)
            case .tooLarge(let size):
                return .refused(HTTPRequestError(status: 413, logMessage: "client intended to send too large chunked body: \(size) bytes",
                                                 clientMessage: "request body too large"), showPhase: false)
            }
        }
    }

    /// How discarding a body went.
    enum DiscardOutcome: Equatable {
        case needMore
        case complete
        /// The chunked framing is broken.
        case failure(HTTPRequestError)
    }

    /// Drops the body bytes `input` holds (of any size: a discarded body has no limit, as in nginx).
    mutating func discard(_ input: inout ByteBuffer) -> DiscardOutcome {
        switch self {
        case .length(let remaining):
            let take = min(remaining, input.readableBytes)
            input.moveReaderIndex(forwardBy: take)
            guard take == remaining else {
                self = .length(remaining: remaining - take)
                return .needMore
            }
            return .complete
        case .chunked(var decoder):
            var dropped = ByteBuffer()
            let outcome = decoder.decode(&input, into: &dropped, limit: nil)
            self = .chunked(decoder)
            switch outcome {
            case .needMore: return .needMore
            case .done: return .complete
            case .failure(let error): return .failure(error)
            case .tooLarge: return .needMore  // no limit was given
            }
        }
    }

    /// For a body streamed to its handler (always length-framed): the next slice of it `input` holds, and whether
    /// it is the last.
    mutating func nextStreamSlice(_ input: inout ByteBuffer) -> (slice: ByteBuffer, isLast: Bool)? {
        guard case .length(let remaining) = self, input.readableBytes > 0 else { return nil }
        let take = min(remaining, input.readableBytes)
        self = .length(remaining: remaining - take)
        return (input.readSlice(length: take)!, take == remaining)
    }
}

extension HTTPRequestError {
    /// A declared body over `client_max_body_size`.
    static func bodyTooLarge(_ length: Int) -> HTTPRequestError {
        HTTPRequestError(status: 413, logMessage: "client intended to send too large body: \(length) bytes",
                         clientMessage: "request body too large")
    }
}
