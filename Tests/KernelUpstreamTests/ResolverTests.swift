import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest
@testable import KernelUpstream

/// Builds DNS answers for the tests, the way a server writes them.
private struct AnswerBuilder {
    var id: UInt16
    var flags: UInt16 = 0x8180  // response, RD, RA, NOERROR
    var question: [UInt8]
    var type: UInt16
    var records: [[UInt8]] = []
    var questions: UInt16 = 1

    init(id: UInt16, name: String, type: DNSRecordType) {
        self.id = id
        self.type = type.rawValue
        question = AnswerBuilder.encode(name)
    }

    static func encode(_ name: String) -> [UInt8] {
        var bytes: [UInt8] = []
        for label in name.split(separator: ".") {
            bytes.append(UInt8(label.utf8.count))
            bytes += Array(label.utf8)
        }
        return bytes + [0]
    }

    static func be16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xff)] }
    static func be32(_ value: UInt32) -> [UInt8] { be16(UInt16(value >> 16)) + be16(UInt16(value & 0xffff)) }

    /// A record whose owner is the question's name (a pointer to offset 12).
    mutating func add(type: UInt16, ttl: UInt32, data: [UInt8], owner: [UInt8] = [0xc0, 12]) {
        records.append(owner + AnswerBuilder.be16(type) + AnswerBuilder.be16(1) + AnswerBuilder.be32(ttl)
                       + AnswerBuilder.be16(UInt16(data.count)) + data)
    }

    var bytes: [UInt8] {
        var out = AnswerBuilder.be16(id) + AnswerBuilder.be16(flags) + AnswerBuilder.be16(questions)
            + AnswerBuilder.be16(UInt16(records.count)) + [0, 0, 0, 0]
        if questions > 0 { out += question + AnswerBuilder.be16(type) + AnswerBuilder.be16(1) }
        for record in records { out += record }
        return out
    }

    var buffer: ByteBuffer { ByteBuffer(bytes: bytes) }
}

final class ResolverMessageTests: XCTestCase {
    func testTheQueryIsARecursiveQuestionForTheNameInLowerCase() throws {
        let query = try XCTUnwrap(DNSMessage.query(id: 0x1234, name: "App.Internal.", type: .aaaa))
        XCTAssertEqual(Array(query.readableBytesView),
                       [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0] + AnswerBuilder.encode("app.internal") + [0, 28, 0, 1])
        XCTAssertNil(DNSMessage.query(id: 1, name: "a..b", type: .a))
        XCTAssertNil(DNSMessage.query(id: 1, name: String(repeating: "x", count: 64) + ".com", type: .a))
        XCTAssertNil(DNSMessage.query(id: 1, name: "", type: .a))
    }

    func testAddressesAndTheirTTLsAreReadFollowingCNAMEsInTheAnswer() throws {
        var answer = AnswerBuilder(id: 7, name: "app.internal", type: .a)
        // app.internal CNAME pods.internal; pods.internal A 10.0.0.1, 10.0.0.2; an unrelated A record is ignored.
        answer.add(type: 5, ttl: 300, data: AnswerBuilder.encode("pods.internal"))
        let alias = 12 + answer.question.count + 4 + 12  // the CNAME's data, after its owner pointer and fixed part
        answer.add(type: 1, ttl: 30, data: [10, 0, 0, 1], owner: [0xc0, UInt8(alias)])
        answer.add(type: 1, ttl: 20, data: [10, 0, 0, 2], owner: [0xc0, UInt8(alias)])
        answer.add(type: 1, ttl: 5, data: [10, 9, 9, 9], owner: AnswerBuilder.encode("other.internal"))
        let records = try DNSMessage.addresses(in: answer.buffer, id: 7, name: "APP.internal", type: .a)
        XCTAssertEqual(records, [DNSAddressRecord(address: "10.0.0.1", ttl: 30), DNSAddressRecord(address: "10.0.0.2", ttl: 20)])

        var six = AnswerBuilder(id: 8, name: "app.internal", type: .aaaa)
        six.add(type: 28, ttl: 0x8000_0001, data: [0xfd, 0] + Array(repeating: 0, count: 13) + [7])
        XCTAssertEqual(try DNSMessage.addresses(in: six.buffer, id: 8, name: "app.internal", type: .aaaa),
                       [DNSAddressRecord(address: "fd00::7", ttl: 0)], "a TTL with the top bit set is 0 (RFC 2181)")
    }

