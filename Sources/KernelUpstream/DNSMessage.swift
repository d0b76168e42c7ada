import NIOCore

/// The record types the resolver asks for.
public enum DNSRecordType: UInt16, Sendable {
    case a = 1
    case aaaa = 28

    static let cname: UInt16 = 5
}

/// One address record of an answer.
public struct DNSAddressRecord: Sendable, Equatable {
    /// The address as text (`10.0.0.7`, `fd00::7`).
    public var address: String
    /// Seconds the answer may be kept (RFC 2181: a TTL with the top bit set is read as 0).
    public var ttl: UInt32

    public init(address: String, ttl: UInt32) {
        self.address = address
        self.ttl = ttl
    }
}

/// Why an answer was not usable. The codes are the ones nginx's resolver logs (`ngx_resolver_strerror`).
public enum DNSLookupError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The server answered with this RCODE (1 format error, 2 server failure, 3 host not found, 4, 5).
    case responseCode(Int)
    /// No answer within `resolver_timeout` from any of the resolver's addresses.
    case timedOut
    /// The answer broke the format (a length past the end, a bad name, another question).
    case malformed(String)
    /// The query could not be sent.
    case network(String)

    /// nginx's `NGX_RESOLVE_NXDOMAIN`: the name does not exist, which removes the name's peers (any other
    /// failure keeps them).
    public var isNameNotFound: Bool { self == .responseCode(3) }

    /// `3: Host not found`, as nginx's `could not be resolved (%i: %s)` prints it.
    public var description: String {
        switch self {
        case .responseCode(let code):
            let text = [1: "Format error", 2: "Server failure", 3: "Host not found", 4: "Unimplemented",
                        5: "Operation refused"][code] ?? "Unknown error"
            return "\(code): \(text)"
        case .timedOut: return "110: Operation timed out"
        case .malformed(let why): return "1: Format error (\(why))"
        case .network(let why): return "2: Server failure (\(why))"
        }
    }
}

/// The DNS wire format as far as the resolver needs it (RFC 1035): a recursive query for one name and type, and
/// the address records of its answer, following CNAMEs inside the answer. The answer is network input: every
/// length and pointer is checked against the message before it is used, and a bad one is `.malformed`.
public enum DNSMessage {
    /// The largest answer read over UDP (nginx's `NGX_RESOLVER_UDP_SIZE`).
    public static let maxUDPSize = 4096

    /// A query with the RD bit set, or nil when `name` is not a valid host name (an empty label, a label over
    /// 63 bytes, the whole over 253).
    public static func query(id: UInt16, name: String, type: DNSRecordType) -> ByteBuffer? {
        guard let labels = labels(of: name) else { return nil }
        var buffer = ByteBuffer()
        buffer.writeInteger(id)
        buffer.writeInteger(UInt16(0x0100))  // standard query, recursion desired
        buffer.writeInteger(UInt16(1))       // one question
        buffer.writeInteger(UInt16(0))
        buffer.writeInteger(UInt16(0))
        buffer.writeInteger(UInt16(0))
        for label in labels {
            buffer.writeInteger(UInt8(label.count))
            buffer.writeBytes(label)
        }
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(type.rawValue)
        buffer.writeInteger(UInt16(1))       // class IN
        return buffer
    }

