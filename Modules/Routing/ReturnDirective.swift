import KernelConfig
import KernelCore
import NIOCore

/// nginx's `return`, written as one YAML scalar: `200 "hello"`, `404`, `301 https://example.com$request_uri`,
/// `https://example.com` (302).
///
/// Codes 301, 302, 303, 307 and 308 take a URL, sent as `Location` with a small HTML body; other codes take an
/// optional text, sent as `text/plain`. A code of 400 or more without a text answers with the kernel's JSON error
/// body. Text and URL may use nginx variables (`VariableTemplate`, compiled against the registrar's variables and
/// the named groups of the location's regular expression).
struct ReturnDirective: Sendable {
    enum Body: Sendable {
        /// No text given: an empty body below 400, the JSON error body from 400 on.
        case none
        case text(VariableTemplate)
        case redirect(VariableTemplate)
    }

    let status: Int
    let body: Body

    static let redirectCodes: Set<Int> = [301, 302, 303, 307, 308]

    /// Decodes the directive's value. Errors name the value's position and key path. `captureNames` are the named
    /// groups of the location's regular expression (`$name`), empty outside a regex location.
    init(_ value: ConfigValue, variables: VariableRegistry = .standard, captureNames: [String: Int] = [:]) throws {
        func template(_ text: String, _ value: ConfigValue) throws -> VariableTemplate {
            do {
                return try VariableTemplate(text, variables: variables, captureNames: captureNames)
            } catch {
                throw value.error(error.message)
            }
        }
        let words: [String]
        // Where a bad code or text is reported: the scalar, or the list item.
        let wordValues: [ConfigValue]
        let text: String
        if case .sequence = value.node {
            // `[200, "text: with a colon"]`: each item is one word, no nginx quoting needed.
            wordValues = try value.list()
            words = try wordValues.map { try $0.string() }
            text = words.joined(separator: " ")
            guard (1...2).contains(words.count) else {
                throw value.error("expected [CODE], [CODE, TEXT], [CODE, URL] or [URL], found \(words.count) items")
            }
        } else {
            text = try value.string()
            do {
                words = try NginxArguments.split(text)
            } catch let error as NginxArguments.SyntaxError {
                throw value.error("\(error.message) in \"\(text)\"")
            }
            wordValues = Array(repeating: value, count: words.count)
        }
        guard let first = words.first else {
            throw value.error("expected a status code and an optional text or URL, or a URL, found \"\(text)\"")
        }
        let codeValue = wordValues[0]
        if words.count == 1, ReturnDirective.isURL(first) {
            // `return URL` is a temporary redirect.
            status = 302
            body = .redirect(try template(first, codeValue))
            return
        }
        guard first.utf8.count == 3, first.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
              let code = Int(first), (100...599).contains(code) else {
            throw codeValue.error("expected a status code 100-599, found \"\(first)\"")
        }
        guard code >= 200 else {
            throw codeValue.error("a 1xx status is not a final response, found \"\(first)\"")
        }
        // nginx's 444 closes the connection without answering; sending a 444 response instead would mislead.
        guard code != 444 else {
            throw codeValue.error("444 (close the connection without a response) is not supported; use a status such as 403 or 404")
        }
        guard words.count <= 2 else {
            throw value.error("expected a status code and one text or URL (quote a text with spaces: 200 \"hello world\"), found \"\(text)\"")
        }
        status = code
        guard words.count == 2 else {
            body = .none
            return
        }
        let compiled = try template(words[1], wordValues[1])
        if ReturnDirective.redirectCodes.contains(code) {
            body = .redirect(compiled)
        } else if code == 204 || code == 304 {
            throw wordValues[1].error("a \(code) response has no body, found the text \"\(words[1])\"")
        } else {
            body = .text(compiled)
        }
    }

    /// `http://`, `https://` or `$scheme` start a URL, as nginx decides for `return URL`.
    private static func isURL(_ word: String) -> Bool {
        word.hasPrefix("http://") || word.hasPrefix("https://") || word.hasPrefix("$scheme")
    }

    /// The highest `$N` the text or URL uses.
    var highestCapture: Int {
        switch body {
        case .none: return 0
        case .text(let template), .redirect(let template): return template.highestCapture
        }
    }

