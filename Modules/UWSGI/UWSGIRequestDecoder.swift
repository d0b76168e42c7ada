import NIOCore

/// The head of a uwsgi request: the packet header and its variables, with the body length they announce.
public struct UWSGIRequestHead: Sendable {
    public var modifier1: UInt8
    public var modifier2: UInt8
    public var variables: UWSGIVariables
    /// `CONTENT_LENGTH`, validated.
    public var contentLength: Int

    public init(modifier1: UInt8 = 0, modifier2: UInt8 = 0, variables: UWSGIVariables, contentLength: Int) {
        self.modifier1 = modifier1
        self.modifier2 = modifier2
        self.variables = variables
        self.contentLength = contentLength
    }
}

/// What the request decoder emits: one head, the body in parts as they arrive, then the end.
public enum UWSGIRequestPart: Sendable {
    case head(UWSGIRequestHead)
    case body(ByteBuffer)
    case end
    /// A ping (`modifier1` 100, its block read and ignored, as uWSGI's ping plugin does): to be answered with
    /// `UWSGIPacketHeader.pingAnswer`. Nothing follows it on the connection.
    case ping
}

/// Decodes one uwsgi request from a byte stream, incrementally and without trusting any length.
///
/// The vars block is parsed only once all of it is buffered, and only if `datasize` is at most `maxBlockSize`
/// (uWSGI's `buffer-size`), so memory per connection is bounded by it. The body is passed on as it arrives, never
/// more than `CONTENT_LENGTH` bytes. uwsgi carries one request per connection: bytes after the body are dropped.
/// A packet with `modifier1` 100 is a ping: its block is read, then `.ping` is emitted instead of a head.
///
/// `next(from:)` and `endOfInput(_:)` need no channel: the worker's connection handler drives them directly, so
/// that a connection needs no decoding handler of its own. The `ByteToMessageDecoder` conformance serves other
/// pipelines (and the codec tests).
public struct UWSGIRequestDecoder: ByteToMessageDecoder, Sendable {
    public typealias InboundOut = UWSGIRequestPart

    private enum State {
        case header
        case variables(UWSGIPacketHeader)
        case body(remaining: Int, received: Int, expected: Int)
        /// Everything is read; `.end` is still to be emitted.
        case end
        case done
    }

    public let maxBlockSize: Int
    private var state = State.header
    private var headBytesReceived = 0

    /// `maxBlockSize` is the largest accepted vars block (uWSGI's `buffer-size`, 4k by default).
    public init(maxBlockSize: Int = 4096) {
        self.maxBlockSize = maxBlockSize
    }

    /// The next part `buffer` completes, or nil when more bytes are needed (or the request is over: later bytes
    /// are consumed and dropped). Throws `UWSGIDecodingError` for a packet that is no valid request.
    public mutating func next(from buffer: inout ByteBuffer) throws -> UWSGIRequestPart? {
        while true {
            switch state {
            case .header:
                guard let header = UWSGIPacketHeader.read(from: &buffer) else { return nil }
                headBytesReceived = UWSGIPacketHeader.size
                // uWSGI checks the size first (its buffer is sized by it), then dispatches on modifier1.
                guard header.dataSize <= maxBlockSize else {
                    state = .done
                    throw UWSGIDecodingError.blockTooLarge(size: header.dataSize, maximum: maxBlockSize)
                }
                switch header.modifier1 {
                case UWSGIPacketHeader.requestModifier, UWSGIPacketHeader.managePathInfoModifier, UWSGIPacketHeader.pingModifier:
                    break
                default:
                    state = .done
                    throw UWSGIDecodingError.unsupportedModifier(header.modifier1)
                }
                state = .variables(header)
            case .variables(let header):
                // An empty block is complete at once: a zero-length slice is always readable.
                guard let block = buffer.readSlice(length: header.dataSize) else { return nil }
                headBytesReceived += header.dataSize
                if header.modifier1 == UWSGIPacketHeader.pingModifier {
                    state = .done
                    return .ping
                }
                return .head(try finishHead(header, block: block))
            case .body(let remaining, let received, let expected):
                guard buffer.readableBytes > 0 else { return nil }
                let length = min(remaining, buffer.readableBytes)
                let part = buffer.readSlice(length: length)!
                state = length == remaining
                    ? .end : .body(remaining: remaining - length, received: received + length, expected: expected)
                return .body(part)
            case .end:
                state = .done
                return .end
            case .done:
                buffer.moveReaderIndex(to: buffer.writerIndex)
                return nil
            }
        }
    }

