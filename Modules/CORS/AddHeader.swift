import KernelConfig
import KernelCore
import NIOCore

/// One `add_header NAME VALUE [always]` line: the value is a template of registry variables, rendered per response.
public struct AddedHeader: Sendable {
    public var name: String
    public var value: VariableTemplate
    /// nginx's `always`: added whatever the status; without it only to the statuses nginx lists.
    public var always: Bool

    public init(name: String, value: VariableTemplate, always: Bool) {
        self.name = name
        self.value = value
        self.always = always
    }

    /// The statuses nginx's headers filter adds to without `always` (`ngx_http_headers_filter`).
    static let addedStatuses: Set<Int> = [200, 201, 204, 206, 301, 302, 303, 304, 307, 308]

    /// Reads `add_header`: one line or a list, each `"NAME VALUE [always]"` as nginx writes it (the value may be
    /// quoted and hold spaces) or `{name:, value:, always:}`.
    static func decode(_ value: ConfigValue, variables: VariableRegistry) throws -> [AddedHeader] {
        let lines: [ConfigValue]
        if case .mapping = value.node { lines = [value] } else { lines = try value.list(allowScalar: true) }
        return try lines.map { line in
            if case .mapping = line.node {
                let mapping = try line.mapping()
                let name = try mapping.required("name").nonEmptyString()
                let text = try mapping.required("value").string()
                let always = try mapping.optional("always")?.bool() ?? false
                try mapping.finish()
                return try make(name: name, value: text, always: always, at: line, variables: variables)
            }
            let text = try line.nonEmptyString()
            var words = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard words.count >= 2 else {
                throw line.error("add_header needs a name and a value: \"NAME VALUE [always]\", found \"\(text)\"")
            }
            var always = false
            if words.count >= 3, words.last == "always" {
                always = true
                words.removeLast()
            }
            let name = words.removeFirst()
            var headerValue = words.joined(separator: " ")
            if headerValue.count >= 2, let first = headerValue.first, first == "'" || first == "\"", headerValue.last == first {
                headerValue = String(headerValue.dropFirst().dropLast())
            }
            return try make(name: name, value: headerValue, always: always, at: line, variables: variables)
        }
    }

    private static func make(name: String, value: String, always: Bool, at node: ConfigValue,
                             variables: VariableRegistry) throws -> AddedHeader {
        guard HTTPToken.isToken(name) else {
            throw node.error("add_header: invalid header name \"\(name)\"")
        }
        guard !value.utf8.contains(where: { $0 == 13 || $0 == 10 || $0 == 0 }) else {
            throw node.error("add_header: the value of \"\(name)\" holds a line break")
        }
        let template: VariableTemplate
        do {
            template = try VariableTemplate(value, variables: variables)
        } catch {
            throw node.error("add_header: \(error.message)")
        }
        return AddedHeader(name: name, value: template, always: always)
    }
}

/// The `add_header` lines of a server or location, applied to the response on its way out.
struct AddHeaderFilter: RequestFilter {
    let headers: [AddedHeader]

    func handle(_ request: KernelRequest, context: RequestContext, next: FilterNext) -> EventLoopFuture<KernelResponse> {
        next(request, context: context).map { response in
            var response = response
            let listed = AddedHeader.addedStatuses.contains(response.status)
            for header in headers where header.always || listed {
                let value = header.value.render(VariableContext(request: request, route: context.route, response: response))
                // nginx leaves a header out when its value renders empty.
                if !value.isEmpty { response.headers.add(header.name, value) }
            }
            return response
        }
    }
}
