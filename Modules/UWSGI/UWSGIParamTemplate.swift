import KernelCore
import NIOCore

/// An `uwsgi_param` value: literal text with nginx variables (`$remote_addr`, `${host}`, `$http_user_agent`,
/// `$arg_x`, `$1`) resolved for each request.
public struct UWSGIParamTemplate: Sendable, Equatable {
    enum Segment: Sendable, Equatable {
        case literal(String)
        case variable(UWSGIVariable)
    }

    let segments: [Segment]

    /// Parses `text`; throws a message naming the first unknown variable.
    public init(parsing text: String) throws {
        var segments: [Segment] = []
        var literal = ""
        let scalars = Array(text.unicodeScalars)
        var index = 0
        while index < scalars.count {
            let scalar = scalars[index]
            guard scalar == "$" else {
                literal.unicodeScalars.append(scalar)
                index += 1
                continue
            }
            var name = ""
            var end = index + 1
            if end < scalars.count, scalars[end] == "{" {
                end += 1
                while end < scalars.count, scalars[end] != "}" { name.unicodeScalars.append(scalars[end]); end += 1 }
                guard end < scalars.count else { throw UWSGIParamTemplateError("unbalanced \"{\" in \"\(text)\"") }
                end += 1
            } else {
                while end < scalars.count, isNameScalar(scalars[end]) {
                    name.unicodeScalars.append(scalars[end])
                    end += 1
                }
            }
            guard !name.isEmpty else { throw UWSGIParamTemplateError("invalid variable name in \"\(text)\"") }
            guard let variable = UWSGIVariable(name: name) else {
                throw UWSGIParamTemplateError("unknown \"\(name)\" variable")
            }
            if !literal.isEmpty { segments.append(.literal(literal)); literal = "" }
            segments.append(.variable(variable))
            index = end
        }
        if !literal.isEmpty { segments.append(.literal(literal)) }
        self.segments = segments
    }

    /// The value for one request.
    public func evaluate(_ request: KernelRequest, route: RouteInfo) -> String {
        if segments.count == 1, case .literal(let text) = segments[0] { return text }
        var out = ""
        for segment in segments {
            switch segment {
            case .literal(let text): out += text
            case .variable(let variable): out += variable.value(request, route: route)
            }
        }
        return out
    }
}

/// A template that could not be parsed.
public struct UWSGIParamTemplateError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

private func isNameScalar(_ scalar: Unicode.Scalar) -> Bool {
    switch scalar {
    case "a"..."z", "A"..."Z", "0"..."9", "_": return true
    default: return false
    }
}

/// The nginx variables a uwsgi param may use.
public enum UWSGIVariable: Sendable, Equatable {
    case remoteAddr, remotePort, serverAddr, serverPort, serverName, serverProtocol, host, scheme, https
    case requestMethod, requestURI, uri, args, isArgs, request, contentType, contentLength, documentRoot, remoteUser
    case header(String)
    case argument(String)
    case capture(Int)

    init?(name: String) {
        switch name {
        case "remote_addr": self = .remoteAddr
        case "remote_port": self = .remotePort
        case "server_addr": self = .serverAddr
        case "server_port": self = .serverPort
        case "server_name": self = .serverName
        case "server_protocol": self = .serverProtocol
        case "host": self = .host
        case "scheme": self = .scheme
        case "https": self = .https
        case "request_method": self = .requestMethod
        case "request_uri": self = .requestURI
        case "uri", "document_uri": self = .uri
        case "args", "query_string": self = .args
        case "is_args": self = .isArgs
        case "request": self = .request
        case "content_type": self = .contentType
        case "content_length": self = .contentLength
        case "document_root": self = .documentRoot
        case "remote_user": self = .remoteUser
        default:
            if name.hasPrefix("http_"), name.count > 5 {
                self = .header(String(name.dropFirst(5)).replacingUnderscores())
            } else if name.hasPrefix("arg_"), name.count > 4 {
                self = .argument(String(name.dropFirst(4)))
            } else if name.count == 1, let digit = Int(name), digit >= 1 {
                self = .capture(digit)
            } else {
                return nil
            }
        }
    }

    func value(_ request: KernelRequest, route: RouteInfo) -> String {
        switch self {
        case .remoteAddr: return request.connection.remoteIP
        case .remotePort: return request.connection.remoteAddress?.port.map(String.init) ?? ""
        case .serverAddr: return request.connection.localAddress?.ipAddress ?? ""
        case .serverPort: return request.connection.localAddress?.port.map(String.init) ?? ""
        case .serverName: return route.serverName
        case .serverProtocol: return request.version.description
        case .host: return request.host ?? route.serverName
        case .scheme: return request.connection.scheme
        case .https: return request.connection.scheme == "https" ? "on" : ""
        case .requestMethod: return request.method
        case .requestURI: return request.uri
        case .uri: return request.path
        case .args: return request.query
        case .isArgs: return request.query.isEmpty ? "" : "?"
        case .request: return request.requestLine
        case .contentType: return request.headers["Content-Type"] ?? ""
        case .contentLength:
            if let length = request.headers["Content-Length"] { return length }
            // A chunked body was read whole: its length is known now (nginx does the same after reading it).
            if let length = request.bodyLength, length > 0 { return String(length) }
            return ""
        case .documentRoot: return ""
        case .remoteUser: return ""
        case .header(let name):
            let values = request.headers.values(name)
            return values.joined(separator: name.equalsCaseInsensitive("Cookie") ? "; " : ", ")
        case .argument(let name): return queryArgument(request.query, name) ?? ""
        case .capture(let index): return index <= route.captures.count ? route.captures[index - 1] : ""
        }
    }
}

private func queryArgument(_ query: String, _ name: String) -> String? {
    for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
        let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        if parts[0].lowercased() == name.lowercased() { return parts.count > 1 ? String(parts[1]) : "" }
    }
    return nil
}

extension String {
    fileprivate func replacingUnderscores() -> String {
        String(self.map { $0 == "_" ? "-" : $0 })
    }
}
