import KernelCore
import NIOCore

/// The JSON body of a repository-extension request (empty, or an object), read as Triton reads it.
struct RepositoryRequestBody {
    let value: JSONValue?

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

    /// A load's `parameters`: Triton's `config` override and `file:` contents are not supported here (the model's
    /// files and `config.yaml` in the repository are what loads), and are refused rather than ignored.
    func checkLoadParameters() throws {
        guard let parameters = value?["parameters"] else { return }
        guard case .object(let members) = parameters else {
            throw KernelHTTPError(400, "Unable to parse 'parameters': expected an object")
        }
        for member in members where member.key == "config" || member.key.hasPrefix("file:") {
            throw KernelHTTPError(400, "load parameter '\(member.key)' is not supported: the model loads from its repository directory")
        }
    }

    /// An unload's `parameters.unload_dependents`: a boolean (there are no ensembles, so it changes nothing).
    func checkUnloadParameters() throws {
        guard let dependents = value?["parameters"]?["unload_dependents"] else { return }
        guard dependents.boolValue != nil else {
            throw KernelHTTPError(400, "Unable to parse 'unload_dependents': expected a boolean")
        }
    }
}
