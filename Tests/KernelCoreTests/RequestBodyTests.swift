import Foundation
import Logging
import NIOCore
import NIOEmbedded
import NIOPosix
import XCTest
@testable import KernelCore

final class RequestBodyTests: XCTestCase {
    private var directory = ""

    override func setUp() {
        directory = NSTemporaryDirectory() + "kernel-body-test-\(getpid())-\(UUID().uuidString)"
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func sink(bufferSize: Int = 16) -> RequestBodySink {
        RequestBodySink(buffering: RequestBodyBuffering(bufferSize: bufferSize), tempDirectory: directory + "/a/b",
                        logger: Logger(label: "test"), allocator: ByteBufferAllocator())
    }

    private func bytes(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    func testABodyThatFitsStaysInMemory() throws {
        let sink = sink()
        try sink.append(bytes("hello "))
        try sink.append(bytes("world"))
        let (memory, file) = sink.finish()
        XCTAssertNil(file)
        XCTAssertEqual(memory.map { String(buffer: $0) }, "hello world")
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory), "no temp path is made for a small body")
    }

    func testALargerBodyIsSpooledToAFileThatHasNoName() throws {
        let sink = sink()
        try sink.append(bytes("0123456789"))
        try sink.append(bytes("abcdefghij"))       // 20 bytes: over the 16 of the buffer
        try sink.append(bytes("KLM"))
        XCTAssertTrue(sink.isSpooled)
        XCTAssertEqual(sink.received, 23)
        let (memory, file) = sink.finish()
        XCTAssertNil(memory)
        let spooled = try XCTUnwrap(file)
        XCTAssertEqual(spooled.length, 23)
        XCTAssertTrue(spooled.path.hasPrefix(directory + "/a/b/"), spooled.path)
        XCTAssertEqual(spooled.path.split(separator: "/").last?.count, 10, "nginx's ten-digit names")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory + "/a/b"), [],
                       "the missing temp path was created and the file unlinked at once")
        let back = try spooled.readAll(allocator: ByteBufferAllocator(), on: MultiThreadedEventLoopGroup.singleton.next()).wait()
        XCTAssertEqual(String(buffer: back), "0123456789abcdefghijKLM")
        let middle = try spooled.read(from: 18, count: 100, allocator: ByteBufferAllocator(),
                                      on: MultiThreadedEventLoopGroup.singleton.next()).wait()
        XCTAssertEqual(String(buffer: middle), "ijKLM")
    }

    func testAnUnwritableTempPathIsAnError() throws {
        _ = FileManager.default.createFile(atPath: directory, contents: Data())   // a file where the directory should be
        let sink = sink()
        XCTAssertThrowsError(try sink.append(bytes(String(repeating: "x", count: 40)))) { error in
            let text = "\(error)"
            XCTAssertTrue(text.hasPrefix("open() \"\(directory)/a/b/") && text.hasSuffix("\" failed (20: Not a directory)"), text)
        }
    }

    func testOffsetsPastFourGiBAndBodiesTooLargeForMemory() throws {
        // A sparse file of 5 GiB stands for a spooled body: nothing on the body path may trap past 4 GiB.
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/sparse"
        let fd = open(path, O_RDWR | O_CREAT, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let length: Int64 = 5 << 30
        XCTAssertEqual(ftruncate(fd, off_t(length - 3)), 0)
        XCTAssertEqual(pwrite(fd, "end", 3, off_t(length - 3)), 3)
        let body = SpooledRequestBody(path: path, length: length, descriptor: fd)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let tail = try body.read(from: length - 3, count: 10, allocator: ByteBufferAllocator(), on: loop).wait()
        XCTAssertEqual(String(buffer: tail), "end")
        XCTAssertThrowsError(try body.readAll(allocator: ByteBufferAllocator(), on: loop).wait()) { error in
            XCTAssertEqual("\(error)", "request body of 5368709120 bytes is too large to be held in memory")
        }
    }

    func testStreamHandsPartsOverInOrderAndAsksForMore() throws {
        let loop = EmbeddedEventLoop()
        let stream = RequestBodyStream(length: 6, eventLoop: loop)
        var demands = 0
        stream.onDemand { demands += 1 }
        stream.push(bytes("ab"))
        stream.push(bytes("cd"))
        XCTAssertEqual(try stream.next().wait().map { String(buffer: $0) }, "ab")
        XCTAssertEqual(demands, 0, "still a part held")
        XCTAssertEqual(try stream.next().wait().map { String(buffer: $0) }, "cd")
        XCTAssertEqual(demands, 1)
        let waiting = stream.next()
        stream.push(bytes("ef"))
        XCTAssertEqual(try waiting.wait().map { String(buffer: $0) }, "ef")
        stream.finish()
        XCTAssertNil(try stream.next().wait())
    }

    func testStreamIsFullPastItsWatermarkAndFailsWhenTheClientLeaves() throws {
        let loop = EmbeddedEventLoop()
        let stream = RequestBodyStream(length: nil, eventLoop: loop)
        stream.push(ByteBuffer(repeating: 0, count: RequestBodyStream.highWatermark))
        XCTAssertTrue(stream.isFull)
        _ = try stream.next().wait()
        XCTAssertFalse(stream.isFull)
        let waiting = stream.next()
        stream.fail(RequestBodyError.clientAborted("client prematurely closed connection"))
        XCTAssertThrowsError(try waiting.wait())
    }

    func testWhenReceivedRunsOnceTheWholeBodyIsInAndNeverAfterAFailure() {
        let loop = EmbeddedEventLoop()
        let stream = RequestBodyStream(length: 2, eventLoop: loop)
        var calls: [String] = []
        stream.whenReceived { calls.append("before") }
        stream.push(ByteBuffer(string: "ab"))
        XCTAssertEqual(calls, [], "parts alone are not the end")
        stream.finish()
        XCTAssertEqual(calls, ["before"])
        stream.whenReceived { calls.append("after") }
        XCTAssertEqual(calls, ["before", "after"], "at once when the body is already in")

        let failing = RequestBodyStream(length: 2, eventLoop: loop)
        failing.whenReceived { calls.append("failed") }
        failing.fail(RequestBodyError.clientAborted("client prematurely closed connection"))
        failing.finish()
        failing.whenReceived { calls.append("failed later") }
        XCTAssertEqual(calls, ["before", "after"])
    }
}
