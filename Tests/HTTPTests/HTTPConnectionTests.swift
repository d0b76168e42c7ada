import Foundation
import KernelConfig
import KernelCore
import NIOCore
import NIOEmbedded
import XCTest
@testable import HTTP

final class HTTPConnectionTests: XCTestCase {
    private let getHello = "GET /hello HTTP/1.1\r\nHost: test\r\n\r\n"

    func testSocketErrorsAreLoggedInNginxWords() {
        XCTAssertEqual(describeSocketError(IOError(errnoCode: ECONNRESET, reason: "read(descriptor:pointer:size:)")),
                       "recv() failed (104: Connection reset by peer)")
        XCTAssertEqual(describeSocketError(IOError(errnoCode: EPIPE, reason: "writev(descriptor:iovecs:)")),
                       "writev() failed (32: Broken pipe)")
    }

    func testSimpleRequest() throws {
        let h = try HTTPHarness()
        try h.send(getHello)
        XCTAssertEqual(try h.output(), hello())
        XCTAssertTrue(h.isOpen)
        XCTAssertEqual(try h.loggedStatuses(), [200])
    }

    func testRequestShape() throws {
        let h = try HTTPHarness()
        try h.send("GET /x/./y/../../inspect?x=1&y=%20 HTTP/1.1\r\nHost: test:8080\r\nX-Tab:\tvalue with spaces \t\r\nX-Empty:\r\n\r\n")
        let body = "GET uri=/x/./y/../../inspect?x=1&y=%20 path=/inspect query=x=1&y=%20 HTTP/1.1\n"
            + "listener=127.0.0.1:8080 protocol=http remote=127.0.0.1 local=[IPv4]127.0.0.1:8080\n"
            + "Host=test:8080\nX-Tab=value with spaces\nX-Empty=\n"
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: text/plain", "Content-Length: \(body.utf8.count)"], body: body))
    }

    func testPipelinedRequestsAreAnsweredInOrder() throws {
        let h = try HTTPHarness()
        try h.send(getHello + "GET /missing HTTP/1.1\r\nHost: test\r\n\r\n" + "GET /hello?x=1 HTTP/1.1\r\nHost: test\r\n\r\n")
        let notFound = response("404 Not Found", ["Content-Type: application/json", "Content-Length: 21"], body: "{\"error\":\"not found\"}")
        XCTAssertEqual(try h.output(), hello() + notFound + hello())
        XCTAssertEqual(try h.loggedStatuses(), [200, 404, 200])
    }

    func testPipelinedRequestWaitsForTheSlowResponseBeforeIt() throws {
        let h = try HTTPHarness()
        try h.send("GET /slow HTTP/1.1\r\nHost: test\r\n\r\n" + getHello)
        XCTAssertEqual(try h.output(), "")
        h.probe.pendingSlow.withLockedValue { $0 }!.succeed(.text(200, "late"))
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: text/plain", "Content-Length: 4"], body: "late") + hello())
    }

    func testRequestSplitAcrossManyWrites() throws {
        let h = try HTTPHarness()
        for byte in getHello.utf8 { try h.send(bytes: [byte]) }
        XCTAssertEqual(try h.output(), hello())
    }

    func testContentLengthBody() throws {
        let h = try HTTPHarness()
        try h.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\n\r\nhello")
        XCTAssertEqual(try h.output(), "")
        try h.send(" world")
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: application/octet-stream", "X-Method: POST", "Content-Length: 11"], body: "hello world"))
    }

    func testChunkedBodySplitAcrossWrites() throws {
        let h = try HTTPHarness()
        let request = "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
        let bytes = Array(request.utf8)
        var index = 0
        for size in [3, 40, 20, 1, 1, 4, 2, 7, 1, 1000] where index < bytes.count {
            let end = min(bytes.count, index + size)
            try h.send(bytes: Array(bytes[index..<end]))
            index = end
        }
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: application/octet-stream", "X-Method: POST", "Content-Length: 11"], body: "hello world"))
        XCTAssertTrue(h.isOpen)
    }

