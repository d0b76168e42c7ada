import KernelCore
import NIOCore
import NIOEmbedded
import XCTest
@testable import UWSGI

/// The packet `uwsgi_pass` sends is written straight into a buffer; it must be byte for byte the packet of the
/// variables `variables(for:route:)` lists.
final class UWSGIVarsEncoderTests: XCTestCase {
    private func request(_ headers: HeaderFields, body: String? = nil) -> KernelRequest {
        let connection = ConnectionInfo(protocolName: "http", listener: "127.0.0.1:8100",
                                        remoteAddress: try! SocketAddress(ipAddress: "10.1.2.3", port: 40000),
                                        localAddress: try! SocketAddress(ipAddress: "127.0.0.1", port: 8100))
        return KernelRequest(method: "POST", uri: "/v1/parse?a=1", path: "/v1/parse", query: "a=1", version: .http1_1,
                             headers: headers, body: body.map { ByteBuffer(string: $0) }, connection: connection)
    }

    private func assertSamePacket(_ configuration: UWSGIPassConfiguration, _ request: KernelRequest,
                                  file: StaticString = #filePath, line: UInt = #line) {
        let route = RouteInfo(serverName: "example.com")
        let listed = configuration.variables(for: request, route: route)
            .encodedPacket(modifier1: configuration.modifier1, modifier2: configuration.modifier2)
        let direct = configuration.encodedPacket(for: request, route: route, allocator: ByteBufferAllocator())
        XCTAssertEqual(direct.map { Array($0.readableBytesView) }, listed.map { Array($0.readableBytesView) },
                       file: file, line: line)
    }

    private var base: UWSGIPassConfiguration {
        UWSGIPassConfiguration(group: SinglePeerGroup(.tcp(host: "127.0.0.1", port: 6666)))
    }

    func testTheDirectPacketIsTheListedOne() throws {
        let headers = HeaderFields([("Host", "example.com:8100"), ("Content-Type", "application/json"), ("Content-Length", "2"),
                                     ("X-Forwarded-For", "1.1.1.1"), ("Cookie", "a=1"), ("x-forwarded-for", "2.2.2.2"),
                                     ("Cookie", "b=2"), ("Transfer-Encoding", "chunked"), ("X-Latin", "café"),
                                     ("X_Forwarded_For", "3.3.3.3"), ("cookie", "c=3")])
        assertSamePacket(base, request(headers, body: "{}"))
        assertSamePacket(base, request([:]))
        var overridden = base
        overridden.params = UWSGIParam.merged([
            UWSGIParam(name: "HTTP_HOST", value: try UWSGIParamTemplate(parsing: "$host")),
            UWSGIParam(name: "HTTP_X_FORWARDED_FOR", value: try UWSGIParamTemplate(parsing: "$remote_addr")),
            UWSGIParam(name: "EMPTY", value: try UWSGIParamTemplate(parsing: "$https"), ifNotEmpty: true),
        ])
        overridden.modifier2 = 3
        assertSamePacket(overridden, request(headers))
        var withoutHeaders = base
        withoutHeaders.passRequestHeaders = false
        assertSamePacket(withoutHeaders, request(headers))
        withoutHeaders.deadline = RequestDeadlinePolicy(timeout: .seconds(1))
        assertSamePacket(withoutHeaders, request(["X-Kernel-Timeout-Ms": "250", "X-A": "1"]))
    }

