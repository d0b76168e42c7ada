import KernelCore
import NIOCore

/// One message on the control channel between the master and one of its workers (a socketpair the worker
/// inherits). Requests carry an id that their reply repeats.
///
/// On the wire each message is a frame: a 4-byte big-endian length of what follows, a kind byte, then the
/// message's fields (integers big-endian, strings and byte strings prefixed with their 4-byte length).
public enum ControlMessage: Sendable, Equatable {
    /// Worker → master: this worker has its listeners open and accepts connections.
    case ready
    /// Worker → master: replace me (max_requests, reload_on_rss, harakiri ...), for `reason`.
    case replace(reason: String)
    /// Worker → master: run `query` in every process and send me the answers within `timeoutMilliseconds`.
    case gather(id: UInt32, query: String, timeoutMilliseconds: UInt32)
    /// Master → worker: the answers to the `gather` with this id.
    case gathered(id: UInt32, answers: [GatheredAnswer])
    /// Master → worker: answer `query` (the reply is `answer` with the same id).
    case query(id: UInt32, query: String)
    /// Worker → master: this process's answer to `query`; nil when it has no responder for it.
    case answer(id: UInt32, body: [UInt8]?)
    /// Worker → master: send me the worker table.
    case listWorkers(id: UInt32)
    /// Master → worker: the worker table, for the `listWorkers` with this id.
    case workers(id: UInt32, [WorkerProcessInfo])
    /// Worker → master: remember `command` under `key` (instead of what the key held, with `resets`) for this
    /// worker's generation, run it in every process of that generation and send me the answers (`gathered`) within
    /// `timeoutMilliseconds`.
    case share(id: UInt32, key: String, command: String, memory: SharedCommandMemory, timeoutMilliseconds: UInt32)
    /// Worker → master: send me the commands my generation remembers that were shared after `after` (a sequence
    /// number of an earlier `shared`; 0 for all).
    case listShared(id: UInt32, after: UInt64)
    /// Master → worker: the commands asked for by the `listShared` with this id, oldest first, and the sequence
    /// number of the last one (the `after` of the next ask). An empty list means the worker now receives every
    /// new command.
    case shared(id: UInt32, commands: [String], through: UInt64)
}

/// `ProcessAnswer` as the control channel carries it (with equality, for the codec's tests).
public struct GatheredAnswer: Sendable, Equatable {
    /// -1 for the master, else the worker's number.
    public var worker: Int32
    public var pid: Int32
    public var body: [UInt8]

    public init(worker: Int32, pid: Int32, body: [UInt8]) {
        self.worker = worker
        self.pid = pid
        self.body = body
    }

    public init(_ answer: ProcessAnswer) {
        switch answer.source {
        case .master: worker = -1
        case .worker(let number): worker = Int32(clamping: number)
        }
        pid = answer.pid
        body = answer.body
    }

    public var processAnswer: ProcessAnswer {
        ProcessAnswer(source: worker < 0 ? .master : .worker(Int(worker)), pid: pid, body: body)
    }
}

/// A control frame that cannot be read: the channel is closed (both ends are the same binary, so this is a bug
/// or a stray writer, never something to guess around).
public struct ControlProtocolError: Error, CustomStringConvertible {
    public var description: String
}

extension ControlMessage {
    /// The largest frame either side accepts (a gathered stats or metrics answer of many workers fits easily, and
    /// so does a shared command of `ProcessSharing.maximumCommandLength`).
    public static let maximumFrameLength = 64 << 20

    private enum Kind: UInt8 {
        case ready = 1, replace, gather, gathered, query, answer, listWorkers, workers, share, listShared, shared
    }

