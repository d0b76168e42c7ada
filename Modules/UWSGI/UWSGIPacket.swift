import KernelCore
import NIOCore

/// The uwsgi packet header: `modifier1` (u8), the size of what follows (u16, little-endian), `modifier2` (u8).
///
/// A request packet is this header, then `datasize` bytes of variables (each `u16 LE key length, key, u16 LE value
/// length, value`), then `CONTENT_LENGTH` bytes of body. Only `modifier1 == 0` (a WSGI-style request with a vars
/// block) is served, as a uWSGI with only the Python plugin loaded does, and `modifier1 == 100` (ping) is answered.
public struct UWSGIPacketHeader: Sendable, Hashable {
    /// The size of the header on the wire.
    public static let size = 4
    /// The largest vars block the u16 size field can describe.
    public static let maximumDataSize = 65535

    public var modifier1: UInt8
    public var dataSize: Int
    public var modifier2: UInt8

    /// `modifier1` of a request with a vars block (WSGI, CGI style).
    public static let requestModifier: UInt8 = 0
    /// uWSGI's `UWSGI_MODIFIER_MANAGE_PATH_INFO`: the same request, whose WSGI app gets `PATH_INFO` without the
    /// `SCRIPT_NAME` prefix (`uwsgi_modifier1 30; uwsgi_param SCRIPT_NAME /app;` in older nginx set-ups). The kernel
    /// routes on `REQUEST_URI` whole either way, so it serves such a request as one of modifier 0.
    public static let managePathInfoModifier: UInt8 = 30
    /// `modifier1` of a ping (uWSGI `UWSGI_MODIFIER_PING`, sent by `uwsgi --ping` and the nagios plugin).
    public static let pingModifier: UInt8 = 100
    /// uWSGI's answer to a ping with no warning message set: `modifier1` 100, an empty body, `modifier2` 1.
    public static let pingAnswer = UWSGIPacketHeader(modifier1: pingModifier, dataSize: 0, modifier2: 1)

    public init(modifier1: UInt8 = 0, dataSize: Int, modifier2: UInt8 = 0) {
        self.modifier1 = modifier1
        self.dataSize = dataSize
        self.modifier2 = modifier2
    }

    /// Reads a header; nil when fewer than four bytes are readable.
    public static func read(from buffer: inout ByteBuffer) -> UWSGIPacketHeader? {
        guard let (modifier1, size, modifier2) = buffer.readMultipleIntegers(endianness: .little, as: (UInt8, UInt16, UInt8).self) else {
            return nil
        }
        return UWSGIPacketHeader(modifier1: modifier1, dataSize: Int(size), modifier2: modifier2)
    }

    /// Writes the header; `dataSize` must fit in 16 bits.
    public func write(to buffer: inout ByteBuffer) {
        precondition(dataSize >= 0 && dataSize <= UWSGIPacketHeader.maximumDataSize, "uwsgi vars block over 64k")
        buffer.writeMultipleIntegers(modifier1, UInt16(dataSize), modifier2, endianness: .little)
    }
}

/// An ordered list of uwsgi variables, as carried in a request's vars block.
public struct UWSGIVariables: Sendable, Sequence {
    public typealias Element = (name: String, value: String)
    public private(set) var entries: [Element]
    /// The bytes of the values that came as no UTF-8, by entry index (their text reads each byte as ISO-8859-1):
    /// what a header made of one goes on as, so that passing it on changes no byte. Nil while there is none.
    public private(set) var undecodedValues: [Int: [UInt8]]?

    public init(_ entries: [Element] = []) { self.entries = entries }

    public func makeIterator() -> IndexingIterator<[Element]> { entries.makeIterator() }
    public var count: Int { entries.count }

    public mutating func append(_ name: String, _ value: String) { entries.append((name, value)) }

    /// Appends a variable whose value came as `bytes`, which are no UTF-8; `value` is their text.
    public mutating func append(_ name: String, _ value: String, undecoded bytes: [UInt8]) {
        if undecodedValues == nil { undecodedValues = [:] }
        undecodedValues![entries.count] = bytes
        entries.append((name, value))
    }

    /// The last value of `name` (later entries win, as in a WSGI environ built from the block).
    public subscript(name: String) -> String? {
        for entry in entries.reversed() where entry.name == name { return entry.value }
        return nil
    }

    /// The bytes of the vars block (without the packet header).
    public var encodedSize: Int {
        entries.reduce(0) { $0 + 4 + $1.name.utf8.count + $1.value.utf8.count }
    }

    /// Writes the vars block. Every key and value must be at most 65535 bytes (checked by the caller through
    /// `encodedSize` and `UWSGIVariables.fitsInPacket`).
    public func write(to buffer: inout ByteBuffer) {
        for (name, value) in entries {
            buffer.writeInteger(UInt16(truncatingIfNeeded: name.utf8.count), endianness: .little)
            buffer.writeString(name)
            buffer.writeInteger(UInt16(truncatingIfNeeded: value.utf8.count), endianness: .little)
            buffer.writeString(value)
        }
    }

