"""The Open Inference Protocol where it goes beyond numbers, against `kernel --role both` with the real
`tritonclient[http]`: BYTES (string) tensors through a string identity model, FP16 and BF16, and the rules where
the protocol is silent and Triton decides (statuses and messages as Triton's).
"""
import concurrent.futures
import json
import os
import struct
import threading

import numpy as np
import pytest
import requests

import tritonclient.http as tritonclient_http
from tritonclient.utils import InferenceServerException

from inference_support import ROOT, ensure_models, models_yaml

ensure_models()

STRINGS = os.path.join(ROOT, "models", "strings", "1", "model.onnx")


def make_identity(path, element_type, input_name, output_name):
    """`input_name` [-1, -1] of `element_type` → Identity → `output_name`."""
    import onnx
    from onnx import helper
    graph = helper.make_graph([helper.make_node("Identity", [input_name], [output_name])], "identity",
                              [helper.make_tensor_value_info(input_name, element_type, ["rows", "columns"])],
                              [helper.make_tensor_value_info(output_name, element_type, ["rows", "columns"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from onnx import TensorProto
    folder = tmp_path_factory.mktemp("protocol_models")
    strings = STRINGS if os.path.exists(STRINGS) else make_identity(str(folder / "strings.onnx"), TensorProto.STRING,
                                                                    "INPUT0", "OUTPUT0")
    return {"strings": strings,
            "half": make_identity(str(folder / "half.onnx"), TensorProto.FLOAT16, "x", "y"),
            "bhalf": make_identity(str(folder / "bhalf.onnx"), TensorProto.BFLOAT16, "x", "y")}


@pytest.fixture(scope="module")
def kernel(models, tmp_path_factory):
    """One kernel for the module: each test sends its own requests and none changes the kernel."""
    from conftest import KERNEL_BIN, Kernel, with_core_section
    workdir = str(tmp_path_factory.mktemp("protocol_kernel"))
    extra = "".join(f"    - name: {name}\n      path: {path}\n      max_batch_size: 8\n"
                    "      dynamic_batching: {max_queue_delay: 2ms}\n" for name, path in models.items())
    path = os.path.join(workdir, "kernel.yaml")
    with open(path, "w") as f:
        f.write(with_core_section(models_yaml(extra), workdir))
    assert os.path.exists(KERNEL_BIN), f"build the kernel first: {KERNEL_BIN} is missing"
    started = Kernel(path, "both", workdir, (), None)
    yield started
    started.stop()


def url(kernel, path):
    return f"http://127.0.0.1:{kernel.port('http')}{path}"


def post(kernel, path, body, headers=None):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(url(kernel, path), data=data, headers=headers or {}, timeout=30)


def assert_error(response, status, fragment):
    """Every inference error is Triton's `{"error": "..."}` body, as JSON."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"], body
    assert fragment in body["error"], body["error"]


@pytest.fixture
def client(kernel):
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}", concurrency=8)
    yield client
    client.close()


ELEMENTS = [b"", "h\u00e9llo w\u00f6rld \u6f22\u5b57 \U0001F600".encode(), b"a\x00b", b"\x00", b"quote\" back\\slash",
            b"tab\tnew\nline", b"x" * 300]


def strings_array(elements, columns):
    return np.array(elements, dtype=np.object_).reshape(-1, columns)


@pytest.mark.parametrize("binary", [False, True])
def test_bytes_round_trip_through_the_string_identity_model(client, binary):
    array = strings_array(ELEMENTS + [b"last"], 4)
    tensor = tritonclient_http.InferInput("INPUT0", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array, binary_data=binary)
    output = tritonclient_http.InferRequestedOutput("OUTPUT0", binary_data=binary)
    result = client.infer("strings", [tensor], outputs=[output])
    got = result.as_numpy("OUTPUT0")
    assert got.shape == (2, 4)
    assert result.get_output("OUTPUT0")["datatype"] == "BYTES"
    # JSON data comes back as text (str), binary data as bytes: the same elements either way.
    got = [value.encode() if isinstance(value, str) else value for value in got.reshape(-1)]
    assert got == list(array.reshape(-1))


def test_bytes_that_are_not_utf8_round_trip_as_binary_data(client):
    array = strings_array([b"\xff\xfe", b"\x80abc", b"", b"\xc3"], 2)
    tensor = tritonclient_http.InferInput("INPUT0", [2, 2], "BYTES")
    tensor.set_data_from_numpy(array, binary_data=True)
    result = client.infer("strings", [tensor], outputs=[tritonclient_http.InferRequestedOutput("OUTPUT0", binary_data=True)])
    assert list(result.as_numpy("OUTPUT0").reshape(-1)) == list(array.reshape(-1))


def test_bytes_json_data_may_be_nested_or_flat(kernel):
    for data in (["a", "", "c\u0000d", "\u00e9"], [["a", ""], ["c\u0000d", "\u00e9"]]):
        response = post(kernel, "/v2/models/strings/infer",
                        {"inputs": [{"name": "INPUT0", "shape": [2, 2], "datatype": "BYTES", "data": data}]})
        assert response.status_code == 200, response.text
        output = response.json()["outputs"][0]
        assert output["datatype"] == "BYTES" and output["shape"] == [2, 2]
        assert output["data"] == ["a", "", "c\u0000d", "\u00e9"]


def test_concurrent_bytes_requests_are_batched_and_split_back_exactly(kernel):
    local = threading.local()  # a tritonclient client per thread: one is not thread-safe

    def call(i):
        if not hasattr(local, "client"):
            local.client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
        rows = 1 + i % 3
        elements = [(f"r{i}-{k}-" + "z" * (k * i % 17)).encode() + (b"\x00" if k % 2 else b"") for k in range(rows * 2)]
        array = strings_array(elements, 2)
        tensor = tritonclient_http.InferInput("INPUT0", list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array, binary_data=i % 2 == 0)
        output = tritonclient_http.InferRequestedOutput("OUTPUT0", binary_data=True)
        got = local.client.infer("strings", [tensor], outputs=[output]).as_numpy("OUTPUT0")
        return list(got.reshape(-1)) == elements
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(call, range(48)))
    stats = requests.get(url(kernel, "/v2/models/strings/stats"), timeout=10).json()["model_stats"][0]
    # Some runs joined several requests (the batcher waits 2 ms for company).
    assert stats["execution_count"] < stats["inference_count"], stats


def test_bytes_models_report_bytes_in_metadata_and_type_string_in_config(kernel):
    metadata = requests.get(url(kernel, "/v2/models/strings"), timeout=10).json()
    assert metadata["inputs"] == [{"name": "INPUT0", "datatype": "BYTES", "shape": [-1, -1]}]
    assert metadata["outputs"] == [{"name": "OUTPUT0", "datatype": "BYTES", "shape": [-1, -1]}]
    config = requests.get(url(kernel, "/v2/models/strings/config"), timeout=10).json()
    assert config["input"][0]["data_type"] == "TYPE_STRING"
    assert config["output"][0]["data_type"] == "TYPE_STRING"
    half = requests.get(url(kernel, "/v2/models/half/config"), timeout=10).json()
    assert half["input"][0]["data_type"] == "TYPE_FP16"
    bhalf = requests.get(url(kernel, "/v2/models/bhalf"), timeout=10).json()
    assert bhalf["inputs"][0]["datatype"] == "BF16"


def binary_request(inputs, outputs=None, trailing=b""):
    """A body of Triton's binary extension: header JSON, then each input's bytes."""
    header = {"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                          "parameters": {"binary_data_size": len(data)}} for name, shape, datatype, data in inputs]}
    if outputs is not None:
        header["outputs"] = outputs
    text = json.dumps(header).encode()
    return text + b"".join(data for *_, data in inputs) + trailing, {"Inference-Header-Content-Length": str(len(text))}


def binary_outputs(response):
    length = int(response.headers["Inference-Header-Content-Length"])
    return json.loads(response.content[:length]), response.content[length:]


def test_bytes_binary_data_must_hold_the_shapes_elements(kernel):
    def serialise(elements):
        return b"".join(struct.pack("<I", len(e)) + e for e in elements)
    cases = [
        (serialise([b"a", b"b", b"c"]), "expected 4 string elements for inference input 'INPUT0' for model 'strings', got 3"),
        (serialise([b"a"] * 5), "unexpected number of string elements 5 for inference input 'INPUT0' for model 'strings', expecting 4"),
        (serialise([b"a"] * 3) + b"\x01\x00", "incomplete string length indicator for inference input 'INPUT0'"),
        (serialise([b"a"] * 3) + struct.pack("<I", 50) + b"xy", "has length 50, more than the 2 bytes left"),
    ]
    for data, message in cases:
        body, headers = binary_request([("INPUT0", [2, 2], "BYTES", data)])
        assert_error(post(kernel, "/v2/models/strings/infer", body, headers), 400, message)
    assert_error(post(kernel, "/v2/models/strings/infer",
                      {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "BYTES", "data": ["a", 1]}]}),
                 400, "input 'INPUT0': element 1 (a number) is not a valid BYTES value")


def test_fp16_as_json_data_is_400_and_as_binary_data_runs(kernel, client):
    response = post(kernel, "/v2/models/half/infer",
                    {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP16", "data": [1.5, 2.0]}]})
    assert_error(response, 400, "receiving FP16 data via JSON is not supported. Please use the binary data format for input x")
    array = np.array([[1.5, -2.25, 65504.0]], dtype=np.float16)
    tensor = tritonclient_http.InferInput("x", [1, 3], "FP16")
    tensor.set_data_from_numpy(array, binary_data=True)
    result = client.infer("half", [tensor], outputs=[tritonclient_http.InferRequestedOutput("y", binary_data=True)])
    assert result.as_numpy("y").tobytes() == array.tobytes()
    # An FP16 output asked for as JSON: refused (as Triton), before the model runs.
    body, headers = binary_request([("x", [1, 3], "FP16", array.tobytes())])
    assert_error(post(kernel, "/v2/models/half/infer", body, headers), 400,
                 "sending FP16 data via JSON is not supported. Please use the binary data format for output y")


def test_bf16_runs_as_binary_data_only(kernel):
    bits = np.array([0x3FC0, 0xC010, 0x0000, 0x7F80], dtype="<u2")  # 1.5, -2.25, 0, +inf
    body, headers = binary_request([("x", [2, 2], "BF16", bits.tobytes())],
                                   outputs=[{"name": "y", "parameters": {"binary_data": True}}])
    response = post(kernel, "/v2/models/bhalf/infer", body, headers)
    assert response.status_code == 200, response.text
    header, tail = binary_outputs(response)
    assert header["outputs"][0]["datatype"] == "BF16" and header["outputs"][0]["shape"] == [2, 2]
    assert tail == bits.tobytes()
    response = post(kernel, "/v2/models/bhalf/infer",
                    {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "BF16", "data": [1.5]}]})
    assert_error(response, 400, "receiving BF16 data via JSON is not supported. Please use the binary data format for input x")


def test_a_requested_output_named_twice_is_400(kernel):
    response = post(kernel, "/v2/models/strings/infer",
                    {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}],
                     "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0", "parameters": {"binary_data": True}}]})
    assert_error(response, 400, "output 'OUTPUT0' already exists in request")


def test_a_tensor_meant_for_an_unregistered_shared_memory_region_is_404(client):
    # Triton refuses a region it does not know; answering in the body instead would leave the client reading its
    # region's stale bytes.
    strings = np.array([[b"a"]], dtype=np.object_)
    inp = tritonclient_http.InferInput("INPUT0", [1, 1], "BYTES")
    inp.set_data_from_numpy(strings)
    out = tritonclient_http.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("r0", 64)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("strings", [inp], outputs=[out])
    assert raised.value.status() == "404" and "Unable to find shared memory region: 'r0'" in raised.value.message()
    into = tritonclient_http.InferInput("INPUT0", [1, 1], "BYTES")
    into.set_shared_memory("in0", 16)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("strings", [into])
    assert raised.value.status() == "404" and "Unable to find shared memory region: 'in0'" in raised.value.message()
    assert client.infer("strings", [inp]).as_numpy("OUTPUT0").tolist() == [[b"a"]]


def test_bytes_after_the_last_binary_tensor_are_400(kernel):
    body, headers = binary_request([("INPUT0", [1, 1], "BYTES", struct.pack("<I", 1) + b"a")], trailing=b"\x00" * 7)
    assert_error(post(kernel, "/v2/models/strings/infer", body, headers), 400,
                 "unexpected additional input data for model 'strings'")
    body, headers = binary_request([("x", [1, 1], "FP16", b"\x00\x3c")], trailing=b"z")
    assert_error(post(kernel, "/v2/models/half/infer", body, headers), 400,
                 "unexpected additional input data for model 'half': the request has 1 binary bytes that no input claims")


@pytest.mark.parametrize("method,path,body,status,fragment", [
    ("POST", "/v2/models/nope/infer", {"inputs": []}, 404, "Request for unknown model: 'nope' is not found"),
    ("GET", "/v2/models/strings/infer", None, 405, "method GET not allowed"),
    ("POST", "/v2/models/strings/infer", '{"inputs": [', 400, "failed to parse the request JSON"),
    ("POST", "/v2/models/strings/infer", {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1]}]},
     400, "inference input 'INPUT0' data-type is 'FP32', but model 'strings' expects 'BYTES'"),
    ("POST", "/v2/models/strings/infer", {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "BYTES", "data": ["a"]}]},
     400, "unexpected number of elements for input 'INPUT0': the shape [1,2] needs 2, the data has 1"),
    ("POST", "/v2/models/strings/infer", {"inputs": [{"name": "INPUT0", "shape": [9, 1], "datatype": "BYTES",
                                                      "data": ["a"] * 9}]},
     400, "inference request batch-size must be <= 8 for 'strings'"),
    ("POST", "/v2/models/strings/infer", {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}]},
     400, "unexpected inference input 'X' for model 'strings'"),
])
def test_every_inference_error_is_a_json_error_body(kernel, method, path, body, status, fragment):
    data = None if body is None else body if isinstance(body, str) else json.dumps(body)
    response = requests.request(method, url(kernel, path), data=data, timeout=10)
    assert_error(response, status, fragment)


def test_tritonclient_sees_the_error_messages(client):
    tensor = tritonclient_http.InferInput("x", [1, 2], "FP16")
    tensor.set_data_from_numpy(np.zeros((1, 2), dtype=np.float16), binary_data=False)
    with pytest.raises(InferenceServerException, match="receiving FP16 data via JSON is not supported"):
        client.infer("half", [tensor])


@pytest.mark.parametrize("request_compression", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_compression", [None, "gzip", "deflate"])
@pytest.mark.parametrize("binary", [False, True])
def test_compressed_bodies_as_tritonclient_sends_and_reads_them(client, request_compression, response_compression,
                                                                 binary):
    array = strings_array(ELEMENTS + [b"last"], 4)
    tensor = tritonclient_http.InferInput("INPUT0", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array, binary_data=binary)
    output = tritonclient_http.InferRequestedOutput("OUTPUT0", binary_data=binary)
    result = client.infer("strings", [tensor], outputs=[output], request_compression_algorithm=request_compression,
                          response_compression_algorithm=response_compression)
    got = [value.encode() if isinstance(value, str) else value for value in result.as_numpy("OUTPUT0").reshape(-1)]
    assert got == list(array.reshape(-1))


def test_compressed_bodies_on_the_wire(kernel):
    import gzip
    import zlib
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}).encode()
    # requests asks for "gzip, deflate" unless told otherwise.
    plain = post(kernel, "/v2/models/demo/infer", body, {"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and "Content-Encoding" not in plain.headers
    for name, compress in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        # requests expands the answer itself: its headers say what came on the wire.
        answer = post(kernel, "/v2/models/demo/infer", compress(body),
                      {"Content-Encoding": name, "Accept-Encoding": name})
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Encoding"] == name
        assert answer.json()["outputs"] == plain.json()["outputs"]
        assert_error(post(kernel, "/v2/models/demo/infer", compress(body)[:-6], {"Content-Encoding": name}), 400,
                     f"failed to decompress the {name} request body")
    # Triton's choice among several: the first with the highest weight.
    answer = post(kernel, "/v2/models/demo/infer", body, {"Accept-Encoding": "br, deflate;q=0.5, gzip;q=0.9"})
    assert answer.headers["Content-Encoding"] == "gzip"
    refused = post(kernel, "/v2/models/demo/infer", body, {"Content-Encoding": "br"})
    assert_error(refused, 415, "Unsupported compression type")
    assert refused.headers["Accept-Encoding"] == "gzip, deflate"
    # A bomb: 64 MiB of zeros in about 64 KiB, past the location's 16m once expanded: 413 before it is all expanded.
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    assert len(bomb) < (1 << 20)
    assert_error(post(kernel, "/v2/models/demo/infer", bomb, {"Content-Encoding": "gzip"}), 413,
                 "Decompressed data size exceeds the maximum allowed value")
    assert post(kernel, "/v2/models/demo/infer", body).status_code == 200
    # A compressed body of more than 64 KiB (expanded off the event loop): the same answer, and the same errors.
    rows = np.random.default_rng(5).random((3, 3, 48, 192), dtype=np.float32)
    large = json.dumps({"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32",
                                    "data": rows.flatten().tolist()}]}).encode()
    packed = gzip.compress(large)
    assert len(packed) > 64 << 10
    plain = post(kernel, "/v2/models/ppocr_cls/infer", large, {"Accept-Encoding": "identity"})
    answer = post(kernel, "/v2/models/ppocr_cls/infer", packed, {"Content-Encoding": "gzip"})
    assert plain.status_code == 200 and answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == plain.json()["outputs"]
    assert_error(post(kernel, "/v2/models/ppocr_cls/infer", packed[:-6], {"Content-Encoding": "gzip"}), 400,
                 "failed to decompress the gzip request body")
    # An answer of more than 64 KiB (compressed off the event loop), gzip and deflate.
    text = "kernel " * 40000
    echo = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}).encode()
    for name in ("gzip", "deflate"):
        answer = post(kernel, "/v2/models/strings/infer", echo, {"Accept-Encoding": name})
        assert answer.status_code == 200 and answer.headers["Content-Encoding"] == name, answer.headers
        assert int(answer.headers["Content-Length"]) < len(text) // 10
        assert answer.json()["outputs"][0]["data"] == [text]


@pytest.mark.parametrize("binary", [False, True])
def test_classification_as_tritonclient_asks_for_it(client, binary):
    # class_count=K is Triton's classification extension: the K largest elements of each row as "value:index"
    # (six decimals, as std::to_string writes them), a BYTES output of shape [rows, K].
    rows = np.stack([np.linspace(-1, 1, 64, dtype=np.float32), np.linspace(1, -1, 64, dtype=np.float32)])
    tensor = tritonclient_http.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    plain = client.infer("demo", [tensor]).as_numpy("output")
    result = client.infer("demo", [tensor], outputs=[tritonclient_http.InferRequestedOutput("output", binary_data=binary,
                                                                                           class_count=3)])
    output = result.get_output("output")
    assert output["datatype"] == "BYTES" and output["shape"] == [2, 3], output
    got = [[value.decode() if isinstance(value, bytes) else value for value in row] for row in result.as_numpy("output")]
    expected = [[f"{float(row[index]):f}:{index}" for index in np.argsort(-row, kind="stable")[:3]] for row in plain]
    assert got == expected
    # More classes than elements is every element; 0 is the tensor itself.
    many = client.infer("demo", [tensor], outputs=[tritonclient_http.InferRequestedOutput("output", class_count=50)])
    assert many.get_output("output")["shape"] == [2, 10]
    none = client.infer("demo", [tensor], outputs=[tritonclient_http.InferRequestedOutput("output", class_count=0)])
    assert none.get_output("output")["datatype"] == "FP32"


def test_classification_of_what_cannot_be_ranked_is_400(kernel):
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}],
            "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 2}}]}
    assert_error(post(kernel, "/v2/models/strings/infer", body), 400, "class result not available for output 'OUTPUT0'")
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}],
            "outputs": [{"name": "output", "parameters": {"classification": "3"}}]}
    assert_error(post(kernel, "/v2/models/demo/infer", body), 400, "classification must be a non-negative integer")


def test_compressed_bodies_are_bounded_where_the_location_sets_no_limit(tmp_path):
    """`client_max_body_size: 0` lifts the location's limit, not the expansion's: a compressed body expands to at
    most `inference.max_input_size` (64 MiB by default, Triton's `--http-max-input-size`), named in the 413."""
    import gzip
    from conftest import Kernel, with_core_section
    text = models_yaml().replace("client_max_body_size: 16m", "client_max_body_size: 0")
    defaults = tmp_path / "defaults"
    defaults.mkdir()
    (defaults / "kernel.yaml").write_text(with_core_section(text, str(defaults)))
    bounded = tmp_path / "bounded"
    bounded.mkdir()
    (bounded / "kernel.yaml").write_text(with_core_section(text.replace("inference:\n", "inference:\n  max_input_size: 1m\n", 1),
                                                           str(bounded)))
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}).encode()
    for folder, limit in ((defaults, 64 << 20), (bounded, 1 << 20)):
        started = Kernel(str(folder / "kernel.yaml"), "both", str(folder), (), None)
        try:
            bomb = gzip.compress(b"\0" * (limit + 1), compresslevel=9)
            assert_error(post(started, "/v2/models/demo/infer", bomb, {"Content-Encoding": "gzip"}), 413,
                         f"({limit} bytes, inference.max_input_size)")
            assert post(started, "/v2/models/demo/infer", gzip.compress(body), {"Content-Encoding": "gzip"}).status_code == 200
            # An uncompressed body is the location's to bound, and it sets none.
            large = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}],
                                "parameters": {"padding": "x" * (2 << 20)}}).encode()
            assert post(started, "/v2/models/demo/infer", large).status_code == 200
        finally:
            started.stop()


