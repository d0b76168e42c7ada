#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Atomics
import Dispatch
import KernelCore
import Logging
import NIOConcurrencyHelpers

/// Triton's trace extension in this process: the settings (global, and per model), which requests are sampled,
/// and the trace files, in Triton's format (mode `triton`).
///
/// Sampling is Triton's: under each setting, every `rate`-th request is traced, while `count` (when not -1) lasts.
/// A trace is one JSON object per event (`{"id":1,"timestamps":[{"name":"QUEUE_START","ns":...}]}`, the model's
/// header object before `REQUEST_START`, tensor objects at level `TENSORS`), `ns` on the monotonic clock as
/// Triton's steady clock. With `log_frequency` N, every N traces of a setting are written as a JSON array to a new
/// `<file>.<index>`; otherwise a setting's traces are added to the array in `<file>` when it is replaced (a
/// `POST`) or the kernel stops; the traces left when `count` runs out go to the next indexed file. Files are
/// written on a queue of their own, never on an event loop. A reload goes on with the same files (the array in
/// `<file>` is extended, indexes go on). With worker processes, each process writes its own files: `<file>` with
/// `.pid<PID>`, so that no process, of this generation or a later one, writes over another's.
public final class TraceRecorder: Sendable {
    /// A sampled request: its trace's id and what it records.
    struct Ticket: Sendable {
        let id: UInt64
        let level: TraceLevel
        /// The setting that sampled it: a model's name, or nil for the global one.
        let setting: String?
    }

    /// One setting's sampling and the traces it has not written yet.
    private struct Stream {
        var sampled: UInt64 = 0
        /// Traces sampled and not finished yet.
        var running = 0
        var buffered: [String] = []
    }

    private struct State {
        var configured: TraceSettings
        var global: TraceSettings
        var models: [String: TraceOverrides] = [:]
        var streams: [String: Stream] = [:]
    }

    /// Where this process is in a trace path's files: the next index, and whether `<file>` holds an array this
    /// process wrote (the next write extends it). Kept by path for the process's life, across reloads.
    private struct FileCursor {
        var index = 0
        var started = false
    }

    private static let cursors = NIOLockedValueBox<[String: FileCursor]>([:])

    private let state: NIOLockedValueBox<State>
    /// Whether any setting samples: checked without the lock on every inference.
    private let active = ManagedAtomic(false)
    /// Trace ids, unique for the process's life (across reloads); a worker process N numbers from N × 10^12,
    /// so that the files of a group's processes can be read together.
    private static let nextID = ManagedAtomic<UInt64>(1)
    private let idBase: UInt64
    private let writes = DispatchQueue(label: "kernel.inference.trace")
    let logger: Logger
    /// The files' path, with this process's suffix.
    let path: String

    /// `workerNumber`: this process's (`ProcessSupervision.workerNumber`): above 0, its files carry its pid.
    public init(configured: TraceSettings, workerNumber: Int, logger: Logger) {
        state = NIOLockedValueBox(State(configured: configured, global: configured))
        path = configured.file.isEmpty || workerNumber <= 0 ? configured.file : configured.file + ".pid\(getpid())"
        idBase = UInt64(max(workerNumber, 0)) * 1_000_000_000_000
        self.logger = logger
        active.store(configured.samples, ordering: .relaxed)
    }

    private static func key(_ model: String?) -> String { model.map { "m:" + $0 } ?? "" }

    /// The settings that apply to `model` (nil: the global ones), with the count left.
    func settings(model: String?) -> TraceSettings {
        state.withLockedValue { state in
            guard let model, let overrides = state.models[model] else { return state.global }
            return overrides.applied(to: state.global)
        }
    }

    /// `model`'s own settings (none set: all nil).
    func overrides(of model: String) -> TraceOverrides {
        state.withLockedValue { $0.models[model] ?? TraceOverrides() }
    }

