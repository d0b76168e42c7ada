import Foundation
import KernelConfig
import KernelCore
import Logging
import NIOCore
import NIOPosix
import XCTest
@testable import Inference

/// The protocol routes, driven through the handler with a fake model behind a real scheduler.
final class InferenceHandlerTests: XCTestCase {
    var group: MultiThreadedEventLoopGroup!
    var repository: ModelRepository!
    var scheduler: ModelScheduler!

    override func setUp() {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        func configuration(_ name: String) -> ModelConfiguration {
            ModelConfiguration(name: name, path: "/models/\(name).onnx", version: "1", instances: 1, intraOpThreads: 1,
                               interOpThreads: 1, maxBatchSize: 4, dynamicBatching: nil, maxQueue: 8,
                               timeoutMicroseconds: 0, warmup: 0)
        }
        let ready = configuration("double")
        repository = ModelRepository(configurations: [ready, configuration("broken")])
        scheduler = ModelScheduler(modelName: "double", policy: ready.policy, runners: [RecordingRunner(blockFirst: false)],
                                   logger: Logger(label: "test"))
        let signature = ModelSignature(name: "double", version: "1",
                                       inputs: [TensorSpec(name: "x", dataType: .fp32, shape: [-1, 2])],
                                       outputs: [TensorSpec(name: "doubled", dataType: .fp32, shape: [-1, 2]),
                                                 TensorSpec(name: "sum", dataType: .fp32, shape: [-1, 1])],
                                       maxBatchSize: 4)
        repository.setState(.ready(LoadedModel(configuration: ready, signature: signature, scheduler: scheduler)), for: "double")
        repository.setState(.failed("Load model from /models/broken.onnx failed"), for: "broken")
    }

    override func tearDown() {
        scheduler.stop()
        try? group.syncShutdownGracefully()
    }

    private func call(_ method: String, _ path: String, body: String? = nil, headers: HeaderFields = [:],
                      mount: String = "/v2") throws -> (Int, String, KernelResponse) {
        let request = KernelRequest(method: method, uri: path, path: path, query: "", version: .http1_1, headers: headers,
                                    body: body.map { ByteBuffer(string: $0) },
                                    connection: ConnectionInfo(protocolName: "http", listener: "test", remoteAddress: nil, localAddress: nil))
        let loop = group.next()
        let context = RequestContext(eventLoop: loop, logger: Logger(label: "test"), route: RouteInfo())
        let chain = FilterChain(filters: [])
        let response = try chain.run(request, context: context, handler: InferenceHandler(repository: repository, mount: mount)).wait()
        var text = ""
        if case .buffer(let buffer) = response.body { text = String(buffer: buffer) }
        return (response.status, text, response)
    }

    func testServerEndpoints() throws {
        let (status, body, _) = try call("GET", "/v2")
        XCTAssertEqual(status, 200)
        let metadata = try JSONReader.parse(Array(body.utf8))
        XCTAssertEqual(metadata["name"]?.stringValue, "kernel")
        XCTAssertTrue(metadata["extensions"]?.arrayValue?.contains { $0.stringValue == "binary_tensor_data" } ?? false)
        XCTAssertTrue(metadata["extensions"]?.arrayValue?.contains { $0.stringValue == "classification" } ?? false)
        XCTAssertEqual(try call("GET", "/v2/health/live").0, 200)
        XCTAssertEqual(try call("GET", "/v2/health/ready").0, 400)  // "broken" did not load
        XCTAssertEqual(try call("GET", "/v1/models").0, 404)
        XCTAssertEqual(try call("POST", "/v2").0, 405)
        XCTAssertEqual(try call("POST", "/v2").2.headers["Allow"], "GET, HEAD")
    }

