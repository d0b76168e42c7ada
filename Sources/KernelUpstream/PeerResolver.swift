import KernelCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Where the engine reads the current socket address of a named peer (`app.internal:6666`). It never blocks: the
/// names are looked up when the configuration loads and refreshed off the event loops.
public protocol PeerAddressResolver: Sendable {
    /// The current address of `host:port`, nil when the name was never resolved.
    func address(host: String, port: Int) -> SocketAddress?
}

/// The addresses of named peers, looked up with `getaddrinfo` (or a given lookup) when the configuration loads
/// and again on each `refresh`, which the resolver service runs on a thread pool, never on an event loop.
public final class PeerAddressBook: PeerAddressResolver, Sendable {
    /// Turns `host:port` into addresses; the system's blocking `getaddrinfo` by default.
    public typealias Lookup = @Sendable (_ host: String, _ port: Int) throws -> SocketAddress

    struct Name: Hashable, Sendable {
        var host: String
        var port: Int
    }

    private let lookup: Lookup
    private let addresses = NIOLockedValueBox<[Name: SocketAddress]>([:])

    public init(lookup: @escaping Lookup = { host, port in try SocketAddress.makeAddressResolvingHost(host, port: port) }) {
        self.lookup = lookup
    }

    /// Whether `peer` needs a name lookup (a TCP peer whose host is no IP literal).
    public static func isNamed(_ peer: PeerAddress) -> Bool {
        guard case .tcp(let host, let port) = peer else { return false }
        return (try? SocketAddress(ipAddress: host, port: port)) == nil
    }

    /// Resolves the named peers among `peers` now (blocking: call it while the configuration loads, or on a
    /// thread); throws `PeerNotFound` for the first name that does not resolve.
    public func resolve(_ peers: [PeerAddress]) throws {
        for peer in peers where PeerAddressBook.isNamed(peer) {
            guard case .tcp(let host, let port) = peer else { continue }
            let address: SocketAddress
            do {
                address = try lookup(host, port)
            } catch {
                throw PeerNotFound(peer: peer, reason: "\(error)")
            }
            addresses.withLockedValue { $0[Name(host: host, port: port)] = address }
        }
    }

    /// Looks every known name up again (blocking). A name that fails keeps its last address, as a resolver keeps
    /// serving a stale answer rather than none; the failures are returned for the log.
    @discardableResult
    public func refresh() -> [PeerNotFound] {
        let names = addresses.withLockedValue { Array($0.keys) }
        var failures: [PeerNotFound] = []
        for name in names {
            do {
                let address = try lookup(name.host, name.port)
                addresses.withLockedValue { $0[name] = address }
            } catch {
                failures.append(PeerNotFound(peer: .tcp(host: name.host, port: name.port), reason: "\(error)"))
            }
        }
        return failures
    }

    public func address(host: String, port: Int) -> SocketAddress? {
        addresses.withLockedValue { $0[Name(host: host, port: port)] }
    }
}

/// A peer whose name did not resolve.
public struct PeerNotFound: Error, Sendable, CustomStringConvertible {
    public var peer: PeerAddress
    public var reason: String
    public var description: String { "host not found in upstream \"\(peer)\"" }
}

/// Re-resolves the named peers of an address book every `interval`, on `NIOThreadPool.singleton` so that no
/// blocking lookup ever runs on an event loop. Registered by the module whose configuration asks for it (the
/// `resolver` directive's `valid=` interval); the engine reads whatever the book holds at each connect.
public final class UpstreamResolverService: KernelService, Sendable {
    public let name: String
    private let book: PeerAddressBook
    private let interval: TimeAmount
    private let logger: Logger
    private let task = NIOLockedValueBox<Task<Void, Never>?>(nil)

    public init(name: String = "upstream resolver", book: PeerAddressBook, interval: TimeAmount, logger: Logger) {
        self.name = name
        self.book = book
        self.interval = interval
        self.logger = logger
    }

    /// One refresh, on the thread pool.
    public func refreshNow() async {
        let book = self.book
        let failures = try? await NIOThreadPool.singleton.runIfActive { book.refresh() }
        for failure in failures ?? [] {
            logger.error("\(failure.peer) could not be resolved (\(failure.reason)), the last address is kept")
        }
    }

    public func start() async throws {
        let nanoseconds = UInt64(max(1, interval.nanoseconds))
        let loop = Task { [self] in
            while !Task.isCancelled {
                do { try await Task.sleep(nanoseconds: nanoseconds) } catch { return }
                await refreshNow()
            }
        }
        task.withLockedValue { $0 = loop }
    }

    public func stop() async {
        let running = task.withLockedValue { current -> Task<Void, Never>? in
            defer { current = nil }
            return current
        }
        running?.cancel()
        await running?.value
    }
}
