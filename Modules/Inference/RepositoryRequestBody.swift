#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KernelConfig
import KernelCore
import NIOCore

/// The JSON body of a repository-extension or logging-extension request (empty, or an object), read as Triton reads it.
struct RepositoryRequestBody {
    let value: JSONValue?

    /// A body parsed before (a shared `RepositoryCommand`'s request).
    init(value: JSONValue?) {
        self.value = value
    }

    /// `what` names the request in errors as Triton does ("load model", "unload model", "registry index").
    init(_ body: ByteBuffer?, what: String) throws {
        guard let body, body.readableBytes > 0 else {
            value = nil
            return
        }
        do {
            value = try JSONReader.parse(body)
        } catch {
            throw KernelHTTPError(400, "failed to parse the request JSON buffer (\(what)): \(error)")
        }
        guard value?.isObject == true else {
            throw KernelHTTPError(400, "failed to parse the request JSON buffer (\(what)): expected an object")
        }
    }

    /// The index's `{"ready": true}` filter.
    func readyFlag() throws -> Bool {
        guard let ready = value?["ready"] else { return false }
        guard let flag = ready.boolValue else { throw KernelHTTPError(400, "Invalid value for 'ready': expected a boolean") }
        return flag
    }

    /// A load's `parameters`, as Triton reads them: `config`, the model's configuration as a JSON string (used
    /// instead of the repository's settings file), and `file:<path>` members, base64 file contents that form the
    /// directory the model loads from instead of its repository directory (Triton requires `config` with them).
    /// Any other parameter is refused, as Triton refuses it. Only the shapes are checked here, on the event loop;
    /// the contents are decoded where the load runs.
    func loadParameters(modelName: String) throws -> ModelLoadParameters {
        var result = ModelLoadParameters()
        guard let parameters = value?["parameters"] else { return result }
        guard case .object(let members) = parameters else {
            throw KernelHTTPError(400, "Unable to parse 'parameters': expected an object")
        }
        // The paths taken so far: a request may name many thousands, each looked up once (this runs on the event loop).
        var paths = Set<String>()
        for member in members {
            if member.key == "config" {
                guard let text = member.value.stringValue else {
                    throw KernelHTTPError(400, "failed to load '\(modelName)': the 'config' parameter must be a string of the model configuration in JSON")
                }
                // A repeated member: the first is the one read, as a lookup of the key finds it.
                if result.config == nil { result.config = text }
            } else if member.key.hasPrefix("file:") {
                guard let path = ModelLoadParameters.normalizedFilePath(String(member.key.dropFirst("file:".count))) else {
                    throw KernelHTTPError(400, "failed to load '\(modelName)': invalid file parameter '\(member.key)': expected file:<version>/<file name>, a relative path that stays within the model directory")
                }
                guard let content = member.value.stringValue else {
                    throw KernelHTTPError(400, "failed to load '\(modelName)': file parameter '\(member.key)' must be the file's content in base64")
                }
                // A repeated member, or another spelling of the same path: the first is the one read.
                if paths.insert(path).inserted { result.files.append((path, content)) }
            } else {
                // As Triton's model repository manager refuses it: a parameter it does not know is no option.
                throw KernelHTTPError(400, "failed to load '\(modelName)': Unrecognized load parameter '\(member.key)'")
            }
        }
        if !result.files.isEmpty, result.config == nil {
            throw KernelHTTPError(400, "failed to load '\(modelName)': the 'config' parameter must be given with file parameters (the model configuration of the files' directory)")
        }
        return result
    }

    /// An unload's `parameters.unload_dependents`: a boolean (there are no ensembles, so it changes nothing).
    func checkUnloadParameters() throws {
        guard let dependents = value?["parameters"]?["unload_dependents"] else { return }
        guard dependents.boolValue != nil else {
            throw KernelHTTPError(400, "Unable to parse 'unload_dependents': expected a boolean")
        }
    }
}

/// A load request's overrides, as given (`RepositoryRequestBody.loadParameters`): decoded by `override(for:)` on the
/// thread that loads.
struct ModelLoadParameters: Sendable {
    /// The `config` parameter's text (JSON).
    var config: String?
    /// The `file:` parameters: path inside the model directory, base64 content.
    var files: [(path: String, base64: String)] = []

    var isEmpty: Bool { config == nil && files.isEmpty }