    func testTheMountPrefixStandsForV2() throws {
        // `location /models/`: the prefix takes the place of `/v2`.
        XCTAssertEqual(try call("GET", "/models", mount: "/models/").0, 200)
        XCTAssertEqual(try call("GET", "/models/health/live", mount: "/models/").0, 200)
        XCTAssertEqual(try call("GET", "/models/models/double/ready", mount: "/models/").0, 200)
        let json = #"{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}"#
        XCTAssertEqual(try call("POST", "/models/models/double/infer", body: json, mount: "/models/").0, 200)
        XCTAssertEqual(try call("GET", "/models/v2/health/live", mount: "/models/").0, 404, "no second /v2 below the mount")
        XCTAssertEqual(try call("GET", "/v2/health/live", mount: "/models/").0, 404)
        // `location ^~ /v2` also matches `/v2x`, which is not below the mount point.
        XCTAssertEqual(try call("GET", "/v2x/health/live").0, 404)
        XCTAssertEqual(try call("GET", "/v2/health/live", mount: "/v2/").0, 200)
        // `location /`: the protocol's paths without `/v2`.
        XCTAssertEqual(try call("GET", "/health/live", mount: "/").0, 200)
        XCTAssertEqual(try call("GET", "/models/double/ready", mount: "/").0, 200)
        XCTAssertEqual(try call("GET", "/", mount: "/").1.contains(#""name":"kernel""#), true)
    }

    func testModelMetadataReadinessAndErrors() throws {
        let (status, body, _) = try call("GET", "/v2/models/double/versions/1")
        XCTAssertEqual(status, 200)
        XCTAssertTrue(body.contains(#""platform":"onnxruntime_onnx""#), body)
        XCTAssertTrue(body.contains(#""inputs":[{"name":"x","datatype":"FP32","shape":[-1,2]}]"#), body)
        XCTAssertEqual(try call("GET", "/v2/models/double/ready").0, 200)
        let unknown = try call("GET", "/v2/models/nope")
        XCTAssertEqual(unknown.0, 404)
        XCTAssertTrue(unknown.1.contains("Request for unknown model: 'nope' is not found"), unknown.1)
        XCTAssertEqual(try call("GET", "/v2/models/double/versions/2").0, 404)
        let broken = try call("POST", "/v2/models/broken/infer", body: "{}")
        XCTAssertEqual(broken.0, 404, "Triton's NOT_FOUND: no version ready")
        XCTAssertTrue(broken.1.contains("has no available versions (version 1 is not at ready state"), broken.1)
        let named = try call("POST", "/v2/models/broken/versions/1/infer", body: "{}")
        XCTAssertEqual(named.0, 503, "Triton's UNAVAILABLE: that version is not ready")
        XCTAssertTrue(named.1.contains("version 1 is not at ready state"), named.1)
        XCTAssertEqual(try call("GET", "/v2/models/broken/ready").0, 404, "as metadata: no version ready")
        XCTAssertEqual(try call("GET", "/v2/models/broken/versions/1/ready").0, 503, "a named version not ready")
        // Paths are matched whole, as Triton's are: a trailing or doubled slash names nothing.
        XCTAssertEqual(try call("POST", "/v2/models/double/infer/", body: "{}").0, 404)
        XCTAssertEqual(try call("GET", "/v2/models/double/").0, 404)
        XCTAssertEqual(try call("GET", "/v2/models//double").0, 404)
        XCTAssertEqual(try call("GET", "/v2/").0, 200, "the mount point itself is the server's metadata")
        XCTAssertEqual(try call("GET", "/v2/models/double/infer").0, 405)
        XCTAssertEqual(try call("GET", "/v2/models/double/infer").2.headers["Allow"], "POST")
    }

    func testRepositoryExtensionRoutes() throws {
        let (status, body, _) = try call("POST", "/v2/repository/index")
        XCTAssertEqual(status, 200)
        XCTAssertEqual(body, #"[{"name":"broken","version":"1","state":"UNAVAILABLE","reason":"Load model from /models/broken.onnx failed"},{"name":"double","version":"1","state":"READY"}]"#)
        XCTAssertEqual(try call("POST", "/v2/repository/index", body: #"{"ready": true}"#).1,
                       #"[{"name":"double","version":"1","state":"READY"}]"#)
        XCTAssertEqual(try call("POST", "/v2/repository/index", body: #"{"ready": 1}"#).1,
                       #"{"error":"Invalid value for 'ready': expected a boolean"}"#)
        XCTAssertEqual(try call("POST", "/v2/repository/index", body: "[").0, 400)
        XCTAssertEqual(try call("GET", "/v2/repository/index").0, 405)
        XCTAssertEqual(try call("POST", "/v2/repository/other/index").0, 501, "named repositories, as Triton: unsupported")
        XCTAssertEqual(try call("POST", "/v2/repository/models/double/reload").0, 404)
        // Without `repository_control: explicit`, load and unload are refused with Triton's status and words.
        let (refused, refusal, _) = try call("POST", "/v2/repository/models/double/unload")
        XCTAssertEqual(refused, 503)
        XCTAssertEqual(refusal, #"{"error":"explicit model load / unload is not allowed if polling is enabled"}"#)
        XCTAssertEqual(try call("POST", "/v2/repository/models/double/load", body: #"{"parameters": {"config": "{}"}}"#).1,
                       #"{"error":"explicit model load / unload is not allowed if polling is enabled"}"#)
        XCTAssertEqual(try call("POST", "/v2/repository/models/double/load", body: #"{"parameters": {"config": 1}}"#).1,
                       #"{"error":"failed to load 'double': the 'config' parameter must be a string of the model configuration in JSON"}"#,
                       "the parameters' shapes are checked first")
        // Triton refuses a load parameter that is neither `config` nor `file:`, rather than ignoring it.
        XCTAssertEqual(try call("POST", "/v2/repository/models/double/load", body: #"{"parameters": {"priority": "1"}}"#).1,
                       #"{"error":"failed to load 'double': Unrecognized load parameter 'priority'"}"#)
        XCTAssertEqual(try call("POST", "/v2/repository/models/double/unload", body: #"{"parameters": {"unload_dependents": "x"}}"#).0, 400)
        XCTAssertTrue(InferenceHandler.extensions.contains("model_repository"))
    }

    func testInferAnswersJSONAndBinaryAndCountsStatistics() throws {
        let json = #"{"id": "7", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]}], "outputs": [{"name": "doubled"}]}"#
        let (status, body, _) = try call("POST", "/v2/models/double/infer", body: json)
        XCTAssertEqual(status, 200, body)
        XCTAssertEqual(body, #"{"model_name":"double","model_version":"1","id":"7","outputs":[{"name":"doubled","datatype":"FP32","shape":[2,2],"data":[2.0,4.0,6.0,9.0]}]}"#)

        let binary = #"{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}], "parameters": {"binary_data_output": true}}"#
        let (binaryStatus, _, response) = try call("POST", "/v2/models/double/versions/1/infer", body: binary)
        XCTAssertEqual(binaryStatus, 200)
        let headerLength = try XCTUnwrap(Int(response.headers[inferenceHeaderContentLength] ?? ""))
        guard case .buffer(var buffer) = response.body else { return XCTFail() }
        _ = buffer.readSlice(length: headerLength)
        XCTAssertEqual(buffer.readableBytes, 8 + 4)  // doubled [1,2] FP32, then sum [1,1] FP32

        let bad = try call("POST", "/v2/models/double/infer", body: "not json")
        XCTAssertEqual(bad.0, 400)
        XCTAssertTrue(bad.1.hasPrefix(#"{"error":"failed to parse the request JSON"#), bad.1)

        let (statsStatus, stats, _) = try call("GET", "/v2/models/double/stats")
        XCTAssertEqual(statsStatus, 200)
        let document = try JSONReader.parse(Array(stats.utf8))
        let entry = try XCTUnwrap(document["model_stats"]?.arrayValue?.first)
        guard case .number(let count)? = entry["inference_count"] else { return XCTFail(stats) }
        XCTAssertEqual(count.int64, 3)
    }

    func testRepeatedOutputsAndHugeShapesAre400AndTheModelKeepsServing() throws {
        let outputs = Array(repeating: #"{"name": "doubled", "parameters": {"binary_data": true}}"#, count: 10_000).joined(separator: ",")
        let repeated = #"{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}], "outputs": [\#(outputs)]}"#
        let (status, body, response) = try call("POST", "/v2/models/double/infer", body: repeated)
        XCTAssertEqual(status, 400, body)
        XCTAssertEqual(body, #"{"error":"output 'doubled' already exists in request"}"#)
        XCTAssertEqual(response.headers["Content-Type"], "application/json")
        for shape in ["[0, 4611686018427387904]", "[1099511627776, 1099511627776]", "[4, -2]"] {
            let huge = #"{"inputs": [{"name": "x", "shape": \#(shape), "datatype": "FP32", "data": []}]}"#
            XCTAssertEqual(try call("POST", "/v2/models/double/infer", body: huge).0, 400, shape)
        }
        let good = #"{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}], "outputs": [{"name": "doubled"}]}"#
        let (goodStatus, goodBody, _) = try call("POST", "/v2/models/double/infer", body: good)
        XCTAssertEqual(goodStatus, 200, goodBody)
        XCTAssertTrue(goodBody.contains(#""data":[2.0,4.0]"#), goodBody)
    }
}