    /// Appends this message's frame to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        let lengthIndex = buffer.writerIndex
        buffer.writeInteger(UInt32(0))
        let start = buffer.writerIndex
        switch self {
        case .ready:
            buffer.writeInteger(Kind.ready.rawValue)
        case .replace(let reason):
            buffer.writeInteger(Kind.replace.rawValue)
            buffer.writeControlString(reason)
        case .gather(let id, let query, let timeout):
            buffer.writeInteger(Kind.gather.rawValue)
            buffer.writeInteger(id)
            buffer.writeControlString(query)
            buffer.writeInteger(timeout)
        case .gathered(let id, let answers):
            buffer.writeInteger(Kind.gathered.rawValue)
            buffer.writeInteger(id)
            buffer.writeInteger(UInt32(answers.count))
            for answer in answers {
                buffer.writeInteger(answer.worker)
                buffer.writeInteger(answer.pid)
                buffer.writeControlBytes(answer.body)
            }
        case .query(let id, let query):
            buffer.writeInteger(Kind.query.rawValue)
            buffer.writeInteger(id)
            buffer.writeControlString(query)
        case .answer(let id, let body):
            buffer.writeInteger(Kind.answer.rawValue)
            buffer.writeInteger(id)
            buffer.writeInteger(UInt8(body == nil ? 0 : 1))
            if let body { buffer.writeControlBytes(body) }
        case .listWorkers(let id):
            buffer.writeInteger(Kind.listWorkers.rawValue)
            buffer.writeInteger(id)
        case .workers(let id, let table):
            buffer.writeInteger(Kind.workers.rawValue)
            buffer.writeInteger(id)
            buffer.writeInteger(UInt32(table.count))
            for worker in table {
                buffer.writeInteger(Int32(clamping: worker.number))
                buffer.writeInteger(worker.pid)
                buffer.writeControlString(worker.pool)
                buffer.writeInteger(worker.spawnedAt.bitPattern)
                buffer.writeInteger(UInt32(clamping: worker.respawns))
                buffer.writeControlString(worker.state)
            }
        case .share(let id, let key, let command, let memory, let timeout):
            buffer.writeInteger(Kind.share.rawValue)
            buffer.writeInteger(id)
            buffer.writeControlString(key)
            buffer.writeControlString(command)
            buffer.writeInteger(memory.rawValue)
            buffer.writeInteger(timeout)
        case .listShared(let id, let after):
            buffer.writeInteger(Kind.listShared.rawValue)
            buffer.writeInteger(id)
            buffer.writeInteger(after)
        case .shared(let id, let commands, let through):
            buffer.writeInteger(Kind.shared.rawValue)
            buffer.writeInteger(id)
            buffer.writeInteger(through)
            buffer.writeInteger(UInt32(commands.count))
            for command in commands { buffer.writeControlString(command) }
        }
        buffer.setInteger(UInt32(buffer.writerIndex - start), at: lengthIndex)
    }

    /// Reads one whole frame from `buffer`; nil (nothing consumed) when the frame is not complete yet.
    public static func decode(from buffer: inout ByteBuffer) throws -> ControlMessage? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= 1, length <= maximumFrameLength else {
            throw ControlProtocolError(description: "control frame of \(length) bytes")
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        var frame = buffer.readSlice(length: Int(length))!
        let message = try decodeBody(&frame)
        guard frame.readableBytes == 0 else {
            throw ControlProtocolError(description: "control frame with \(frame.readableBytes) unread bytes")
        }
        return message
    }

    private static func decodeBody(_ frame: inout ByteBuffer) throws -> ControlMessage {
        let byte: UInt8 = try frame.readControl()
        guard let kind = Kind(rawValue: byte) else {
            throw ControlProtocolError(description: "unknown control message kind \(byte)")
        }
        switch kind {
        case .ready:
            return .ready
        case .replace:
            return .replace(reason: try frame.readControlString())
        case .gather:
            return .gather(id: try frame.readControl(), query: try frame.readControlString(), timeoutMilliseconds: try frame.readControl())
        case .gathered:
            let id: UInt32 = try frame.readControl()
            let count: UInt32 = try frame.readControl()
            var answers: [GatheredAnswer] = []
            for _ in 0..<min(count, 1 << 16) {
                answers.append(GatheredAnswer(worker: try frame.readControl(), pid: try frame.readControl(), body: try frame.readControlBytes()))
            }
            return .gathered(id: id, answers: answers)
        case .query:
            return .query(id: try frame.readControl(), query: try frame.readControlString())
        case .answer:
            let id: UInt32 = try frame.readControl()
            let present: UInt8 = try frame.readControl()
            return .answer(id: id, body: present == 0 ? nil : try frame.readControlBytes())
        case .listWorkers:
            return .listWorkers(id: try frame.readControl())
        case .workers:
            let id: UInt32 = try frame.readControl()
            let count: UInt32 = try frame.readControl()
            var table: [WorkerProcessInfo] = []
            for _ in 0..<min(count, 1 << 16) {
                let number: Int32 = try frame.readControl()
                let pid: Int32 = try frame.readControl()
                let pool = try frame.readControlString()
                let spawned: UInt64 = try frame.readControl()
                let respawns: UInt32 = try frame.readControl()
                let state = try frame.readControlString()
                table.append(WorkerProcessInfo(number: Int(number), pid: pid, pool: pool, spawnedAt: Double(bitPattern: spawned),
                                               respawns: Int(respawns), state: state))
            }
            return .workers(id: id, table)
        case .share:
            return .share(id: try frame.readControl(), key: try frame.readControlString(),
                          command: try frame.readControlString(), memory: try SharedCommandMemory.read(frame.readControl(as: UInt8.self)),
                          timeoutMilliseconds: try frame.readControl())
        case .listShared:
            return .listShared(id: try frame.readControl(), after: try frame.readControl())
        case .shared:
            let id: UInt32 = try frame.readControl()
            let through: UInt64 = try frame.readControl()
            let count: UInt32 = try frame.readControl()
            var commands: [String] = []
            for _ in 0..<min(count, 1 << 16) { commands.append(try frame.readControlString()) }
            return .shared(id: id, commands: commands, through: through)
        }
    }
}

extension ByteBuffer {
    fileprivate mutating func writeControlString(_ text: String) {
        writeInteger(UInt32(text.utf8.count))
        writeString(text)
    }

    fileprivate mutating func writeControlBytes(_ bytes: [UInt8]) {
        writeInteger(UInt32(bytes.count))
        writeBytes(bytes)
    }

    fileprivate mutating func readControl<T: FixedWidthInteger>(as: T.Type = T.self) throws -> T {
        guard let value = readInteger(as: T.self) else { throw ControlProtocolError(description: "truncated control frame") }
        return value
    }

    fileprivate mutating func readControlString() throws -> String {
        guard let slice = readLengthPrefixedSlice(endianness: .big, as: UInt32.self) else {
            throw ControlProtocolError(description: "truncated control frame")
        }
        return String(buffer: slice)
    }

    fileprivate mutating func readControlBytes() throws -> [UInt8] {
        guard let slice = readLengthPrefixedSlice(endianness: .big, as: UInt32.self) else {
            throw ControlProtocolError(description: "truncated control frame")
        }
        return Array(buffer: slice)
    }
}

/// Splits the control channel's bytes into messages.
public struct ControlMessageDecoder: ByteToMessageDecoder {
    public typealias InboundOut = ControlMessage

    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let message = try ControlMessage.decode(from: &buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(message))
        return .continue
    }
}

/// Writes messages as control frames.
public struct ControlMessageEncoder: MessageToByteEncoder {
    public typealias OutboundIn = ControlMessage

    public init() {}

    public func encode(data: ControlMessage, out: inout ByteBuffer) throws {
        data.encode(into: &out)
    }
}
