#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KernelCore
import NIOCore

/// Where one inference request's time went: decoding its body, waiting in its model's queue, the batch it ran in
/// (rows and compute phases) and encoding its response.
///
/// The handler sends it as the `Server-Timing` response header and hands it to the access log as the response's
/// `HandlerReport`, where the `$inference_*` variables read it.
public final class InferenceExchangeReport: HandlerReport {
    public let timing: InferenceTiming
    public let decodeNanoseconds: UInt64
    public let encodeNanoseconds: UInt64

    public init(timing: InferenceTiming, decodeNanoseconds: UInt64, encodeNanoseconds: UInt64) {
        self.timing = timing
        self.decodeNanoseconds = decodeNanoseconds
        self.encodeNanoseconds = encodeNanoseconds
    }

    /// The batch's three compute phases together.
    public var computeNanoseconds: UInt64 {
        let compute = timing.compute
        var total = compute.inputNanoseconds
        total.saturatingAdd(compute.inferNanoseconds)
        total.saturatingAdd(compute.outputNanoseconds)
        return total
    }

    public static let serverTimingHeader = "Server-Timing"

    /// The `Server-Timing` value (W3C Server Timing: metrics separated by commas, each a name with a `dur` in
    /// milliseconds, or a `desc`): `queue;dur=0.120, batch;desc="4", compute_input;dur=0.010,
    /// compute_infer;dur=1.250, compute_output;dur=0.008, decode;dur=0.030, encode;dur=0.020`. The batch's rows
    /// are a description, not a duration: a browser's developer tools show them beside the times.
    public var serverTiming: String {
        // Written as bytes into one buffer: this runs for every answered inference, and seven interpolated
        // numbers would each be a String of their own.
        var text = ServerTimingText()
        text.append("queue;dur=")
        text.milliseconds(timing.queueNanoseconds)
        text.append(", batch;desc=\"")
        text.integer(UInt64(clamping: timing.batchSize))
        text.append("\", compute_input;dur=")
        text.milliseconds(timing.compute.inputNanoseconds)
        text.append(", compute_infer;dur=")
        text.milliseconds(timing.compute.inferNanoseconds)
        text.append(", compute_output;dur=")
        text.milliseconds(timing.compute.outputNanoseconds)
        text.append(", decode;dur=")
        text.milliseconds(decodeNanoseconds)
        text.append(", encode;dur=")
        text.milliseconds(encodeNanoseconds)
        return text.string
    }

    /// Adds the `Server-Timing` header to `response` and attaches the report for the access log.
    public func attach(to response: inout KernelResponse) {
        response.headers.replace(Self.serverTimingHeader, serverTiming)
        response.handlerReport = self
    }

    /// Seconds with three decimals (millisecond resolution), as nginx writes `$request_time`: `0.012`.
    static func seconds(_ nanoseconds: UInt64) -> String {
        let millis = nanoseconds / 1_000_000 &+ (nanoseconds % 1_000_000 >= 500_000 ? 1 : 0)
        return "\(millis / 1000)." + threeDigits(millis % 1000)
    }

    private static func threeDigits(_ value: UInt64) -> String {
        value < 10 ? "00\(value)" : value < 100 ? "0\(value)" : String(value)
    }
}

/// The bytes of a `Server-Timing` value as they are written: ASCII text and decimal numbers.
private struct ServerTimingText {
    private var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(192) }

    mutating func append(_ text: StaticString) {
        text.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    /// `value` in decimal: its digits written lowest first, then put in order.
    mutating func integer(_ value: UInt64) {
        let start = bytes.count
        var rest = value
        repeat {
            bytes.append(UInt8(ascii: "0") &+ UInt8(rest % 10))
            rest /= 10
        } while rest > 0
        bytes[start...].reverse()
    }

    /// Milliseconds with three decimals (microsecond resolution, rounded): `1.250`.
    mutating func milliseconds(_ nanoseconds: UInt64) {
        let micros = nanoseconds / 1000 &+ (nanoseconds % 1000 >= 500 ? 1 : 0)
        integer(micros / 1000)
        let fraction = micros % 1000
        bytes.append(UInt8(ascii: "."))
        bytes.append(UInt8(ascii: "0") &+ UInt8(fraction / 100))
        bytes.append(UInt8(ascii: "0") &+ UInt8(fraction / 10 % 10))
        bytes.append(UInt8(ascii: "0") &+ UInt8(fraction % 10))
    }

    var string: String { String(decoding: bytes, as: UTF8.self) }
}

/// The inference module's access-log variables, read from the response's `InferenceExchangeReport`; not found
/// (`-` in a log line) for a response that no model made (an error, another location):
/// `$inference_queue_time`, `$inference_compute_time` (the three phases), `$inference_decode_time` and
/// `$inference_encode_time` in seconds with milliseconds as `$request_time`; `$inference_batch_size` the rows of
/// the batch the request ran in.
public enum InferenceVariables {
    public static func register(into registry: inout VariableRegistry) {
        typealias Report = InferenceExchangeReport
        @Sendable func report(_ context: VariableContext) -> Report? { context.handlerReport as? Report }
        registry.register("inference_queue_time") { report($0).map { Report.seconds($0.timing.queueNanoseconds) } }
        registry.register("inference_compute_time") { report($0).map { Report.seconds($0.computeNanoseconds) } }
        registry.register("inference_decode_time") { report($0).map { Report.seconds($0.decodeNanoseconds) } }
        registry.register("inference_encode_time") { report($0).map { Report.seconds($0.encodeNanoseconds) } }
        registry.register("inference_batch_size") { report($0).map { String($0.timing.batchSize) } }
    }
}

/// A request's Triton priority level: the `X-Kernel-Priority` header when present (an edge may set it per
/// route), else the request's `parameters.priority` (Triton's name), else 0 (the model's default level).
///
/// A level above the model's `priority_levels` runs at the default level, as Triton takes it; a value that is no
/// non-negative integer, or the header repeated with different values, is a 400.
enum RequestPriority {
    static let headerName = "X-Kernel-Priority"

    /// The level the `X-Kernel-Priority` header names, nil without it: what a pipeline's upload (no OIP body) has.
    static func header(of request: KernelRequest) throws -> Int? {
        let values = request.headers.values(headerName)
        guard let text = values.first else { return nil }
        // One level per request: the header twice with different levels (a client's and an edge's) is no
        // level at all, rather than whichever came first.
        guard values.allSatisfy({ $0 == text }) else {
            throw KernelHTTPError(400, "invalid \(headerName) header: it appears \(values.count) times with different values")
        }
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            throw KernelHTTPError(400, "invalid \(headerName) header \"\(text)\": expected a priority level (a non-negative integer)")
        }
        return Int(text) ?? Int.max
    }

    /// The request's level: the header's, else `parameters.priority` as the decoder read it, else 0.
    static func of(_ request: KernelRequest, parameter: Int?) throws -> Int {
        try header(of: request) ?? parameter ?? 0
    }

    /// The level `parameters.priority` names: Triton reads it as an unsigned 64-bit integer.
    static func parameter(_ value: JSONValue) throws -> Int {
        guard case .number(let number) = value else {
            throw KernelHTTPError(400, "invalid value type for 'priority' parameter, expected an unsigned integer")
        }
        if let level = number.uint64 { return Int(clamping: level) }
        if number.negative, number.isInteger {
            throw KernelHTTPError(400, "invalid value for 'priority', expected value >= 0.")
        }
        // A fraction, or an integer past 64 bits.
        throw KernelHTTPError(400, "invalid value type for 'priority' parameter, expected an unsigned integer")
    }
}
