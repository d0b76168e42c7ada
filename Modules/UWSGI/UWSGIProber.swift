import KernelCore
import KernelUpstream
import Logging
import NIOCore

/// The health check of uwsgi peers: a uwsgi `GET uri` (the vars `uwsgi_pass` would send for it) to one peer on
/// the upstream engine, answered with the status of the peer's head. The body is not read: the connection is
/// closed once the head is in.
struct UWSGIProber: UpstreamProber {
    let logger: Logger

    func probe(_ peer: PeerAddress, uri: String, host: String, timeout: TimeAmount,
               on eventLoop: any EventLoop) -> EventLoopFuture<Int> {
        guard let target = KernelRequest.splitTarget(uri) else {
            return eventLoop.makeFailedFuture(UWSGIProbeFailed(reason: "invalid health check uri \"\(uri)\""))
        }
        var configuration = UWSGIPassConfiguration(group: SinglePeerGroup(peer), connectTimeout: timeout,
                                                   readTimeout: timeout, sendTimeout: timeout)
        configuration.nextUpstream = []
        let handler = UWSGIPassHandler(configuration: configuration)
        let request = KernelRequest(
            method: "GET", uri: uri, path: target.path, query: target.query, version: .http1_1,
            headers: ["Host": host, "User-Agent": "kernel-health-check"],
            connection: ConnectionInfo(protocolName: "http", listener: "health check", remoteAddress: nil, localAddress: nil))
        let context = RequestContext(eventLoop: eventLoop, logger: logger, route: RouteInfo())
        let promise = eventLoop.makePromise(of: Int.self)
        // The engine's own timeouts are between reads; this bounds the whole check.
        let deadline = eventLoop.scheduleTask(in: timeout) {
            promise.fail(UWSGIProbeFailed(reason: "timed out"))
        }
        handler.handle(request, context: context).whenComplete { result in
            deadline.cancel()
            switch result {
            case .success(let response):
                if case .stream(let body) = response.body { body.cancel() }
                // The engine answers for a peer that gave no head (502, 504; the attempt then has no header
                // time): that is a failed check, whatever the status stands for.
                if let attempt = response.upstream?.attempts.last, attempt.headerTime != nil, let status = attempt.status {
                    promise.succeed(status)
                } else {
                    let why = response.status == 504 ? "timed out" : "no valid answer"
                    promise.fail(UWSGIProbeFailed(reason: "\(why), see the error above"))
                }
            case .failure(let error):
                promise.fail(error)
            }
        }
        return promise.futureResult
    }
}

/// A uwsgi health check that got no status.
struct UWSGIProbeFailed: Error, CustomStringConvertible {
    var reason: String
    var description: String { reason }
}
