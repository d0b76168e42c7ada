/// A configuration error. Its description is the one line an operator sees:
/// `etc/kernel.yaml:14:7: routing.servers[0].locations[2].return: expected a status code 100-599, found "abc"`.
public struct ConfigError: Error, Sendable, CustomStringConvertible, Equatable {
    public var mark: SourceMark?
    /// Dotted key path (`http.listen[1]`); empty for errors about a whole file.
    public var path: String
    public var message: String

    public init(mark: SourceMark?, path: String, message: String) {
        self.mark = mark
        self.path = path
        self.message = message
    }

    public var description: String {
        var text = ""
        if let mark { text += "\(mark): " }
        if !path.isEmpty { text += "\(path): " }
        return text + message
    }
}
