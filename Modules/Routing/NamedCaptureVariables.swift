import KernelConfig
import KernelCore

/// The named groups of the configuration's regex locations as variables, as nginx registers every `(?<name>...)`
/// of its regular expressions: `$name` is the group of the location's match, not found elsewhere.
///
/// Registered before anything of `routing` is compiled, so that `log_format` and the templates of other modules'
/// directives (`uwsgi_param`) know the names too. The scan forgives what it cannot read: the decode that follows
/// reports it with its position. A name that is already a variable (`host`) stays that variable; in its own
/// location's `return` the group wins (see `ReturnDirective`).
enum NamedCaptureVariables {
    static func register(servers: ConfigValue?, into registrar: Registrar) {
        var names: Set<String> = []
        for server in (try? servers?.list()) ?? [] {
            guard let mapping = try? server.mapping(), let locations = try? mapping.optional("locations")?.list() else {
                continue
            }
            for location in locations {
                guard let text = try? location.mapping().optional("location")?.string(),
                      case .regex(let pattern, let caseInsensitive)? = try? LocationMatch.parse(text),
                      let regex = try? PCRERegex(pattern, caseInsensitive: caseInsensitive) else { continue }
                names.formUnion(regex.captureNames.keys)
            }
        }
        for name in names.sorted() where !registrar.variables.contains(name) {
            registrar.variables.register(name) { context in
                let route = context.route
                guard let group = route.captureNames[name]
                        ?? route.captureNames.first(where: { $0.key.lowercased() == name.lowercased() })?.value,
                      group <= route.captures.count else { return nil }
                return route.captures[group - 1]
            }
        }
    }
}
