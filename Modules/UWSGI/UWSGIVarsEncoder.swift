import KernelCore
import NIOCore

extension UWSGIPassConfiguration {
    /// The request packet head for `request` (header and vars block), written straight into one buffer: the same
    /// bytes as `variables(for:route:).encodedPacket(...)`, without building the list of variables first, a string
    /// per header variable name, or a dictionary to join repeated headers (a request has a handful of headers, so
    /// finding a repeated name by scanning is cheaper than hashing every name). nil when the vars block would not
    /// fit in a packet (over 64k).
    func encodedPacket(for request: KernelRequest, route: RouteInfo, allocator: ByteBufferAllocator) -> ByteBuffer? {
        var buffer = allocator.buffer(capacity: 512)
        buffer.moveWriterIndex(forwardBy: UWSGIPacketHeader.size)  // the header, once the size is known
        for param in params {
            let value: String
            if param.name == "CONTENT_LENGTH", param.value == UWSGIPassConfiguration.contentLengthTemplate,
               let length = UWSGIPassConfiguration.sentBodyLength(of: request) {
                value = String(length)  // the length of the body the engine sends, as in `variables(for:)`
            } else {
                value = param.value.evaluate(request, route: route)
            }
            if param.ifNotEmpty && value.isEmpty { continue }
            guard UWSGIVarsWriter.write(name: param.name, value: value, into: &buffer) else { return nil }
        }
        let headers = request.headers
        if passRequestHeaders {
            let fields = Array(headers)
            for (index, field) in fields.enumerated() {
                // A name seen before was sent with its first occurrence, its values joined there.
                if fields[..<index].contains(where: { $0.name.equalsCaseInsensitive(field.name) }) { continue }
                if UWSGIVarsWriter.headerVariable(field.name, is: "HTTP_TRANSFER_ENCODING") { continue }
                if headerParamNames.contains(where: { UWSGIVarsWriter.headerVariable(field.name, is: $0) }) { continue }
                if field.name.equalsCaseInsensitive("Host"), let authority = request.effectiveAuthority {
                    // The request's own authority, not the raw field (see `variables(for:route:)`).
                    guard UWSGIVarsWriter.write(headerName: field.name, value: authority, into: &buffer) else { return nil }
                    continue
                }
                let separator = field.name.equalsCaseInsensitive("Cookie") ? "; " : ", "
                guard headers.undecoded == nil else {
                    // Some value came in another charset than UTF-8: each goes as the bytes it came as.
                    var value = headers.undecodedBytes(at: index) ?? Array(field.value.utf8)
                    for later in (index + 1)..<fields.count where fields[later].name.equalsCaseInsensitive(field.name) {
                        value.append(contentsOf: separator.utf8)
                        value.append(contentsOf: headers.undecodedBytes(at: later) ?? Array(fields[later].value.utf8))
                    }
                    guard UWSGIVarsWriter.write(headerName: field.name, value: value, into: &buffer) else { return nil }
                    continue
                }
                var value = field.value
                for later in fields[(index + 1)...] where later.name.equalsCaseInsensitive(field.name) {
                    value += separator
                    value += later.value
                }
                guard UWSGIVarsWriter.write(headerName: field.name, value: value, into: &buffer) else { return nil }
            }
        } else if deadline.isEnabled, let left = headers[ForwardedDeadline.headerName] {
            // The deadline travels even when the client's headers do not.
            guard UWSGIVarsWriter.write(headerName: ForwardedDeadline.headerName, value: left, into: &buffer) else { return nil }
        }
        let size = buffer.readableBytes - UWSGIPacketHeader.size
        guard size <= UWSGIPacketHeader.maximumDataSize else { return nil }
        let start = buffer.readerIndex  // the header's place: modifier1, size (u16 LE), modifier2
        buffer.setInteger(modifier1, at: start)
        buffer.setInteger(UInt16(size), at: start + 1, endianness: .little)
        buffer.setInteger(modifier2, at: start + 3)
        return buffer
    }
}

/// Writes vars (`u16 LE length, key, u16 LE length, value`) into a packet being built.
enum UWSGIVarsWriter {
    /// Writes one var; false when the block can no longer fit in a packet.
    static func write(name: String, value: String, into buffer: inout ByteBuffer) -> Bool {
        let nameLength = name.utf8.count, valueLength = value.utf8.count
        guard fits(buffer, adding: nameLength + valueLength) else { return false }
        buffer.writeInteger(UInt16(nameLength), endianness: .little)
        buffer.writeString(name)
        buffer.writeInteger(UInt16(valueLength), endianness: .little)
        buffer.writeString(value)
        return true
    }

    /// Writes the `HTTP_*` var of a header: `X-Foo-bar` becomes `HTTP_X_FOO_BAR` byte by byte, as
    /// `UWSGIPassConfiguration.variableName(forHeader:)` spells it.
    static func write(headerName: String, value: String, into buffer: inout ByteBuffer) -> Bool {
        write(headerName: headerName, valueLength: value.utf8.count, into: &buffer) { $0.writeString(value) }
    }

    /// Writes the `HTTP_*` var of a header whose value is `value`'s bytes.
    static func write(headerName: String, value: [UInt8], into buffer: inout ByteBuffer) -> Bool {
        write(headerName: headerName, valueLength: value.count, into: &buffer) { $0.writeBytes(value) }
    }

    @inline(__always)
    private static func write(headerName: String, valueLength: Int, into buffer: inout ByteBuffer,
                              value: (inout ByteBuffer) -> Void) -> Bool {
        let nameLength = 5 + headerName.utf8.count
        guard fits(buffer, adding: nameLength + valueLength) else { return false }
        buffer.writeInteger(UInt16(nameLength), endianness: .little)
        buffer.writeStaticString("HTTP_")
        buffer.reserveCapacity(minimumWritableBytes: nameLength)
        for byte in headerName.utf8 { buffer.writeInteger(variableByte(byte)) }
        buffer.writeInteger(UInt16(valueLength), endianness: .little)
        value(&buffer)
        return true
    }

    /// Whether the `HTTP_*` var of header `name` is `variable`.
    static func headerVariable(_ name: String, is variable: String) -> Bool {
        let bytes = variable.utf8
        guard bytes.count == 5 + name.utf8.count, variable.hasPrefix("HTTP_") else { return false }
        return zip(name.utf8, bytes.dropFirst(5)).allSatisfy { variableByte($0) == $1 }
    }

    @inline(__always)
    static func variableByte(_ byte: UInt8) -> UInt8 {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return byte - 32
        case UInt8(ascii: "-"): return UInt8(ascii: "_")
        default: return byte
        }
    }

    /// A var of this many key and value bytes still fits in the vars block (and each of its lengths in a u16).
    @inline(__always)
    private static func fits(_ buffer: ByteBuffer, adding bytes: Int) -> Bool {
        buffer.readableBytes - UWSGIPacketHeader.size + 4 + bytes <= UWSGIPacketHeader.maximumDataSize
    }
}