    /// The path a `file:` parameter names inside the model directory, as Triton resolves it: empty and `.` names
    /// dropped, `..` taking the name before it away (`1//model.onnx`, `1/./model.onnx` and `2/../1/model.onnx`
    /// are `1/model.onnx`). Nil for a path that is absolute, has a NUL, leaves the directory or names nothing.
    static func normalizedFilePath(_ path: String) -> String? {
        guard !path.hasPrefix("/"), !path.utf8.contains(0) else { return nil }
        var names: [Substring] = []
        for name in path.split(separator: "/", omittingEmptySubsequences: true) where name != "." {
            if name == ".." {
                guard names.popLast() != nil else { return nil }
            } else {
                names.append(name)
            }
        }
        return names.isEmpty ? nil : names.joined(separator: "/")
    }

    /// The settings and the directory these parameters stand for; the files are written to a new temporary
    /// directory, which the caller removes (`ModelLoadOverride.removeDirectory`) once the load is done. Errors are
    /// Triton's 400 for a load.
    func override(for modelName: String) throws -> ModelLoadOverride {
        var result = ModelLoadOverride()
        if let config {
            let json: JSONValue
            do {
                json = try JSONReader.parse(ByteBuffer(string: config))
            } catch {
                throw KernelHTTPError(400, "failed to load '\(modelName)': the 'config' parameter is not valid JSON: \(error)")
            }
            do {
                result.settings = try TritonModelConfig.settings(json: json, modelName: modelName)
            } catch {
                throw KernelHTTPError(400, "failed to load '\(modelName)': invalid model configuration: \(error)")
            }
        }
        guard !files.isEmpty else { return result }
        let directory = try ModelLoadOverride.makeDirectory()
        result.directory = directory
        do {
            for (path, base64) in files {
                guard let bytes = Base64.decode(base64) else {
                    throw KernelHTTPError(400, "failed to load '\(modelName)': file parameter 'file:\(path)' is not valid base64")
                }
                try ModelLoadOverride.write(bytes, to: path, in: directory, modelName: modelName)
            }
        } catch {
            result.removeDirectory()
            throw error
        }
        return result
    }
}

/// What a load request gives instead of the repository's files.
public struct ModelLoadOverride: Sendable {
    /// The model's settings (a mapping with `config.yaml`'s keys) instead of its settings file.
    public var settings: YAMLNode?
    /// The directory the model loads from instead of `<repository>/<name>`, made for this load.
    public var directory: String?

    public init(settings: YAMLNode? = nil, directory: String? = nil) {
        self.settings = settings
        self.directory = directory
    }

    /// A new private directory under `$TMPDIR` (else /tmp).
    static func makeDirectory() throws -> String {
        let base = getenv("TMPDIR").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var template = Array(((base.hasSuffix("/") ? base : base + "/") + "kernel-model-load-XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer -> String? in
            mkdtemp(buffer.baseAddress!).map { String(cString: $0) }
        }
        guard let made else {
            throw KernelHTTPError(500, "cannot make a directory for the load request's files in \(base): \(String(cString: strerror(errno)))")
        }
        return made
    }

    /// Writes `bytes` at `path` (relative, checked) under `directory`, making the directories on the way. A path
    /// the request's other files make impossible (a file where a directory must be, or the reverse) or a name too
    /// long for the file system is the request's error (400); anything else is the machine's (500).
    static func write(_ bytes: [UInt8], to path: String, in directory: String, modelName: String) throws {
        func failure(_ file: String) -> KernelHTTPError {
            let code = errno
            let message = String(cString: strerror(code))
            if [EEXIST, ENOTDIR, EISDIR, ENAMETOOLONG].contains(code) {
                return KernelHTTPError(400, "failed to load '\(modelName)': invalid file parameter 'file:\(path)': \(message)")
            }
            return KernelHTTPError(500, "failed to load '\(modelName)': cannot write \(file): \(message)")
        }
        var current = directory
        let parts = path.split(separator: "/")
        for part in parts.dropLast() {
            current += "/" + part
            if mkdir(current, 0o700) != 0, errno != EEXIST { throw failure(current) }
        }
        let file = current + "/" + parts.last!
        guard let handle = fopen(file, "wbx") else { throw failure(file) }
        defer { fclose(handle) }
        guard bytes.isEmpty || fwrite(bytes, 1, bytes.count, handle) == bytes.count else { throw failure(file) }
    }

    /// Removes `directory` and everything in it (what `write` made: directories and regular files).
    func removeDirectory() {
        guard let directory else { return }
        ModelLoadOverride.removeTree(directory)
    }

    private static func removeTree(_ path: String) {
        if let entries = opendir(path) {
            var names: [String] = []
            while let entry = readdir(entries) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name != ".", name != ".." { names.append(name) }
            }
            closedir(entries)
            for name in names {
                let child = path + "/" + name
                if unlink(child) != 0 { removeTree(child) }
            }
        }
        rmdir(path)
    }
}
