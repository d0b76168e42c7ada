import KernelCore
import NIOCore
import NIOEmbedded
import XCTest
@testable import UWSGI

final class UWSGIServerHandlerTests: XCTestCase {
    private let nginxVars: [(String, String)] = [
        ("QUERY_STRING", "a=1"), ("REQUEST_METHOD", "POST"), ("CONTENT_TYPE", "text/plain"), ("CONTENT_LENGTH", "5"),
        ("REQUEST_URI", "/v1/parse?a=1"), ("PATH_INFO", "/v1/parse"), ("DOCUMENT_ROOT", "/usr/share/nginx/html"),
        ("SERVER_PROTOCOL", "HTTP/1.1"), ("REQUEST_SCHEME", "http"), ("REMOTE_ADDR", "192.0.2.7"), ("REMOTE_PORT", "41000"),
        ("SERVER_PORT", "80"), ("SERVER_NAME", "localhost"), ("HTTP_HOST", "localhost"), ("HTTP_X_FOO_BAR", "baz"),
    ]

    func testRequestIsServedAndConnectionClosed() throws {
        let runtime = makeRuntime()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        try channel.writeInbound(buffer(handMadePacket(nginxVars, body: Array("hello".utf8))))
        channel.embeddedEventLoop.run()
        let output = try readAllOutbound(channel)
        XCTAssertTrue(output.hasPrefix("HTTP/1.1 200 OK\r\n"), output)
        XCTAssertTrue(output.contains("Content-Type: text/plain\r\n"), output)
        let body = "POST /v1/parse ?a=1 HTTP/1.1 http 192.0.2.7\nHost: localhost\nX-Foo-Bar: baz\nContent-Type: text/plain\nContent-Length: 5\nhello"
        XCTAssertTrue(output.contains("Content-Length: \(body.utf8.count)\r\n"), output)
        XCTAssertTrue(output.hasSuffix("\r\n\r\n" + body), output)
        XCTAssertFalse(channel.isActive)
    }

    func testStatusLineUsesTheRequestsProtocol() throws {
        let runtime = makeRuntime()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        try channel.writeInbound(buffer(handMadePacket([("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/"), ("SERVER_PROTOCOL", "HTTP/1.0")])))
        channel.embeddedEventLoop.run()
        XCTAssertTrue(try readAllOutbound(channel).hasPrefix("HTTP/1.0 200 OK\r\n"))
    }

    func testHeadRequestGetsNoBody() throws {
        let runtime = makeRuntime()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        try channel.writeInbound(buffer(handMadePacket([("REQUEST_METHOD", "HEAD"), ("REQUEST_URI", "/x")])))
        channel.embeddedEventLoop.run()
        let output = try readAllOutbound(channel)
        XCTAssertTrue(output.hasSuffix("\r\n\r\n"), output)
        XCTAssertTrue(output.contains("Content-Length: "), output)
    }

    func testBodyOverTheLocationLimitGets413BeforeTheBodyIsRead() throws {
        let runtime = makeRuntime(maxBodySize: 4)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        // Only the head arrives: the answer must not wait for the body.
        try channel.writeInbound(buffer(handMadePacket(nginxVars)))
        channel.embeddedEventLoop.run()
        let output = try readAllOutbound(channel)
        XCTAssertTrue(output.hasPrefix("HTTP/1.1 413 Request Entity Too Large\r\n"), output)
        XCTAssertTrue(output.hasSuffix("{\"error\":\"request body too large\"}"), output)
    }

    func testInvalidContentLengthGets400() throws {
        let runtime = makeRuntime()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        _ = try? channel.writeInbound(buffer(handMadePacket([("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/"), ("CONTENT_LENGTH", "5abc")], body: Array("12345".utf8))))
        channel.embeddedEventLoop.run()
        let output = try readAllOutbound(channel)
        XCTAssertTrue(output.hasPrefix("HTTP/1.0 400 Bad Request\r\n"), output)
        XCTAssertTrue(output.contains("{\"error\":\"invalid CONTENT_LENGTH\"}"), output)
        XCTAssertFalse(channel.isActive)
    }

