import KernelCore
import KernelUpstream
import Logging
import NIOCore
import NIOPosix

/// The health-check request of the `http` scheme: a `GET uri` to one peer over `proxy_pass`'s own protocol (the
/// same head builder, the same strict response parser), through the upstream engine with a group of that one
/// peer and no retries. Its answer's status is the probe's result; the body is not read.
struct HTTPUpstreamProber: UpstreamProber {
    let logger: Logger

    func probe(_ peer: PeerAddress, uri: String, host: String, timeout: TimeAmount,
               on eventLoop: any EventLoop) -> EventLoopFuture<Int> {
        guard let (path, query) = KernelRequest.splitTarget(uri), path.hasPrefix("/") else {
            return eventLoop.makeFailedFuture(UpstreamFailure.error("invalid health check URI \"\(uri)\""))
        }
        let head = ProxyRequestHead(uriRule: .original, headers: [
            ProxyHeaderLine(name: "Host", value: (try? VariableTemplate(host, variables: VariableRegistry())) ?? .empty),
            ProxyHeaderLine(name: "Connection", value: (try? VariableTemplate("close")) ?? .empty),
        ])
        var configuration = ProxyPassConfiguration(group: SinglePeerGroup(peer), head: head)
        configuration.connectTimeout = timeout
        configuration.sendTimeout = timeout
        configuration.readTimeout = timeout
        configuration.nextUpstream = []
        configuration.buffering.enabled = false
        let book = PeerAddressBook()
        let settings = configuration
        // A named peer was resolved when its group loaded; resolving here again would block the event loop.
        if case .tcp(let name, _) = peer, (try? SocketAddress(ipAddress: name, port: 0)) == nil {
            return NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) { try book.resolve([peer]) }
                .flatMap { self.send(path: path, query: query, uri: uri, configuration: settings, book: book, on: eventLoop) }
        }
        return send(path: path, query: query, uri: uri, configuration: configuration, book: book, on: eventLoop)
    }

    private func send(path: String, query: String, uri: String, configuration: ProxyPassConfiguration,
                      book: PeerAddressBook, on eventLoop: any EventLoop) -> EventLoopFuture<Int> {
        var configuration = configuration
        configuration.resolver = book
        let request = KernelRequest(method: "GET", uri: uri, path: path, query: query, version: .http1_1, headers: [:],
                                    connection: ConnectionInfo(protocolName: "http", listener: "health check",
                                                               remoteAddress: nil, localAddress: nil))
        let context = RequestContext(eventLoop: eventLoop, logger: logger, route: RouteInfo())
        return ProxyPassHandler(configuration: configuration).handle(request, context: context)
            .flatMapThrowing { response in
                if case .stream(let stream) = response.body { stream.cancel() }
                // A head that arrived has a header time; the engine's own 502/504 has none.
                guard let attempt = response.upstream?.attempts.last, attempt.headerTime != nil else {
                    throw UpstreamFailure.error("health check of \(uri) got no valid answer")
                }
                return response.status
            }
    }
}