def test_a_configurations_dimensions_are_what_requests_must_have(models, tmp_path):
    """A model whose dimensions are free serves the shapes its configuration's `inputs:`/`outputs:` entries fix, as
    Triton serves a config.pbtxt's `dims`: metadata reports them, and a request of another shape is a 400 that
    never reaches ONNX Runtime."""
    from onnx import TensorProto
    from conftest import Kernel, with_core_section
    free = make_identity(str(tmp_path / "free.onnx"), TensorProto.FLOAT, "x", "y")
    extra = (f"    - name: narrowed\n      path: {free}\n      max_batch_size: 8\n"
             "      inputs: [{name: x, datatype: FP32, dims: [4]}]\n"
             "      outputs: [{name: y, datatype: FP32, dims: [-1]}]\n")
    (tmp_path / "kernel.yaml").write_text(with_core_section(models_yaml(extra), str(tmp_path)))
    started = Kernel(str(tmp_path / "kernel.yaml"), "both", str(tmp_path), (), None)
    try:
        client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{started.port('http')}")
        metadata = client.get_model_metadata("narrowed")
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], metadata
        assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}], metadata
        assert client.get_model_config("narrowed")["input"][0]["dims"] == [4]
        array = np.arange(8, dtype=np.float32).reshape(2, 4)
        tensor = tritonclient_http.InferInput("x", list(array.shape), "FP32")
        tensor.set_data_from_numpy(array, binary_data=True)
        assert np.array_equal(client.infer("narrowed", [tensor]).as_numpy("y"), array)
        for shape, message in (([2, 5], "unexpected shape for input 'x' for model 'narrowed'. Expected [-1,4], got [2,5]"),
                               ([2, 4, 1], "unexpected shape for input 'x' for model 'narrowed'"),
                               ([9, 4], "inference request batch-size must be <= 8 for 'narrowed'")):
            data = np.zeros(shape, dtype=np.float32)
            body = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data.flatten().tolist()}]}
            assert_error(post(started, "/v2/models/narrowed/infer", body), 400, message)
        statistics = client.get_inference_statistics("narrowed")["model_stats"][0]
        assert statistics["inference_count"] == 2, statistics
    finally:
        started.stop()


