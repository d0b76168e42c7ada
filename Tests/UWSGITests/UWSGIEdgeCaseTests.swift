import KernelCore
import KernelUpstream
import NIOCore
import NIOEmbedded
import NIOPosix
import XCTest
@testable import UWSGI

/// Interim answers, the shared Content-Length rule, ping, and header names that only map to the same variable.
final class UWSGIInterimAnswerTests: XCTestCase {
    private func channel(maxHeadSize: Int = 4096, head: Bool = false) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(uwsgiResponseDecoder(maxHeadSize: maxHeadSize, isHeadRequest: head))
        return channel
    }

    private let interimThenFinal = "HTTP/1.1 100 Continue\r\n\r\n"
        + "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nContent-Length: 99\r\n\r\n"
        + "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
        + "HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nhello"

    func testInterimAnswersAreSkipped() throws {
        let channel = try channel()
        try channel.writeInbound(buffer(interimThenFinal))
        let result = try drainResponse(channel)
        XCTAssertEqual(result.heads.count, 1)
        XCTAssertEqual(result.heads[0].status, 201)
        XCTAssertEqual(result.heads[0].reason, "Created")
        // Nothing of the interim heads survives: neither their headers nor their (meaningless) lengths.
        XCTAssertEqual(result.heads[0].headers.fields.map(\.name), ["Content-Length", "X-Final"])
        XCTAssertEqual(String(decoding: result.body, as: UTF8.self), "hello")
        XCTAssertEqual(result.ends, 1)
        XCTAssertNoThrow(try channel.finish())
    }

    func testInterimAnswersSplitAtEveryByte() throws {
        let bytes = Array(interimThenFinal.utf8)
        for split in 0...bytes.count {
            let channel = try channel()
            try channel.writeInbound(buffer(Array(bytes[..<split])))
            try channel.writeInbound(buffer(Array(bytes[split...])))
            let result = try drainResponse(channel)
            XCTAssertEqual(result.heads.map(\.status), [201], "split at \(split)")
            XCTAssertEqual(String(decoding: result.body, as: UTF8.self), "hello", "split at \(split)")
            XCTAssertEqual(result.ends, 1)
        }
    }

    func testCGIStyleInterimStatusIsSkippedToo() throws {
        let channel = try channel()
        try channel.writeInbound(buffer("Status: 103 Early Hints\r\nLink: </a>\r\n\r\nStatus: 404 Not Found\r\nContent-Length: 2\r\n\r\nno"))
        let result = try drainResponse(channel)
        XCTAssertEqual(result.heads.map(\.status), [404])
        XCTAssertEqual(result.heads[0].reason, "Not Found")
        XCTAssertNil(result.heads[0].headers["Link"])
        XCTAssertEqual(String(decoding: result.body, as: UTF8.self), "no")
    }

    func testAnswerToHeadAfterAnInterimOneKeepsItsLength() throws {
        let channel = try channel(head: true)
        try channel.writeInbound(buffer("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"))
        let result = try drainResponse(channel)
        XCTAssertEqual(result.heads.map(\.status), [200])
        XCTAssertEqual(result.heads[0].headers["Content-Length"], "1234")
        XCTAssertEqual(result.ends, 1)
    }

    func testEndlessInterimAnswersHitTheHeadLimit() throws {
        let channel = try channel(maxHeadSize: 256)
        let interim = String(repeating: "HTTP/1.1 100 Continue\r\n\r\n", count: 11)  // 275 bytes
        XCTAssertThrowsError(try channel.writeInbound(buffer(interim))) { error in
            XCTAssertEqual(uwsgiError(error), .headTooLarge(limit: 256))
        }
    }

    func testPeerClosingAfterOnlyAnInterimAnswer() throws {
        let channel = try channel()
        try channel.writeInbound(buffer("HTTP/1.1 100 Continue\r\n\r\n"))
        XCTAssertEqual(try drainResponse(channel).heads.count, 0)
        XCTAssertThrowsError(try channel.finish()) { error in
            XCTAssertEqual(error as? UpstreamResponseError, .prematureCloseInHead)
        }
    }

    func testResponseContentLengthUsesTheSharedRule() throws {
        let ok = try channel(head: true)
        try ok.writeInbound(buffer("HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807\r\n\r\n"))
        XCTAssertEqual(try drainResponse(ok).heads.first?.headers["Content-Length"], "9223372036854775807")
        for value in ["9223372036854775808", "10000000000000000000", "", "+1"] {
            let channel = try channel()
            XCTAssertThrowsError(try channel.writeInbound(buffer("HTTP/1.1 200 OK\r\nContent-Length: \(value)\r\n\r\n")), value) { error in
                XCTAssertEqual(uwsgiError(error), .invalidContentLength(value))
            }
        }
        // Two lines that agree are one length; two that disagree are refused in nginx's words.
        let twice = try channel(head: true)
        try twice.writeInbound(buffer("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"))
        XCTAssertEqual(try drainResponse(twice).heads.count, 1)
        let conflicting = try channel()
        XCTAssertThrowsError(try conflicting.writeInbound(buffer("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\n"))) { error in
            XCTAssertEqual(uwsgiError(error), .conflictingContentLength("5", previous: "3"))
            XCTAssertEqual(uwsgiError(error)?.description,
                           "upstream sent duplicate header line: \"Content-Length: 5\", previous value: \"Content-Length: 3\"")
        }
    }
}