    func testResponseCodesAreReported() throws {
        var answer = AnswerBuilder(id: 7, name: "gone.internal", type: .a)
        answer.flags = 0x8183
        XCTAssertThrowsError(try DNSMessage.addresses(in: answer.buffer, id: 7, name: "gone.internal", type: .a)) { error in
            XCTAssertEqual(error as? DNSLookupError, .responseCode(3))
            XCTAssertTrue((error as! DNSLookupError).isNameNotFound)
            XCTAssertEqual("\(error)", "3: Host not found")
        }
        answer.flags = 0x8182
        answer.questions = 0
        XCTAssertThrowsError(try DNSMessage.addresses(in: answer.buffer, id: 7, name: "gone.internal", type: .a)) { error in
            XCTAssertEqual(error as? DNSLookupError, .responseCode(2))
        }
    }

    func testHostileAnswersAreRefusedWithoutReadingPastTheMessage() throws {
        var good = AnswerBuilder(id: 7, name: "app.internal", type: .a)
        good.add(type: 1, ttl: 30, data: [10, 0, 0, 1])
        let bytes = good.bytes
        // Every truncation of a valid answer fails cleanly.
        for length in 0..<bytes.count {
            XCTAssertThrowsError(try DNSMessage.addresses(in: ByteBuffer(bytes: bytes.prefix(length)), id: 7,
                                                          name: "app.internal", type: .a), "length \(length)")
        }
        func refused(_ build: (inout AnswerBuilder) -> Void, _ why: String) {
            var answer = AnswerBuilder(id: 7, name: "app.internal", type: .a)
            build(&answer)
            XCTAssertThrowsError(try DNSMessage.addresses(in: answer.buffer, id: 7, name: "app.internal", type: .a), why)
        }
        refused({ $0.id = 8 }, "another id")
        refused({ $0.flags = 0x0100 }, "a query, not a response")
        refused({ $0.question = AnswerBuilder.encode("evil.internal") }, "another question")
        refused({ $0.type = 28 }, "another type")
        refused({ $0.questions = 2 }, "two questions")
        refused({ $0.add(type: 1, ttl: 1, data: [10, 0, 0]) }, "an A record of three bytes")
        refused({ $0.add(type: 1, ttl: 1, data: [10, 0, 0, 1], owner: [0xc0, 200]) }, "a pointer forward, past the end")
        refused({ answer in
            // A record whose owner name points at itself: a loop.
            let at = UInt8(12 + answer.question.count + 4)
            answer.add(type: 1, ttl: 1, data: [10, 0, 0, 1], owner: [0xc0, at])
        }, "a pointer loop")
        refused({ answer in
            var record = [0xc0, 12] + AnswerBuilder.be16(1) + AnswerBuilder.be16(1) + AnswerBuilder.be32(1)
            record += AnswerBuilder.be16(4000) + [10, 0, 0, 1]
            answer.records.append(record)
        }, "an rdlength past the end")
        refused({ $0.add(type: 1, ttl: 1, data: [10, 0, 0, 1], owner: [0x80, 0]) }, "an unknown label type")
    }
}

/// A name server on loopback for the client tests: answers each query with what `answer` makes of it.
private final class FakeNameServer: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    /// The datagrams sent back for a query, in order.
    let answer: @Sendable (_ id: UInt16, _ type: UInt16) -> [[UInt8]]
    let queries = NIOLockedValueBox(0)

    init(answer: @escaping @Sendable (_ id: UInt16, _ type: UInt16) -> [[UInt8]]) { self.answer = answer }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let bytes = Array(envelope.data.readableBytesView)
        queries.withLockedValue { $0 += 1 }
        guard bytes.count > 14 else { return }
        let id = UInt16(bytes[0]) << 8 | UInt16(bytes[1])
        let type = UInt16(bytes[bytes.count - 4]) << 8 | UInt16(bytes[bytes.count - 3])
        for reply in answer(id, type) {
            context.write(wrapOutboundOut(AddressedEnvelope(remoteAddress: envelope.remoteAddress,
                                                            data: ByteBuffer(bytes: reply))), promise: nil)
        }
        context.flush()
    }
}

