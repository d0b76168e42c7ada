import KernelCore
import NIOCore

/// The request line of a head that was refused before it was parsed whole, as far as it can be read.
struct RefusedRequestLine {
    let method: String
    let target: String
    let version: ProtocolVersion

    init(method: String, target: String, version: ProtocolVersion) {
        self.method = method
        self.target = target
        self.version = version
    }

    /// Reads `METHOD SP TARGET SP HTTP/x.y` from the start of `input` (a head not yet consumed); nil when it is not
    /// there.
    init?(_ input: ByteBuffer?) {
        guard let input else { return nil }
        let view = input.readableBytesView.prefix(8192)
        guard let end = view.firstIndex(where: { $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\n") }) else { return nil }
        let parts = view[view.startIndex..<end].split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy({ $0 >= 0x41 && $0 <= 0x5A }),
              parts[2].starts(with: Array("HTTP/".utf8)), parts[2].count == 8 else { return nil }
        let digits = Array(parts[2])
        guard digits[5] >= 0x30, digits[5] <= 0x39, digits[6] == UInt8(ascii: "."), digits[7] >= 0x30, digits[7] <= 0x39 else {
            return nil
        }
        method = String(decoding: parts[0], as: UTF8.self)
        target = String(decoding: parts[1], as: UTF8.self)
        version = ProtocolVersion(major: Int(digits[5] - 0x30), minor: Int(digits[7] - 0x30))
    }

    var isHead: Bool { method == "HEAD" }

    /// Whether unconsumed input begins with `HEAD `: a request line refused before it ended still shows its
    /// method, and a HEAD is answered without a body however much of the line had arrived.
    static func startsWithHead(_ input: ByteBuffer?) -> Bool {
        input?.readableBytesView.starts(with: "HEAD ".utf8) ?? false
    }

    /// A request for the access log only: routed to the default server, with the target's path when it has one.
    func request(connection: ConnectionInfo) -> KernelRequest? {
        let split = KernelRequest.splitTarget(target) ?? ("/", "")
        return KernelRequest(method: method, uri: target, path: split.path, query: split.query, version: version,
                             headers: HeaderFields(), connection: connection)
    }
}
