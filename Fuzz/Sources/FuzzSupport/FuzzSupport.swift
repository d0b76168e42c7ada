/// What every fuzz target shares: libFuzzer's driver and the way an input chooses how it is cut into reads.
#if canImport(Glibc)
import Glibc
#endif

/// libFuzzer's driver (linked by `-sanitize=fuzzer`): each target's entry point hands control to it.
@_silgen_name("LLVMFuzzerRunDriver")
public func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

/// Runs libFuzzer with the process's arguments and `callback` as the function under test.
public func runFuzzer(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                      _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> CInt {
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments, callback)
}

/// A fuzz input read as two control bytes that choose the read sizes, then the payload.
///
/// Control byte 0: its low three bits pick the largest read (1, 2, 3, 7, 16, 64, 512 or the whole payload), and
/// with byte 1 it seeds the generator that draws each read's size (1 up to that largest). So libFuzzer explores
/// cut points by mutating two bytes, and a finding replays exactly.
public struct SplitInput {
    /// The bytes fed to the decoder.
    public let payload: UnsafeBufferPointer<UInt8>
    /// `payload` cut into consecutive non-empty ranges covering it all (none for an empty payload).
    public let reads: [Range<Int>]

    private static let largestRead = [1, 2, 3, 7, 16, 64, 512, Int.max]

    /// `controlBytes` extra bytes after the two split bytes are left for the target (`control`).
    public init(_ start: UnsafePointer<UInt8>, _ count: Int, controlBytes: Int = 0) {
        let all = UnsafeBufferPointer(start: start, count: count)
        let header = min(count, 2 + controlBytes)
        let first = count > 0 ? all[0] : 0
        let second = count > 1 ? all[1] : 0
        control = Array(all[min(2, header)..<header]) + [UInt8](repeating: 0, count: 2 + controlBytes - max(header, 2))
        payload = UnsafeBufferPointer(rebasing: all[header...])
        let largest = SplitInput.largestRead[Int(first & 7)]
        var state = UInt32(first) << 8 | UInt32(second) | 0x9E37_0000
        var cuts: [Range<Int>] = []
        var position = 0
        while position < payload.count {
            // xorshift32: cheap and deterministic.
            state ^= state << 13
            state ^= state >> 17
            state ^= state << 5
            let size = largest == Int.max ? payload.count - position : 1 + Int(state % UInt32(largest))
            let end = min(payload.count, position + size)
            cuts.append(position..<end)
            position = end
        }
        reads = cuts
    }

    /// The target's own control bytes (zero when the input is shorter).
    public let control: [UInt8]
}

/// A broken invariant: the message goes to stderr (unbuffered, so that it survives the trap), then the process
/// traps and libFuzzer writes the input to a `crash-*` file.
public func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() {
        var text = "invariant failed: \(message())\n"
        text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        fatalError("invariant failed")
    }
}
