/// An ordered list of header fields with case-insensitive lookup, shared by every protocol.
/// Names keep the case they arrived with; order and duplicates are preserved.
public struct HeaderFields: Sendable, Sequence, ExpressibleByDictionaryLiteral, CustomStringConvertible {
    public typealias Element = (name: String, value: String)
    public private(set) var fields: [Element]
    /// The bytes of values that came in another charset than UTF-8 (RFC 9110's obs-text, such as ISO-8859-1), by
    /// their field's index in `fields`; the text of such a value is its decoding (each invalid sequence a U+FFFD,
    /// `HeaderValueText`; a uwsgi peer's values each byte a code point, as WSGI reads them). Writers put these
    /// bytes on the wire, as nginx passes a header's bytes on as they came. nil while every value is UTF-8, as
    /// nearly always; a field whose value is set anew loses its bytes.
    public private(set) var undecoded: [Int: [UInt8]]?

    public init() { fields = [] }
    public init(_ fields: [Element]) { self.fields = fields }
    public init(dictionaryLiteral elements: (String, String)...) {
        fields = elements.map { (name: $0.0, value: $0.1) }
    }

    /// Records that the value of the field at `index` came as `bytes`, which are no UTF-8
    /// (`HeaderValueText.decode` tells).
    public mutating func keep(undecoded bytes: [UInt8], at index: Int) {
        if undecoded == nil { undecoded = [:] }
        undecoded![index] = bytes
    }

    /// The bytes the value of the field at `index` goes on the wire as: those it came as when they were no UTF-8,
    /// else nil (its UTF-8 is what it came as).
    @inlinable
    public func undecodedBytes(at index: Int) -> [UInt8]? {
        guard let undecoded else { return nil }
        return undecoded[index]
    }

    /// The bytes a text rendered from these fields (a `proxy_set_header` value such as `$http_name` or
    /// `$proxy_add_x_forwarded_for`) goes on the wire as: the text with each place where the value of a field that
    /// came as no UTF-8 appears put back as the bytes that field came as; nil when there is no such place. Longer
    /// values are put back first (a value can hold a shorter one's text); two fields whose values read alike cannot
    /// be told apart in a rendered text, and the earlier one's bytes are used.
    public func undecodedBytes(ofRendered value: String) -> [UInt8]? {
        guard let undecoded else { return nil }
        var rendered = Array(value.utf8)
        var replacedAny = false
        let candidates = undecoded.map { (index: $0.key, text: Array(fields[$0.key].value.utf8), bytes: $0.value) }
            .sorted { $0.text.count != $1.text.count ? $0.text.count > $1.text.count : $0.index < $1.index }
        for (_, text, bytes) in candidates {
            guard !text.isEmpty, text.count <= rendered.count else { continue }
            var output: [UInt8] = []
            output.reserveCapacity(rendered.count)
            var cursor = 0
            var replaced = false
            while cursor < rendered.count {
                if cursor + text.count <= rendered.count, rendered[cursor..<(cursor + text.count)].elementsEqual(text) {
                    output.append(contentsOf: bytes)
                    cursor += text.count
                    replaced = true
                } else {
                    output.append(rendered[cursor])
                    cursor += 1
                }
            }
            if replaced {
                rendered = output
                replacedAny = true
            }
        }
        return replacedAny ? rendered : nil
    }

    /// The fields `isIncluded` keeps, in order, with the bytes they came as.
    public func filter(_ isIncluded: (Element) -> Bool) -> HeaderFields {
        guard let undecoded else { return HeaderFields(fields.filter(isIncluded)) }
        var kept = HeaderFields()
        kept.fields.reserveCapacity(fields.count)
        for (index, field) in fields.enumerated() where isIncluded(field) {
            if let bytes = undecoded[index] { kept.keep(undecoded: bytes, at: kept.fields.count) }
            kept.fields.append(field)
        }
        return kept
    }

    public var count: Int { fields.count }
    public var isEmpty: Bool { fields.isEmpty }
    public func makeIterator() -> IndexingIterator<[Element]> { fields.makeIterator() }

    /// The first value of `name`.
    public subscript(name: String) -> String? {
        for field in fields where field.name.equalsCaseInsensitive(name) { return field.value }
        return nil
    }

    /// Every value of `name`, in order.
    public func values(_ name: String) -> [String] {
        fields.filter { $0.name.equalsCaseInsensitive(name) }.map(\.value)
    }

    public func contains(_ name: String) -> Bool { self[name] != nil }

    public mutating func add(_ name: String, _ value: String) { fields.append((name, value)) }

    /// Sets the value of the field at `index` (an index of `fields`), keeping its name and place.
    public mutating func setValue(_ value: String, at index: Int) {
        fields[index].value = value
        undecoded?[index] = nil
    }