final class UWSGIPingAndLengthTests: XCTestCase {
    func testPingIsDecodedWithItsBlockIgnored() throws {
        for packet in [[100, 0, 0, 0] as [UInt8], handMadePacket([("ANY", "thing")], modifier1: 100) + [1, 2, 3]] {
            for split in 0...packet.count {
                let channel = try decoderChannel()
                try channel.writeInbound(buffer(Array(packet[..<split])))
                try channel.writeInbound(buffer(Array(packet[split...])))
                let result = try drainRequest(channel)
                XCTAssertEqual(result.pings, 1, "\(packet) split at \(split)")
                XCTAssertEqual(result.heads.count, 0)
                XCTAssertEqual(result.ends, 0)
                XCTAssertNoThrow(try channel.finish())
            }
        }
    }

    func testPingCutShortIsReported() throws {
        let channel = try decoderChannel()
        try channel.writeInbound(buffer([100, 10, 0, 0, 1, 2]))
        XCTAssertThrowsError(try channel.finish()) { error in
            XCTAssertEqual(error as? UWSGIDecodingError, .truncatedHead(received: 6))
        }
    }

    func testPingOverBufferSizeIsRefusedLikeAnyPacket() throws {
        let channel = try decoderChannel(maxBlockSize: 16)
        XCTAssertThrowsError(try channel.writeInbound(buffer([100, 17, 0, 0]))) { error in
            XCTAssertEqual(error as? UWSGIDecodingError, .blockTooLarge(size: 17, maximum: 16))
        }
    }

    func testWorkerAnswersAPingAsUWSGIDoes() throws {
        let runtime = makeRuntime()
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let channel = try serverChannel(runtime: runtime)
        try channel.writeInbound(buffer([100, 0, 0, 0]))
        channel.embeddedEventLoop.run()
        var bytes: [UInt8] = []
        while let part = try channel.readOutbound(as: ByteBuffer.self) { bytes += Array(part.readableBytesView) }
        // modifier1 100, no message (size 0), modifier2 1: uWSGI's ping plugin with no warning set.
        XCTAssertEqual(bytes, [100, 0, 0, 1])
        XCTAssertFalse(channel.isActive)
    }