    /// Applies `update` to the global settings or to `model`'s, checked as Triton checks it, and returns the
    /// settings that apply afterwards. The replaced setting's traces are written out.
    func update(model: String?, _ update: TraceUpdate) throws -> TraceSettings {
        try state.withLockedValue { state in
            if let model {
                let overrides = update.applied(to: state.models[model] ?? TraceOverrides())
                let next = overrides.applied(to: state.global)
                try Self.check(next, update)
                flush(&state, key: Self.key(model), settings: state.models[model].map { $0.applied(to: state.global) } ?? state.global)
                state.models[model] = overrides.isEmpty ? nil : overrides
                refreshActive(state)
                return next
            }
            let next = update.applied(to: state.global, configured: state.configured)
            try Self.check(next, update)
            flush(&state, key: Self.key(nil), settings: state.global)
            state.global = next
            refreshActive(state)
            return next
        }
    }

    /// Sets the global settings or `model`'s overrides as another worker process set them (`TraceCommand`).
    func replace(model: String?, global: TraceSettings?, overrides: TraceOverrides?) {
        state.withLockedValue { state in
            if let model {
                flush(&state, key: Self.key(model), settings: state.models[model].map { $0.applied(to: state.global) } ?? state.global)
                state.models[model] = overrides.flatMap { $0.isEmpty ? nil : $0 }
            } else if let global {
                flush(&state, key: Self.key(nil), settings: state.global)
                var next = global
                next.file = state.configured.file
                state.global = next
            }
            refreshActive(state)
        }
    }

    /// Triton's refusals of settings that trace but cannot: no file, no rate, a count set to 0.
    private static func check(_ settings: TraceSettings, _ update: TraceUpdate) throws {
        guard !settings.level.isEmpty else { return }
        if settings.rate == 0 { throw KernelHTTPError(400, "Attempting to set invalid trace setting :sample rate must be non-zero") }
        if settings.file.isEmpty {
            throw KernelHTTPError(400, "Attempting to set invalid trace setting :trace file name is not given (set inference.trace.file in the configuration)")
        }
        if update.count == .set(0) { throw KernelHTTPError(400, "Attempting to set invalid trace setting :trace_count 0 traces nothing") }
    }

    private func refreshActive(_ state: State) {
        let any = state.global.samples || state.models.values.contains { $0.applied(to: state.global).samples }
        active.store(any, ordering: .relaxed)
    }

    /// Whether `model`'s next request is traced, as Triton samples: its ticket, or nil.
    func sample(model: String) -> Ticket? {
        guard active.load(ordering: .relaxed) else { return nil }
        return state.withLockedValue { state in
            let own = state.models[model] != nil
            let key = Self.key(own ? model : nil)
            var settings = own ? state.models[model]!.applied(to: state.global) : state.global
            guard settings.samples else { return nil }
            state.streams[key, default: Stream()].sampled &+= 1
            guard state.streams[key]!.sampled % UInt64(settings.rate) == 0 else { return nil }
            state.streams[key]!.running += 1
            if settings.count > 0 {
                settings.count -= 1
                if own { state.models[model]!.count = settings.count } else { state.global.count = settings.count }
                if settings.count == 0 { refreshActive(state) }
            }
            return Ticket(id: idBase + Self.nextID.loadThenWrappingIncrement(ordering: .relaxed), level: settings.level,
                          setting: own ? model : nil)
        }
    }

    /// Keeps a finished trace (its objects, comma-separated) and writes what its setting has gathered when
    /// `log_frequency` says so, or once `count` has run out and the last trace it allowed is done.
    func finish(_ ticket: Ticket, objects: String) {
        state.withLockedValue { state in
            let key = Self.key(ticket.setting)
            state.streams[key, default: Stream()].buffered.append(objects)
            let stream = state.streams[key]!
            if stream.running > 0 { state.streams[key]!.running -= 1 }
            let settings = ticket.setting.flatMap { state.models[$0] }?.applied(to: state.global) ?? state.global
            if (settings.logFrequency > 0 && stream.buffered.count >= settings.logFrequency)
                || (settings.count == 0 && state.streams[key]!.running == 0) {
                writeIndexed(&state, key: key)
            }
        }
    }

    /// Writes every setting's traces (the kernel stops).
    func flushAll() {
        state.withLockedValue { state in
            for key in state.streams.keys {
                let settings = key.hasPrefix("m:") ? state.models[String(key.dropFirst(2))]?.applied(to: state.global) ?? state.global
                    : state.global
                flush(&state, key: key, settings: settings)
            }
        }
        writes.sync {}
    }

