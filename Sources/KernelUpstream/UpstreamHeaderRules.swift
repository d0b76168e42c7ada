import KernelConfig
import KernelCore

/// nginx's `*_hide_header` and `*_pass_header` for one location: which of an upstream's response headers the client
/// does not get, beside the hop-by-hop ones and `Date`/`Server` that the engine always drops. The defaults are
/// nginx's for both protocols (`X-Accel-*`, with `X-Pad`).
public struct UpstreamHeaderRules: Sendable, Equatable {
    /// `*_hide_header` (lower-cased), beside the protocol's defaults.
    public var hidden: Set<String> = []
    /// `*_pass_header` (lower-cased): defaults that are passed after all.
    public var passed: Set<String> = []

    public init() {}

    /// Reads `PREFIX_hide_header` and `PREFIX_pass_header` (`prefix` is `proxy` or `uwsgi`).
    public static func decode(_ location: ConfigMapping, prefix: String) throws -> UpstreamHeaderRules {
        var rules = UpstreamHeaderRules()
        if let names = location.optional(prefix + "_hide_header") {
            rules.hidden = Set(try decodeNames(names).map { $0.lowercased() })
        }
        if let names = location.optional(prefix + "_pass_header") {
            rules.passed = Set(try decodeNames(names).map { $0.lowercased() })
        }
        return rules
    }

    /// A header name or a list of them.
    public static func decodeNames(_ value: ConfigValue) throws -> [String] {
        try value.list(allowScalar: true).map { item in
            let name = try item.nonEmptyString()
            guard HTTPToken.isToken(name) else { throw item.error("invalid header name \"\(name)\"") }
            return name
        }
    }

    /// Whether the client does not get header `name` (as the upstream sent it). `X-Accel-Buffering` is never
    /// dropped here: `UpstreamBuffering.apply` reads it first and hides it then. Without `*_hide_header` /
    /// `*_pass_header` lines (the usual case) no lowered copy of the name is made.
    public func hides(_ name: String) -> Bool {
        if name.equalsCaseInsensitive("x-accel-buffering") { return false }
        guard !hidden.isEmpty || !passed.isEmpty else { return Self.hiddenByDefault(name) }
        let lowered = name.lowercased()
        if hidden.contains(lowered) { return true }
        if passed.contains(lowered) { return false }
        return Self.hiddenByDefault(name)
    }

    /// nginx's defaults (`X-Pad`, `X-Accel-*`), compared in place: no lowered copy is made per header of every
    /// answer.
    static func hiddenByDefault(_ name: String) -> Bool {
        let utf8 = name.utf8
        guard utf8.count >= 5, HTTPToken.equalCaseInsensitive(utf8.prefix(2), "x-".utf8) else { return false }
        if utf8.count == 5 { return name.equalsCaseInsensitive("x-pad") }
        return HTTPToken.equalCaseInsensitive(utf8.prefix(8), "x-accel-".utf8)
    }

    /// Whether `*_pass_header` names `lowercasedName`.
    public func passes(_ lowercasedName: String) -> Bool { passed.contains(lowercasedName) }
}