    func testWorkerContentLengthUsesTheSharedRule() throws {
        XCTAssertEqual(parseUWSGIContentLength("9223372036854775807"), Int.max)
        XCTAssertEqual(parseUWSGIContentLength("0000000000000000000005"), 5)
        XCTAssertNil(parseUWSGIContentLength("9223372036854775808"))
        XCTAssertNil(parseUWSGIContentLength("10000000000000000000"))

        // 19 digits are a length (over the limit: 413 before the body); 20 are no length (400).
        let runtime = makeRuntime(maxBodySize: 100)
        defer { try? runtime.eventLoopGroup.syncShutdownGracefully() }
        let big = try serverChannel(runtime: runtime)
        try big.writeInbound(buffer(handMadePacket([("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/"), ("CONTENT_LENGTH", "9223372036854775807")])))
        big.embeddedEventLoop.run()
        XCTAssertTrue(try readAllOutbound(big).hasPrefix("HTTP/1.0 413 Request Entity Too Large\r\n"))
        let invalid = try serverChannel(runtime: runtime)
        _ = try? invalid.writeInbound(buffer(handMadePacket([("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/"), ("CONTENT_LENGTH", "10000000000000000000")])))
        invalid.embeddedEventLoop.run()
        let output = try readAllOutbound(invalid)
        XCTAssertTrue(output.hasPrefix("HTTP/1.0 400 Bad Request\r\n"), output)
        XCTAssertTrue(output.hasSuffix("{\"error\":\"invalid CONTENT_LENGTH\"}"), output)
    }
}

final class UWSGIHeaderVariableTests: XCTestCase {
    private func request(headers: HeaderFields) -> KernelRequest {
        KernelRequest(method: "GET", uri: "/", path: "/", query: "", version: .http1_1, headers: headers, body: nil,
                      connection: ConnectionInfo(protocolName: "http", listener: "x", remoteAddress: nil, localAddress: nil))
    }

    func testNamesThatOnlyMapToTheSameVariableAreNotMerged() {
        // `X_Forwarded_For` reaches the encoder only with `underscores_in_headers on`; nginx then sends two
        // HTTP_X_FORWARDED_FOR, one per header name, and joins only fields of the same name.
        let configuration = UWSGIPassConfiguration(group: SinglePeerGroup(.tcp(host: "127.0.0.1", port: 6666)))
        let headers = HeaderFields([("X-Forwarded-For", "1.1.1.1"), ("X_Forwarded_For", "6.6.6.6"), ("x-forwarded-for", "2.2.2.2")])
        let variables = configuration.variables(for: request(headers: headers), route: RouteInfo())
        XCTAssertEqual(variables.entries.filter { $0.name.hasPrefix("HTTP_") }.map { "\($0.name)=\($0.value)" },
                       ["HTTP_X_FORWARDED_FOR=1.1.1.1, 2.2.2.2", "HTTP_X_FORWARDED_FOR=6.6.6.6"])
    }

    func testAParamStillSuppressesEveryHeaderOfItsVariable() throws {
        var configuration = UWSGIPassConfiguration(group: SinglePeerGroup(.tcp(host: "127.0.0.1", port: 6666)))
        configuration.params = UWSGIParam.merged([UWSGIParam(name: "HTTP_X_FORWARDED_FOR", value: try UWSGIParamTemplate(parsing: "$remote_addr"))])
        let headers = HeaderFields([("X-Forwarded-For", "1.1.1.1"), ("X_Forwarded_For", "6.6.6.6")])
        let variables = configuration.variables(for: request(headers: headers), route: RouteInfo())
        XCTAssertEqual(variables.entries.filter { $0.name == "HTTP_X_FORWARDED_FOR" }.count, 1)
    }