    func testMissingMethodAndBadURIGet400() throws {
        for vars in [[("REQUEST_URI", "/")], [("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/../etc/passwd")],
                     [("REQUEST_METHOD", "G T"), ("REQUEST_URI", "/")], [("REQUEST_METHOD", "GET"), ("SERVER_PROTOCOL", "HTTP/x")]] {
            let runtime = makeRuntime()
            let channel = try serverChannel(runtime: runtime)
            try channel.writeInbound(buffer(handMadePacket(vars)))
            channel.embeddedEventLoop.run()
            XCTAssertTrue(try readAllOutbound(channel).hasPrefix("HTTP/1.0 400 Bad Request\r\n"), "\(vars)")
            XCTAssertFalse(channel.isActive)
            try? runtime.eventLoopGroup.syncShutdownGracefully()
        }
    }

    func testStructuralErrorsCloseWithoutAnswer() throws {
        let packets: [[UInt8]] = [
            [0, 0xFF, 0xFF, 0],                              // block over buffer_size
            handMadePacket([("REQUEST_METHOD", "GET")], modifier1: 1),  // unknown modifier1
            [0, 4, 0, 0, 0, 0, 0, 0],                        // empty key
            [0, 4, 0, 0, 9, 0, 0x41, 0x41],                  // key past the block
        ]
        for packet in packets {
            let runtime = makeRuntime()
            let channel = try serverChannel(runtime: runtime)
            _ = try? channel.writeInbound(buffer(packet))
            channel.embeddedEventLoop.run()
            XCTAssertEqual(try readAllOutbound(channel), "", "\(packet)")
            XCTAssertFalse(channel.isActive, "\(packet)")
            try? runtime.eventLoopGroup.syncShutdownGracefully()
        }
    }

    func testSlowSenderIsClosedAfterClientBodyTimeout() throws {
        let runtime = makeRuntime()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        let packet = handMadePacket(nginxVars, body: Array("hello".utf8))
        try channel.writeInbound(buffer(Array(packet.dropLast(2))))
        channel.embeddedEventLoop.advanceTime(by: .seconds(30))
        XCTAssertTrue(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(31))
        XCTAssertFalse(channel.isActive)
        XCTAssertEqual(try readAllOutbound(channel), "")
    }

    func testEachReadRestartsTheClientBodyTimeout() throws {
        let runtime = makeRuntime()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        let packet = handMadePacket(nginxVars, body: Array("hello".utf8))
        try channel.writeInbound(buffer(Array(packet.dropLast(4))))
        channel.embeddedEventLoop.advanceTime(by: .seconds(40))
        try channel.writeInbound(buffer(Array(packet.suffix(4).prefix(2))))
        // 80 s after the first bytes, 40 s after the last ones: still within the timeout.
        channel.embeddedEventLoop.advanceTime(by: .seconds(40))
        XCTAssertTrue(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(21))
        XCTAssertFalse(channel.isActive)
        XCTAssertEqual(try readAllOutbound(channel), "")
    }

