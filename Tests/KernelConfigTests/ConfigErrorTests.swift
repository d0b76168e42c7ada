import Foundation
import KernelConfig
import XCTest

/// Every kind of configuration error, with its exact text: `file:line:column: key.path: message`.
final class ConfigErrorTests: XCTestCase {
    private var directory = ""

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "kernel-config-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(atPath: directory)
    }

    @discardableResult
    private func write(_ name: String, _ text: String) throws -> String {
        let path = "\(directory)/\(name)"
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    private func root(_ text: String, file: String = "etc/kernel.yaml") throws -> ConfigMapping {
        try ConfigValue(node: YAMLParser().parse(text, file: file), path: "").mapping()
    }

    /// The error `body` throws, as the operator sees it, with the temporary directory shown as `DIR`.
    private func message(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            try body()
            XCTFail("expected an error", file: file, line: line)
            return ""
        } catch {
            return "\(error)".replacingOccurrences(of: directory, with: "DIR")
        }
    }

    // MARK: - keys

    func testAnInheritedValueIsReadWhereTheKeyIsNotWrittenAndKeepsItsOwnPosition() throws {
        let config = try root("server:\n  timeout: soon\n  inner:\n    other: 1\n  own:\n    timeout: 5s\n")
        let server = try config.required("server").mapping()
        let timeout = try XCTUnwrap(server.optional("timeout"))
        let inner = try server.required("inner").mapping()
        inner.inherited = ["timeout": timeout]
        let inheritedTimeout = try XCTUnwrap(inner.optional("timeout"))
        XCTAssertEqual(message { _ = try inheritedTimeout.duration() }.prefix(26), "etc/kernel.yaml:2:12: serv",
                       "an error in an inherited value names the line it was written on")
        XCTAssertEqual(try inner.required("other").int(), 1)
        XCTAssertNoThrow(try inner.finish())
        let own = try server.required("own").mapping()
        own.inherited = ["timeout": timeout]
        XCTAssertEqual(try XCTUnwrap(own.optional("timeout")).duration().milliseconds, 5000, "its own value wins")
    }

    func testUnknownKey() throws {
        let text = "http:\n  listen: 80\n  keepalive_timout: 5s\n"
        XCTAssertEqual(message {
            let http = try root(text).required("http").mapping()
            _ = http.optional("listen")
            _ = http.optional("keepalive_timeout")
            try http.finish()
        }, "etc/kernel.yaml:3:3: http.keepalive_timout: unknown key (expected one of: keepalive_timeout, listen)")
    }

    func testDuplicateKey() {
        XCTAssertEqual(message { _ = try root("http:\n  listen: 80\n  listen: 81\n") },
                       "etc/kernel.yaml:3:3: http.listen: duplicate key \"listen\" (first defined at etc/kernel.yaml:2:3)")
        XCTAssertEqual(message { _ = try root("kernel: {}\nhttp: {}\nkernel: {}\n") },
                       "etc/kernel.yaml:3:1: kernel: duplicate key \"kernel\" (first defined at etc/kernel.yaml:1:1)")
    }

    func testMissingRequiredKey() {
        XCTAssertEqual(message {
            _ = try root("inference:\n  models:\n    - path: a.onnx\n").required("inference").mapping()
                .required("models").list()[0].mapping().required("name")
        }, "etc/kernel.yaml:3:7: inference.models[0]: missing required key \"name\"")
    }

    // MARK: - types

    func testWrongTypes() throws {
        let mapping = try root("""
            a: ten
            b: {x: 1}
            c: [1, 2]
            d:
            e: "12"
            f: maybe
            g: 1.5
            h: "x"
            i: "off"
            """)
        XCTAssertEqual(message { _ = try mapping.required("a").int(in: 1...1024, what: "a thread count 1-1024") },
                       "etc/kernel.yaml:1:4: a: expected a thread count 1-1024, found \"ten\"")
        XCTAssertEqual(message { _ = try mapping.required("a").int() },
                       "etc/kernel.yaml:1:4: a: expected an integer, found \"ten\"")
        XCTAssertEqual(message { _ = try mapping.required("b").list() },
                       "etc/kernel.yaml:2:4: b: expected a list, found a mapping")
        XCTAssertEqual(message { _ = try mapping.required("b").stringList() },
                       "etc/kernel.yaml:2:4: b: expected a value or a list, found a mapping")
        XCTAssertEqual(message { _ = try mapping.required("c").string() },
                       "etc/kernel.yaml:3:4: c: expected a string, found a sequence")
        XCTAssertEqual(message { _ = try mapping.required("c").mapping() },
                       "etc/kernel.yaml:3:4: c: expected a mapping, found a sequence")
        XCTAssertEqual(message { _ = try mapping.required("d") },
                       "etc/kernel.yaml:1:1: missing required key \"d\"", "an explicit null counts as absent")
        XCTAssertEqual(message { _ = try mapping.required("e").int() },
                       "etc/kernel.yaml:5:4: e: expected an integer, found \"12\"", "a quoted scalar is a string")
        XCTAssertEqual(message { _ = try mapping.required("f").bool() },
                       "etc/kernel.yaml:6:4: f: expected true or false, found \"maybe\"")
        XCTAssertEqual(message { _ = try mapping.required("i").bool() },
                       "etc/kernel.yaml:9:4: i: expected true or false, found the string \"off\" (write it without quotes)")
        XCTAssertEqual(message { _ = try mapping.required("g").int(in: 0...10) },
                       "etc/kernel.yaml:7:4: g: expected an integer 0-10, found \"1.5\"")
        XCTAssertEqual(message { _ = try mapping.required("h").oneOf(["combined", "json"]) },
                       "etc/kernel.yaml:8:4: h: expected one of combined, json, found \"x\"")
        XCTAssertEqual(try mapping.required("c").list().map { try $0.int() }, [1, 2])
    }

    func testNestedPathOfABadStatusCode() throws {
        let text = """
            routing:
              servers:
                - locations:
                    - {location: /a, return: 200}
                    - {location: /b, return: 301}
                    - location: /c
                      return: abc
            """
        XCTAssertEqual(message {
            let location = try root(text).required("routing").mapping().required("servers").list()[0].mapping()
                .required("locations").list()[2].mapping()
            _ = try location.required("return").int(in: 100...599, what: "a status code 100-599")
        }, "etc/kernel.yaml:7:19: routing.servers[0].locations[2].return: expected a status code 100-599, found \"abc\"")
    }

    func testBadSizeAndDuration() throws {
        let mapping = try root("size: 10q\nnegative: -1k\nduration: 5x\nempty: \"\"\nfraction: 1.5s\n")
        XCTAssertEqual(message { _ = try mapping.required("size").size() },
                       "etc/kernel.yaml:1:7: size: expected a size such as 512, 64k, 100m or 1g, found \"10q\"")
        XCTAssertEqual(message { _ = try mapping.required("negative").size() },
                       "etc/kernel.yaml:2:11: negative: expected a size such as 512, 64k, 100m or 1g, found \"-1k\"")
        XCTAssertEqual(message { _ = try mapping.required("duration").duration() },
                       "etc/kernel.yaml:3:11: duration: expected a duration such as 500ms, 30s, 5m or 1h (at most 365d), found \"5x\"")
        XCTAssertEqual(message { _ = try mapping.required("empty").duration() },
                       "etc/kernel.yaml:4:8: empty: expected a duration such as 500ms, 30s, 5m or 1h (at most 365d), found \"\"")
        XCTAssertEqual(message { _ = try mapping.required("fraction").duration() },
                       "etc/kernel.yaml:5:11: fraction: expected a duration such as 500ms, 30s, 5m or 1h (at most 365d), found \"1.5s\"")
    }

    // MARK: - YAML syntax

    func testInvalidYAMLSyntax() {
        XCTAssertEqual(message { _ = try root("http:\n  listen: [80, 81\nrouting: {}\n") },
                       "etc/kernel.yaml:3:8: invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence at line 2, column 11)")
        XCTAssertEqual(message { _ = try root("http:\n\tlisten: 80\n") },
                       "etc/kernel.yaml:2:1: invalid YAML: found character that cannot start any token (while scanning for the next token at line 2, column 1)")
        XCTAssertEqual(message { _ = try root("a: 1\n---\nb: 2\n") },
                       "etc/kernel.yaml:2:1: a configuration file holds one YAML document, found a second one")
        XCTAssertEqual(message { _ = try root("a: *nowhere\n") },
                       "etc/kernel.yaml:1:4: unknown YAML alias *nowhere")
    }

    // MARK: - bombs

    /// The "billion laughs" file: nine levels of nine aliases each would expand to 9^9 scalars.
    func testAliasBombStopsAtTheNodeLimit() {
        var text = "a: &a [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n"
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
        for (previous, name) in zip(names, names.dropFirst()) {
            text += "\(name): &\(name) [" + Array(repeating: "*\(previous)", count: 9).joined(separator: ", ") + "]\n"
        }
        XCTAssertEqual(message { _ = try root(text) },
                       "etc/kernel.yaml:7:8: the configuration expands to more than 1000000 YAML nodes (aliases included)")
    }

    func testNodeLimitCountsAliasesAndIncludedFiles() throws {
        var parser = YAMLParser()
        parser.maximumNodes = 12
        // root mapping, 2 keys, list + 3 items, then *x costs 4: 11 nodes.
        XCTAssertNoThrow(try parser.parse("x: &x [1, 2, 3]\ny: *x\n", file: "f.yaml"))
        XCTAssertEqual(message { _ = try parser.parse("x: &x [1, 2, 3]\ny: *x\nz: 1\n", file: "f.yaml") },
                       "f.yaml:3:4: the configuration expands to more than 12 YAML nodes (aliases included)")
        try write("part.yaml", "p: [1, 2, 3, 4]\n")
        let main = try write("main.yaml", "a: [1, 2, 3]\ninclude: [part.yaml]\n")
        XCTAssertEqual(message { _ = try parser.parseFile(main) },
                       "DIR/part.yaml:1:5: the configuration expands to more than 12 YAML nodes (aliases included)")
    }

    func testNestingDeeperThanTheLimitIsRefusedBeforeRecursing() throws {
        let flow = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        XCTAssertEqual(message { _ = try YAMLParser().parse(flow, file: "deep.yaml") },
                       "deep.yaml:1:257: YAML collections nested deeper than 256 levels")
        let block = String(repeating: "- ", count: 100_000) + "x\n"
        XCTAssertEqual(message { _ = try YAMLParser().parse(block, file: "deep.yaml") },
                       "deep.yaml:1:513: YAML collections nested deeper than 256 levels")
        let mappings = String(repeating: "{a: ", count: 300) + "1" + String(repeating: "}", count: 300)
        XCTAssertEqual(message { _ = try root(mappings) },
                       "etc/kernel.yaml:1:1025: YAML collections nested deeper than 256 levels")
        // An included file's root sits at the depth of the mapping that includes it.
        let inner = String(repeating: "[", count: 255) + String(repeating: "]", count: 255)
        try write("deep/part.yaml", "a: \(inner)\n")
        let main = try write("deep/main.yaml", "b:\n  include: part.yaml\n")
        XCTAssertEqual(message { _ = try YAMLParser().parseFile(main) },
                       "DIR/deep/part.yaml:1:258: YAML collections nested deeper than 256 levels")
        try write("deep/part.yaml", "a: \(inner.dropFirst().dropLast())\n")
        XCTAssertNoThrow(try YAMLParser().parseFile(main))
        // 256 levels are allowed.
        XCTAssertNoThrow(try YAMLParser().parse(String(repeating: "[", count: 256) + String(repeating: "]", count: 256), file: "ok.yaml"))
    }

    func testMissingConfigurationFile() {
        XCTAssertEqual(message { _ = try YAMLParser().parseFile("\(directory)/absent.yaml") },
                       "DIR/absent.yaml: cannot read file: No such file or directory")
    }

    // MARK: - include

    func testIncludeOfAMissingFile() throws {
        let main = try write("kernel.yaml", "http:\n  include: conf.d/http.yaml\n")
        XCTAssertEqual(message { _ = try YAMLParser().parseFile(main) },
                       "DIR/kernel.yaml:2:12: http.include: cannot read included file \"DIR/conf.d/http.yaml\": No such file or directory")
    }

    func testErrorInsideAnIncludedFileNamesThatFile() throws {
        let main = try write("kernel.yaml", "kernel: {}\nrouting:\n  include: routing.yaml\n")
        try write("routing.yaml", "servers:\n  - server_name: a\n    server_name: b\n")
        XCTAssertEqual(message { _ = try YAMLParser().parseFile(main) },
                       "DIR/routing.yaml:3:5: routing.servers[0].server_name: duplicate key \"server_name\" (first defined at DIR/routing.yaml:2:5)")

        try write("routing.yaml", "servers:\n  - listen: [80\n")
        XCTAssertEqual(message { _ = try YAMLParser().parseFile(main) },
                       "DIR/routing.yaml:3:1: invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence at line 2, column 13)")

        // A value error found later by a decoder also names the included file.
        try write("routing.yaml", "servers: {}\n")
        XCTAssertEqual(message {
            _ = try ConfigValue(node: YAMLParser().parseFile(main), path: "").mapping().required("routing").mapping()
                .required("servers").list()
        }, "DIR/routing.yaml:1:10: routing.servers: expected a list, found a mapping")

        try write("routing.yaml", "- a\n- b\n")
        XCTAssertEqual(message { _ = try YAMLParser().parseFile(main) },
                       "DIR/routing.yaml:1:1: routing.include: an included file must hold a mapping, found a sequence")
    }

    func testIncludeGlobMergesFilesInNameOrder() throws {
        let main = try write("kernel.yaml", "http:\n  listen: 80\n  include: [\"http.d/*.yaml\", \"none.d/*.yaml\"]\n  send_timeout: 1s\n")
        try write("http.d/20-timeouts.yaml", "client_body_timeout: 20s\n")
        try write("http.d/10-buffers.yaml", "client_header_buffer_size: 2k\n")
        let http = try ConfigValue(node: YAMLParser().parseFile(main), path: "").mapping().required("http").mapping()
        XCTAssertEqual(http.keys, ["listen", "client_header_buffer_size", "client_body_timeout", "send_timeout"],
                       "included keys take the include's place, files in name order; an empty glob includes nothing")
        XCTAssertEqual(try http.required("client_body_timeout").duration().milliseconds, 20_000)
        XCTAssertEqual(try http.required("client_body_timeout").mark.description, "\(directory)/http.d/20-timeouts.yaml:1:22")
    }

    func testDuplicateKeyAcrossInclude() throws {
        let main = try write("kernel.yaml", "http:\n  listen: 80\n  include: extra.yaml\n")
        try write("extra.yaml", "keepalive_timeout: 5s\nlisten: 81\n")
        XCTAssertEqual(message { _ = try YAMLParser().parseFile(main) },
                       "DIR/extra.yaml:2:1: http.listen: duplicate key \"listen\" (first defined at DIR/kernel.yaml:2:3)")

        try write("a.yaml", "kernel: {}\n")
        try write("b.yaml", "kernel: {}\n")
        let both = try write("both.yaml", "include: [a.yaml, b.yaml]\n")
        XCTAssertEqual(message { _ = try YAMLParser().parseFile(both) },
                       "DIR/b.yaml:1:1: kernel: duplicate key \"kernel\" (first defined at DIR/a.yaml:1:1)")
    }

    func testIncludeCycle() throws {
        let main = try write("loop.yaml", "include: loop.yaml\n")
        XCTAssertEqual(message { _ = try YAMLParser().parseFile(main) },
                       "DIR/loop.yaml:1:10: include: includes nested deeper than 16 levels (a cycle?)")
    }

    // MARK: - environment

    func testEnvironmentVariables() throws {
        let parser = YAMLParser(environment: ["PORT": "8080", "EMPTY": "", "HOST": "127.0.0.1"])
        let mapping = try ConfigValue(node: parser.parse("""
            listen: ${HOST}:${PORT}
            port: ${PORT}
            threads: ${THREADS:-4}
            fallback_for_empty: ${EMPTY:-x}
            dollar: $$5 and $request_uri
            """, file: "etc/kernel.yaml"), path: "").mapping()
        XCTAssertEqual(try mapping.required("listen").string(), "127.0.0.1:8080")
        XCTAssertEqual(try mapping.required("port").int(), 8080, "an expanded plain scalar is still plain")
        XCTAssertEqual(try mapping.required("threads").int(), 4)
        XCTAssertEqual(try mapping.required("fallback_for_empty").string(), "x")
        XCTAssertEqual(try mapping.required("dollar").string(), "$5 and $request_uri", "$$ is a literal $, $name is kept")

        XCTAssertEqual(message { _ = try parser.parse("a:\n  b: ${UNSET_NAME}\n", file: "etc/kernel.yaml") },
                       "etc/kernel.yaml:2:6: a.b: environment variable UNSET_NAME is not set")
        XCTAssertEqual(message { _ = try parser.parse("a: [x, \"${EMPTY}\"]\n", file: "etc/kernel.yaml") },
                       "etc/kernel.yaml:1:8: a[1]: environment variable EMPTY is empty")
        XCTAssertEqual(message { _ = try parser.parse("a: ${OPEN\n", file: "etc/kernel.yaml") },
                       "etc/kernel.yaml:1:4: a: unterminated \"${\" in \"${OPEN\"")
    }

    func testEnvironmentVariableErrorInsideAnIncludedFileHasTheFullPath() throws {
        let main = try write("kernel.yaml", "routing:\n  include: routing.yaml\n")
        try write("routing.yaml", "servers:\n  - server_name: ${SERVER_NAME}\n")
        XCTAssertEqual(message { _ = try YAMLParser(environment: [:]).parseFile(main) },
                       "DIR/routing.yaml:2:18: routing.servers[0].server_name: environment variable SERVER_NAME is not set")
        let parsed = try YAMLParser(environment: ["SERVER_NAME": "example.com"]).parseFile(main)
        let servers = try ConfigValue(node: parsed, path: "").mapping().required("routing").mapping().required("servers").list()
        XCTAssertEqual(try servers[0].mapping().required("server_name").string(), "example.com")
    }
}