    /// Writes a setting's traces as it is replaced: to the next indexed file with `log_frequency`, else into
    /// `file`'s array. Its sampling starts again.
    private func flush(_ state: inout State, key: String, settings: TraceSettings) {
        defer { state.streams[key] = nil }
        guard let stream = state.streams[key], !stream.buffered.isEmpty, !path.isEmpty else { return }
        if settings.logFrequency > 0 {
            writeIndexed(&state, key: key)
            return
        }
        let path = self.path
        let extending = Self.cursors.withLockedValue { cursors in
            defer { cursors[path, default: FileCursor()].started = true }
            return cursors[path]?.started ?? false
        }
        let text = stream.buffered.joined(separator: ",")
        let logger = self.logger
        writes.async { Self.extendArray(at: path, with: text, extending: extending, logger: logger) }
    }

    private func writeIndexed(_ state: inout State, key: String) {
        guard let buffered = state.streams[key]?.buffered, !buffered.isEmpty, !path.isEmpty else { return }
        state.streams[key]!.buffered = []
        let path = self.path
        let index = Self.cursors.withLockedValue { cursors in
            defer { cursors[path, default: FileCursor()].index += 1 }
            return cursors[path]?.index ?? 0
        }
        let file = "\(path).\(index)"
        let text = "[" + buffered.joined(separator: ",") + "]"
        let logger = self.logger
        writes.async { Self.write(text, to: file, flags: O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, logger: logger) }
    }

    /// Adds `text` (objects) to the JSON array in `path`, which stays a whole array after every write: a write
    /// that fails (a full disk) is cut back to what the file held. The first write of the process starts the file.
    private static func extendArray(at path: String, with text: String, extending: Bool, logger: Logger) {
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC | (extending ? 0 : O_TRUNC), 0o644)
        guard descriptor >= 0 else {
            logger.error("trace file \"\(path)\" cannot be opened: \(String(cString: strerror(errno)))")
            return
        }
        defer { close(descriptor) }
        let end = lseek(descriptor, 0, SEEK_END)
        // Empty (or not an array this process wrote): a new array; `[]`: its first objects; else after the last.
        let (at, piece): (off_t, String) = end < 2 ? (0, "[" + text + "]") : end == 2 ? (1, text + "]") : (end - 1, "," + text + "]")
        if end < 2 { _ = ftruncate(descriptor, 0) }
        guard lseek(descriptor, at, SEEK_SET) >= 0, writeAll(piece, to: descriptor, path: path, logger: logger) else {
            // What it held, whole: the array as it was (its closing bracket, written over, put back), or an
            // empty one.
            if end >= 2 {
                _ = ftruncate(descriptor, end)
                _ = pwrite(descriptor, "]", 1, end - 1)
            } else if ftruncate(descriptor, 0) == 0, lseek(descriptor, 0, SEEK_SET) == 0 {
                writeAll("[]", to: descriptor, path: path, logger: logger)
            }
            return
        }
    }

    /// Writes `text` as the whole of a new file at `path`; a write that fails leaves no file.
    private static func write(_ text: String, to path: String, flags: Int32, logger: Logger) {
        let descriptor = open(path, flags, 0o644)
        guard descriptor >= 0 else {
            logger.error("trace file \"\(path)\" cannot be opened: \(String(cString: strerror(errno)))")
            return
        }
        let written = writeAll(text, to: descriptor, path: path, logger: logger)
        close(descriptor)
        if !written { unlink(path) }
    }

    /// Whether all of `text` was written; a failure is logged.
    @discardableResult
    private static func writeAll(_ text: String, to descriptor: Int32, path: String, logger: Logger) -> Bool {
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let wrote = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress! + done, $0.count - done) }
            if wrote < 0, errno == EINTR { continue }
            guard wrote > 0 else {
                logger.error("trace file \"\(path)\" cannot be written: \(String(cString: strerror(errno)))")
                return false
            }
            done += wrote
        }
        return true
    }
}

/// The service that writes the traces left when the configuration stops.
final class TraceFlushService: KernelService {
    let name = "inference trace"
    let recorder: TraceRecorder

    init(recorder: TraceRecorder) {
        self.recorder = recorder
    }

    func start() async throws {}

    func stop() async {
        recorder.flushAll()
    }
}
