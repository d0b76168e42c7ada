import KernelCore
import NIOConcurrencyHelpers
import NIOCore

/// Wraps a local peer's streamed answer so that `onEnd` runs once when the stream has ended, failed or been
/// cancelled, with the bytes handed on: where the lease of a `local` attempt ends, as a socket attempt's ends when
/// its body has been read.
enum LocalAnswerBody {
    enum End {
        case complete
        case failed
        case cancelled
    }

    static func observing(_ body: ResponseBody, onEnd: @escaping @Sendable (End, Int64) -> Void) -> ResponseBody {
        guard case .stream(let stream) = body else {
            onEnd(.complete, Int64(body.knownLength ?? 0))
            return body
        }
        let state = NIOLockedValueBox((bytes: Int64(0), ended: false))
        let end: @Sendable (End) -> Void = { how in
            let bytes: Int64? = state.withLockedValue { value in
                if value.ended { return nil }
                value.ended = true
                return value.bytes
            }
            if let bytes { onEnd(how, bytes) }
        }
        return .stream(ResponseBodyStream(
            next: {
                stream.next().always { result in
                    switch result {
                    case .success(let part?): state.withLockedValue { $0.bytes += Int64(part.readableBytes) }
                    case .success(nil): end(.complete)
                    case .failure: end(.failed)
                    }
                }
            },
            cancel: {
                stream.cancel()
                end(.cancelled)
            }))
    }
}
