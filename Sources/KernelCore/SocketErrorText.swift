import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A socket error in nginx's words: `recv() failed (104: Connection reset by peer)` for a read,
/// `writev() failed (32: Broken pipe)` for a write. NIO's `IOError` names the call it made first
/// (`read(descriptor:pointer:size:): ...`); other errors are described as they describe themselves.
public func describeSocketError(_ error: any Error) -> String {
    guard let io = error as? IOError else { return "\(error)" }
    let call = io.description.prefix { $0 != "(" && $0 != ":" }
    let name = call.hasPrefix("read") || call.hasPrefix("recv") ? "recv"
        : call.hasPrefix("write") || call.hasPrefix("send") ? "writev" : String(call)
    return "\(name)() failed (\(io.errnoCode): \(String(cString: strerror(io.errnoCode))))"
}