    /// Whether the block fits in one uwsgi packet (the header's u16 size field).
    public var fitsInPacket: Bool { encodedSize <= UWSGIPacketHeader.maximumDataSize }

    /// A whole request packet head: header (`modifier1`, size, `modifier2`) and vars block. nil when over 64k.
    public func encodedPacket(modifier1: UInt8 = 0, modifier2: UInt8 = 0,
                              allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer? {
        let size = encodedSize
        guard size <= UWSGIPacketHeader.maximumDataSize else { return nil }
        var buffer = allocator.buffer(capacity: UWSGIPacketHeader.size + size)
        UWSGIPacketHeader(modifier1: modifier1, dataSize: size, modifier2: modifier2).write(to: &buffer)
        write(to: &buffer)
        return buffer
    }
}

/// Why a uwsgi request could not be decoded. Each case maps to uWSGI's own reaction: the structural ones close
/// the connection without an answer (there is no request to answer), `invalidContentLength` is answered with 400.
public enum UWSGIDecodingError: Error, Sendable, Hashable, CustomStringConvertible {
    /// `datasize` is larger than `buffer_size`.
    case blockTooLarge(size: Int, maximum: Int)
    /// `modifier1` names a request type the kernel does not serve.
    case unsupportedModifier(UInt8)
    /// A key or value length runs past the end of the vars block.
    case variableOutOfBounds(offset: Int, length: Int)
    /// A variable with an empty key.
    case emptyKey(offset: Int)
    /// `CONTENT_LENGTH` is not plain decimal digits (or does not fit).
    case invalidContentLength(String)
    /// The peer closed before the header and vars block were complete.
    case truncatedHead(received: Int)
    /// The peer closed before `CONTENT_LENGTH` body bytes arrived.
    case truncatedBody(received: Int, expected: Int)

    public var description: String {
        switch self {
        case .blockTooLarge(let size, let maximum):
            return "invalid request block size: \(size) (max \(maximum))...skip"
        case .unsupportedModifier(let modifier):
            return "-- unavailable modifier requested: \(modifier) --"
        case .variableOutOfBounds(let offset, let length):
            return "invalid uwsgi request (var length \(length) at offset \(offset) runs past the vars block). skip."
        case .emptyKey(let offset):
            return "uwsgi key cannot be null (offset \(offset)). skip this request."
        case .invalidContentLength(let value):
            return "invalid CONTENT_LENGTH \"\(value)\""
        case .truncatedHead(let received):
            return "client prematurely closed connection while reading the uwsgi packet (\(received) bytes received)"
        case .truncatedBody(let received, let expected):
            return "client prematurely closed connection while reading client request body (\(received) of \(expected) bytes)"
        }
    }
}

/// Parses `CONTENT_LENGTH`: empty means 0 (uWSGI reads a missing or empty one so); otherwise `ContentLength.parse`,
/// the rule the HTTP listener uses too: only ASCII digits (`5abc`, `-1`, ` 5`, `+5` are rejected, where uWSGI would
/// read the leading digits), at most `Int.max`.
public func parseUWSGIContentLength(_ text: String) -> Int? {
    if text.isEmpty { return 0 }
    return ContentLength.parse(text)
}

/// Text of header names and values as received: UTF-8 when the bytes are valid UTF-8, else each byte as the code
/// point of the same value (ISO-8859-1, as WSGI reads headers), so that no byte is replaced or lost.
public func decodeHeaderText(_ buffer: ByteBuffer) -> String { decodeHeaderTextNotingBytes(buffer).text }

/// `decodeHeaderText`, with the bytes when they were no UTF-8 (the text then stands for them byte by byte).
public func decodeHeaderTextNotingBytes(_ buffer: ByteBuffer) -> (text: String, undecoded: [UInt8]?) {
    // ASCII (nearly every variable a front proxy sends) is valid UTF-8 as it is: one scan over contiguous bytes,
    // without the generic validating initialiser that costs a metadata lookup per call.
    let ascii = buffer.withUnsafeReadableBytes { raw -> String? in
        for byte in raw where byte >= 0x80 { return nil }
        return String(decoding: raw, as: UTF8.self)
    }
    if let ascii { return (ascii, nil) }
    let bytes = buffer.readableBytesView
    if let text = String(validating: bytes, as: UTF8.self) { return (text, nil) }
    var text = ""
    text.unicodeScalars.reserveCapacity(bytes.count)
    for byte in bytes { text.unicodeScalars.append(Unicode.Scalar(byte)) }
    return (text, Array(bytes))
}
