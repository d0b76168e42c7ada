import KernelCore
import NIOCore

/// What one process answers to a command shared with every worker process (`ProcessSupervision.share`): a load or
/// unload of the repository extension, a shared memory registration. Its status is 200 when done, else Triton's
/// status and message.
struct SharedCommandOutcome: Sendable, Equatable {
    var status: Int
    var message: String

    var encoded: [UInt8] {
        var writer = JSONWriter(buffer: ByteBuffer())
        writer.raw("{\"status\":")
        writer.integer(status)
        writer.raw(",\"error\":")
        writer.string(message)
        writer.byte(UInt8(ascii: "}"))
        return Array(buffer: writer.buffer)
    }

    init(status: Int, message: String) {
        self.status = status
        self.message = message
    }

    init?(encoded: [UInt8]) {
        guard let value = try? JSONReader.parse(encoded), let message = value["error"]?.stringValue,
              case .number(let number)? = value["status"], let status = number.int64 else { return nil }
        self.status = Int(status)
        self.message = message
    }

    /// What the request answers, from every process's outcome: done when all are; otherwise the failure of the
    /// process that took the request if it failed, else the first other one's, naming the worker. `own` is the
    /// pid of the process that took the request.
    static func combine(_ answers: [ProcessAnswer], own: Int32) -> SharedCommandOutcome {
        var failures: [(answer: ProcessAnswer, outcome: SharedCommandOutcome)] = []
        var answered = 0
        for answer in answers where !answer.body.isEmpty {
            answered += 1
            guard let outcome = SharedCommandOutcome(encoded: answer.body) else {
                failures.append((answer, SharedCommandOutcome(status: 500, message: "an unreadable answer")))
                continue
            }
            if outcome.status != 200 { failures.append((answer, outcome)) }
        }
        guard answered > 0 else { return SharedCommandOutcome(status: 503, message: "no process answered the request") }
        if let mine = failures.first(where: { $0.answer.pid == own }) { return mine.outcome }
        guard let first = failures.first else { return SharedCommandOutcome(status: 200, message: "") }
        let who: String
        switch first.answer.source {
        case .worker(let number): who = "worker process \(number) (pid \(first.answer.pid))"
        case .master: who = "the master process"
        }
        return SharedCommandOutcome(status: first.outcome.status, message: "\(who): \(first.outcome.message)")
    }
}
