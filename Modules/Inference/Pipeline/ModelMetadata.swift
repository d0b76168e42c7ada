/// Reading a model file's custom metadata (`metadata_props`), as ONNX Runtime's `get_modelmeta()` does.
extension ONNXRuntime {
    /// The value of `key` in the custom metadata of the model at `path`, nil when the model has no such key.
    ///
    /// Opens its own session (one thread, no graph optimisation, so it loads fast): a scheduler's sessions are
    /// busy running the model, and this is read once per pipeline.
    func customMetadata(modelPath path: String, key: String) throws -> String? {
        var sessionOptions: OpaquePointer?
        try api.check(api.createSessionOptions(&sessionOptions))
        defer { api.releaseSessionOptions(sessionOptions) }
        try api.check(api.setIntraOpNumThreads(sessionOptions, 1))
        try api.check(api.setGraphOptimizationLevel(sessionOptions, 0))  // ORT_DISABLE_ALL
        var session: OpaquePointer?
        try api.check(api.createSession(environment, path, sessionOptions, &session), "loading \(path)")
        defer { api.releaseSession(session) }
        var metadata: OpaquePointer?
        try api.check(api.metadata.sessionGetModelMetadata(session, &metadata), "reading the metadata of \(path)")
        defer { api.metadata.releaseModelMetadata(metadata) }
        var allocator: OpaquePointer?
        try api.check(api.getAllocatorWithDefaultOptions(&allocator))
        var value: UnsafeMutablePointer<CChar>?
        try api.check(api.metadata.lookupCustomMetadataMap(metadata, allocator, key, &value), "reading the metadata of \(path)")
        guard let value else { return nil }
        defer { _ = api.allocatorFree(allocator, value) }
        return String(cString: value)
    }
}