    func testEmptyChunkedBody() throws {
        let h = try HTTPHarness()
        try h.send("POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: application/octet-stream", "X-Method: POST", "Content-Length: 0"]))
    }

    func testTooLargeContentLengthIsRefusedBeforeTheBody() throws {
        let h = try HTTPHarness()
        try h.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 101\r\n\r\n")
        XCTAssertEqual(try h.output(), jsonError("413 Request Entity Too Large", "request body too large"))
        XCTAssertFalse(h.isOpen)
        XCTAssertEqual(try h.loggedStatuses(), [413])
    }

    func testGrowingChunkedBodyIsRefusedAtTheLimit() throws {
        let h = try HTTPHarness()
        try h.send("POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n32\r\n" + String(repeating: "a", count: 50) + "\r\n")
        XCTAssertEqual(try h.output(), "")
        XCTAssertTrue(h.isOpen)
        try h.send("33\r\n")
        XCTAssertEqual(try h.output(), jsonError("413 Request Entity Too Large", "request body too large"))
        XCTAssertFalse(h.isOpen)
    }

    func testExpectContinueIsAnsweredOnlyForAnAcceptableBody() throws {
        let h = try HTTPHarness()
        try h.send("POST /echo HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        XCTAssertEqual(try h.output(), "HTTP/1.1 100 Continue\r\n\r\n")
        try h.send("ok")
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: application/octet-stream", "X-Method: POST", "Content-Length: 2"], body: "ok"))

        let refused = try HTTPHarness()
        try refused.send("POST /echo HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
        XCTAssertEqual(try refused.output(), jsonError("413 Request Entity Too Large", "request body too large"))
    }

    func testHeaderLineTooLongIs431() throws {
        let h = try HTTPHarness { $0.largeHeaderBufferCount = 4; $0.largeHeaderBufferSize = ByteSize(bytes: 64) }
        try h.send("GET /hello HTTP/1.1\r\nHost: test\r\nX-Long: " + String(repeating: "a", count: 60) + "\r\n\r\n")
        XCTAssertEqual(try h.output(), jsonError("431 Request Header Fields Too Large", "request header line too large"))
        XCTAssertFalse(h.isOpen)
    }

    func testHeadTooLargeIs431EvenBeforeItEnds() throws {
        let h = try HTTPHarness {
            $0.clientHeaderBufferSize = ByteSize(bytes: 64)
            $0.largeHeaderBufferCount = 2
            $0.largeHeaderBufferSize = ByteSize(bytes: 64)
        }
        try h.send("GET /hello HTTP/1.1\r\nHost: test\r\n")
        for _ in 0..<3 { try h.send("X-Header: " + String(repeating: "b", count: 30) + "\r\n") }
        XCTAssertEqual(try h.output(), jsonError("431 Request Header Fields Too Large", "request header fields too large"))
    }

    func testRequestLineTooLongIs414() throws {
        let h = try HTTPHarness { $0.largeHeaderBufferSize = ByteSize(bytes: 64) }
        try h.send("GET /" + String(repeating: "x", count: 70))
        XCTAssertEqual(try h.output(), jsonError("414 Request-URI Too Large", "request line too long"))
        XCTAssertFalse(h.isOpen)
    }

    func testRequestLineWordsMayBePartedBySeveralSpaces() throws {
        // As nginx reads a request line (RFC 9112 section 3 allows it): more than one space between the words,
        // and spaces before the line's end.
        for line in ["GET  /hello HTTP/1.1", "GET /hello   HTTP/1.1", "GET /hello HTTP/1.1 ", "GET   /hello  HTTP/1.1  "] {
            let h = try HTTPHarness()
            try h.send(line + "\r\nHost: test\r\n\r\n")
            XCTAssertEqual(try h.output(), hello(), line.debugDescription)
            XCTAssertTrue(h.isOpen)
        }
    }

    func testMalformedRequestsAre400() throws {
        let cases = [
            "\u{1}\u{2}garbage\r\n\r\n",
            "GET /hello\r\nHost: test\r\n\r\n",
            "GET  /hello HTTP/1.1\r\nHost: test\r\n\r\n".replacingOccurrences(of: "  ", with: "\t"),
            "GET /hello HTTP/1.1 x\r\nHost: test\r\n\r\n",
            "GET /hello HTTP/1.x\r\nHost: test\r\n\r\n",
            "GET /hel\rlo HTTP/1.1\r\nHost: test\r\n\r\n",
            "GET /hello HTTP/1.1\r\nHost: test\r\nX-Bad: a\rb\r\n\r\n",
            "GET /hello HTTP/1.1\r\nHost: test\r\nX-Folded: a\r\n b\r\n\r\n",
            "GET /hello HTTP/1.1\r\nHost: test\r\nX-Space : a\r\n\r\n",
            "GET /hello HTTP/1.1\r\nHost: test\r\nNo colon\r\n\r\n",
            "GET /hello HTTP/1.1\r\nHost: test\r\nX-Nul: a\u{0}b\r\n\r\n",
        ]
        for request in cases {
            let h = try HTTPHarness()
            try h.send(request)
            let out = try h.output()
            XCTAssertTrue(out.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(request.debugDescription) -> \(out.debugDescription)")
            XCTAssertTrue(out.contains("Connection: close\r\n"))
            XCTAssertFalse(h.isOpen, request.debugDescription)
        }
    }

    func testBinaryInputIsRefusedBeforeTheLineEnds() throws {
        let h = try HTTPHarness()
        try h.send(bytes: [0x16, 0x03, 0x01, 0x02, 0x00, 0x01])  // the start of a TLS ClientHello
        XCTAssertEqual(try h.output(), jsonError("400 Bad Request", "invalid request line"))
        XCTAssertFalse(h.isOpen)
    }

    func testLeadingLineEndingSplitAcrossReads() throws {
        let h = try HTTPHarness()
        try h.send("\r")
        try h.send("\n" + getHello)
        XCTAssertEqual(try h.output(), hello())
    }

    func testEveryRefusalLogsOneLine() throws {
        let h = try HTTPHarness()
        try h.send("GET /hello HTTP/1.1\r\nHost: test\r\nBad Header\r\n\r\n")
        XCTAssertEqual(h.errorLogLines(), ["[info] client sent invalid header line while reading client request headers, client: 127.0.0.1, server: 127.0.0.1:8080"])

        let target = try HTTPHarness()
        try target.send("GET /a/../../b HTTP/1.1\r\nHost: test\r\n\r\n")
        XCTAssertEqual(target.errorLogLines(), ["[info] client sent invalid request target while reading client request headers, client: 127.0.0.1, server: 127.0.0.1:8080, request: \"GET /a/../../b HTTP/1.1\""])

        let big = try HTTPHarness()
        try big.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 500\r\n\r\n")
        XCTAssertEqual(big.errorLogLines(), ["[error] client intended to send too large body: 500 bytes, client: 127.0.0.1, server: 127.0.0.1:8080, request: \"POST /echo HTTP/1.1\""])
    }

    func testGarbageGetsTheExactErrorResponse() throws {
        let h = try HTTPHarness()
        try h.send("HELLO\r\n\r\n")
        XCTAssertEqual(try h.output(), jsonError("400 Bad Request", "invalid request line"))
    }

    func testFramingErrors() throws {
        let cases: [(String, String)] = [
            ("POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip\r\n\r\n",
             jsonError("501 Not Implemented", "unsupported transfer encoding")),
            ("POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
             jsonError("501 Not Implemented", "unsupported transfer encoding")),
            ("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
             jsonError("400 Bad Request", "Content-Length with Transfer-Encoding")),
            ("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
             jsonError("400 Bad Request", "duplicate Content-Length")),
            ("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 3x\r\n\r\nabc",
             jsonError("400 Bad Request", "invalid Content-Length")),
            ("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: -3\r\n\r\nabc",
             jsonError("400 Bad Request", "invalid Content-Length")),
            ("POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
             jsonError("400 Bad Request", "invalid chunked body")),
            ("POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
             jsonError("400 Bad Request", "invalid chunked body")),
            ("POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
             jsonError("400 Bad Request", "invalid chunked body")),
            ("GET /hello HTTP/2.0\r\nHost: test\r\n\r\n", jsonError("505 HTTP Version Not Supported", "HTTP version not supported")),
            ("GET /hello HTTP/3.0\r\nHost: test\r\n\r\n", jsonError("505 HTTP Version Not Supported", "HTTP version not supported")),
            ("GET /hello HTTP/0.9\r\n\r\n", jsonError("505 HTTP Version Not Supported", "HTTP version not supported")),
            ("GET /hello HTTP/1.1\r\n\r\n", jsonError("400 Bad Request", "missing Host header")),
            ("GET /hello HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", jsonError("400 Bad Request", "duplicate Host")),
            ("GET /hello HTTP/1.1\r\nHost: a/../b\r\n\r\n", jsonError("400 Bad Request", "invalid Host header")),
            // nginx's ngx_http_validate_host: no two dots in a row, and not empty once a trailing dot is dropped.
            ("GET /hello HTTP/1.1\r\nHost: a..b\r\n\r\n", jsonError("400 Bad Request", "invalid Host header")),
            ("GET /hello HTTP/1.1\r\nHost: ..\r\n\r\n", jsonError("400 Bad Request", "invalid Host header")),
            ("GET /hello HTTP/1.1\r\nHost: .\r\n\r\n", jsonError("400 Bad Request", "invalid Host header")),
            ("GET /hello HTTP/1.1\r\nHost: .:80\r\n\r\n", jsonError("400 Bad Request", "invalid Host header")),
            ("GET /hello HTTP/1.1\r\nHost: a.b..\r\n\r\n", jsonError("400 Bad Request", "invalid Host header")),
            // A major version of more than one digit or with a leading zero is none nginx reads.
            ("GET /hello HTTP/01.1\r\nHost: test\r\n\r\n", jsonError("400 Bad Request", "invalid request line")),
            ("GET /../etc/passwd HTTP/1.1\r\nHost: test\r\n\r\n", jsonError("400 Bad Request", "invalid request target")),
        ]
        for (request, expected) in cases {
            let h = try HTTPHarness()
            try h.send(request)
            XCTAssertEqual(try h.output(), expected, request.debugDescription)
            XCTAssertFalse(h.isOpen, request.debugDescription)
        }
    }

    func testHostNamesNginxAcceptsAreServed() throws {
        for host in ["a.b.", "a.b", "[::1]:80", "[::1]", "a:80", "1.2.3.4:8080", ".a", "x_y"] {
            let h = try HTTPHarness()
            try h.send("GET /hello HTTP/1.1\r\nHost: \(host)\r\n\r\n")
            XCTAssertEqual(try h.output(), hello(), host)
        }
    }

    func testALaterHTTP1MinorVersionIsAnsweredAsHTTP11() throws {
        let h = try HTTPHarness()
        try h.send("GET /hello HTTP/1.2\r\nHost: test\r\n\r\n")
        XCTAssertEqual(try h.output(), hello())
        XCTAssertTrue(h.isOpen)
    }

    func testNothingPipelinedAfterABadRequestIsProcessed() throws {
        let h = try HTTPHarness()
        try h.send(getHello + "BAD REQUEST\r\n\r\n" + getHello)
        XCTAssertEqual(try h.output(), hello() + jsonError("400 Bad Request", "invalid request line"))
        XCTAssertFalse(h.isOpen)
        XCTAssertEqual(try h.loggedStatuses(), [200])
    }

    func testSlowHeaderGets408() throws {
        let h = try HTTPHarness { $0.clientHeaderTimeout = .seconds(10) }
        try h.send("GET /hello HTTP/1.1\r\n")
        h.loop.advanceTime(by: .seconds(9))
        XCTAssertEqual(try h.output(), "")
        XCTAssertTrue(h.isOpen)
        try h.send("Host: test\r\n")  // progress does not extend the head's deadline
        h.loop.advanceTime(by: .seconds(2))
        XCTAssertEqual(try h.output(), jsonError("408 Request Time-out", "request timed out"))
        XCTAssertFalse(h.isOpen)
    }

    func testSlowHeaderOnAKeptAliveConnectionGets408() throws {
        let h = try HTTPHarness { $0.clientHeaderTimeout = .seconds(10); $0.keepaliveTimeout = .seconds(75) }
        try h.send(getHello)
        XCTAssertEqual(try h.output(), hello())
        h.loop.advanceTime(by: .seconds(30))
        try h.send("GET /hello HTTP/1.1\r\nHo")
        h.loop.advanceTime(by: .seconds(9))
        XCTAssertTrue(h.isOpen)
        h.loop.advanceTime(by: .seconds(2))
        XCTAssertEqual(try h.output(), jsonError("408 Request Time-out", "request timed out"))
        XCTAssertFalse(h.isOpen)
    }

    func testSilentConnectionClosesWithoutAResponse() throws {
        let h = try HTTPHarness { $0.clientHeaderTimeout = .seconds(10) }
        h.loop.advanceTime(by: .seconds(11))
        XCTAssertEqual(try h.output(), "")
        XCTAssertFalse(h.isOpen)
    }

    func testSlowBodyGets408() throws {
        let h = try HTTPHarness { $0.clientBodyTimeout = .seconds(5) }
        try h.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\n\r\na")
        h.loop.advanceTime(by: .seconds(4))
        try h.send("b")
        h.loop.advanceTime(by: .seconds(4))  // the timeout runs between reads
        XCTAssertTrue(h.isOpen)
        h.loop.advanceTime(by: .seconds(2))
        XCTAssertEqual(try h.output(), jsonError("408 Request Time-out", "request timed out"))
        XCTAssertFalse(h.isOpen)
        XCTAssertEqual(try h.loggedStatuses(), [408])
    }

    func testABodyItsHandlerDoesNotUseIsDiscardedAfterAnAnswerThatDoesNotWaitForIt() throws {
        // nginx answers a `return` (or a 404) at once and reads the body it does not need after: the connection
        // stays for the next request, which is read only once the body has ended.
        let h = try HTTPHarness { $0.clientBodyTimeout = .seconds(5) }
        try h.send("POST /hello HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc")
        XCTAssertEqual(try h.output(), hello(), "answered before its body ended")
        try h.send("defg")
        h.loop.advanceTime(by: .seconds(4))
        try h.send("hij" + getHello)
        XCTAssertEqual(try h.output(), hello(), "the body's last bytes are not a request; the one behind them is")
        try h.send("POST /missing HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        XCTAssertEqual(try h.output(), response("404 Not Found", ["Content-Type: application/json", "Content-Length: 21"],
                                                body: "{\"error\":\"not found\"}"))
        try h.send("0\r\n\r\n" + getHello)
        XCTAssertEqual(try h.output(), hello())
        XCTAssertTrue(h.isOpen)
        XCTAssertEqual(try h.loggedStatuses(), [200, 200, 404, 200])
    }

    func testADiscardedBodyThatStopsOrBreaksAfterItsAnswerClosesTheConnection() throws {
        // nginx's lingering_timeout: 5 s without a byte of the rest of the body, and the connection closes.
        let stalled = try HTTPHarness { $0.clientBodyTimeout = .seconds(60) }
        try stalled.send("POST /hello HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc")
        XCTAssertEqual(try stalled.output(), hello())
        stalled.loop.advanceTime(by: .seconds(4))
        XCTAssertTrue(stalled.isOpen)
        stalled.loop.advanceTime(by: .seconds(2))
        XCTAssertFalse(stalled.isOpen)
        XCTAssertEqual(try stalled.output(), "", "the answer went out: nothing more is sent")

        let broken = try HTTPHarness()
        try broken.send("POST /hello HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        XCTAssertEqual(try broken.output(), hello())
        try broken.send("zz\r\n" + getHello)
        XCTAssertEqual(try broken.output(), "", "nothing behind a broken body is read")
        XCTAssertFalse(broken.isOpen)
    }

    func testKeepAliveTimeoutClosesIdleConnection() throws {
        let h = try HTTPHarness { $0.keepaliveTimeout = .seconds(75); $0.clientHeaderTimeout = .seconds(60) }
        try h.send(getHello)
        XCTAssertEqual(try h.output(), hello())
        h.loop.advanceTime(by: .seconds(74))
        XCTAssertTrue(h.isOpen)
        h.loop.advanceTime(by: .seconds(2))
        XCTAssertFalse(h.isOpen)
        XCTAssertEqual(try h.output(), "")
    }

    func testKeepAliveTimeoutZeroDisablesKeepAlive() throws {
        let h = try HTTPHarness { $0.keepaliveTimeout = .seconds(0) }
        try h.send(getHello + getHello)
        XCTAssertEqual(try h.output(), hello(close: true))
        XCTAssertFalse(h.isOpen)
    }

    func testKeepAliveRequestsClosesAfterN() throws {
        let h = try HTTPHarness { $0.keepaliveRequests = 2 }
        try h.send(getHello + getHello + getHello)
        XCTAssertEqual(try h.output(), hello() + hello(close: true))
        XCTAssertFalse(h.isOpen)
        XCTAssertEqual(try h.loggedStatuses(), [200, 200])
    }

    func testConnectionCloseIsHonoured() throws {
        let h = try HTTPHarness()
        try h.send("GET /hello HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n" + getHello)
        XCTAssertEqual(try h.output(), hello(close: true))
        XCTAssertFalse(h.isOpen)
    }

    func testHeadHasLengthButNoBody() throws {
        let h = try HTTPHarness()
        try h.send("HEAD /hello HTTP/1.1\r\nHost: test\r\n\r\n" + getHello)
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: text/plain", "Content-Length: 5"]) + hello())
    }

    func testHTTP10ClosesUnlessKeepAliveIsAsked() throws {
        let h = try HTTPHarness()
        try h.send("GET /hello HTTP/1.0\r\n\r\n")
        XCTAssertEqual(try h.output(), hello(close: true))
        XCTAssertFalse(h.isOpen)

        let k = try HTTPHarness()
        try k.send("GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        XCTAssertEqual(try k.output(), hello())
        XCTAssertTrue(k.isOpen)

        let list = try HTTPHarness()
        try list.send("GET /hello HTTP/1.0\r\nConnection: TE , Keep-Alive\r\n\r\n")
        XCTAssertEqual(try list.output(), hello())

        let closing = try HTTPHarness()
        try closing.send("GET /hello HTTP/1.1\r\nHost: test\r\nConnection: keep-alive,CLOSE\r\n\r\n")
        XCTAssertEqual(try closing.output(), hello(close: true))
    }

    func testTransferEncodingIsCaseInsensitive() throws {
        let h = try HTTPHarness()
        try h.send("POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: application/octet-stream", "X-Method: POST", "Content-Length: 2"], body: "ok"))
    }

    func testServerTokensOff() throws {
        let h = try HTTPHarness { $0.serverTokens = false }
        try h.send(getHello)
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: text/plain", "Content-Length: 5"], body: "hello", server: "kernel"))
    }

    func testStreamedBodyIsChunkedOnHTTP11() throws {
        let h = try HTTPHarness()
        try h.send("GET /stream HTTP/1.1\r\nHost: test\r\n\r\n" + getHello)
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: text/plain", "Transfer-Encoding: chunked"],
                                                body: "2\r\nab\r\n2\r\ncd\r\n2\r\nef\r\n0\r\n\r\n") + hello())
        XCTAssertEqual(h.probe.streamPulls.withLockedValue { $0 }, 4)
        XCTAssertEqual(try h.loggedStatuses(), [200, 200])
    }

    func testStreamIsPulledOnlyAfterThePreviousPartWasWritten() throws {
        let h = try HTTPHarness()
        let gate = WriteGate()
        try h.channel.pipeline.syncOperations.addHandler(gate, position: .first)
        try h.send("GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        XCTAssertEqual(h.probe.streamPulls.withLockedValue { $0 }, 1)
        XCTAssertEqual(gate.heldCount, 1)
        gate.releaseOne()
        XCTAssertEqual(h.probe.streamPulls.withLockedValue { $0 }, 2)
        gate.releaseOne()
        gate.releaseOne()
        XCTAssertEqual(h.probe.streamPulls.withLockedValue { $0 }, 4)
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: text/plain", "Transfer-Encoding: chunked"],
                                                body: "2\r\nab\r\n2\r\ncd\r\n2\r\nef\r\n0\r\n\r\n"))
    }

    func testSendTimeoutClosesAStalledStream() throws {
        let h = try HTTPHarness { $0.sendTimeout = .seconds(10) }
        let gate = WriteGate()
        try h.channel.pipeline.syncOperations.addHandler(gate, position: .first)
        try h.send("GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        h.loop.advanceTime(by: .seconds(9))
        gate.releaseOne()
        h.loop.advanceTime(by: .seconds(9))
        XCTAssertTrue(h.isOpen)
        h.loop.advanceTime(by: .seconds(2))
        XCTAssertFalse(h.isOpen)
        XCTAssertTrue(h.probe.streamCancelled.withLockedValue { $0 })
        XCTAssertEqual(try h.loggedStatuses(), [200])
    }

    func testSendTimeoutEndsTheLastResponseOfAClientThatStopsReading() throws {
        let h = try HTTPHarness { $0.sendTimeout = .seconds(10) }
        let gate = WriteGate()
        try h.channel.pipeline.syncOperations.addHandler(gate, position: .first)
        try h.send("GET /big HTTP/1.0\r\n\r\n")  // the last response of its connection
        XCTAssertGreaterThan(gate.heldCount, 1, "the body goes out in watched slices")
        h.loop.advanceTime(by: .seconds(9))
        XCTAssertTrue(h.isOpen)
        h.loop.advanceTime(by: .seconds(2))
        XCTAssertFalse(h.isOpen)
        XCTAssertEqual(try h.loggedStatuses(), [200])
        XCTAssertEqual(h.errorLogLines(), ["[info] client timed out (110: Connection timed out) while sending response to client, client: 127.0.0.1, server: 127.0.0.1:8080"])
    }

    func testSendTimeoutRestartsWheneverSomeBytesWereWritten() throws {
        let h = try HTTPHarness { $0.sendTimeout = .seconds(10) }
        let gate = WriteGate()
        try h.channel.pipeline.syncOperations.addHandler(gate, position: .first)
        try h.send("GET /big HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        // Far longer than send_timeout in total, never between two writes.
        while gate.heldCount > 0 {
            h.loop.advanceTime(by: .seconds(9))
            XCTAssertTrue(h.isOpen)
            gate.releaseOne()
        }
        XCTAssertFalse(h.isOpen, "closed once the response was sent")
        let text = try h.output()
        XCTAssertTrue(text.hasSuffix(String(repeating: "b", count: bigBodyLength)))
        XCTAssertEqual(h.errorLogLines(), [])
    }

    func testSendTimeoutOnAKeptAliveConnectionHandsOverToKeepaliveTimeout() throws {
        let h = try HTTPHarness { $0.sendTimeout = .seconds(10); $0.keepaliveTimeout = .seconds(30) }
        let gate = WriteGate()
        try h.channel.pipeline.syncOperations.addHandler(gate, position: .first)
        try h.send("GET /big HTTP/1.1\r\nHost: test\r\n\r\n")
        while gate.heldCount > 0 {
            h.loop.advanceTime(by: .seconds(9))
            gate.releaseOne()
        }
        h.loop.advanceTime(by: .seconds(29))
        XCTAssertTrue(h.isOpen, "keepalive_timeout runs from the end of the response")
        h.loop.advanceTime(by: .seconds(2))
        XCTAssertFalse(h.isOpen)
        XCTAssertEqual(h.errorLogLines(), [])
    }

    func testSendTimeoutEndsARefusalTheClientDoesNotRead() throws {
        let h = try HTTPHarness { $0.sendTimeout = .seconds(10) }
        let gate = WriteGate()
        try h.channel.pipeline.syncOperations.addHandler(gate, position: .first)
        try h.send("HELLO\r\n\r\n")
        XCTAssertTrue(h.isOpen)
        h.loop.advanceTime(by: .seconds(11))
        XCTAssertFalse(h.isOpen)
        XCTAssertEqual(h.errorLogLines().last, "[info] client timed out (110: Connection timed out) while sending response to client, client: 127.0.0.1, server: 127.0.0.1:8080")
    }

    func testABodyOverClientBodyBufferSizeIsSpooled() throws {
        let h = try HTTPHarness()
        try h.send("POST /spooled HTTP/1.1\r\nHost: test\r\nContent-Length: 16\r\n\r\n" + String(repeating: "a", count: 16))
        XCTAssertTrue(try h.output().hasSuffix("memory 16"), "a body that fits stays in memory")
        try h.send("POST /spooled HTTP/1.1\r\nHost: test\r\nContent-Length: 40\r\n\r\n" + String(repeating: "a", count: 17))
        try h.send(String(repeating: "b", count: 23))
        XCTAssertTrue(try h.output().hasSuffix("file 40"))
        try h.send("POST /spooled HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n" + String(repeating: "c", count: 20) + "\r\n")
        try h.send("5\r\nddddd\r\n0\r\n\r\n")
        XCTAssertTrue(try h.output().hasSuffix("file 25"))
        XCTAssertEqual(h.errorLogLines().filter { $0.hasPrefix("[warn] a client request body is buffered to a temporary file ") }.count, 2)
        XCTAssertEqual(try h.loggedStatuses(), [200, 200, 200])
    }

    func testAnUnbufferedBodyIsHandedOverWhileItArrivesWithBackpressure() throws {
        let h = try HTTPHarness()
        let reads = ReadCounter()
        try h.channel.pipeline.syncOperations.addHandler(reads, position: .first)
        let size = RequestBodyStream.highWatermark + 10
        try h.send("POST /unbuffered HTTP/1.1\r\nHost: test\r\nContent-Length: \(size)\r\n\r\nhello")
        let stream = try XCTUnwrap(h.probe.bodyStream.withLockedValue { $0 }, "the handler runs before the body is read")
        XCTAssertEqual(try stream.next().wait().map { String(buffer: $0) }, "hello")
        try h.send(String(repeating: "x", count: size - 5 - 1))
        // The consumer is behind by the whole watermark: the connection stops asking the client for more.
        let before = reads.reads
        h.channel.read()
        XCTAssertEqual(reads.reads, before, "reading is held while the consumer is behind")
        XCTAssertEqual(try stream.next().wait()?.readableBytes, size - 5 - 1)
        XCTAssertEqual(reads.reads, before + 1, "reading resumes once the consumer took it")
        try h.send("!" + getHello)             // the body's last byte, then a pipelined request
        XCTAssertEqual(try stream.next().wait().map { String(buffer: $0) }, "!")
        XCTAssertNil(try stream.next().wait())
        h.probe.pendingSlow.withLockedValue { $0 }!.succeed(.text(200, "taken"))
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: text/plain", "Content-Length: 5"], body: "taken") + hello())
    }

    func testAnUnbufferedBodyFailsWhenTheClientStallsOrLeaves() throws {
        let h = try HTTPHarness { $0.clientBodyTimeout = .seconds(10) }
        try h.send("POST /unbuffered HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nhello")
        let stream = try XCTUnwrap(h.probe.bodyStream.withLockedValue { $0 })
        _ = try stream.next().wait()
        let rest = stream.next()
        h.loop.advanceTime(by: .seconds(11))
        XCTAssertThrowsError(try rest.wait())
        XCTAssertFalse(h.isOpen)
        XCTAssertEqual(try h.loggedStatuses(), [408])

        let left = try HTTPHarness()
        try left.send("POST /unbuffered HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nhello")
        let second = try XCTUnwrap(left.probe.bodyStream.withLockedValue { $0 })
        _ = try second.next().wait()
        try left.channel.close().wait()
        XCTAssertThrowsError(try second.next().wait())
    }

    func testAnUnbufferedRequestAnsweredBeforeItsBodyEndsClosesTheConnection() throws {
        let h = try HTTPHarness()
        try h.send("POST /unbuffered HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nhello")
        let stream = try XCTUnwrap(h.probe.bodyStream.withLockedValue { $0 })
        h.probe.pendingSlow.withLockedValue { $0 }!.succeed(.text(413, "no"))
        XCTAssertTrue(try h.output().contains("Connection: close"))
        XCTAssertThrowsError(try stream.next().wait(), "the handler is told the rest will not come")
    }

    func testStreamedBodyWithLengthIsSentAsIs() throws {
        let h = try HTTPHarness()
        try h.send("GET /stream-length HTTP/1.1\r\nHost: test\r\n\r\n")
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: text/plain", "Content-Length: 6"], body: "abcdef"))
        XCTAssertTrue(h.isOpen)
    }

    func testStreamedBodyOnHTTP10IsCloseDelimited() throws {
        let h = try HTTPHarness()
        try h.send("GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: text/plain"], body: "abcdef", close: true))
        XCTAssertFalse(h.isOpen)
    }

    func testHeadOfAStreamCancelsIt() throws {
        let h = try HTTPHarness()
        try h.send("HEAD /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: text/plain"]))
        XCTAssertTrue(h.probe.streamCancelled.withLockedValue { $0 })
        XCTAssertTrue(h.isOpen)
    }

    func testFailedStreamClosesTheConnection() throws {
        let h = try HTTPHarness()
        try h.send("GET /stream-broken HTTP/1.1\r\nHost: test\r\n\r\n" + getHello)
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: text/plain", "Transfer-Encoding: chunked"], body: "2\r\nab\r\n"))
        XCTAssertFalse(h.isOpen)
    }

    func testClientGoneBeforeTheResponseIsLogged499() throws {
        let h = try HTTPHarness()
        try h.send("GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        try h.channel.close().wait()
        XCTAssertEqual(try h.loggedStatuses(), [499])
        h.probe.pendingSlow.withLockedValue { $0 }!.succeed(.text(200, "late"))
        XCTAssertEqual(try h.loggedStatuses(), [499])
    }

    func testQuiesceClosesAnIdleConnection() throws {
        let h = try HTTPHarness()
        try h.send(getHello)
        XCTAssertEqual(try h.output(), hello())
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        XCTAssertFalse(h.isOpen)
    }

    func testQuiesceLetsTheRequestInFlightFinishWithConnectionClose() throws {
        let h = try HTTPHarness()
        try h.send("GET /slow HTTP/1.1\r\nHost: test\r\n\r\n" + getHello)
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        XCTAssertTrue(h.isOpen)
        h.probe.pendingSlow.withLockedValue { $0 }!.succeed(.text(200, "late"))
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: text/plain", "Content-Length: 4"], body: "late", close: true))
        XCTAssertFalse(h.isOpen)
    }

    func testAClientThatDoesNotReadGetsNothingMoreProcessedAndTimesOut() throws {
        let h = try HTTPHarness { $0.sendTimeout = .seconds(10) }
        try h.send("GET /slow HTTP/1.1\r\nHost: test\r\n\r\n" + getHello)
        h.channel.isWritable = false  // the client stopped reading
        h.probe.pendingSlow.withLockedValue { $0 }!.succeed(.text(200, "late"))
        XCTAssertEqual(try h.output(), response("200 OK", ["Content-Type: text/plain", "Content-Length: 4"], body: "late"))
        h.loop.advanceTime(by: .seconds(5))
        XCTAssertEqual(try h.output(), "", "the pipelined request waits")
        h.channel.isWritable = true
        h.channel.pipeline.fireChannelWritabilityChanged()
        XCTAssertEqual(try h.output(), hello())

        h.channel.isWritable = false
        try h.send(getHello)
        XCTAssertEqual(try h.output(), "")
        h.loop.advanceTime(by: .seconds(11))
        XCTAssertFalse(h.isOpen)
        XCTAssertEqual(try h.loggedStatuses(), [200, 200])
    }

    func testLeadingEmptyLinesAreSkipped() throws {
        let h = try HTTPHarness()
        try h.send("\r\n\r\n" + getHello)
        XCTAssertEqual(try h.output(), hello())
    }

    func testRandomInputNeverCrashes() throws {
        let seed = ProcessInfo.processInfo.environment["HTTP_RANDOM_SEED"].flatMap { UInt64($0) } ?? 0x6b65726e656c
        var generator = SplitMix64(seed: seed)
        let pieces: [[UInt8]] = ["GET ", "POST ", "/hello", " HTTP/1.1", " HTTP/1.0", "\r\n", "\n", "\r", "Host: a\r\n",
                                 "Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n", "Expect: 100-continue\r\n",
                                 "0\r\n", "5\r\n", "hello", ": ", " ", "\u{0}", "ffffffff\r\n", "\r\n\r\n"].map { Array($0.utf8) }
        // HTTP_RANDOM_ITERATIONS=100000 HTTP_RANDOM_SEED=7 swift test --filter testRandomInputNeverCrashes runs a longer search.
        let iterations = ProcessInfo.processInfo.environment["HTTP_RANDOM_ITERATIONS"].flatMap { Int($0) } ?? 400
        for _ in 0..<iterations {
            let h = try HTTPHarness()
            var bytes: [UInt8] = []
            for _ in 0..<Int(generator.next() % 24) {
                if generator.next() % 3 == 0 {
                    bytes += (0..<Int(generator.next() % 8)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
                } else {
                    bytes += pieces[Int(generator.next() % UInt64(pieces.count))]
                }
            }
            var index = 0
            while index < bytes.count, h.isOpen {
                let end = min(bytes.count, index + 1 + Int(generator.next() % 16))
                try h.send(bytes: Array(bytes[index..<end]))
                index = end
            }
            h.loop.advanceTime(by: .seconds(120))
            let out = try h.output()
            XCTAssertTrue(out.isEmpty || out.hasPrefix("HTTP/1.1 "), out.debugDescription)
        }
    }
}

/// A small deterministic random source for the input loop.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
