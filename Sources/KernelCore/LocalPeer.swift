import NIOConcurrencyHelpers
import NIOCore

/// The in-process worker side a `local` server of an upstream group stands for, in `--role both`: the request is
/// routed again by this process, as a request that arrived on its uwsgi listener (the address a real nginx would
/// `uwsgi_pass` to), and answered by that location's handler (a model) with no socket between the two.
///
/// The worker side's exchange is its own: its location's `client_max_body_size`, filters and access log apply, and
/// it is finished when its response body has been handed over.
public final class LocalPeer: Sendable {
    private let runtime: KernelRuntime

    public init(runtime: KernelRuntime) { self.runtime = runtime }

    /// The protocol name a locally dispatched request carries (`$server_protocol` is unchanged): it marks the
    /// request so that a `local` peer reached again from the worker side is refused instead of looping.
    public static let protocolName = "local"

    /// Why a request cannot be dispatched locally; the engine logs it and answers 502.
    public struct Refusal: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// The worker side's answer to `request`, on `eventLoop`. Throws `Refusal` for a request that would loop
    /// (it already came through a `local` peer) or whose body is still arriving (`*_request_buffering off`),
    /// which the worker's handler could not read. `cancellation`, the edge request's, reaches the worker side's
    /// request: a client of the edge that leaves takes its request out of a model's queue, as a remote worker's
    /// connection closing does.
    public func dispatch(_ request: KernelRequest, on eventLoop: any EventLoop,
                         cancellation: RequestCancellation? = nil) throws -> EventLoopFuture<KernelResponse> {
        guard request.connection.protocolName != Self.protocolName else {
            throw Refusal(description: "local peer reached again from the worker side: the location a local request is routed to proxies to a local peer itself")
        }
        if case .stream? = request.bodySource {
            throw Refusal(description: "local peer cannot take a request body that is still arriving (request buffering off)")
        }
        var local = request
        local.connection.protocolName = Self.protocolName
        if let listener = workerListener() { local.connection.listener = listener }
        let exchange = runtime.begin(local, on: eventLoop)
        if let cancellation, let workerSide = exchange.context.cancellation {
            cancellation.whenCancelled { workerSide.cancel($0) }
        }
        if let length = local.bodyLength, length > 0, !exchange.admitsBody(ofLength: Int(clamping: length)) {
            exchange.context.logger.info("client intended to send too large body: \(length) bytes, client: \(local.connection.remoteIP), request: \"\(local.requestLine)\" (local peer)")
            let refused = exchange.decorateRefusal(.error(413, "request body too large"), for: local)
            exchange.finish(local, status: 413, bodyBytesSent: refused.body.knownLength ?? 0)
            return eventLoop.makeSucceededFuture(refused)
        }
        let answered: EventLoopFuture<KernelResponse>
        switch exchange.start(local) {
        case .ready(let response): answered = eventLoop.makeSucceededFuture(response)
        case .future(let future): answered = future.hop(to: eventLoop)
        }
        let dispatched = local
        return answered.map { response in Self.finishing(response, exchange: exchange, request: dispatched) }
    }

    /// `response` with the worker side's exchange finished when its body has been handed on (at once for a body
    /// that is whole; at the stream's end, failure or cancellation otherwise).
    static func finishing(_ response: KernelResponse, exchange: RequestExchange, request: KernelRequest) -> KernelResponse {
        guard case .stream(let stream) = response.body else {
            exchange.finish(request, status: response.status, bodyBytesSent: response.body.knownLength ?? 0,
                            upstream: response.upstream, handlerReport: response.handlerReport)
            return response
        }
        let sent = NIOLockedValueBox(0)
        let status = response.status
        let upstream = response.upstream
        var finished = response
        finished.body = .stream(ResponseBodyStream(
            next: {
                stream.next().always { result in
                    switch result {
                    case .success(let part?):
                        sent.withLockedValue { $0 += part.readableBytes }
                    case .success(nil):
                        exchange.finish(request, status: status, bodyBytesSent: sent.withLockedValue { $0 }, upstream: upstream)
                    case .failure:
                        exchange.finish(request, status: status, bodyBytesSent: sent.withLockedValue { $0 }, upstream: upstream)
                    }
                }
            },
            cancel: {
                stream.cancel()
                // The client of the edge left: the worker side logs it as nginx logs a client gone (499).
                exchange.finish(request, status: 499, bodyBytesSent: sent.withLockedValue { $0 }, upstream: upstream)
            }))
        return finished
    }

    /// The listener a local request is routed as: the process's first uwsgi listener, else its first listener;
    /// nil routes it on the servers without `listen`.
    private func workerListener() -> String? {
        guard let listeners = runtime.currentGeneration?.listenerSpecs, !listeners.isEmpty else { return nil }
        let spec = listeners.first { $0.protocolName == "uwsgi" } ?? listeners[0]
        return spec.address.description
    }
}
