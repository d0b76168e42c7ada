/// Paths written in a configuration file resolve against that file's directory, as nginx's do against its prefix.
public enum ConfigPath {
    /// The directory of `file` (`.` when it has none).
    public static func directory(of file: String) -> String {
        guard let slash = file.lastIndex(of: "/") else { return "." }
        return String(file[..<slash])
    }

    /// `path` unchanged when absolute, else joined to `directory`.
    public static func resolve(_ path: String, in directory: String) -> String {
        path.hasPrefix("/") ? path : "\(directory)/\(path)"
    }
}
