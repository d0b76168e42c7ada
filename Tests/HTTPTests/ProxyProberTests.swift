import KernelCore
import KernelUpstream
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest
@testable import HTTP

/// Answers every connection with `answer` once the request head has arrived, and keeps the heads it saw.
private final class FixedAnswer: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let answer: String
    let heads: NIOLockedValueBox<[String]>
    private var received = ""

    init(answer: String, heads: NIOLockedValueBox<[String]>) {
        self.answer = answer
        self.heads = heads
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += String(buffer: unwrapInboundIn(data))
        guard received.hasSuffix("\r\n\r\n") else { return }
        heads.withLockedValue { $0.append(received) }
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: answer)), promise: nil)
    }
}

/// The `http` health-check prober against a loopback server.
final class ProxyProberTests: XCTestCase {
    private func server(answer: String, heads: NIOLockedValueBox<[String]>, group: any EventLoopGroup) throws -> any Channel {
        try ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(FixedAnswer(answer: answer, heads: heads))
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
    }

    func testAProbeIsAGetThatReportsTheStatus() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let heads = NIOLockedValueBox<[String]>([])
        let channel = try server(answer: "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", heads: heads, group: group)
        defer { try? channel.close().wait() }
        let prober = HTTPUpstreamProber(logger: Logger(label: "test"))
        let status = try prober.probe(.tcp(host: "127.0.0.1", port: channel.localAddress!.port!), uri: "/healthz?full=1",
                                      host: "app.test", timeout: .seconds(5), on: group.next()).wait()
        XCTAssertEqual(status, 503)
        XCTAssertEqual(heads.withLockedValue { $0 }, ["GET /healthz?full=1 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"])
    }

    func testAnInvalidAnswerOrNoAnswerFailsTheProbe() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let heads = NIOLockedValueBox<[String]>([])
        let channel = try server(answer: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx", heads: heads, group: group)
        let port = channel.localAddress!.port!
        let prober = HTTPUpstreamProber(logger: Logger(label: "test"))
        XCTAssertThrowsError(try prober.probe(.tcp(host: "127.0.0.1", port: port), uri: "/", host: "h", timeout: .seconds(5),
                                              on: group.next()).wait())
        try channel.close().wait()
        XCTAssertThrowsError(try prober.probe(.tcp(host: "127.0.0.1", port: port), uri: "/", host: "h", timeout: .seconds(5),
                                              on: group.next()).wait())
        XCTAssertThrowsError(try prober.probe(.tcp(host: "127.0.0.1", port: port), uri: "no-slash", host: "h", timeout: .seconds(5),
                                              on: group.next()).wait())
    }
}
