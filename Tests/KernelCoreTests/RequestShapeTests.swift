import KernelCore
import NIOCore
import XCTest

final class RequestShapeTests: XCTestCase {
    func testRequestURIIsTheTargetFromItsPath() {
        func request(_ target: String) -> KernelRequest {
            KernelRequest(method: "GET", uri: target, path: "/", query: "", version: .http1_1, headers: HeaderFields(),
                          connection: ConnectionInfo(protocolName: "http", listener: "t", remoteAddress: nil, localAddress: nil))
        }
        // nginx's `$request_uri` starts where the path starts, and keeps the rest as received.
        XCTAssertEqual(request("/a//b/../c?q#f").requestURI, "/a//b/../c?q#f")
        XCTAssertEqual(request("http://evil.example/r/x?y").requestURI, "/r/x?y")
        XCTAssertEqual(request("https://h:8443/").requestURI, "/")
        XCTAssertEqual(request("http://h").requestURI, "/")
        XCTAssertEqual(request("http://h?y").requestURI, "/?y")
        XCTAssertEqual(request("http://h/x").uri, "http://h/x", "the target as received stays for `$request`")
        XCTAssertEqual(request("FTP://Example.COM:21/r?y").requestURI, "/r?y")
        // The absolute form's authority is the host ($host, lower-cased) and the port, whatever the scheme.
        XCTAssertEqual(request("FTP://Example.COM:21/r?y").host, "example.com")
        XCTAssertEqual(request("FTP://Example.COM:21/r?y").requestPort, "21")
        XCTAssertEqual(request("http://a#b/x").host, "a", "a fragment is no part of the authority")
    }

    func testTargetSplitsIntoNormalisedPathAndQuery() {
        XCTAssertEqual(KernelRequest.splitTarget("/a/b?x=1&y=2")?.path, "/a/b")
        XCTAssertEqual(KernelRequest.splitTarget("/a/b?x=1&y=2")?.query, "x=1&y=2")
        XCTAssertEqual(KernelRequest.splitTarget("/")?.path, "/")
        // A fragment ends the target, as nginx ends `$uri` and `$args` at `#`: a `?` after it starts no query.
        XCTAssertEqual(KernelRequest.splitTarget("/#frag")?.path, "/")
        XCTAssertEqual(KernelRequest.splitTarget("/a#b?c=1")?.path, "/a")
        XCTAssertEqual(KernelRequest.splitTarget("/a#b?c=1")?.query, "")
        XCTAssertEqual(KernelRequest.splitTarget("/a?x=1#y")?.query, "x=1")
        XCTAssertEqual(KernelRequest.splitTarget("/a?x=1#y")?.path, "/a")
        XCTAssertEqual(KernelRequest.splitTarget("/a/b#x/../..")?.path, "/a/b")
        // Asterisk form and absolute forms with a host nginx does not read: refused (400).
        XCTAssertNil(KernelRequest.splitTarget("*"))
        XCTAssertNil(KernelRequest.splitTarget("http://[/"))
        XCTAssertNil(KernelRequest.splitTarget("http://user@host/x"))
        XCTAssertNil(KernelRequest.splitTarget("http://ho_st/x"))
        XCTAssertNil(KernelRequest.splitTarget("http://host:8x/x"))
        XCTAssertNil(KernelRequest.splitTarget("http:///x"))
        XCTAssertEqual(KernelRequest.splitTarget("http://Host-1.example:8080/x?q")?.path, "/x")
        XCTAssertEqual(KernelRequest.splitTarget("http://[::1]:8080/x")?.path, "/x")
        XCTAssertEqual(KernelRequest.splitTarget("https://host")?.path, "/")
        // Any scheme nginx's parser takes (a letter first; letters, digits, `+`, `-`, `.`), in any case.
        XCTAssertEqual(KernelRequest.splitTarget("HTTP://HOST/x")?.path, "/x")
        XCTAssertEqual(KernelRequest.splitTarget("svn+ssh://host/x")?.path, "/x")
        XCTAssertNil(KernelRequest.splitTarget("1ftp://host/x"), "a scheme starts with a letter")
        XCTAssertNil(KernelRequest.splitTarget("http://a..b/x"), "nginx's host check: two dots in a row")
        XCTAssertNil(KernelRequest.splitTarget("http://./x"))
        XCTAssertEqual(KernelRequest.splitTarget("/a//b/./c/../d")?.path, "/a/b/d")
        XCTAssertEqual(KernelRequest.splitTarget("/a/b/")?.path, "/a/b/")
        XCTAssertEqual(KernelRequest.splitTarget("/a/%41%20b")?.path, "/a/A b")
        XCTAssertEqual(KernelRequest.splitTarget("/a/..")?.path, "/")
        XCTAssertEqual(KernelRequest.splitTarget("http://example.com/x/y?q")?.path, "/x/y")
        XCTAssertEqual(KernelRequest.splitTarget("http://example.com/x/y?q")?.query, "q")
        // Paths with nothing to resolve come back as they are; dots inside names are not segments.
        XCTAssertEqual(KernelRequest.splitTarget("/v2/models/demo/infer")?.path, "/v2/models/demo/infer")
        XCTAssertEqual(KernelRequest.splitTarget("/a/.hidden/b..c/...")?.path, "/a/.hidden/b..c/...")
        XCTAssertEqual(KernelRequest.splitTarget("/a/.")?.path, "/a/")
        XCTAssertEqual(KernelRequest.splitTarget("/a/b/..")?.path, "/a/")
        XCTAssertEqual(KernelRequest.splitTarget("/./a")?.path, "/a")
        XCTAssertEqual(KernelRequest.splitTarget("//a")?.path, "/a")
    }

