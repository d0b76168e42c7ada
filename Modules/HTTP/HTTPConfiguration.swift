import KernelConfig
import KernelCore
import NIOCore

/// One `http.listen` entry: the address as written (the `listener` name requests carry) and how to bind it.
public struct HTTPListenAddress: Sendable, Equatable {
    /// The address as written in YAML (`127.0.0.1:8080`); routing's `server.listen` compares against this text.
    public var text: String
    public var address: ListenAddress
    /// The accept queue length (nginx `listen ... backlog=N`); nil is `kernel.listen_backlog`.
    public var backlog: Int32?
    /// Where the address is written, for errors about binding it; not part of what the entry says (`==`).
    public var mark: SourceMark?

    public init(text: String, address: ListenAddress, backlog: Int32? = nil, mark: SourceMark? = nil) {
        self.text = text
        self.address = address
        self.backlog = backlog
        self.mark = mark
    }

    public static func == (lhs: HTTPListenAddress, rhs: HTTPListenAddress) -> Bool {
        lhs.text == rhs.text && lhs.address == rhs.address && lhs.backlog == rhs.backlog
    }
}

/// The decoded `http:` section. Defaults are nginx's.
public struct HTTPConfiguration: Sendable {
    public var listen: [HTTPListenAddress]
    /// Time allowed for a whole request head (nginx `client_header_timeout`).
    public var clientHeaderTimeout = ConfigDuration.seconds(60)
    /// Time allowed between two reads of a request body (nginx `client_body_timeout`).
    public var clientBodyTimeout = ConfigDuration.seconds(60)
    /// Time allowed between two successful writes of a response (nginx `send_timeout`).
    public var sendTimeout = ConfigDuration.seconds(60)
    /// How long an idle keep-alive connection stays open; zero disables keep-alive.
    public var keepaliveTimeout = ConfigDuration.seconds(75)
    /// Requests served on one connection before it is closed.
    public var keepaliveRequests = 1000
    /// The size a request head is expected to fit in (nginx `client_header_buffer_size`).
    public var clientHeaderBufferSize = ByteSize(bytes: 1024)
    /// Number of large header buffers (nginx `large_client_header_buffers NUMBER size`).
    public var largeHeaderBufferCount = 4
    /// Size of one large header buffer (nginx `large_client_header_buffers number SIZE`).
    public var largeHeaderBufferSize = ByteSize(bytes: 8192)
    /// Whether the `Server` header names the version.
    public var serverTokens = true
    /// Whether `_` is allowed in request header names (nginx `underscores_in_headers`, off: such names are invalid).
    public var underscoresInHeaders = false
    /// Whether request header lines with invalid names are dropped (nginx `ignore_invalid_headers`, on).
    public var ignoreInvalidHeaders = true

    public init(listen: [HTTPListenAddress]) { self.listen = listen }

    /// Every key of the section, for the docs and error messages.
    public static let keys = ["listen", "client_header_timeout", "client_body_timeout", "send_timeout", "keepalive_timeout",
                              "keepalive_requests", "client_header_buffer_size", "large_client_header_buffers", "server_tokens",
                              "underscores_in_headers", "ignore_invalid_headers"]

    /// Decodes the `http:` mapping strictly.
    public static func decode(_ value: ConfigValue) throws -> HTTPConfiguration {
        let mapping = try value.mapping()
        var configuration = HTTPConfiguration(listen: try decodeListen(try mapping.required("listen")))
        if let v = mapping.optional("client_header_timeout") { configuration.clientHeaderTimeout = try positiveDuration(v) }
        if let v = mapping.optional("client_body_timeout") { configuration.clientBodyTimeout = try positiveDuration(v) }
        if let v = mapping.optional("send_timeout") { configuration.sendTimeout = try positiveDuration(v) }
        if let v = mapping.optional("keepalive_timeout") { configuration.keepaliveTimeout = try v.duration() }
        if let v = mapping.optional("keepalive_requests") {
            configuration.keepaliveRequests = try v.int(in: 0...Int(Int32.max), what: "a non-negative integer")
        }
        if let v = mapping.optional("client_header_buffer_size") {
            let size = try v.size()
            guard size.bytes >= 1 else { throw v.expected("a size of at least 1") }
            configuration.clientHeaderBufferSize = size
        }
        if let v = mapping.optional("large_client_header_buffers") {
            (configuration.largeHeaderBufferCount, configuration.largeHeaderBufferSize) = try decodeLargeBuffers(v)
        }
        if let v = mapping.optional("server_tokens") { configuration.serverTokens = try v.bool() }
        if let v = mapping.optional("underscores_in_headers") { configuration.underscoresInHeaders = try v.bool() }
        if let v = mapping.optional("ignore_invalid_headers") { configuration.ignoreInvalidHeaders = try v.bool() }
        try mapping.finish()
        return configuration
    }

    private static func positiveDuration(_ value: ConfigValue) throws -> ConfigDuration {
        let duration = try value.duration()
        guard duration.milliseconds > 0 else { throw value.expected("a duration greater than zero") }
        return duration
    }

    /// `"4 8k"`: a count and a size, as nginx writes them.
    private static func decodeLargeBuffers(_ value: ConfigValue) throws -> (Int, ByteSize) {
        let what = "\"NUMBER SIZE\" such as \"4 8k\""
        guard let text = value.node.scalarText else { throw value.expected(what) }
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard parts.count == 2, let count = Int(parts[0]), count >= 1, count <= 1024,
              let size = ByteSize(parsing: String(parts[1])), size.bytes >= 2, size.bytes <= 1 << 20 else {
            throw value.expected(what)
        }
        return (count, size)
    }

    /// A string or a list of strings and `{address, backlog}` mappings; the same address twice is an error.
    private static func decodeListen(_ value: ConfigValue) throws -> [HTTPListenAddress] {
        var result: [HTTPListenAddress] = []
        let items = try value.list(allowScalar: true)
        guard !items.isEmpty else { throw value.expected("at least one address") }
        for item in items {
            let entry: HTTPListenAddress
            if case .mapping = item.node {
                let mapping = try item.mapping()
                let addressValue = try mapping.required("address")
                entry = HTTPListenAddress(text: try addressValue.string(), address: try parseAddress(addressValue),
                                          mark: addressValue.mark)
                var withBacklog = entry
                if let backlog = mapping.optional("backlog") {
                    withBacklog.backlog = Int32(try backlog.int(in: 1...65535, what: "an integer 1-65535"))
                }
                try mapping.finish()
                if let duplicate = result.first(where: { $0.address == withBacklog.address }) {
                    throw addressValue.error("duplicate listen address \"\(withBacklog.text)\" (same as \"\(duplicate.text)\")")
                }
                result.append(withBacklog)
                continue
            }
            entry = HTTPListenAddress(text: try item.string(), address: try parseAddress(item), mark: item.mark)
            if let duplicate = result.first(where: { $0.address == entry.address }) {
                throw item.error("duplicate listen address \"\(entry.text)\" (same as \"\(duplicate.text)\")")
            }
            result.append(entry)
        }
        return result
    }

    private static func parseAddress(_ value: ConfigValue) throws -> ListenAddress {
        let what = "an address such as 127.0.0.1:8080, [::1]:8080, *:8080, 8080 or unix:/path"
        guard let text = value.node.scalarText, !value.isNull, let address = ListenAddress(parsing: text) else {
            throw value.expected(what)
        }
        return address
    }
}
