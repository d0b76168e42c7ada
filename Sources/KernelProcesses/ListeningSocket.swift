import KernelCore
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// A listening socket the master opened (or inherited in a binary upgrade) and hands to its workers. Workers
/// accept on it; the master never does.
public final class ListeningSocket: Sendable {
    /// The listener identity (`http 127.0.0.1:8080`) the workers look it up by.
    public let identity: String
    public let address: ListenAddress
    /// Parked above `ProcessSpawner.parkingFloor`, close-on-exec.
    public let descriptor: CInt
    /// Taken over from an old master (binary upgrade) rather than opened here.
    public let inherited: Bool

    init(identity: String, address: ListenAddress, descriptor: CInt, inherited: Bool = false) {
        self.identity = identity
        self.address = address
        self.descriptor = descriptor
        self.inherited = inherited
    }

    /// Binds and listens on `spec`'s address with the options the single process sets (SO_REUSEADDR,
    /// TCP_NODELAY inherited by accepted sockets, unix socket permissions), and logs nginx-style
    /// `listening on http 127.0.0.1:34567 (127.0.0.1:0)`.
    static func open(_ spec: ListenerSpec, log: (String) -> Void) throws -> ListeningSocket {
        let fd: CInt
        switch spec.address {
        case .tcp(let host, let port):
            let address: SocketAddress
            do {
                address = try SocketAddress.makeAddressResolvingHost(host, port: port)
            } catch {
                throw ListenerError(binding: spec, error)
            }
            fd = socket(address.protocol.rawValue, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw ListenerError(binding: spec, IOError(errnoCode: errno, reason: "socket")) }
            var one: CInt = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
            setsockopt(fd, CInt(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<CInt>.size))
            let bound = address.withSockAddr { pointer, size in bind(fd, pointer, socklen_t(size)) }
            guard bound == 0 else {
                let code = errno
                Glibc.close(fd)
                throw ListenerError(binding: spec, IOError(errnoCode: code, reason: "bind"))
            }
        case .unix(let path):
            do { try removeSocketFile(path) } catch let error as ListenerError { throw error.at(spec.mark) }
            let address: SocketAddress
            do {
                address = try SocketAddress(unixDomainSocketPath: path)
            } catch {
                throw ListenerError(binding: spec, error)
            }
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw ListenerError(binding: spec, IOError(errnoCode: errno, reason: "socket")) }
            let bound = address.withSockAddr { pointer, size in bind(fd, pointer, socklen_t(size)) }
            guard bound == 0 else {
                let code = errno
                Glibc.close(fd)
                throw ListenerError(binding: spec, IOError(errnoCode: code, reason: "bind"))
            }
            do {
                try applyUnixSocketPermissions(path: path, mode: spec.unixSocketMode, owner: spec.unixSocketOwner)
            } catch let error as ListenerError {
                Glibc.close(fd)
                throw error.at(spec.mark)
            }
        }
        guard listen(fd, spec.backlog) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw ListenerError("listen() to \(spec.address) failed (\(code): \(String(cString: strerror(code))))").at(spec.mark)
        }
        let parked: CInt
        do {
            parked = try ProcessSpawner.park(fd)
        } catch {
            Glibc.close(fd)
            throw ListenerError("\(error)")
        }
        log("listening on \(spec.protocolName) \(boundAddress(parked) ?? spec.address.description) (\(spec.address))")
        return ListeningSocket(identity: spec.identity, address: spec.address, descriptor: parked)
    }

    /// Takes over a socket inherited from an old master (binary upgrade).
    static func adopt(_ spec: ListenerSpec, descriptor: CInt, log: (String) -> Void) throws -> ListeningSocket {
        let parked: CInt
        do {
            parked = try ProcessSpawner.park(descriptor)
        } catch {
            throw ListenerError("\(error)")
        }
        log("listening on \(spec.protocolName) \(boundAddress(parked) ?? spec.address.description) (\(spec.address)), inherited")
        return ListeningSocket(identity: spec.identity, address: spec.address, descriptor: parked, inherited: true)
    }

    /// Closes the master's descriptor. `unlinkPath`: also remove a unix socket's file (when no process will
    /// listen there any more).
    func close(unlinkPath: Bool) {
        _ = Glibc.close(descriptor)
        if unlinkPath, let path = address.unixPath { unlink(path) }
    }

    static func boundAddress(_ fd: CInt) -> String? { describeBoundSocket(fd) }
}
