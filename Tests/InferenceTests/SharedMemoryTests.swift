#if canImport(Glibc)
import Glibc
#endif
@testable import Inference
import KernelCore
import NIOCore
import XCTest

/// Triton's system shared memory extension below HTTP: the registry over real POSIX shared memory objects, tensors
/// decoded from and encoded into regions, and the command worker processes share.
final class SharedMemoryTests: XCTestCase {
    private var keys: [String] = []

    /// A new shared memory object of `bytes` (its contents), removed after the test.
    private func object(_ bytes: [UInt8]) throws -> String {
        let key = "/kernel_unit_\(getpid())_\(keys.count)"
        let descriptor = shm_open(key, O_RDWR | O_CREAT | O_EXCL, 0o600)
        XCTAssertGreaterThanOrEqual(descriptor, 0)
        defer { close(descriptor) }
        XCTAssertEqual(ftruncate(descriptor, off_t(bytes.count)), 0)
        XCTAssertEqual(bytes.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }, bytes.count)
        keys.append(key)
        return key
    }

    private func contents(_ key: String, count: Int) -> [UInt8] {
        let descriptor = shm_open(key, O_RDONLY, 0)
        defer { close(descriptor) }
        var bytes = [UInt8](repeating: 0, count: count)
        _ = bytes.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, count, 0) }
        return bytes
    }

    override func tearDown() {
        for key in keys { shm_unlink(key) }
        keys = []
    }

    private func status(_ body: () throws -> Void) -> Int? {
        do {
            try body()
            return nil
        } catch let error as KernelHTTPError {
            return error.status
        } catch {
            return -1
        }
    }

    func testRegistrationChecksTheObjectAndTheName() throws {
        let key = try object([UInt8](repeating: 7, count: 64))
        let registry = SharedMemoryRegistry(allowsClientRegions: true)
        try registry.register(name: "r", key: key, offset: 16, byteSize: 48)
        XCTAssertEqual(status { try registry.register(name: "r", key: key, offset: 0, byteSize: 8) }, 400)
        XCTAssertEqual(status { try registry.register(name: "beyond", key: key, offset: 16, byteSize: 49) }, 400)
        XCTAssertEqual(status { try registry.register(name: "overflow", key: key, offset: UInt64.max, byteSize: 2) }, 400)
        XCTAssertEqual(status { try registry.register(name: "huge", key: key, offset: 0, byteSize: UInt64.max) }, 400)
        XCTAssertEqual(status { try registry.register(name: "reserved", key: "/triton_python_backend_shm_region_1", offset: 0, byteSize: 1) }, 400)
        XCTAssertEqual(status { try registry.register(name: "empty", key: key, offset: 0, byteSize: 0) }, 400)
        XCTAssertEqual(status { try registry.register(name: "none", key: "/kernel_unit_absent", offset: 0, byteSize: 1) }, 500)
        XCTAssertEqual(status { try registry.register(name: "slashes", key: "//", offset: 0, byteSize: 1) }, 400)
        // glibc refuses a slash after the leading ones: no key leaves /dev/shm.
        XCTAssertEqual(status { try registry.register(name: "outside", key: "/../etc/passwd", offset: 0, byteSize: 1) }, 500)
        XCTAssertEqual(registry.all().map(\.name), ["r"])
        registry.unregister("absent")
        registry.unregister("r")
        XCTAssertEqual(registry.all().count, 0)
    }

    func testAPartOfARegionIsCheckedAsTritonChecksIt() throws {
        let key = try object([UInt8](0..<32))
        let registry = SharedMemoryRegistry(allowsClientRegions: true)
        try registry.register(name: "r", key: key, offset: 8, byteSize: 16)
        let region = try registry.region(named: "r")
        XCTAssertNil(status { try region.checkPart(offset: 0, byteSize: 16) })
        XCTAssertNil(status { try region.checkPart(offset: 15, byteSize: 1) })
        XCTAssertEqual(status { try region.checkPart(offset: 16, byteSize: 0) }, 400)
        XCTAssertEqual(status { try region.checkPart(offset: 1, byteSize: 16) }, 400)
        XCTAssertEqual(status { try region.checkPart(offset: 1, byteSize: UInt64.max) }, 400)
        XCTAssertEqual(status { try region.checkPart(offset: UInt64.max - 1, byteSize: 1) }, 400)
        XCTAssertEqual(Array(buffer: try region.read(offset: 2, count: 4)), [10, 11, 12, 13])
        XCTAssertEqual(status { _ = try registry.region(named: "other") }, 404)
    }

    func testARegionInUseIsUnregisteredWhenItsLastRequestEnds() throws {
        let key = try object([UInt8](repeating: 1, count: 16))
        let registry = SharedMemoryRegistry(allowsClientRegions: true)
        try registry.register(name: "r", key: key, offset: 0, byteSize: 16)
        var first: SharedMemoryUse? = try registry.use("r")
        var second: SharedMemoryUse? = try registry.use("r")
        registry.unregisterAll()
        // Still there, as Triton keeps it: listed, usable, its name taken.
        XCTAssertEqual(registry.all().map(\.name), ["r"])
        XCTAssertEqual(status { try registry.register(name: "r", key: key, offset: 0, byteSize: 8) }, 400)
        var third: SharedMemoryUse? = try registry.use("r")
        first = nil
        second = nil
        XCTAssertEqual(registry.all().map(\.name), ["r"])
        third = nil
        XCTAssertEqual(registry.all().count, 0)
        XCTAssertNil(first ?? second ?? third)
        // A region not in use goes at once.
        try registry.register(name: "r", key: key, offset: 0, byteSize: 8)
        registry.unregister("r")
        XCTAssertEqual(registry.all().count, 0)
    }

    private let model = ModelSignature(name: "m", version: "1", inputs: [TensorSpec(name: "x", dataType: .int32, shape: [-1, 2])],
                                       outputs: [TensorSpec(name: "y", dataType: .int32, shape: [-1, 2])], maxBatchSize: 4)

    private func decode(_ json: String, _ registry: SharedMemoryRegistry) throws -> DecodedInferenceRequest {
        try InferenceCodec.decodeRequest(body: ByteBuffer(string: json), headers: [:], model: model, sharedMemory: registry)
    }

    func testAnInputIsReadFromItsRegionAndAnOutputWrittenIntoItsOwn() throws {
        let values: [Int32] = [1, -2, 3, 4]
        let key = try object(values.withUnsafeBytes { Array($0) } + [UInt8](repeating: 0, count: 32))
        let registry = SharedMemoryRegistry(allowsClientRegions: true)
        try registry.register(name: "in", key: key, offset: 0, byteSize: 16)
        try registry.register(name: "out", key: key, offset: 16, byteSize: 32)
        let request = try decode(#"""
            {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2],
                         "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 16}}],
             "outputs": [{"name": "y", "parameters": {"binary_data": false, "shared_memory_region": "out",
                                                      "shared_memory_byte_size": 24, "shared_memory_offset": 8}}]}
            """#, registry)
        XCTAssertEqual(request.inputs[0].bytes, values.withUnsafeBytes { Array($0) })
        let output = Tensor(dataType: .int32, shape: [2, 2], bytes: [Int32](arrayLiteral: 9, 8, 7, 6).withUnsafeBytes { Array($0) })
        let response = try InferenceCodec.encodeResponse(model: model, request: request, outputs: [output])
        guard case .buffer(let body) = response.body else { return XCTFail("no body") }
        XCTAssertEqual(String(buffer: body), #"{"model_name":"m","model_version":"1","outputs":[{"name":"y","datatype":"INT32","shape":[2,2]}]}"#)
        XCTAssertEqual(response.headers["Content-Type"], "application/json")
        XCTAssertEqual(Array(contents(key, count: 48)[24..<40]), output.bytes)

        // A part smaller than an output the model's dimensions fix is Triton's 500 before the run; one smaller than
        // what a run gave, when it is written; a size that is not the input's is Triton's 400.
        XCTAssertEqual(status { _ = try decode(#"""
            {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2],
                         "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 16}}],
             "outputs": [{"name": "y", "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": 15}}]}
            """#, registry) }, 500)
        let larger = Tensor(dataType: .int32, shape: [8, 2], bytes: [UInt8](repeating: 1, count: 64))
        XCTAssertEqual(status { _ = try InferenceCodec.encodeResponse(model: model, request: request, outputs: [larger]) }, 500)
        XCTAssertEqual(status { _ = try decode(#"""
            {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 2],
                         "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 16}}]}
            """#, registry) }, 400)
        XCTAssertEqual(status { _ = try decode(#"""
            {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 2],
                         "parameters": {"shared_memory_region": 4, "shared_memory_byte_size": 8}}]}
            """#, registry) }, 400)
    }

    func testTheSharedCommandReadsBackAsItWasWritten() throws {
        let commands: [SharedMemoryCommand] = [
            .register(name: "r \"1\"", key: "/k é", offset: 4096, byteSize: 12), .unregister(name: "r \"1\""), .unregisterAll,
        ]
        for command in commands {
            let text = command.text
            XCTAssertTrue(text.hasPrefix(SharedMemoryCommand.name + " "))
            XCTAssertEqual(SharedMemoryCommand(argument: text.dropFirst(SharedMemoryCommand.name.count + 1)), command)
        }
        XCTAssertEqual(commands[0].key, commands[1].key)
        XCTAssertNotEqual(commands[0].key, commands[2].key)
        XCTAssertNil(SharedMemoryCommand(argument: #"{"frob": 1}"#))
        let key = try object([UInt8](repeating: 0, count: 8))
        let registry = SharedMemoryRegistry(allowsClientRegions: true)
        let registered = SharedMemoryCommand.register(name: "a", key: key, offset: 0, byteSize: 8)
        XCTAssertEqual(SharedCommandOutcome(encoded: SharedMemoryCommand.respond(to: registered.text.dropFirst(SharedMemoryCommand.name.count + 1), registry: registry))?.status, 200)
        XCTAssertEqual(registered.run(on: registry).status, 400)
        XCTAssertEqual(SharedMemoryCommand.unregisterAll.run(on: registry).status, 200)
        XCTAssertEqual(registry.all().count, 0)
    }
}