    /// The labels of a host name, lower-cased; nil when it is not one.
    static func labels(of name: String) -> [[UInt8]]? {
        var text = Array(name.utf8)
        if text.last == UInt8(ascii: ".") { text.removeLast() }
        guard !text.isEmpty, text.count <= 253 else { return nil }
        var labels: [[UInt8]] = []
        for part in text.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
            guard !part.isEmpty, part.count <= 63 else { return nil }
            labels.append(part.map { $0 >= 65 && $0 <= 90 ? $0 | 0x20 : $0 })
        }
        return labels
    }

    /// The address records of `type` for `name` in the answer to the query `id`. Throws `.responseCode` for an
    /// RCODE other than 0 and `.malformed` for anything that is not an answer to that question. An answer
    /// without records of the type gives an empty list.
    public static func addresses(in message: ByteBuffer, id: UInt16, name: String,
                                 type: DNSRecordType) throws -> [DNSAddressRecord] {
        var reader = Reader(bytes: Array(message.readableBytesView))
        guard try reader.uint16() == id else { throw DNSLookupError.malformed("unexpected id") }
        let flags = try reader.uint16()
        guard flags & 0x8000 != 0 else { throw DNSLookupError.malformed("not a response") }
        guard (flags >> 11) & 0xf == 0 else { throw DNSLookupError.malformed("unexpected opcode") }
        let questions = try reader.uint16()
        let answers = try reader.uint16()
        _ = try reader.uint16()  // authority records: not read
        _ = try reader.uint16()  // additional records: not read
        let code = Int(flags & 0xf)
        guard questions == 1 else {
            // A refusal may come without the question; anything else must repeat it.
            if code != 0, questions == 0 { throw DNSLookupError.responseCode(code) }
            throw DNSLookupError.malformed("\(questions) questions")
        }
        guard let asked = labels(of: name) else { throw DNSLookupError.malformed("invalid name") }
        let question = try reader.name()
        guard question == asked else { throw DNSLookupError.malformed("answer to another name") }
        guard try reader.uint16() == type.rawValue, try reader.uint16() == 1 else {
            throw DNSLookupError.malformed("answer to another question")
        }
        guard code == 0 else { throw DNSLookupError.responseCode(code) }

        // The owners whose records count: the name, and what it is an alias of within this answer.
        var owners: [[[UInt8]]] = [asked]
        var records: [DNSAddressRecord] = []
        for _ in 0..<answers {
            let owner = try reader.name()
            let recordType = try reader.uint16()
            let recordClass = try reader.uint16()
            let rawTTL = try reader.uint32()
            let length = Int(try reader.uint16())
            let dataStart = reader.offset
            guard reader.remaining >= length else { throw DNSLookupError.malformed("record past the end") }
            defer { reader.offset = dataStart + length }
            guard recordClass == 1, owners.contains(owner) else { continue }
            let ttl = rawTTL & 0x8000_0000 != 0 ? 0 : rawTTL
            if recordType == DNSRecordType.cname {
                var target = Reader(bytes: reader.bytes, offset: dataStart)
                let alias = try target.name()
                guard target.offset <= dataStart + length else { throw DNSLookupError.malformed("CNAME past its record") }
                if !owners.contains(alias) { owners.append(alias) }
            } else if recordType == type.rawValue {
                let size = type == .a ? 4 : 16
                guard length == size else { throw DNSLookupError.malformed("invalid address length \(length)") }
                let bytes = Array(reader.bytes[dataStart..<dataStart + size])
                records.append(DNSAddressRecord(address: text(ofAddress: bytes), ttl: ttl))
            }
        }
        return records
    }

    /// `10.0.0.7` or the RFC 5952 text of sixteen bytes, as `inet_ntop` writes them.
    static func text(ofAddress bytes: [UInt8]) -> String {
        var buffer = ByteBuffer(bytes: bytes)
        let address = try? SocketAddress(packedIPAddress: buffer, port: 0)
        buffer.clear()
        return address?.ipAddress ?? ""
    }

    /// Reads a message with every access checked against its length.
    struct Reader {
        let bytes: [UInt8]
        var offset = 0

        var remaining: Int { bytes.count - offset }

        mutating func uint8() throws -> UInt8 {
            guard offset < bytes.count else { throw DNSLookupError.malformed("message too short") }
            defer { offset += 1 }
            return bytes[offset]
        }

        mutating func uint16() throws -> UInt16 {
            UInt16(try uint8()) << 8 | UInt16(try uint8())
        }

        mutating func uint32() throws -> UInt32 {
            UInt32(try uint16()) << 16 | UInt32(try uint16())
        }

        /// A name's labels, lower-cased, following compression pointers. A pointer must point before the place
        /// it was read from (so a chain of pointers cannot loop) and the name may not exceed 255 bytes.
        mutating func name() throws -> [[UInt8]] {
            var labels: [[UInt8]] = []
            var position = offset
            var jumped = false
            var total = 0
            while true {
                guard position < bytes.count else { throw DNSLookupError.malformed("name past the end") }
                let length = Int(bytes[position])
                switch length & 0xc0 {
                case 0:
                    position += 1
                    if length == 0 {
                        if !jumped { offset = position }
                        return labels
                    }
                    total += length + 1
                    guard total <= 255, position + length <= bytes.count else {
                        throw DNSLookupError.malformed("name too long")
                    }
                    labels.append(bytes[position..<position + length].map { $0 >= 65 && $0 <= 90 ? $0 | 0x20 : $0 })
                    position += length
                case 0xc0:
                    guard position + 1 < bytes.count else { throw DNSLookupError.malformed("pointer past the end") }
                    let target = (length & 0x3f) << 8 | Int(bytes[position + 1])
                    guard target < position else { throw DNSLookupError.malformed("pointer forward") }
                    if !jumped { offset = position + 2 }
                    jumped = true
                    position = target
                default:
                    throw DNSLookupError.malformed("unknown label type")
                }
            }
        }
    }
}
