import KernelCore

/// The key of `hash KEY`: a text with registry variables (`$request_uri`, `$remote_addr`, `$arg_user`), compiled
/// when the configuration loads and rendered per request.
public struct HashKey: Sendable, Equatable {
    /// The key as written.
    public let text: String
    let template: VariableTemplate

    /// Compiles `text` against `variables`. A key cannot use regex captures (`$1`): an upstream serves many
    /// locations, so no one location's expression is in scope.
    public init(_ text: String, variables: VariableRegistry = .standard) throws(VariableTemplateError) {
        let template = try VariableTemplate(text, variables: variables)
        guard template.highestCapture == 0 else {
            throw VariableTemplateError("hash key \"\(text)\" uses a regex capture, which an upstream has none of")
        }
        self.text = text
        self.template = template
    }

    /// The bytes hashed for `request`.
    func render(_ request: KernelRequest) -> [UInt8] {
        Array(template.render(VariableContext(request: request, route: Self.noRoute)).utf8)
    }

    private static let noRoute = RouteInfo()

    public static func == (lhs: HashKey, rhs: HashKey) -> Bool { lhs.text == rhs.text }
}

/// CRC-32 as nginx's `ngx_crc32_*` computes it (the IEEE polynomial, reflected, as zlib's `crc32`).
enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { index -> UInt32 in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 == 1 ? (value >> 1) ^ 0xEDB8_8320 : value >> 1 }
        return value
    }

    /// The running value before any byte (`ngx_crc32_init`).
    static let initial: UInt32 = 0xFFFF_FFFF

    /// Adds `bytes` to a running value (`ngx_crc32_update`).
    static func update<Bytes: Sequence>(_ crc: inout UInt32, _ bytes: Bytes) where Bytes.Element == UInt8 {
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xff)] ^ (crc >> 8) }
    }

    /// The checksum of a running value (`ngx_crc32_final`).
    static func final(_ crc: UInt32) -> UInt32 { crc ^ 0xFFFF_FFFF }

    /// The checksum of `bytes` (`ngx_crc32_long`).
    static func checksum<Bytes: Sequence>(_ bytes: Bytes) -> UInt32 where Bytes.Element == UInt8 {
        var crc = initial
        update(&crc, bytes)
        return final(crc)
    }
}

/// The points of `hash ... consistent`, as nginx's `ngx_http_upstream_update_chash` makes them (compatible with
/// Cache::Memcached::Fast, so keys map to the servers nginx maps them to): 160 points per unit of weight, each the
/// CRC-32 of "HOST\0PORT" followed by the previous point's four bytes (little-endian), sorted, duplicates dropped.
struct ConsistentHashRing {
    struct Point {
        var hash: UInt32
        /// The server's name as nginx compares it (`host:port`, `unix:/path`).
        var server: String
    }

    let points: [Point]

    init(servers: [UpstreamServer]) {
        var points: [Point] = []
        for server in servers {
            let name = server.address.description
            var base = CRC32.initial
            let (host, port) = Self.hostAndPort(name)
            CRC32.update(&base, host.utf8)
            CRC32.update(&base, [0])
            CRC32.update(&base, port.utf8)
            var previous: UInt32 = 0
            for _ in 0..<(server.weight * 160) {
                var hash = base
                CRC32.update(&hash, [UInt8(previous & 0xff), UInt8((previous >> 8) & 0xff),
                                     UInt8((previous >> 16) & 0xff), UInt8(previous >> 24)])
                hash = CRC32.final(hash)
                points.append(Point(hash: hash, server: name))
                previous = hash
            }
        }
        // A stable sort, then the first of equal hashes is kept (nginx's qsort leaves ties in no defined order).
        let sorted = points.enumerated().sorted { ($0.element.hash, $0.offset) < ($1.element.hash, $1.offset) }.map(\.element)
        var unique: [Point] = []
        unique.reserveCapacity(sorted.count)
        for point in sorted where unique.last?.hash != point.hash { unique.append(point) }
        self.points = unique
    }

    /// nginx splits the name at its last colon when only digits follow; `unix:` names are the path, no port.
    static func hostAndPort(_ name: String) -> (host: Substring, port: Substring) {
        if name.utf8.count >= 5, name.prefix(5).lowercased() == "unix:" { return (name.dropFirst(5), "") }
        if let colon = name.lastIndex(of: ":"), name[name.index(after: colon)...].allSatisfy(\.isASCIIDigit) {
            return (name[..<colon], name[name.index(after: colon)...])
        }
        return (name[...], "")
    }

    /// The index of the first point at or above `hash` (`ngx_http_upstream_find_chash_point`); `points.count`
    /// when every point is below, which wraps to the first.
    func firstPoint(atOrAbove hash: UInt32) -> Int {
        var low = 0
        var high = points.count
        while low < high {
            let middle = (low + high) / 2
            if hash > points[middle].hash {
                low = middle + 1
            } else if hash < points[middle].hash {
                high = middle
            } else {
                return middle
            }
        }
        return low
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}

extension BalancedGroup {
    /// nginx's `hash KEY` (`ngx_http_upstream_get_hash_peer`, compatible with Cache::Memcached): the hash is
    /// `(crc32([REHASH] KEY) >> 16) & 0x7fff` added to the previous one, which walks the weights; a peer that
    /// cannot take the request is hashed past with the next REHASH, and after 20 tries round robin decides
    /// (nil here).
    func hashPick(_ key: [UInt8], excluding excluded: [PeerAddress], at time: UInt64) -> Int? {
        guard !key.isEmpty, primary.count >= 2 else { return nil }
        let totalWeight = primary.reduce(0) { $0 + $1.server.weight }
        var hash: UInt32 = 0
        var rehash = 0
        for _ in 0...20 {
            var crc = CRC32.initial
            if rehash > 0 { CRC32.update(&crc, String(rehash).utf8) }
            CRC32.update(&crc, key)
            hash &+= (CRC32.final(crc) >> 16) & 0x7fff
            rehash += 1
            let index = Self.peerIndex(atWeight: Int(hash % UInt32(totalWeight)), of: primary)
            if Self.usable(primary[index], at: time), !excluded.contains(primary[index].server.address) {
                Self.markChecked(&primary[index], at: time)
                return index
            }
        }
        return nil
    }

    /// nginx's `hash KEY consistent` (`ngx_http_upstream_get_chash_peer`): the first point at or above the key's
    /// CRC-32 names a server; when it cannot take the request the next point is tried, 20 times at most, then
    /// round robin decides (nil here). Among peers of the same name the smooth weighted round robin chooses.
    func consistentHashPick(_ key: [UInt8], excluding excluded: [PeerAddress], at time: UInt64) -> Int? {
        guard !key.isEmpty, primary.count >= 2, !ring.points.isEmpty else { return nil }
        var point = ring.firstPoint(atOrAbove: CRC32.checksum(key))
        for _ in 0...20 {
            let server = ring.points[point % ring.points.count].server
            let named = Self.candidates(primary, excluding: excluded, at: time)
                .filter { primary[$0].server.address.description == server }
            if let index = Self.weightedPick(&primary, among: named, at: time) { return index }
            point += 1
        }
        return nil
    }
}