    private mutating func finishHead(_ header: UWSGIPacketHeader, block: ByteBuffer) throws -> UWSGIRequestHead {
        let variables: UWSGIVariables
        do {
            variables = try UWSGIRequestDecoder.parseVariables(block)
        } catch {
            state = .done
            throw error
        }
        let lengthText = variables["CONTENT_LENGTH"] ?? ""
        guard let contentLength = parseUWSGIContentLength(lengthText) else {
            state = .done
            throw UWSGIDecodingError.invalidContentLength(lengthText)
        }
        state = contentLength == 0 ? .end : .body(remaining: contentLength, received: 0, expected: contentLength)
        return UWSGIRequestHead(modifier1: header.modifier1, modifier2: header.modifier2, variables: variables,
                                contentLength: contentLength)
    }

    /// The input ended (the peer closed). `buffer` holds what was not consumed; parts it still completes must have
    /// been taken with `next(from:)` first. Throws when the request was cut short; a connection closed before any
    /// byte is no request at all (a health check's connect, say) and is no error.
    public mutating func endOfInput(_ buffer: inout ByteBuffer) throws {
        let unread = buffer.readableBytes
        buffer.moveReaderIndex(to: buffer.writerIndex)
        switch state {
        case .header:
            if unread > 0 || headBytesReceived > 0 {
                state = .done
                throw UWSGIDecodingError.truncatedHead(received: unread)
            }
        case .variables:
            state = .done
            throw UWSGIDecodingError.truncatedHead(received: headBytesReceived + unread)
        case .body(_, let received, let expected):
            state = .done
            throw UWSGIDecodingError.truncatedBody(received: received, expected: expected)
        case .end, .done:
            break
        }
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        // Every part the buffer completes goes out now: the handler does not call back on an empty buffer, and a
        // head or a last body part is followed by `.end` without further bytes.
        while let part = try next(from: &buffer) {
            context.fireChannelRead(wrapInboundOut(part))
        }
        return .needMoreData
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while let part = try next(from: &buffer) {
            context.fireChannelRead(wrapInboundOut(part))
        }
        try endOfInput(&buffer)
        return .needMoreData
    }

    /// Parses a whole vars block. Every length is checked against the block's end before it is used.
    public static func parseVariables(_ block: ByteBuffer) throws -> UWSGIVariables {
        var block = block
        var variables = UWSGIVariables()
        while block.readableBytes > 0 {
            let offset = block.readerIndex
            guard let keyLength = block.readInteger(endianness: .little, as: UInt16.self) else {
                throw UWSGIDecodingError.variableOutOfBounds(offset: offset, length: 2)
            }
            guard keyLength > 0 else { throw UWSGIDecodingError.emptyKey(offset: offset) }
            guard let keyBytes = block.readSlice(length: Int(keyLength)) else {
                throw UWSGIDecodingError.variableOutOfBounds(offset: offset, length: Int(keyLength))
            }
            let key = decodeHeaderText(keyBytes)
            let valueOffset = block.readerIndex
            guard let valueLength = block.readInteger(endianness: .little, as: UInt16.self) else {
                throw UWSGIDecodingError.variableOutOfBounds(offset: valueOffset, length: 2)
            }
            guard let valueBytes = block.readSlice(length: Int(valueLength)) else {
                throw UWSGIDecodingError.variableOutOfBounds(offset: valueOffset, length: Int(valueLength))
            }
            let value = decodeHeaderTextNotingBytes(valueBytes)
            if let undecoded = value.undecoded {
                variables.append(key, value.text, undecoded: undecoded)
            } else {
                variables.append(key, value.text)
            }
        }
        return variables
    }
}
