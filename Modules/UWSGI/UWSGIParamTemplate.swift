import KernelCore

/// An `uwsgi_param` value: literal text with nginx variables (`$remote_addr`, `${host}`, `$http_user_agent`,
/// `$arg_x`, `$1`) from the core's variable registry, compiled once and resolved for each request.
public struct UWSGIParamTemplate: Sendable, Equatable {
    /// The value as written.
    public let text: String
    let template: VariableTemplate

    /// Compiles `text` against `variables` (the core's by default; a location passes the registrar's, with the
    /// variables modules added); throws a message naming the first unknown variable.
    public init(parsing text: String, variables: VariableRegistry = .standard) throws {
        self.text = text
        do {
            template = try VariableTemplate(text, variables: variables)
        } catch {
            throw UWSGIParamTemplateError(error.message)
        }
    }

    /// The value for one request.
    public func evaluate(_ request: KernelRequest, route: RouteInfo) -> String {
        template.render(request, route: route)
    }

    /// Two templates are equal when they were compiled from the same text.
    public static func == (a: UWSGIParamTemplate, b: UWSGIParamTemplate) -> Bool { a.text == b.text }
}

/// A template that could not be parsed.
public struct UWSGIParamTemplateError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
