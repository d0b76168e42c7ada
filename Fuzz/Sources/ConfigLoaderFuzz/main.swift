import Balancing
import CORS
import FuzzSupport
import HTTP
import Inference
import KernelConfig
import Logging
import NIOPosix
import Routing
#if canImport(Glibc)
import Glibc
#endif
@testable import KernelCore

/// SwiftPM links an executable target with its `main` renamed to `<target>_main`; this is it, handing control to
/// libFuzzer (whose own `main` is then not linked).
@_cdecl("ConfigLoaderFuzz_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv) { data, size in fuzzConfigLoader(data, size) }
}

/// The directory the input is written to, with two fixed files the input can include (by name, a glob, or a
/// list): `server.yaml`, which includes `leaf.yaml` in a nested mapping.
private let directory: String = {
    // `${NAME}` expands from the environment, include paths too: only these two variables exist.
    clearenv()
    setenv("FUZZ_PORT", "8080", 1)
    setenv("FUZZ_NAME", "leaf", 1)
    // In memory when there is a tmpfs: rewriting a file on ext4 each run waits for the disk.
    let base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp"
    var template = Array("\(base)/kernel-config-fuzz-XXXXXX".utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    precondition(made != nil, "mkdtemp failed")
    let path = String(cString: template)
    write(path + "/server.yaml", """
        http:
          listen: 127.0.0.1:${FUZZ_PORT}
          keepalive_requests: 10
        routing:
          servers:
            - server_name: [localhost]
              include: leaf.yaml
        """)
    write(path + "/leaf.yaml", """
        locations:
          - location: /
            return: 200 "${FUZZ_NAME}"
        """)
    return path
}()

private let configurationFile = directory + "/kernel.yaml"

private func write(_ path: String, _ text: String) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    precondition(fd >= 0, "cannot create \(path)")
    var remaining = Array(text.utf8)[...]
    while !remaining.isEmpty {
        let written = remaining.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        precondition(written > 0, "cannot write \(path)")
        remaining = remaining.dropFirst(written)
    }
    close(fd)
}

/// Error log to nowhere: `load` logs modules it does not start.
private let runtime: KernelRuntime = {
    let destination = ErrorLogHandler.Destination(file: try! LogFile(path: "/dev/null"), level: .critical)
    return KernelRuntime(eventLoopGroup: MultiThreadedEventLoopGroup(numberOfThreads: 1),
                         logger: Logger(label: "kernel") { _ in ErrorLogHandler(destination: destination) },
                         logFiles: LogFileRegistry(), errorLog: destination)
}()

/// The modules whose sections are decoded as `kernel -t` does (checking mode: no file is opened, no model
/// loaded). The uwsgi module is left out: its `upstreams` resolve host names, and a fuzzer must not send DNS
/// queries for every input.
private let loader = ConfigurationLoader(modules: [ModuleDescriptor(HTTPModule.self), ModuleDescriptor(BalancingModule.self),
                                                   ModuleDescriptor(InferenceModule.self), ModuleDescriptor(CORSModule.self),
                                                   ModuleDescriptor(RoutingModule.self)], role: .both)

/// libFuzzer's entry point: the input is written to `kernel.yaml` next to the fixed files and loaded as `kernel -t`
/// loads a configuration (YAML with `include:` and `${ENV}`, then the `kernel:` section and the modules' decoders).
/// Any `ConfigError` is fine (it must name a place in one of the files); a trap, a hang, or another error is a
/// finding.
///
/// Inputs with a `/` or a `\` byte are skipped: with neither, no YAML scalar (escapes included) can name a file
/// outside the directory, so includes read only the three files here, never `/dev/zero` or a FIFO.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfigLoader(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: start, count: count)
    if bytes.contains(UInt8(ascii: "/")) || bytes.contains(UInt8(ascii: "\\")) { return -1 }
    write(configurationFile, String(decoding: bytes, as: UTF8.self))
    do {
        _ = try loader.load(file: configurationFile, runtime: runtime, mode: .check, number: 1)
    } catch let error as ConfigError {
        if let mark = error.mark {
            check(mark.file.hasPrefix(directory + "/"), "an error in \(mark.file), outside the configuration")
            check(mark.line >= 1 && mark.column >= 1, "an error at \(mark.line):\(mark.column)")
        }
    } catch {
        // Module errors that are no ConfigError (listen addresses, regexes) are errors `kernel -t` prints too.
        check(!"\(error)".isEmpty, "an error without a message")
    }
    return 0
}
