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
}

/// Decodes one uwsgi request from a byte stream, incrementally and without trusting any length.
///
/// The vars block is parsed only once all of it is buffered, and only if `datasize` is at most `maxBlockSize`
/// (uWSGI's `buffer-size`), so memory per connection is bounded by it. The body is passed on as it arrives, never
/// more than `CONTENT_LENGTH` bytes. uwsgi carries one request per connection: bytes after the body are dropped.
public struct UWSGIRequestDecoder: ByteToMessageDecoder, Sendable {
    public typealias InboundOut = UWSGIRequestPart

    private enum State {
        case header
        case variables(UWSGIPacketHeader)
        case body(remaining: Int, received: Int, expected: Int)
        case done
    }

    public let maxBlockSize: Int
    private var state = State.header
    private var headBytesReceived = 0

    /// `maxBlockSize` is the largest accepted vars block (uWSGI's `buffer-size`, 4k by default).
    public init(maxBlockSize: Int = 4096) {
        self.maxBlockSize = maxBlockSize
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        switch state {
        case .header:
            guard let header = UWSGIPacketHeader.read(from: &buffer) else { return .needMoreData }
            headBytesReceived = UWSGIPacketHeader.size
            // uWSGI checks the size first (its buffer is sized by it), then dispatches on modifier1.
            guard header.dataSize <= maxBlockSize else {
                throw UWSGIDecodingError.blockTooLarge(size: header.dataSize, maximum: maxBlockSize)
            }
            guard header.modifier1 == 0 else { throw UWSGIDecodingError.unsupportedModifier(header.modifier1) }
            state = .variables(header)
            // An empty block is complete at once (the handler stops calling `decode` on an empty buffer).
            if header.dataSize == 0 { try finishHead(header, block: ByteBuffer(), context: context) }
            return .continue

        case .variables(let header):
            guard let block = buffer.readSlice(length: header.dataSize) else { return .needMoreData }
            headBytesReceived += header.dataSize
            try finishHead(header, block: block, context: context)
            return .continue
        case .body(let remaining, let received, let expected):
            guard buffer.readableBytes > 0 else { return .needMoreData }
            let length = min(remaining, buffer.readableBytes)
            let part = buffer.readSlice(length: length)!
            if length == remaining {
                state = .done
                context.fireChannelRead(wrapInboundOut(.body(part)))
                context.fireChannelRead(wrapInboundOut(.end))
            } else {
                state = .body(remaining: remaining - length, received: received + length, expected: expected)
                context.fireChannelRead(wrapInboundOut(.body(part)))
            }
            return .continue

        case .done:
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .needMoreData
        }
    }

    private mutating func finishHead(_ header: UWSGIPacketHeader, block: ByteBuffer, context: ChannelHandlerContext) throws {
        let variables = try UWSGIRequestDecoder.parseVariables(block)
        let lengthText = variables["CONTENT_LENGTH"] ?? ""
        guard let contentLength = parseUWSGIContentLength(lengthText) else {
            state = .done
            throw UWSGIDecodingError.invalidContentLength(lengthText)
        }
        context.fireChannelRead(wrapInboundOut(.head(UWSGIRequestHead(
            modifier1: header.modifier1, modifier2: header.modifier2, variables: variables, contentLength: contentLength))))
        if contentLength == 0 {
            state = .done
            context.fireChannelRead(wrapInboundOut(.end))
        } else {
            state = .body(remaining: contentLength, received: 0, expected: contentLength)
        }
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        switch state {
        case .header:
            // A connection closed before any byte is no request at all (a health check's connect, say).
            if buffer.readableBytes > 0 || headBytesReceived > 0 {
                let received = buffer.readableBytes
                buffer.moveReaderIndex(to: buffer.writerIndex)
                state = .done
                throw UWSGIDecodingError.truncatedHead(received: received)
            }
        case .variables:
            let received = headBytesReceived + buffer.readableBytes
            buffer.moveReaderIndex(to: buffer.writerIndex)
            state = .done
            throw UWSGIDecodingError.truncatedHead(received: received)
        case .body(_, let received, let expected):
            state = .done
            throw UWSGIDecodingError.truncatedBody(received: received, expected: expected)
        case .done:
            buffer.moveReaderIndex(to: buffer.writerIndex)
        }
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
            let value = decodeHeaderText(valueBytes)
            variables.append(key, value)
        }
        return variables
    }
}
