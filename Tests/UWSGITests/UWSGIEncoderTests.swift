import KernelCore
import NIOCore
import NIOEmbedded
import XCTest
@testable import UWSGI

final class UWSGIEncoderTests: XCTestCase {
    func testPacketIsByteExact() throws {
        let variables = UWSGIVariables([("REQUEST_METHOD", "GET"), ("QUERY_STRING", ""), ("HTTP_X", "é")])
        let packet = try XCTUnwrap(variables.encodedPacket(modifier1: 0, modifier2: 3))
        let expected: [UInt8] = [
            0x00, 0x31, 0x00, 0x03,                                   // modifier1, size 49 LE, modifier2
            0x0E, 0x00] + Array("REQUEST_METHOD".utf8) + [0x03, 0x00] + Array("GET".utf8) + [
            0x0C, 0x00] + Array("QUERY_STRING".utf8) + [0x00, 0x00] + [
            0x06, 0x00] + Array("HTTP_X".utf8) + [0x02, 0x00, 0xC3, 0xA9]
        XCTAssertEqual(Array(packet.readableBytesView), expected)
        XCTAssertEqual(Array(packet.readableBytesView), handMadePacket([("REQUEST_METHOD", "GET"), ("QUERY_STRING", ""), ("HTTP_X", "é")], modifier2: 3))
    }

    func testSizeFieldIsLittleEndian() throws {
        let variables = UWSGIVariables([("K", String(repeating: "v", count: 300))])
        let packet = try XCTUnwrap(variables.encodedPacket())
        XCTAssertEqual(Array(packet.readableBytesView.prefix(4)), [0, 0x31, 0x01, 0])  // 305 = 0x0131
        XCTAssertEqual(Array(packet.readableBytesView[packet.readerIndex + 7 ..< packet.readerIndex + 9]), [0x2C, 0x01])  // 300
    }

    func testBlockOver64kIsRefused() {
        let variables = UWSGIVariables([("K", String(repeating: "v", count: 65_531))])
        XCTAssertEqual(variables.encodedSize, 65_536)
        XCTAssertNil(variables.encodedPacket())
        XCTAssertNotNil(UWSGIVariables([("K", String(repeating: "v", count: 65_530))]).encodedPacket())
    }

    func testEncodedPacketDecodesBack() throws {
        let variables = UWSGIVariables([("REQUEST_METHOD", "PUT"), ("CONTENT_LENGTH", "0"), ("HTTP_X_Ü", "ü")])
        let channel = try decoderChannel(maxBlockSize: 65535)
        try channel.writeInbound(try XCTUnwrap(variables.encodedPacket()))
        let decoded = try drainRequest(channel)
        XCTAssertEqual(decoded.heads.first?.variables.entries.map(\.name), variables.entries.map(\.name))
        XCTAssertEqual(decoded.heads.first?.variables.entries.map(\.value), variables.entries.map(\.value))
    }

    private func request(headers: HeaderFields, body: String? = nil, uri: String = "/v1/parse?a=1&b=%20") -> KernelRequest {
        let split = KernelRequest.splitTarget(uri)!
        let connection = ConnectionInfo(protocolName: "http", listener: "127.0.0.1:8100",
                                        remoteAddress: try! SocketAddress(ipAddress: "10.1.2.3", port: 40000),
                                        localAddress: try! SocketAddress(ipAddress: "127.0.0.1", port: 8100))
        return KernelRequest(method: "POST", uri: uri, path: split.path, query: split.query, version: .http1_1,
                             headers: headers, body: body.map { buffer($0) }, connection: connection)
    }

    func testVarsFollowNginxStockParamsThenHeaders() {
        let configuration = UWSGIPassConfiguration(group: SinglePeerGroup(.tcp(host: "127.0.0.1", port: 6666)))
        let headers = HeaderFields([("Host", "example.com:8100"), ("Content-Type", "application/json"), ("Content-Length", "2"),
                                     ("X-Forwarded-For", "1.1.1.1"), ("Cookie", "a=1"), ("x-forwarded-for", "2.2.2.2"),
                                     ("Cookie", "b=2"), ("Transfer-Encoding", "chunked")])
        let variables = configuration.variables(for: request(headers: headers, body: "{}"), route: RouteInfo(serverName: "example.com"))
        XCTAssertEqual(variables.entries.map { "\($0.name)=\($0.value)" }, [
            "QUERY_STRING=a=1&b=%20", "REQUEST_METHOD=POST", "CONTENT_TYPE=application/json", "CONTENT_LENGTH=2",
            "REQUEST_URI=/v1/parse?a=1&b=%20", "PATH_INFO=/v1/parse", "DOCUMENT_ROOT=", "SERVER_PROTOCOL=HTTP/1.1",
            "REQUEST_SCHEME=http", "REMOTE_ADDR=10.1.2.3", "REMOTE_PORT=40000", "SERVER_PORT=8100",
            "SERVER_NAME=example.com",
            "HTTP_HOST=example.com:8100", "HTTP_CONTENT_TYPE=application/json", "HTTP_CONTENT_LENGTH=2",
            "HTTP_X_FORWARDED_FOR=1.1.1.1, 2.2.2.2", "HTTP_COOKIE=a=1; b=2",
        ])
    }