    func testValuesInAnotherCharsetGoAsTheBytesTheyCameAs() throws {
        // `X-Name: caf\xE9` (ISO-8859-1) and a repeated header joined with one such value.
        var headers = HeaderFields([("Host", "h"), ("X-Name", "caf\u{FFFD}"), ("X-List", "a"), ("X-List", "\u{FFFD}\u{FFFD}")])
        headers.keep(undecoded: [0x63, 0x61, 0x66, 0xE9], at: 1)
        headers.keep(undecoded: [0xFF, 0xFE], at: 3)
        let packet = try XCTUnwrap(base.encodedPacket(for: request(headers), route: RouteInfo(), allocator: ByteBufferAllocator()))
        let bytes = Array(packet.readableBytesView)
        func contains(_ needle: [UInt8]) -> Bool {
            bytes.indices.contains { bytes[$0...].starts(with: needle) }
        }
        XCTAssertTrue(contains(Array("HTTP_X_NAME".utf8) + [4, 0, 0x63, 0x61, 0x66, 0xE9]))
        XCTAssertTrue(contains(Array("HTTP_X_LIST".utf8) + [5, 0] + Array("a, ".utf8) + [0xFF, 0xFE]))
        XCTAssertFalse(contains([0xEF, 0xBF, 0xBD]), "no U+FFFD reaches the peer")
    }

    func testHostIsTheRequestsAuthorityAndAnEmptyChunkedBodyHasLengthZero() {
        func variable(_ name: String, of request: KernelRequest) -> String? {
            base.variables(for: request, route: RouteInfo())[name]
        }
        XCTAssertEqual(variable("HTTP_HOST", of: request(["Host": "Example.COM.:8080"])), "example.com:8080")
        XCTAssertEqual(variable("HTTP_HOST", of: request(["Host": "[::1]:9000"])), "[::1]:9000")
        XCTAssertEqual(variable("HTTP_HOST", of: request(["Host": "example.com"])), "example.com")
        var absolute = request(["Host": "other"])
        absolute.uri = "http://Example.com:8080/abs?q=1"
        XCTAssertEqual(variable("HTTP_HOST", of: absolute), "example.com:8080",
                       "the target's authority, never a Host that contradicts it")
        assertSamePacket(base, absolute)
        XCTAssertNil(variable("HTTP_HOST", of: request([:])))

        let emptyChunked = request(["Host": "h", "Transfer-Encoding": "chunked"], body: "")
        XCTAssertEqual(variable("CONTENT_LENGTH", of: emptyChunked), "0", "WSGI reads 0, not no length")
        assertSamePacket(base, emptyChunked)
        XCTAssertEqual(variable("CONTENT_LENGTH", of: request(["Host": "h"])), "", "no body declared: empty, as nginx")
    }

    func testAStreamedBodysLengthIsItsDeclaredOne() {
        var streamed = request(["Host": "h"])
        streamed.bodySource = .stream(RequestBodyStream(length: 12345, eventLoop: EmbeddedEventLoop()))
        assertSamePacket(base, streamed)
    }

    func testAVarsBlockOver64kIsRefusedBothWays() {
        let big = request(["X-Big": String(repeating: "v", count: 65_000), "X-More": String(repeating: "w", count: 600)])
        XCTAssertNil(base.encodedPacket(for: big, route: RouteInfo(), allocator: ByteBufferAllocator()))
        XCTAssertNil(base.variables(for: big, route: RouteInfo()).encodedPacket())
        let fits = request(["X-Big": String(repeating: "v", count: 64_000)])
        XCTAssertNotNil(base.encodedPacket(for: fits, route: RouteInfo(), allocator: ByteBufferAllocator()))
        assertSamePacket(base, fits)
    }

    func testHeaderVariableNames() {
        XCTAssertTrue(UWSGIVarsWriter.headerVariable("x-forwarded-for", is: "HTTP_X_FORWARDED_FOR"))
        XCTAssertTrue(UWSGIVarsWriter.headerVariable("X_Forwarded_For", is: "HTTP_X_FORWARDED_FOR"))
        XCTAssertFalse(UWSGIVarsWriter.headerVariable("X-Forwarded", is: "HTTP_X_FORWARDED_FOR"))
        XCTAssertFalse(UWSGIVarsWriter.headerVariable("Host", is: "HOST_HOST"))
        XCTAssertEqual(UWSGIPassConfiguration.variableName(forHeader: "X-Ü-a"), "HTTP_X_Ü_A")
    }
}