    func testWorkerKeepsTheLastOfARepeatedVariable() throws {
        // As uWSGI's environ: the later HTTP_X_FORWARDED_FOR wins, and the two never become one repeated header.
        let head = UWSGIRequestHead(variables: UWSGIVariables([("REQUEST_METHOD", "GET"), ("HTTP_X_FORWARDED_FOR", "1.1.1.1"),
                                                                ("HTTP_HOST", "h"), ("HTTP_X_FORWARDED_FOR", "6.6.6.6")]),
                                    contentLength: 0)
        let request = try UWSGIRequestMapping.request(from: head, listener: "x", remoteAddress: nil, localAddress: nil)
        XCTAssertEqual(request.headers.values("X-Forwarded-For"), ["6.6.6.6"])
        XCTAssertEqual(request.headers.fields.map(\.name), ["X-Forwarded-For", "Host"])
    }

    func testAHeaderVariableInAnotherCharsetKeepsItsBytesForTheWire() throws {
        // `HTTP_X_NAME: caf\xE9` and a repeated `HTTP_X_LIST` whose last value is `\xFF`: read as ISO-8859-1 text,
        // written on as the bytes they came as (a uwsgi_pass or proxy_pass from this worker changes no byte).
        var block = ByteBuffer()
        for (name, value) in [("REQUEST_METHOD", Array("GET".utf8)), ("HTTP_X_NAME", Array("caf".utf8) + [0xE9]),
                              ("HTTP_X_LIST", Array("first".utf8)), ("HTTP_X_PLAIN", Array("ok".utf8)), ("HTTP_X_LIST", [0xFF])] {
            block.writeInteger(UInt16(name.utf8.count), endianness: .little)
            block.writeString(name)
            block.writeInteger(UInt16(value.count), endianness: .little)
            block.writeBytes(value)
        }
        let variables = try UWSGIRequestDecoder.parseVariables(block)
        let request = try UWSGIRequestMapping.request(from: UWSGIRequestHead(variables: variables, contentLength: 0),
                                                      listener: "x", remoteAddress: nil, localAddress: nil)
        XCTAssertEqual(request.headers["X-Name"], "caf\u{E9}")
        XCTAssertEqual(request.headers.fields.map(\.name), ["X-Name", "X-List", "X-Plain"])
        XCTAssertEqual(request.headers.undecodedBytes(at: 0), Array("caf".utf8) + [0xE9])
        XCTAssertEqual(request.headers.undecodedBytes(at: 1), [0xFF], "the last value's bytes, as its text is the last's")
        XCTAssertNil(request.headers.undecodedBytes(at: 2))
    }

    func testLastValueWinsInABlockWithManyVariables() throws {
        // Past a few dozen headers an index replaces the linear search; the outcome is the same.
        var vars: [(String, String)] = [("REQUEST_METHOD", "GET")]
        for index in 0..<200 { vars.append(("HTTP_X_H\(index)", "\(index)")) }
        vars += [("HTTP_X_H3", "again"), ("HTTP_X_H150", "later"), ("HTTP_X_NEW", "n"), ("HTTP_X_H150", "last")]
        let request = try UWSGIRequestMapping.request(from: UWSGIRequestHead(variables: UWSGIVariables(vars), contentLength: 0),
                                                      listener: "x", remoteAddress: nil, localAddress: nil)
        XCTAssertEqual(request.headers.count, 201)
        XCTAssertEqual(request.headers.values("X-H3"), ["again"])
        XCTAssertEqual(request.headers.values("X-H150"), ["last"])
        XCTAssertEqual(request.headers.values("X-H199"), ["199"])
        XCTAssertEqual(request.headers.fields.last?.name, "X-New")
        XCTAssertEqual(request.headers.fields[3].name, "X-H3")
    }
}

/// `uwsgi_pass` against a fake upstream over loopback: what the client-facing response is made of.
final class UWSGIPassAnswerTests: XCTestCase {
    private var runtime: KernelRuntime!
    private var servers: [any Channel] = []

    override func setUp() { runtime = makeRuntime(maxBodySize: nil) }

    override func tearDown() {
        for server in servers { try? server.close().wait() }
        try? runtime.eventLoopGroup.syncShutdownGracefully()
    }

