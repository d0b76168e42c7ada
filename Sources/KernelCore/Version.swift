/// The kernel's version, as `kernel --version`, the `Server` header and `GET /v2` report it.
public let kernelVersion = "0.1.0"