    func testTargetsThatEscapeTheRootOrAreMalformedAreRejected() {
        XCTAssertNil(KernelRequest.splitTarget("/../etc/passwd"))
        XCTAssertNil(KernelRequest.splitTarget("/a/%2e%2e/%2e%2e/x"))
        XCTAssertNil(KernelRequest.splitTarget("/a%zz"))
        XCTAssertNil(KernelRequest.splitTarget("/a%00b"))
        XCTAssertNil(KernelRequest.splitTarget("relative"))
        XCTAssertNil(KernelRequest.splitTarget(""))
    }

    func testHostDropsPortAndCase() {
        func host(_ value: String) -> String? {
            KernelRequest(method: "GET", uri: "/", path: "/", query: "", version: .http1_1, headers: ["Host": value],
                          connection: ConnectionInfo(protocolName: "http", listener: "-", remoteAddress: nil, localAddress: nil)).host
        }
        XCTAssertEqual(host("Example.COM:8080"), "example.com")
        XCTAssertEqual(host("[::1]:8080"), "[::1]")
        XCTAssertEqual(host("localhost"), "localhost")
    }

    func testCopiesOfARequestAreIndependentValues() {
        let connection = ConnectionInfo(protocolName: "http", listener: "-", remoteAddress: nil, localAddress: nil)
        let original = KernelRequest(method: "GET", uri: "/a?x=1", path: "/a", query: "x=1", version: .http1_1,
                                     headers: HeaderFields([("Host", "a.test")]), connection: connection)
        var copy = original
        copy.path = "/b"
        copy.headers.add("X-Added", "1")
        copy.body = ByteBuffer(string: "body")
        copy.connection.scheme = "https"
        XCTAssertEqual(original.path, "/a")
        XCTAssertEqual(original.headers.count, 1)
        XCTAssertNil(original.body)
        XCTAssertEqual(original.connection.scheme, "http")
        XCTAssertEqual(copy.path, "/b")
        XCTAssertEqual(copy.headers["x-added"], "1")
        XCTAssertEqual(copy.body.map { String(buffer: $0) }, "body")
        XCTAssertEqual(copy.connection.scheme, "https")
        XCTAssertEqual(copy.uri, "/a?x=1", "fields not written keep the original's values")

        var otherConnection = connection
        otherConnection.listener = "unix:/run/k.sock"
        XCTAssertEqual(connection.listener, "-", "a connection's info is a value too")
        XCTAssertEqual(otherConnection.listener, "unix:/run/k.sock")
    }

