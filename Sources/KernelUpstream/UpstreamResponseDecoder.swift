import KernelCore
import NIOCore

/// What the upstream response decoder emits.
public enum UpstreamResponsePart: Sendable {
    case head(UpstreamResponseHead)
    case body(ByteBuffer)
    case end
    /// Bytes came after the end the answer's framing gave (more than its `Content-Length`, data after the last
    /// chunk): the warning nginx logs for it. Sent once, after `.end`; the bytes themselves are dropped.
    case excess(String)
}

/// Why an upstream's answer broke off, whatever its protocol.
public enum UpstreamResponseError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Closed before the head was complete.
    case prematureCloseInHead
    /// Closed before `expected` body bytes arrived.
    case prematureCloseInBody(received: Int64, expected: Int64)
    /// Closed before a protocol-encoded body (chunked) ended.
    case prematureCloseInEncodedBody

    public var description: String {
        switch self {
        case .prematureCloseInHead, .prematureCloseInEncodedBody: return "upstream prematurely closed connection"
        case .prematureCloseInBody(let received, let expected):
            return "upstream prematurely closed connection (\(received) of \(expected) body bytes)"
        }
    }
}

/// An answer the protocol's parser or body decoder refused (nginx's `invalid_header`: 502); `underlying` is the
/// protocol's error, whose description is the log message.
public struct UpstreamInvalidResponse: Error, Sendable, CustomStringConvertible {
    public let underlying: any Error & Sendable
    /// Whether the head was refused (else the body).
    public let inHead: Bool

    public var description: String { "\(underlying)" }
}

/// Splits an upstream's bytes into the head (through the protocol's parser) and body parts delimited as the head
/// says, ending with `.end`. The framing is generic: by length, until the connection closes, none, or through the
/// protocol's own body decoder (chunked).
///
/// Not generic over the parser: the engine makes one per request, and a generic decoder would have its metadata
/// looked up at run time each time (this module's code is not specialised for the protocol modules' parsers).
public struct UpstreamResponseDecoder: ByteToMessageDecoder, Sendable {
    public typealias InboundOut = UpstreamResponsePart

    private enum State: Sendable {
        case head
        case length(remaining: Int64, received: Int64, expected: Int64)
        case untilClose
        case decoded(any UpstreamBodyDecoder)
        /// After a `101 Switching Protocols` head: the bytes are another protocol's, passed on as they come.
        case tunnel
        case done
    }

    private var parser: any UpstreamResponseParser
    /// Whether the request was `HEAD` (its answer has no body whatever its headers say).
    public let isHeadRequest: Bool
    private var state = State.head
    /// nginx's warning for bytes after the end of an answer of this framing; nil once reported, and for an answer
    /// that ends with the connection.
    private var excessWarning: String?

    /// Whether the answer has ended (bytes after it are dropped).
    var hasEnded: Bool {
        if case .done = state { return true }
        return false
    }

    public init(parser: any UpstreamResponseParser, isHeadRequest: Bool) {
        self.parser = parser
        self.isHeadRequest = isHeadRequest
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        switch state {
        case .head:
            let parsed: UpstreamResponseHead?
            do {
                parsed = try parser.parseHead(&buffer)
            } catch {
                state = .done
                throw UpstreamInvalidResponse(underlying: error, inHead: true)
            }
            guard var head = parsed else { return .needMoreData }
            if head.status == 101 {
                // The connection now carries another protocol: it has no body and is never reused.
                head.framing = .none
                head.reusable = false
                state = .tunnel
                context.fireChannelRead(wrapInboundOut(.head(head)))
                return .continue
            }
            // The generic rule: no body for HEAD, 1xx, 204 and 304, whatever the headers say.
            if isHeadRequest || head.status < 200 || head.status == 204 || head.status == 304 { head.framing = .none }
            let framing = head.framing
            context.fireChannelRead(wrapInboundOut(.head(head)))
            switch framing {
            case .none, .length:
                excessWarning = "upstream sent more data than specified in \"Content-Length\" header"
            case .decoded:
                excessWarning = "upstream sent data after final chunk"
            case .untilClose:
                break
            }
            switch framing {
            case .none, .length(0):
                end(context)
            case .length(let length):
                state = .length(remaining: length, received: 0, expected: length)
            case .untilClose:
                state = .untilClose
            case .decoded(let decoder):
                state = .decoded(decoder)
            }
            return .continue

        case .length(let remaining, let received, let expected):
            guard buffer.readableBytes > 0 else { return .needMoreData }
            let length = Int(min(remaining, Int64(buffer.readableBytes)))
            context.fireChannelRead(wrapInboundOut(.body(buffer.readSlice(length: length)!)))
            if Int64(length) == remaining {
                end(context)
            } else {
                state = .length(remaining: remaining - Int64(length), received: received + Int64(length), expected: expected)
            }
            return .continue

        case .untilClose, .tunnel:
            guard buffer.readableBytes > 0 else { return .needMoreData }
            context.fireChannelRead(wrapInboundOut(.body(buffer.readSlice(length: buffer.readableBytes)!)))
            return .continue

        case .decoded(var decoder):
            // A part can be the body's last: the decoder is asked again at once, even when the read left no byte,
            // as an upstream that keeps its connection open after a whole answer sends nothing more to ask on.
            while true {
                let step: UpstreamBodyDecoding
                do {
                    step = try decoder.decode(&buffer)
                } catch {
                    state = .done
                    excessWarning = nil
                    throw UpstreamInvalidResponse(underlying: error, inHead: false)
                }
                switch step {
                case .part(let part):
                    state = .decoded(decoder)
                    if part.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(.body(part))) }
                    guard case .decoded = state else { return .needMoreData }
                case .needMoreData:
                    state = .decoded(decoder)
                    return .needMoreData
                case .end:
                    end(context)
                    return .continue
                }
            }

        case .done:
            if buffer.readableBytes > 0, let warning = excessWarning {
                excessWarning = nil
                context.fireChannelRead(wrapInboundOut(.excess(warning)))
            }
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .needMoreData
        }
    }

    private mutating func end(_ context: ChannelHandlerContext) {
        state = .done
        context.fireChannelRead(wrapInboundOut(.end))
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        switch state {
        case .head:
            buffer.moveReaderIndex(to: buffer.writerIndex)
            state = .done
            throw UpstreamResponseError.prematureCloseInHead
        case .length(_, let received, let expected):
            state = .done
            throw UpstreamResponseError.prematureCloseInBody(received: received, expected: expected)
        case .decoded:
            state = .done
            throw UpstreamResponseError.prematureCloseInEncodedBody
        case .untilClose:
            end(context)
        case .done, .tunnel:
            break
        }
        return .needMoreData
    }
}