    /// The handler answering this directive: a fixed response when nothing varies per request (a relative
    /// redirect made absolute varies with the request's host).
    func makeHandler(redirects: RedirectStyle = .default) -> any RequestHandler {
        switch body {
        case .none:
            return StaticResponseHandler(ReturnDirective.response(status: status, body: body, text: ""))
        case .text(let template):
            if let constant = template.constantText {
                return StaticResponseHandler(ReturnDirective.response(status: status, body: body, text: constant))
            }
            return ReturnHandler(status: status, body: body, template: template, redirects: nil)
        case .redirect(let template):
            if let constant = template.constantText, !(redirects.absolute && constant.hasPrefix("/")) {
                return StaticResponseHandler(ReturnDirective.response(status: status, body: body, text: constant))
            }
            return ReturnHandler(status: status, body: body, template: template, redirects: redirects)
        }
    }

    /// The response for the rendered text or URL.
    static func response(status: Int, body: Body, text: String) -> KernelResponse {
        switch body {
        case .none:
            if status >= 400 {
                let reason = HTTPStatusText.reason(for: status)
                return .error(status, reason == "Unknown" ? "error \(status)" : reason.lowercased())
            }
            return KernelResponse(status: status)
        case .text:
            return .text(status, text)
        case .redirect:
            let title = "\(status) \(HTTPStatusText.reason(for: status))"
            var response = KernelResponse.text(
                status,
                "<html>\r\n<head><title>\(title)</title></head>\r\n<body>\r\n<center><h1>\(title)</h1></center>\r\n</body>\r\n</html>\r\n",
                contentType: "text/html")
            response.headers.add("Location", ReturnDirective.headerSafe(text))
            return response
        }
    }
}

extension ReturnDirective {
    /// `url` with control characters, blanks and non-ASCII bytes percent-encoded: `$uri` is decoded, and a request
    /// for `/a%0d%0aSet-Cookie:...` must not add a header to a redirect built from it.
    static func headerSafe(_ url: String) -> String {
        PercentEncoding.escaped(url)
    }
}

/// A `return` whose text or URL holds variables: rendered for each request.
struct ReturnHandler: ImmediateRequestHandler {
    let status: Int
    let body: ReturnDirective.Body
    let template: VariableTemplate
    /// How a redirect's relative URL goes out; nil for a text.
    let redirects: RedirectStyle?

    func response(to request: KernelRequest, context: RequestContext) -> KernelResponse {
        var text = template.render(request, route: context.route)
        if let redirects { text = redirects.location(text, for: request, serverName: context.route.serverName) }
        return ReturnDirective.response(status: status, body: body, text: text)
    }
}

/// Splits a directive's value into words as nginx's configuration reader does: words are separated by blanks;
/// `"..."` and `'...'` quote a word, in which `\"`, `\'`, `\\`, `\n`, `\r` and `\t` are escapes.
enum NginxArguments {
    struct SyntaxError: Error {
        var message: String
    }

    static func split(_ text: String) throws -> [String] {
        var words: [String] = []
        var characters = text.makeIterator()
        var current: String? = nil
        while let character = characters.next() {
            switch character {
            case " ", "\t", "\n", "\r":
                if let word = current { words.append(word); current = nil }
            case "\"", "'":
                guard current == nil else {
                    throw SyntaxError(message: "unexpected quote inside a word")
                }
                var word = ""
                var closed = false
                while let next = characters.next() {
                    if next == character { closed = true; break }
                    if next == "\\", let escaped = characters.next() {
                        switch escaped {
                        case "n": word.append("\n")
                        case "r": word.append("\r")
                        case "t": word.append("\t")
                        case "\"", "'", "\\": word.append(escaped)
                        default: word.append("\\"); word.append(escaped)
                        }
                    } else {
                        word.append(next)
                    }
                }
                guard closed else { throw SyntaxError(message: "unterminated quoted text") }
                words.append(word)
                // A quoted word must end at a blank or the end of the value.
                if let after = characters.next() {
                    guard after == " " || after == "\t" || after == "\n" || after == "\r" else {
                        throw SyntaxError(message: "expected a blank after the quoted text")
                    }
                }
            default:
                current = (current ?? "") + String(character)
            }
        }
        if let word = current { words.append(word) }
        return words
    }
}
