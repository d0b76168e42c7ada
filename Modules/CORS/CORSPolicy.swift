import KernelConfig
import KernelCore

/// One origin rule of a `cors:` block.
enum OriginRule: Sendable {
    /// `*`: any origin.
    case any
    /// `https://app.example.com`, compared case-insensitively.
    case exact(String)
    /// `https://*.example.com` (or `*.example.com`, any scheme): a subdomain of `suffix`, at any depth.
    case subdomain(scheme: String?, suffix: String)
    /// `~REGEX`: PCRE2, matched against the whole `Origin` value.
    case regex(PCRERegex)

    func matches(_ origin: String) -> Bool {
        switch self {
        case .any:
            return true
        case .exact(let allowed):
            return origin.lowercased() == allowed
        case .subdomain(let scheme, let suffix):
            let lower = origin.lowercased()
            guard let separator = lower.firstRange(of: "://") else { return false }
            if let scheme, lower[..<separator.lowerBound] != scheme { return false }
            let host = lower[separator.upperBound...]
            return host.hasSuffix("." + suffix) && host.count > suffix.count + 1
        case .regex(let regex):
            return regex.matches(origin)
        }
    }
}

/// A `cors:` block: who may call, with what, and what the browser may read.
///
/// Unlike the usual `add_header Access-Control-Allow-Origin *` lines, an allowed origin is echoed (with
/// `Vary: Origin`) whenever credentials are allowed or the origins are a list: browsers reject `*` together with
/// `Access-Control-Allow-Credentials: true`, and a cache must not hand one origin's answer to another.
public struct CORSPolicy: Sendable {
    let origins: [OriginRule]
    let allowMethods: [String]
    /// nil: the headers a preflight asks for are allowed (echoed).
    let allowHeaders: [String]?
    let exposeHeaders: [String]
    let allowCredentials: Bool
    let maxAge: Int64?
    /// Whether the `Origin` is echoed rather than `*` sent.
    var echoesOrigin: Bool { allowCredentials || !(origins.count == 1 && isAnyOrigin) }
    var isAnyOrigin: Bool { if case .any = origins.first { return true } else { return false } }

    static let defaultMethods = ["GET", "HEAD", "POST"]

    /// Reads a `cors:` mapping. `warn` is told of what browsers would reject (`*` with credentials).
    static func decode(_ value: ConfigValue, warn: (String) -> Void) throws -> CORSPolicy {
        let mapping = try value.mapping()
        let originValues = try mapping.required("allow_origins").list(allowScalar: true)
        var origins: [OriginRule] = []
        for node in originValues {
            origins.append(try originRule(node))
        }
        guard !origins.isEmpty else { throw value.error("cors: allow_origins is empty: no origin could call") }
        if origins.count > 1, origins.contains(where: { if case .any = $0 { return true } else { return false } }) {
            throw value.error("cors: \"*\" in allow_origins allows every origin: write it alone")
        }
        let methods = try mapping.optional("allow_methods")?.stringList().map { $0.uppercased() } ?? defaultMethods
        for method in methods where !HTTPToken.isToken(method) {
            throw value.error("cors: invalid method \"\(method)\" in allow_methods")
        }
        let allowHeaders = try mapping.optional("allow_headers")?.stringList()
        let exposeHeaders = try mapping.optional("expose_headers")?.stringList() ?? []
        for name in (allowHeaders ?? []) + exposeHeaders where name != "*" && !HTTPToken.isToken(name) {
            throw value.error("cors: invalid header name \"\(name)\"")
        }
        let credentials = try mapping.optional("allow_credentials")?.bool() ?? false
        let maxAge = try mapping.optional("max_age")?.duration().milliseconds
        try mapping.finish()
        let policy = CORSPolicy(origins: origins, allowMethods: methods, allowHeaders: allowHeaders,
                                exposeHeaders: exposeHeaders, allowCredentials: credentials,
                                maxAge: maxAge.map { $0 / 1000 })
        if credentials, policy.isAnyOrigin {
            warn("\(value.node.mark): cors: allow_origins \"*\" with allow_credentials: browsers reject \"Access-Control-Allow-Origin: *\" with credentials, so each calling Origin is echoed instead (with \"Vary: Origin\")")
        }
        return policy
    }

    private static func originRule(_ node: ConfigValue) throws -> OriginRule {
        let text = try node.nonEmptyString()
        if text == "*" { return .any }
        if text.hasPrefix("~") {
            do {
                return .regex(try PCRERegex(String(text.dropFirst())))
            } catch {
                throw node.error("cors: invalid regular expression \"\(text.dropFirst())\": \(error.message) at offset \(error.offset)")
            }
        }
        let lower = text.lowercased()
        if let star = lower.firstRange(of: "*.") {
            let scheme = lower[..<star.lowerBound]
            guard scheme.isEmpty || scheme.hasSuffix("://") else {
                throw node.error("cors: a wildcard origin is \"*.example.com\" or \"https://*.example.com\", found \"\(text)\"")
            }
            let suffix = String(lower[star.upperBound...])
            guard !suffix.isEmpty, !suffix.contains("*"), !suffix.contains("/") else {
                throw node.error("cors: a wildcard origin is \"*.example.com\" or \"https://*.example.com\", found \"\(text)\"")
            }
            return .subdomain(scheme: scheme.isEmpty ? nil : String(scheme.dropLast(3)), suffix: suffix)
        }
        if lower == "null" { return .exact(lower) }  // what sandboxed documents and file: pages send
        guard let separator = lower.firstRange(of: "://"), separator.lowerBound > lower.startIndex,
              !lower[separator.upperBound...].isEmpty,
              !lower[separator.upperBound...].contains(where: { $0 == "/" || $0 == "?" || $0 == "#" }) else {
            throw node.error("cors: an origin is a scheme and a host (\"https://app.example.com\", no path), found \"\(text)\"")
        }
        return .exact(lower)
    }

    /// Whether `origin` may call.
    func allows(_ origin: String) -> Bool { origins.contains { $0.matches(origin) } }
}