final class ResolverClientTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!

    override func setUp() { group = MultiThreadedEventLoopGroup(numberOfThreads: 1) }
    override func tearDown() { try? group.syncShutdownGracefully() }

    private func serve(_ server: FakeNameServer) throws -> Channel {
        try DatagramBootstrap(group: group).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(server) }
        }.bind(host: "127.0.0.1", port: 0).wait()
    }

    func testARecordsAndAAAARecordsOfOneNameAreJoinedWithTheSmallestTTL() throws {
        let server = FakeNameServer { id, type in
            var answer = AnswerBuilder(id: id, name: "app.internal", type: type == 1 ? .a : .aaaa)
            if type == 1 {
                answer.add(type: 1, ttl: 40, data: [127, 0, 0, 2])
                answer.add(type: 1, ttl: 30, data: [127, 0, 0, 3])
            } else {
                answer.add(type: 28, ttl: 50, data: Array(repeating: 0, count: 15) + [1])
            }
            return [answer.bytes]
        }
        let channel = try serve(server)
        defer { try? channel.close().wait() }
        let client = DNSClient(settings: ResolverSettings(servers: [channel.localAddress!], timeout: .seconds(5)))
        let resolved = try client.resolve("app.internal", on: group.next()).wait()
        XCTAssertEqual(resolved, ResolvedName(addresses: ["127.0.0.2", "127.0.0.3", "::1"], ttl: 30))

        let v4 = DNSClient(settings: ResolverSettings(servers: [channel.localAddress!], ipv6: false, timeout: .seconds(5)))
        XCTAssertEqual(try v4.resolve("app.internal", on: group.next()).wait().addresses, ["127.0.0.2", "127.0.0.3"])
    }

    func testAForgedAnswerIsIgnoredAndANameThatDoesNotExistIsReported() throws {
        let server = FakeNameServer { id, type in
            // A datagram with another id first (a forgery racing the answer), then the server's NXDOMAIN.
            var forged = AnswerBuilder(id: id &+ 1, name: "gone.internal", type: type == 1 ? .a : .aaaa)
            forged.add(type: 1, ttl: 30, data: [6, 6, 6, 6])
            var answer = AnswerBuilder(id: id, name: "gone.internal", type: type == 1 ? .a : .aaaa)
            answer.flags = 0x8183
            return [forged.bytes, answer.bytes]
        }
        let channel = try serve(server)
        defer { try? channel.close().wait() }
        let client = DNSClient(settings: ResolverSettings(servers: [channel.localAddress!], timeout: .seconds(5)))
        XCTAssertThrowsError(try client.resolve("gone.internal", on: group.next()).wait()) { error in
            XCTAssertEqual(error as? DNSLookupError, .responseCode(3))
        }
    }

    func testASilentServerTimesOutAndTheNextServerIsAsked() throws {
        let silent = FakeNameServer { _, _ in [] }
        let answering = FakeNameServer { id, type in
            var answer = AnswerBuilder(id: id, name: "app.internal", type: .a)
            answer.add(type: 1, ttl: 9, data: [127, 0, 0, 9])
            return [answer.bytes]
        }
        let quiet = try serve(silent)
        let loud = try serve(answering)
        defer {
            try? quiet.close().wait()
            try? loud.close().wait()
        }
        let alone = DNSClient(settings: ResolverSettings(servers: [quiet.localAddress!], ipv6: false, timeout: .milliseconds(200)))
        XCTAssertThrowsError(try alone.resolve("app.internal", on: group.next()).wait()) { error in
            XCTAssertEqual(error as? DNSLookupError, .timedOut)
            XCTAssertEqual("\(error)", "110: Operation timed out")
        }
        let both = DNSClient(settings: ResolverSettings(servers: [quiet.localAddress!, loud.localAddress!], ipv6: false,
                                                        timeout: .milliseconds(200)))
        XCTAssertEqual(try both.resolve("app.internal", on: group.next()).wait(), ResolvedName(addresses: ["127.0.0.9"], ttl: 9))
        XCTAssertEqual(answering.queries.withLockedValue { $0 }, 1)
    }
}