    func testHeaderFieldsAreCaseInsensitiveAndOrdered() {
        var headers: HeaderFields = ["Content-Type": "text/plain", "X-A": "1"]
        headers.add("x-a", "2")
        XCTAssertEqual(headers["content-type"], "text/plain")
        XCTAssertEqual(headers.values("X-A"), ["1", "2"])
        headers.replace("X-a", "3")
        XCTAssertEqual(headers.values("x-a"), ["3"])
        XCTAssertEqual(headers.fields.map(\.name), ["Content-Type", "X-A"])
        headers.remove("CONTENT-TYPE")
        XCTAssertFalse(headers.contains("Content-Type"))
    }

    func testListenAddressesParseAsNginxWritesThem() {
        XCTAssertEqual(ListenAddress(parsing: "8080"), .tcp(host: "0.0.0.0", port: 8080))
        XCTAssertEqual(ListenAddress(parsing: "*:80"), .tcp(host: "0.0.0.0", port: 80))
        XCTAssertEqual(ListenAddress(parsing: "127.0.0.1:0"), .tcp(host: "127.0.0.1", port: 0))
        XCTAssertEqual(ListenAddress(parsing: "[::1]:8080"), .tcp(host: "::1", port: 8080))
        XCTAssertEqual(ListenAddress(parsing: "unix:/run/k.sock"), .unix(path: "/run/k.sock"))
        XCTAssertNil(ListenAddress(parsing: "127.0.0.1:70000"))
        XCTAssertNil(ListenAddress(parsing: "::1:80"))
        XCTAssertNil(ListenAddress(parsing: "unix:"))
        XCTAssertEqual(ListenAddress(parsing: "[::1]:8080")?.description, "[::1]:8080")
        XCTAssertEqual(PeerAddress(parsing: "127.0.0.1:6666"), .tcp(host: "127.0.0.1", port: 6666))
        XCTAssertNil(PeerAddress(parsing: "127.0.0.1:0"))
        XCTAssertNil(PeerAddress(parsing: "127.0.0.1"))
    }

    func testListenAddressesThatCannotBothBeBoundClash() {
        func clash(_ a: String, _ b: String) -> Bool { ListenAddress(parsing: a)!.clashes(with: ListenAddress(parsing: b)!) }
        XCTAssertTrue(clash("127.0.0.1:8080", "127.0.0.1:8080"))
        XCTAssertTrue(clash("8080", "127.0.0.1:8080"), "the wildcard holds every IPv4 address's port")
        XCTAssertTrue(clash("127.0.0.2:8080", "*:8080"))
        XCTAssertTrue(clash("unix:/run/k.sock", "unix:/run/k.sock"))
        XCTAssertFalse(clash("127.0.0.1:8080", "127.0.0.2:8080"))
        XCTAssertFalse(clash("127.0.0.1:8080", "127.0.0.1:8081"))
        XCTAssertFalse(clash("127.0.0.1:0", "127.0.0.1:0"), "port 0 is any free port")
        XCTAssertFalse(clash("8080", "[::1]:8080"), "an IPv6 address is not under IPv4's wildcard")
        XCTAssertFalse(clash("unix:/run/a.sock", "unix:/run/b.sock"))
    }

    func testErrorResponseIsJSONWithEscapedMessage() {
        let response = KernelResponse.error(400, "bad \"x\"\n")
        guard case .buffer(let buffer) = response.body else { return XCTFail("expected a buffer body") }
        XCTAssertEqual(String(buffer: buffer), #"{"error":"bad \"x\"\n"}"#)
        XCTAssertEqual(response.headers["Content-Type"], "application/json")
        XCTAssertEqual(response.reasonPhrase, "Bad Request")
    }
}