    /// Replaces every field called `name` with one field (appended when absent).
    public mutating func replace(_ name: String, _ value: String) {
        if let index = fields.firstIndex(where: { $0.name.equalsCaseInsensitive(name) }) {
            setValue(value, at: index)
            if undecoded != nil {
                removeFields { $0.name.equalsCaseInsensitive(name) && $1 > index }
                return
            }
            var next = fields.index(after: index)
            while next < fields.endIndex {
                if fields[next].name.equalsCaseInsensitive(name) { fields.remove(at: next) } else { next += 1 }
            }
        } else {
            fields.append((name, value))
        }
    }

    public mutating func remove(_ name: String) {
        guard undecoded == nil else { return removeFields { field, _ in field.name.equalsCaseInsensitive(name) } }
        fields.removeAll { $0.name.equalsCaseInsensitive(name) }
    }

    /// Removes the fields `shouldRemove` (given each field and its index) names, keeping the others' bytes at
    /// their new places.
    private mutating func removeFields(where shouldRemove: (Element, Int) -> Bool) {
        guard let undecoded else { return }
        var kept: [Element] = []
        var keptBytes: [Int: [UInt8]] = [:]
        kept.reserveCapacity(fields.count)
        for (index, field) in fields.enumerated() where !shouldRemove(field, index) {
            if let bytes = undecoded[index] { keptBytes[kept.count] = bytes }
            kept.append(field)
        }
        fields = kept
        self.undecoded = keptBytes.isEmpty ? nil : keptBytes
    }

    public var description: String { fields.map { "\($0.name): \($0.value)" }.joined(separator: "\n") }
}

extension String {
    /// ASCII case-insensitive equality, the comparison header names need. Compared over the two strings' bytes
    /// in place (a native or small string has them contiguous): every header of every request and response is
    /// compared with a few names, and stepping `String.UTF8View` iterators costs several times more.
    @inlinable
    public func equalsCaseInsensitive(_ other: String) -> Bool {
        let a = utf8
        let b = other.utf8
        guard a.count == b.count else { return false }
        let inPlace = a.withContiguousStorageIfAvailable { x in
            b.withContiguousStorageIfAvailable { y in HTTPToken.equalCaseInsensitive(bytes: x, y) }
        }
        if let inPlace, let equal = inPlace { return equal }
        return HTTPToken.equalCaseInsensitive(a, b)
    }
}

/// The RFC 9110 rules for header names (and methods) that every protocol module and header directive applies.
public enum HTTPToken {
    /// `tchar`: the bytes of a token (a header name, a method).
    @inlinable
    public static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
        case 0x21, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0x5E, 0x5F, 0x60, 0x7C, 0x7E: return true
        default: return false
        }
    }

    /// Whether `text` is a non-empty token.
    @inlinable
    public static func isToken(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy(isTokenByte)
    }

    /// ASCII case-insensitive equality of two runs of bytes in memory.
    @inlinable
    public static func equalCaseInsensitive(bytes a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
        guard a.count == b.count else { return false }
        for index in 0..<a.count {
            let x = a[index]
            let y = b[index]
            if x == y { continue }
            let lx = (x >= 65 && x <= 90) ? x | 0x20 : x
            let ly = (y >= 65 && y <= 90) ? y | 0x20 : y
            if lx != ly { return false }
        }
        return true
    }

    /// ASCII case-insensitive equality of two byte sequences.
    @inlinable
    public static func equalCaseInsensitive<A: Collection, B: Collection>(_ a: A, _ b: B) -> Bool
    where A.Element == UInt8, B.Element == UInt8 {
        guard a.count == b.count else { return false }
        for (x, y) in zip(a, b) where x != y {
            let lx = (x >= 65 && x <= 90) ? x | 0x20 : x
            let ly = (y >= 65 && y <= 90) ? y | 0x20 : y
            if lx != ly { return false }
        }
        return true
    }
}

/// A header value's text from its bytes: Swift strings are UTF-8, and a value in another charset is decoded with a
/// U+FFFD for each invalid sequence, its bytes kept (`HeaderFields.keep(undecoded:of:)`) so that what is passed on
/// is what came.
public enum HeaderValueText {
    /// The text of `bytes`, and the bytes themselves when they are no UTF-8.
    @inlinable
    public static func decode(_ bytes: UnsafeRawBufferPointer) -> (text: String, undecoded: [UInt8]?) {
        // ASCII, nearly every value, is its own text with no validation to speak of; valid UTF-8 is its own text
        // too; anything else is decoded with replacements, and its bytes kept.
        var ascii = true
        for byte in bytes where byte >= 0x80 { ascii = false; break }
        if !ascii, String(validating: bytes, as: UTF8.self) == nil {
            return (String(decoding: bytes, as: UTF8.self), Array(bytes))
        }
        return (String(decoding: bytes, as: UTF8.self), nil)
    }
}