    private func pass(_ method: String, answer: String) throws -> (KernelResponse, [UInt8]) {
        let server = try ServerBootstrap(group: runtime.eventLoopGroup)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(FakePeerHandler(answer: answer)) }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        servers.append(server)
        let configuration = UWSGIPassConfiguration(group: SinglePeerGroup(.tcp(host: "127.0.0.1", port: server.localAddress!.port!)))
        let request = KernelRequest(method: method, uri: "/", path: "/", query: "", version: .http1_1, headers: ["Host": "edge"],
                                    body: nil, connection: ConnectionInfo(protocolName: "http", listener: "x",
                                                                          remoteAddress: nil, localAddress: nil))
        let context = RequestContext(eventLoop: runtime.eventLoopGroup.next(), logger: runtime.logger, route: RouteInfo())
        let response = try UWSGIPassHandler(configuration: configuration).handle(request, context: context).wait()
        var bytes: [UInt8] = []
        switch response.body {
        case .empty: break
        case .buffer(let buffer): bytes = Array(buffer.readableBytesView)
        case .stream(let stream): while let part = try stream.next().wait() { bytes += Array(part.readableBytesView) }
        }
        return (response, bytes)
    }

    func testHiddenAndPassedHeadersFollowTheLocationsRules() {
        var configuration = UWSGIPassConfiguration(group: SinglePeerGroup(.tcp(host: "127.0.0.1", port: 6666)))
        let plain = UWSGIUpstreamProtocol(configuration: configuration)
        XCTAssertTrue(plain.hidesResponseHeader("X-Accel-Redirect") && plain.hidesResponseHeader("x-pad"))
        XCTAssertTrue(plain.hidesResponseHeader("Status"))
        XCTAssertFalse(plain.hidesResponseHeader("X-Accel-Buffering"), "read by the buffering first")
        XCTAssertFalse(plain.hidesResponseHeader("X-Powered-By"))
        configuration.headerRules.hidden = ["x-powered-by"]
        configuration.headerRules.passed = ["x-pad", "status"]
        let ruled = UWSGIUpstreamProtocol(configuration: configuration)
        XCTAssertTrue(ruled.hidesResponseHeader("X-Powered-By"))
        XCTAssertFalse(ruled.hidesResponseHeader("X-Pad"), "uwsgi_pass_header passes a default")
        XCTAssertTrue(ruled.hidesResponseHeader("X-Accel-Limit-Rate"))
        XCTAssertTrue(ruled.hidesResponseHeader("Status"), "the status line's, never a header")
    }

    func testHeadKeepsTheUpstreamsContentLength() throws {
        let (response, body) = try pass("HEAD", answer: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n")
        XCTAssertEqual(response.headers["Content-Length"], "1234")
        guard case .empty = response.body else { return XCTFail("expected no body, got \(response.body)") }
        XCTAssertEqual(body, [])
    }

    func testHeadWithoutALengthHasAnUnknownOne() throws {
        // nginx sends no Content-Length then; an empty stream is how a response says its length is unknown.
        let (response, body) = try pass("HEAD", answer: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        XCTAssertNil(response.headers["Content-Length"])
        guard case .stream = response.body else { return XCTFail("expected a stream, got \(response.body)") }
        XCTAssertEqual(body, [])
    }

    func testGetWithAnEmptyBodyIsZeroLength() throws {
        let (response, _) = try pass("GET", answer: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        XCTAssertEqual(response.headers["Content-Length"], "0")
        guard case .empty = response.body else { return XCTFail("expected no body") }
    }

    func testInterimAnswersBeforeTheFinalOne() throws {
        let (response, body) = try pass("GET", answer: "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok")
        XCTAssertEqual(response.status, 202)
        XCTAssertNil(response.headers["Link"])
        XCTAssertEqual(String(decoding: body, as: UTF8.self), "ok")
    }
}