def test_the_logging_extension_sets_the_error_logs_level(start_kernel):
    """Triton's `/v2/logging` through tritonclient: the error log's level read as Triton's switches and changed at
    run time (a 404 for an unknown model is an info line)."""
    kernel = start_kernel(models_yaml())
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    try:
        assert "logging" in client.get_server_metadata()["extensions"]
        assert client.get_log_settings() == {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
                                             "log_verbose_level": 0, "log_format": "default"}
        after = client.update_log_settings({"log_info": False})
        assert after["log_info"] is False and after["log_warning"] is True, after
        assert requests.get(url(kernel, "/v2/models/unknown-while-quiet"), timeout=10).status_code == 404
        assert client.update_log_settings({"log_info": True})["log_info"] is True
        assert requests.get(url(kernel, "/v2/models/unknown-while-told"), timeout=10).status_code == 404
        log = kernel.wait_for_log("unknown-while-told")
        assert "unknown-while-quiet" not in log, log
        assert "[notice]" in log and "error log level set to notice through the logging extension (was info)" in log, log
        # What the error log cannot do is refused in Triton's shape, and changes nothing.
        assert_error(post(kernel, "/v2/logging", {"log_file": "/tmp/elsewhere.log"}), 501, "can not be updated")
        assert_error(post(kernel, "/v2/logging", {"log_info": True, "log_error": False}), 400, "one threshold level")
        assert_error(post(kernel, "/v2/logging", {"log_verbose_level": "high"}), 400, "non-unsigned-integer")
        assert_error(post(kernel, "/v2/logging", b"{"), 400, "failed to parse the request JSON buffer (dynamic logging)")
        assert client.get_log_settings()["log_info"] is True
        assert client.update_log_settings({"log_verbose_level": 1})["log_verbose_level"] == 1
        # Every verbose level is debug; the one set reads back.
        assert client.update_log_settings({"log_verbose_level": 3})["log_verbose_level"] == 3
        assert client.get_log_settings()["log_verbose_level"] == 3
        assert client.update_log_settings({"log_verbose_level": 0})["log_verbose_level"] == 0
        assert requests.delete(url(kernel, "/v2/logging"), timeout=10).status_code == 405
    finally:
        client.close()


def test_a_logging_change_reaches_every_worker_process(start_kernel, tmp_path):
    """With `processes: 2`, the level set through one worker is every worker's (each connection below may land on
    either process; each answers the settings of its own)."""
    core = (f"kernel:\n  pid: {tmp_path}/kernel.pid\n  error_log: {{path: stderr, level: notice}}\n"
            "  event_loop_threads: 1\n  shutdown_timeout: 10s\n  processes: 2\n")
    kernel = start_kernel(core + models_yaml())
    answered = post(kernel, "/v2/logging", {"log_verbose_level": 1})
    assert answered.status_code == 200 and answered.json()["log_verbose_level"] == 1, answered.text
    for _ in range(40):
        with requests.Session() as session:  # a new connection each time
            response = session.get(url(kernel, "/v2/logging"), timeout=10)
            assert response.json()["log_verbose_level"] == 1, response.text
