import KernelCore

/// A text with nginx variables (`https://example.com$request_uri`), parsed once at configuration time and filled in
/// per request.
struct VariableTemplate: Sendable {
    /// One nginx variable the kernel knows.
    enum Variable: Sendable, Equatable {
        /// `$request_uri`: the target as received, with its query.
        case requestURI
        /// `$uri`, `$document_uri`: the normalised path.
        case uri
        /// `$args`, `$query_string`.
        case args
        /// `$is_args`: `?` when there is a query, else empty.
        case isArgs
        /// `$host`: the Host header without port, lower-cased, or the server's first name.
        case host
        /// `$scheme`: `http` or `https`.
        case scheme
        /// `$remote_addr`.
        case remoteAddress
        /// `$server_name`: the chosen server's first name.
        case serverName
        /// `$server_port`: the local port the request came in on.
        case serverPort
        /// `$request_method`.
        case requestMethod
        /// `$server_protocol`: `HTTP/1.1`.
        case serverProtocol
        /// `$1`...`$9`: a group of the location's regular expression.
        case capture(Int)
        /// `$http_NAME`: a request header, `_` standing for `-`.
        case header(String)
        /// `$arg_NAME`: a query argument, as sent.
        case argument(String)
    }

    enum Piece: Sendable {
        case literal(String)
        case variable(Variable)
    }

    let pieces: [Piece]

    /// A template of no text.
    static let empty = VariableTemplate(pieces: [])

    private init(pieces: [Piece]) { self.pieces = pieces }

    /// The text when it holds no variable.
    var constantText: String? {
        if pieces.isEmpty { return "" }
        guard pieces.count == 1, case .literal(let text) = pieces[0] else { return nil }
        return text
    }

    /// The highest `$N` used, 0 when none.
    var highestCapture: Int {
        pieces.reduce(0) { highest, piece in
            if case .variable(.capture(let number)) = piece { return max(highest, number) }
            return highest
        }
    }

    /// Variable names the kernel fills in, for error messages.
    static let knownNames = "$request_uri, $uri, $document_uri, $args, $query_string, $is_args, $host, $scheme, "
        + "$remote_addr, $server_name, $server_port, $request_method, $server_protocol, $http_NAME, $arg_NAME, $1-$9"

    /// Parses `$name` and `${name}` references; throws a message for an unknown or malformed one.
    init(parsing text: String) throws {
        var pieces: [Piece] = []
        var literal = ""
        var index = text.startIndex
        func isNameCharacter(_ character: Character) -> Bool {
            character.isASCII && (character.isLetter || character.isNumber || character == "_")
        }
        while index < text.endIndex {
            let character = text[index]
            guard character == "$" else {
                literal.append(character)
                index = text.index(after: index)
                continue
            }
            var cursor = text.index(after: index)
            let name: Substring
            if cursor < text.endIndex, text[cursor] == "{" {
                let start = text.index(after: cursor)
                guard let close = text[start...].firstIndex(of: "}") else {
                    throw TemplateError("the variable name in \"\(text)\" lacks its closing \"}\"")
                }
                name = text[start..<close]
                cursor = text.index(after: close)
            } else if cursor < text.endIndex, text[cursor].isASCII, text[cursor].isNumber {
                // nginx reads one digit: `$12` is `$1` followed by "2".
                name = text[cursor...cursor]
                cursor = text.index(after: cursor)
            } else {
                let start = cursor
                while cursor < text.endIndex, isNameCharacter(text[cursor]) { cursor = text.index(after: cursor) }
                name = text[start..<cursor]
            }
            guard !name.isEmpty, name.allSatisfy(isNameCharacter) else {
                throw TemplateError("invalid variable name after \"$\" in \"\(text)\" (a literal \"$\" cannot be written)")
            }
            guard let variable = VariableTemplate.variable(named: name) else {
                throw TemplateError("unknown variable \"$\(name)\" (known: \(VariableTemplate.knownNames))")
            }
            if !literal.isEmpty {
                pieces.append(.literal(literal))
                literal = ""
            }
            pieces.append(.variable(variable))
            index = cursor
        }
        if !literal.isEmpty { pieces.append(.literal(literal)) }
        self.pieces = pieces
    }

    private static func variable(named name: Substring) -> Variable? {
        switch name {
        case "request_uri": return .requestURI
        case "uri", "document_uri": return .uri
        case "args", "query_string": return .args
        case "is_args": return .isArgs
        case "host": return .host
        case "scheme": return .scheme
        case "remote_addr": return .remoteAddress
        case "server_name": return .serverName
        case "server_port": return .serverPort
        case "request_method": return .requestMethod
        case "server_protocol": return .serverProtocol
        default:
            if name.count == 1, let digit = name.first?.wholeNumberValue, digit >= 1 { return .capture(digit) }
            if name.hasPrefix("http_"), name.count > 5 {
                return .header(String(name.dropFirst(5)).replacingUnderscores())
            }
            if name.hasPrefix("arg_"), name.count > 4 { return .argument(String(name.dropFirst(4))) }
            return nil
        }
    }

    /// The text with every variable replaced by its value for `request`.
    func render(_ request: KernelRequest, route: RouteInfo) -> String {
        var output = ""
        for piece in pieces {
            switch piece {
            case .literal(let text): output += text
            case .variable(let variable): output += VariableTemplate.value(of: variable, request, route)
            }
        }
        return output
    }

    private static func value(of variable: Variable, _ request: KernelRequest, _ route: RouteInfo) -> String {
        switch variable {
        case .requestURI: return request.uri
        case .uri: return request.path
        case .args: return request.query
        case .isArgs: return request.query.isEmpty ? "" : "?"
        case .host: return request.host ?? route.serverName
        case .scheme: return request.connection.scheme
        case .remoteAddress: return request.connection.remoteIP
        case .serverName: return route.serverName
        case .serverPort: return request.connection.localAddress?.port.map { String($0) } ?? ""
        case .requestMethod: return request.method
        case .serverProtocol: return request.version.description
        case .capture(let number): return number <= route.captures.count ? route.captures[number - 1] : ""
        case .header(let name): return request.headers[name] ?? ""
        case .argument(let name): return queryArgument(name, in: request.query)
        }
    }

    /// The first value of `name` in `query`, undecoded as nginx's `$arg_` gives it.
    private static func queryArgument(_ name: String, in query: String) -> String {
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            if let equals = pair.firstIndex(of: "=") {
                if pair[..<equals] == name { return String(pair[pair.index(after: equals)...]) }
            } else if pair == name {
                return ""
            }
        }
        return ""
    }
}

/// A malformed variable reference; the message is completed with the key path by the caller.
struct TemplateError: Error {
    var message: String
    init(_ message: String) { self.message = message }
}

extension String {
    fileprivate func replacingUnderscores() -> String {
        String(map { $0 == "_" ? "-" : $0 })
    }
}