    func testSilentConnectionIsClosedAfterClientBodyTimeout() throws {
        let runtime = makeRuntime()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        channel.embeddedEventLoop.advanceTime(by: .seconds(59))
        XCTAssertTrue(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        XCTAssertFalse(channel.isActive)
        XCTAssertEqual(try readAllOutbound(channel), "")
    }

    func testAnsweredRequestLeavesNoTimerBehind() throws {
        let runtime = makeRuntime()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        try channel.writeInbound(buffer(handMadePacket(nginxVars, body: Array("hello".utf8))))
        XCTAssertFalse(channel.isActive)
        XCTAssertTrue(try readAllOutbound(channel).hasPrefix("HTTP/1.1 200 OK\r\n"))
        // A timer left armed would fire on the closed connection; nothing must happen.
        channel.embeddedEventLoop.advanceTime(by: .seconds(3600))
        XCTAssertEqual(try readAllOutbound(channel), "")
    }

    /// A request whose answer is 100,000 bytes of `b`.
    private func largeEchoRequest(gate: WriteGate, runtime: KernelRuntime) throws -> EmbeddedChannel {
        let channel = try serverChannel(runtime: runtime)
        try channel.pipeline.syncOperations.addHandler(gate, position: .first)
        try channel.writeInbound(buffer(handMadePacket(nginxVars, body: Array("hello".utf8))))
        return channel
    }

    private func bigAnswerRuntime() -> KernelRuntime {
        makeRuntime(handler: ClosureHandler { _, context in
            context.eventLoop.makeSucceededFuture(.text(200, String(repeating: "b", count: 100_000)))
        })
    }

    func testSendTimeoutClosesAPeerThatStopsReading() throws {
        let runtime = bigAnswerRuntime()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let gate = WriteGate()
        let channel = try largeEchoRequest(gate: gate, runtime: runtime)
        XCTAssertGreaterThan(gate.heldCount, 1, "the body goes out in watched slices")
        channel.embeddedEventLoop.advanceTime(by: .seconds(59))
        XCTAssertTrue(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        XCTAssertFalse(channel.isActive)
    }

    func testSendTimeoutRestartsWheneverSomeBytesWereWritten() throws {
        let runtime = bigAnswerRuntime()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let gate = WriteGate()
        let channel = try largeEchoRequest(gate: gate, runtime: runtime)
        // Far longer than send_timeout in total, never between two writes.
        while gate.heldCount > 0 {
            channel.embeddedEventLoop.advanceTime(by: .seconds(50))
            XCTAssertTrue(channel.isActive)
            gate.releaseOne()
        }
        XCTAssertFalse(channel.isActive, "closed once the response was sent")
        XCTAssertTrue(try readAllOutbound(channel).hasSuffix(String(repeating: "b", count: 100_000)))
    }

    func testPeerClosingMidBodyClosesCleanly() throws {
        let runtime = makeRuntime()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        let packet = handMadePacket(nginxVars, body: Array("hello".utf8))
        try channel.writeInbound(buffer(Array(packet.dropLast(2))))
        channel.pipeline.fireChannelInactive()
        channel.embeddedEventLoop.run()
        XCTAssertEqual(try readAllOutbound(channel), "")
    }

    func testQuiesceClosesAnIdleConnection() throws {
        let runtime = makeRuntime()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        channel.embeddedEventLoop.run()
        XCTAssertFalse(channel.isActive)
    }

    func testQuiesceLetsAPartlyReceivedRequestFinish() throws {
        let runtime = makeRuntime()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        let packet = handMadePacket([("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/q")])
        try channel.writeInbound(buffer(Array(packet.prefix(10))))
        channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        channel.embeddedEventLoop.run()
        XCTAssertTrue(channel.isActive)
        try channel.writeInbound(buffer(Array(packet.dropFirst(10))))
        channel.embeddedEventLoop.run()
        XCTAssertTrue(try readAllOutbound(channel).hasPrefix("HTTP/1.0 200 OK\r\n"))
        XCTAssertFalse(channel.isActive)
    }

    func testQuiesceLetsARunningRequestFinish() throws {
        let promiseBox = PromiseBox()
        let runtime = makeRuntime(handler: ClosureHandler { _, context in
            let promise = context.eventLoop.makePromise(of: KernelResponse.self)
            promiseBox.promise = promise
            return promise.futureResult
        })
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        try channel.writeInbound(buffer(handMadePacket([("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/")])))
        channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        channel.embeddedEventLoop.run()
        XCTAssertTrue(channel.isActive)
        promiseBox.promise?.succeed(.text(200, "done"))
        channel.embeddedEventLoop.run()
        XCTAssertTrue(try readAllOutbound(channel).hasSuffix("\r\n\r\ndone"))
        XCTAssertFalse(channel.isActive)
    }

    func testStreamedBodyIsPulledPartByPartAndCloseDelimited() throws {
        let parts = PartSource(["one ", "two ", "three"])
        let runtime = makeRuntime(handler: ClosureHandler { _, context in
            context.eventLoop.makeSucceededFuture(KernelResponse(status: 200, headers: ["X-Stream": "yes"], body: .stream(ResponseBodyStream(
                next: { context.eventLoop.makeSucceededFuture(parts.next()) }, cancel: {}))))
        })
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        try channel.writeInbound(buffer(handMadePacket([("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/"), ("SERVER_PROTOCOL", "HTTP/1.1")])))
        channel.embeddedEventLoop.run()
        let output = try readAllOutbound(channel)
        XCTAssertEqual(output, "HTTP/1.1 200 OK\r\nX-Stream: yes\r\n\r\none two three")
        XCTAssertEqual(parts.pulls, 4)
        XCTAssertFalse(channel.isActive)
    }

    func testResponseHeadersCannotBeSplit() throws {
        let runtime = makeRuntime(handler: ClosureHandler { _, context in
            context.eventLoop.makeSucceededFuture(KernelResponse(status: 200, headers: HeaderFields([("X-Bad", "a\r\nInjected: 1"), ("X-Good", "ok")]), body: .empty))
        })
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        try channel.writeInbound(buffer(handMadePacket([("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/")])))
        channel.embeddedEventLoop.run()
        let output = try readAllOutbound(channel)
        XCTAssertFalse(output.contains("Injected"), output)
        XCTAssertTrue(output.contains("X-Good: ok\r\n"), output)
    }
}

final class PromiseBox: @unchecked Sendable {
    var promise: EventLoopPromise<KernelResponse>?
}

final class PartSource: @unchecked Sendable {
    private var parts: [String]
    private(set) var pulls = 0
    init(_ parts: [String]) { self.parts = parts }
    func next() -> ByteBuffer? {
        pulls += 1
        return parts.isEmpty ? nil : buffer(parts.removeFirst())
    }
}

final class UWSGIRequestMappingTests: XCTestCase {
    private func map(_ vars: [(String, String)], contentLength: Int = 0) throws -> KernelRequest {
        try UWSGIRequestMapping.request(from: UWSGIRequestHead(variables: UWSGIVariables(vars), contentLength: contentLength),
                                        listener: "unix:/run/k.sock", remoteAddress: nil, localAddress: nil)
    }

    func testNginxVarsMapToTheRequestShape() throws {
        let request = try map([("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/a%20b/../c?x=1"), ("SERVER_PROTOCOL", "HTTP/1.1"),
                               ("HTTP_X_FOO_BAR", "1"), ("HTTP_HOST", "h"), ("REMOTE_ADDR", "::1"), ("REMOTE_PORT", "9"),
                               ("SCRIPT_NAME", "/app"), ("SERVER_NAME", "s"), ("HTTPS", "on"), ("CONTENT_TYPE", "")])
        XCTAssertEqual(request.method, "GET")
        XCTAssertEqual(request.uri, "/a%20b/../c?x=1")
        XCTAssertEqual(request.path, "/c")
        XCTAssertEqual(request.query, "x=1")
        XCTAssertEqual(request.version, .http1_1)
        XCTAssertEqual(request.headers["X-Foo-Bar"], "1")
        XCTAssertEqual(request.headers["Host"], "h")
        XCTAssertNil(request.headers["Content-Type"])
        XCTAssertEqual(request.connection.remoteIP, "::1")
        XCTAssertEqual(request.connection.remoteAddress?.port, 9)
        XCTAssertEqual(request.connection.scheme, "https")
        XCTAssertEqual(request.connection.protocolName, "uwsgi")
        XCTAssertEqual(request.connection.listener, "unix:/run/k.sock")
    }

    func testPathInfoAndQueryStringWithoutRequestURI() throws {
        let request = try map([("REQUEST_METHOD", "GET"), ("PATH_INFO", "/a b/100%?"), ("QUERY_STRING", "q=%41")])
        XCTAssertEqual(request.path, "/a b/100%?")
        XCTAssertEqual(request.query, "q=%41")
        XCTAssertEqual(request.uri, "/a%20b/100%25%3F?q=%41")
        XCTAssertEqual(request.version, .http1_0)
    }

    func testSchemeSources() throws {
        XCTAssertEqual(try map([("REQUEST_METHOD", "GET"), ("UWSGI_SCHEME", "https")]).connection.scheme, "https")
        XCTAssertEqual(try map([("REQUEST_METHOD", "GET"), ("REQUEST_SCHEME", "https")]).connection.scheme, "https")
        XCTAssertEqual(try map([("REQUEST_METHOD", "GET"), ("HTTPS", "off")]).connection.scheme, "http")
    }

    func testContentHeadersComeFromCGIVars() throws {
        let request = try map([("REQUEST_METHOD", "POST"), ("CONTENT_TYPE", "a/b"), ("CONTENT_LENGTH", "3"),
                               ("HTTP_CONTENT_TYPE", "x/y"), ("HTTP_CONTENT_LENGTH", "99")], contentLength: 3)
        XCTAssertEqual(request.headers.values("Content-Type"), ["a/b"])
        XCTAssertEqual(request.headers.values("Content-Length"), ["3"])
    }

    func testBytesThatWouldAddHeadLinesAreRefused() throws {
        // What a packet holds becomes a request line and header lines once a location passes the request on over
        // HTTP: CR, LF or NUL there would add lines, or a whole request, of the packet's choosing.
        let refused: [[(String, String)]] = [
            [("REQUEST_URI", "/a HTTP/1.1\r\nHost: evil\r\n\r\nGET /admin")],
            [("REQUEST_URI", "/a\nb")],
            [("REQUEST_URI", "/a b")],
            [("REQUEST_URI", "/a?x=\u{7F}")],
            [("PATH_INFO", "/a"), ("QUERY_STRING", "a=1 HTTP/1.1\r\nX-Q: 1")],
            [("REQUEST_URI", "/a"), ("HTTP_X_A", "v\r\nX-Injected: 1")],
            [("REQUEST_URI", "/a"), ("HTTP_X_A", "v\nw")],
            [("REQUEST_URI", "/a"), ("HTTP_X_A", "v\u{0}w")],
            [("REQUEST_URI", "/a"), ("HTTP_X:EVIL", "v")],
            [("REQUEST_URI", "/a"), ("HTTP_X EVIL", "v")],
            [("REQUEST_URI", "/a"), ("HTTP_X\rA", "v")],
            [("REQUEST_URI", "/a"), ("CONTENT_TYPE", "a/b\r\nX-CT: 1")],
        ]
        for vars in refused {
            XCTAssertThrowsError(try map([("REQUEST_METHOD", "GET")] + vars), "\(vars)") { error in
                XCTAssertTrue(error is UWSGIRequestMapping.Invalid, "\(error)")
            }
        }
        // What nginx does pass: obs-text and tabs in values, unusual name bytes, raw UTF-8 in the target.
        let request = try map([("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/caf\u{E9}?q=\u{E9}"),
                               ("HTTP_X_A", "a\tb \u{E9}"), ("HTTP_X.DOT", "1")])
        XCTAssertEqual(request.headers["X-A"], "a\tb \u{E9}")
        XCTAssertEqual(request.headers["X.dot"], "1")
        XCTAssertEqual(request.query, "q=\u{E9}")
    }
}

/// `$connection` and `$connection_requests` on the worker side: one request per connection.
final class UWSGIConnectionNumbersTests: XCTestCase {
    struct NumbersHandler: RequestHandler {
        func handle(_ request: KernelRequest, context: RequestContext) -> EventLoopFuture<KernelResponse> {
            context.eventLoop.makeSucceededFuture(.text(200, "\(request.connection.id) \(request.connection.requestNumber)"))
        }
    }

    func testEachConnectionHasASerialAndItsOneRequestIsTheFirst() throws {
        let runtime = makeRuntime(handler: NumbersHandler())
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        var serials: [UInt64] = []
        for _ in 0..<2 {
            let channel = try serverChannel(runtime: runtime)
            try channel.writeInbound(buffer(handMadePacket([("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/"),
                                                            ("PATH_INFO", "/"), ("SERVER_PROTOCOL", "HTTP/1.1")])))
            channel.embeddedEventLoop.run()
            let body = try readAllOutbound(channel).components(separatedBy: "\r\n\r\n").last ?? ""
            let parts = body.split(separator: " ").compactMap { UInt64($0) }
            XCTAssertEqual(parts.count, 2, body)
            XCTAssertEqual(parts.last, 1)
            serials.append(parts.first ?? 0)
        }
        XCTAssertGreaterThan(serials[0], 0)
        XCTAssertNotEqual(serials[0], serials[1])
    }
}
