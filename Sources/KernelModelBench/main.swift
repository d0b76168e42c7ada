// The in-process ceiling of a model: ONNX Runtime in a tight loop, no HTTP, no JSON, no queue.
//
//   kernel-model-bench MODEL.onnx --shape 1,64 [--seconds 5] [--intra-op-threads 1] [--instances 1]
//   kernel-model-bench TEXT.onnx --bytes "hello,Wörld" [--shape 2,1]   (a BYTES input of these strings)
//
// Prints one JSON line: runs/s and rows/s over all instances (each on its own thread, as the kernel runs them).
import Foundation
import Inference
import NIOCore

struct Arguments {
    var model = ""
    var shape: [Int64] = []
    var seconds = 5.0
    var intraOpThreads = 1
    var instances = 1
    /// A JSON inference request to decode in a loop instead (the codec's cost, no model run).
    var decodeFile: String?
    /// The elements of a BYTES input (comma-separated); the shape defaults to one column of them.
    var strings: [String]?

    init(_ list: [String]) throws {
        var iterator = list.makeIterator()
        while let argument = iterator.next() {
            func value() throws -> String {
                guard let next = iterator.next() else { throw ONNXRuntimeError("\(argument) needs a value") }
                return next
            }
            switch argument {
            case "--shape": shape = try value().split(separator: ",").map { Int64($0) ?? 1 }
            case "--seconds": seconds = Double(try value()) ?? 5
            case "--intra-op-threads": intraOpThreads = Int(try value()) ?? 1
            case "--instances": instances = Int(try value()) ?? 1
            case "--decode": decodeFile = try value()
            case "--bytes": strings = try value().split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            default: model = argument
            }
        }
        if let strings, shape.isEmpty { shape = [Int64(strings.count), 1] }
        guard !model.isEmpty, !shape.isEmpty else {
            throw ONNXRuntimeError("usage: KernelModelBench MODEL.onnx --shape 1,64 | --bytes a,b [--seconds 5] [--intra-op-threads 1] [--instances 1]")
        }
    }
}

do {
    let arguments = try Arguments(Array(CommandLine.arguments.dropFirst()))
    let path = try ONNXRuntime.locate(configured: nil, environment: ProcessInfo.processInfo.environment)
    let runtime = try ONNXRuntime.open(path: path)
    let sessions = try (0..<arguments.instances).map { _ in
        try ONNXSession(runtime: runtime, path: arguments.model,
                        options: SessionOptions(intraOpThreads: arguments.intraOpThreads, interOpThreads: 1))
    }
    if let decodeFile = arguments.decodeFile {
        let body = ByteBuffer(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: decodeFile))))
        let signature = ModelSignature(name: "m", version: "1", inputs: sessions[0].inputs, outputs: sessions[0].outputs,
                                       maxBatchSize: 0)
        let start = Date()
        var decoded = 0
        while Date().timeIntervalSince(start) < arguments.seconds {
            _ = try InferenceCodec.decodeRequest(body: body, headers: [:], model: signature)
            decoded += 1
        }
        let elapsed = Date().timeIntervalSince(start)
        print("{\"decodes_per_second\": \(Double(decoded) / elapsed), \"mean_decode_us\": \(elapsed / Double(decoded) * 1e6)}")
        exit(0)
    }
    let spec = sessions[0].inputs[0]
    let count = Tensor.elementCount(arguments.shape) ?? 0
    var generator = SystemRandomNumberGenerator()
    let values = (0..<count).map { _ in Float.random(in: -1...1, using: &generator) }
    let input: Tensor
    if spec.dataType == .bytes {
        // The given strings, or empty ones (each a 4-byte zero length).
        let strings = arguments.strings ?? Array(repeating: "", count: count)
        guard strings.count == count else {
            throw ONNXRuntimeError("--bytes gives \(strings.count) strings for the shape \(arguments.shape) of \(count) elements")
        }
        input = Tensor(strings: strings.map { Array($0.utf8) }, shape: arguments.shape)
    } else {
        input = Tensor(dataType: spec.dataType, shape: arguments.shape,
                       bytes: spec.dataType == .fp32 ? values.withUnsafeBytes { Array($0) }
                                                     : [UInt8](repeating: 0, count: count * spec.dataType.byteWidth))
    }
    for session in sessions { for _ in 0..<20 { _ = try session.run([input]) } }  // warm-up
    /// Runs per instance; each slot is written by one thread only.
    final class RunCounts: @unchecked Sendable {
        var values: [Int]
        init(_ count: Int) { values = Array(repeating: 0, count: count) }
    }
    let counts = RunCounts(sessions.count)
    let start = Date()
    let seconds = arguments.seconds
    // One thread per instance, as the kernel's scheduler runs them.
    DispatchQueue.concurrentPerform(iterations: sessions.count) { index in
        var runs = 0
        while Date().timeIntervalSince(start) < seconds {
            _ = try? sessions[index].run([input])
            runs += 1
        }
        counts.values[index] = runs
    }
    let totalRuns = counts.values.reduce(0, +)
    let elapsed = Date().timeIntervalSince(start)
    let runsPerSecond = Double(totalRuns) / elapsed
    let rows = Double(arguments.shape.first ?? 1)
    print("{\"model\": \"\(arguments.model)\", \"shape\": \(arguments.shape), \"instances\": \(arguments.instances), "
          + "\"intra_op_threads\": \(arguments.intraOpThreads), \"runs_per_second\": \(runsPerSecond), "
          + "\"rows_per_second\": \(runsPerSecond * rows), \"mean_run_us\": \(elapsed / Double(max(totalRuns, 1)) * 1e6 * Double(arguments.instances))}")
} catch {
    FileHandle.standardError.write("KernelModelBench: \(error)\n".data(using: .utf8)!)
    exit(1)
}