    func testContentLengthIsTheBodysTypedLengthNotAHeaderReadBack() throws {
        let configuration = UWSGIPassConfiguration(group: SinglePeerGroup(.tcp(host: "127.0.0.1", port: 6666)))
        // A streamed body: its declared length, carried as a number, frames the uwsgi body.
        var streamed = request(headers: ["Host": "h"])
        streamed.bodySource = .stream(RequestBodyStream(length: 12345, eventLoop: EmbeddedEventLoop()))
        let variables = configuration.variables(for: streamed, route: RouteInfo())
        XCTAssertEqual(variables["CONTENT_LENGTH"], "12345")
        // Without a body the stock param evaluates as nginx's `$content_length`: empty.
        XCTAssertEqual(configuration.variables(for: request(headers: ["Host": "h"]), route: RouteInfo())["CONTENT_LENGTH"], "")
        // A CONTENT_LENGTH param of the location's own is sent as written.
        var own = configuration
        own.params = UWSGIParam.merged([UWSGIParam(name: "CONTENT_LENGTH", value: try UWSGIParamTemplate(parsing: "7"))])
        XCTAssertEqual(own.variables(for: streamed, route: RouteInfo())["CONTENT_LENGTH"], "7")
    }

    func testParamsOverrideStockAndSuppressTheirHeader() throws {
        var configuration = UWSGIPassConfiguration(group: SinglePeerGroup(.tcp(host: "127.0.0.1", port: 6666)))
        configuration.params = UWSGIParam.merged([
            UWSGIParam(name: "HTTP_HOST", value: try UWSGIParamTemplate(parsing: "$host")),
            UWSGIParam(name: "SCRIPT_NAME", value: try UWSGIParamTemplate(parsing: "/v1")),
            UWSGIParam(name: "SERVER_NAME", value: try UWSGIParamTemplate(parsing: "${host}-x")),
            UWSGIParam(name: "X_ARG", value: try UWSGIParamTemplate(parsing: "[$arg_a$is_args$http_x_test]")),
            UWSGIParam(name: "EMPTY", value: try UWSGIParamTemplate(parsing: "$https"), ifNotEmpty: true),
        ])
        let variables = configuration.variables(for: request(headers: HeaderFields([("Host", "Example.com:8100"), ("X-Test", "t")])), route: RouteInfo())
        XCTAssertEqual(variables["SERVER_NAME"], "example.com-x")
        XCTAssertEqual(variables["SCRIPT_NAME"], "/v1")
        XCTAssertEqual(variables["X_ARG"], "[1?t]")
        XCTAssertNil(variables["EMPTY"])
        XCTAssertNil(variables["HTTPS"])
        XCTAssertEqual(variables.entries.filter { $0.name == "HTTP_HOST" }.map(\.value), ["example.com"])
        XCTAssertEqual(variables.entries.map(\.name).firstIndex(of: "SERVER_NAME"), 12)  // HTTPS is left out: empty
        XCTAssertEqual(variables["CONTENT_LENGTH"], "")
    }

    func testHeadersAreNotPassedWhenTurnedOff() {
        var configuration = UWSGIPassConfiguration(group: SinglePeerGroup(.tcp(host: "127.0.0.1", port: 6666)))
        configuration.passRequestHeaders = false
        let variables = configuration.variables(for: request(headers: HeaderFields([("X-A", "1")])), route: RouteInfo())
        XCTAssertFalse(variables.entries.contains { $0.name.hasPrefix("HTTP_") })
    }

    func testHTTPSParamOnlyForHTTPS() {
        let configuration = UWSGIPassConfiguration(group: SinglePeerGroup(.tcp(host: "127.0.0.1", port: 6666)))
        var secure = request(headers: [:])
        secure.connection.scheme = "https"
        let variables = configuration.variables(for: secure, route: RouteInfo())
        XCTAssertEqual(variables["HTTPS"], "on")
        XCTAssertEqual(variables["REQUEST_SCHEME"], "https")
    }

    func testUnknownVariableIsAConfigurationError() {
        XCTAssertThrowsError(try UWSGIParamTemplate(parsing: "$nosuch")) { error in
            XCTAssertEqual("\(error)", "unknown \"nosuch\" variable")
        }
        XCTAssertThrowsError(try UWSGIParamTemplate(parsing: "${host"))
        XCTAssertEqual(try UWSGIParamTemplate(parsing: "plain text").evaluate(request(headers: [:]), route: RouteInfo()), "plain text")
    }

    func testHeaderVariableNames() {
        XCTAssertEqual(UWSGIPassConfiguration.variableName(forHeader: "X-Foo-bar"), "HTTP_X_FOO_BAR")
        XCTAssertEqual(UWSGIRequestMapping.headerName(fromVariable: "HTTP_X_FOO_BAR"), "X-Foo-Bar")
        XCTAssertEqual(UWSGIRequestMapping.headerName(fromVariable: "HTTP_HOST"), "Host")
    }
}
