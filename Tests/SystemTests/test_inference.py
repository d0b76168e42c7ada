"""The inference module as a Triton/KServe user meets it: the real `tritonclient[http]` against `kernel --role both`.

Outputs are compared bit for bit with onnxruntime's Python API running the same model with one intra-op thread.
"""
import concurrent.futures
import json
import os
import subprocess
import threading

import numpy as np
import pytest
import requests

import tritonclient.http as tritonclient_http  # installed by scripts/setup.sh: a missing client fails, never skips
from tritonclient.utils import InferenceServerException

from inference_support import DEMO, PPOCR_CLS, Reference, ensure_models, make_slow_model, models_yaml  # noqa: E402

ensure_models()


@pytest.fixture
def kernel(start_kernel):
    return start_kernel(models_yaml(), role="both")


@pytest.fixture
def client(kernel):
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}", concurrency=16)
    yield client
    client.close()


@pytest.fixture(scope="module")
def demo_reference():
    return Reference(DEMO)


def demo_rows(count, seed):
    return np.random.default_rng(seed).standard_normal((count, 64)).astype(np.float32)


def demo_input(array, binary):
    tensor = tritonclient_http.InferInput("input", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def post(kernel, path, body, headers=None):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"http://127.0.0.1:{kernel.port('http')}{path}", data=data, headers=headers or {}, timeout=30)


def assert_error(response, status, fragment):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    message = response.json()["error"]
    assert fragment in message, message


def test_server_live_ready_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "kernel"
    assert metadata["version"]
    assert "binary_tensor_data" in metadata["extensions"]
    assert "statistics" in metadata["extensions"] and "parameters" in metadata["extensions"]


def test_model_metadata_and_readiness(client):
    assert client.is_model_ready("demo")
    assert client.is_model_ready("demo", "1")
    metadata = client.get_model_metadata("demo")
    assert metadata["name"] == "demo"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    cls = client.get_model_metadata("ppocr_cls", "1")
    assert cls["inputs"][0]["shape"] == [-1, 3, -1, -1]
    assert cls["outputs"][0]["shape"] == [-1, 2]
    config = client.get_model_config("demo")
    assert config["max_batch_size"] == 32
    assert config["input"][0]["dims"] == [64]


@pytest.mark.parametrize("binary", [False, True])
def test_infer_matches_onnxruntime(client, demo_reference, binary):
    array = demo_rows(3, seed=1)
    outputs = [tritonclient_http.InferRequestedOutput("output", binary_data=binary)]
    result = client.infer("demo", [demo_input(array, binary)], outputs=outputs, request_id="req-42")
    assert result.get_response()["id"] == "req-42"
    assert result.get_response()["model_name"] == "demo"
    got = result.as_numpy("output")
    assert got.dtype == np.float32 and got.shape == (3, 10)
    assert np.array_equal(got, demo_reference.run(array))


def test_infer_accepts_nested_json_data(kernel, demo_reference):
    array = demo_rows(2, seed=2)
    body = {"id": "nested", "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": array.tolist()}]}
    response = post(kernel, "/v2/models/demo/versions/1/infer", body)
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["id"] == "nested"
    output = document["outputs"][0]
    assert output["name"] == "output" and output["shape"] == [2, 10] and output["datatype"] == "FP32"
    assert np.array_equal(np.array(output["data"], dtype=np.float32).reshape(2, 10), demo_reference.run(array))


def parallel(kernel, calls, workers=16):
    """Runs `call(client)` for each call on `workers` threads, each with its own client (a client is not
    thread-safe; tritonclient's own async_infer does not overlap requests without gevent's monkey patching)."""
    local = threading.local()

    def run(call):
        if not hasattr(local, "client"):
            local.client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}",
                                                                   network_timeout=120)
        return call(local.client)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, calls))


def test_many_concurrent_requests_are_batched_with_exact_results(kernel, client, demo_reference):
    arrays = [demo_rows(1 + i % 4, seed=100 + i) for i in range(256)]

    def call(i):
        outputs = [tritonclient_http.InferRequestedOutput("output", binary_data=i % 3 == 0)]
        return lambda c: c.infer("demo", [demo_input(arrays[i], binary=i % 2 == 0)], outputs=outputs).as_numpy("output")

    results = parallel(kernel, [call(i) for i in range(len(arrays))])
    for array, got in zip(arrays, results):
        assert np.array_equal(got, demo_reference.run(array))
    stats = client.get_inference_statistics("demo")["model_stats"][0]
    assert stats["inference_count"] >= sum(a.shape[0] for a in arrays)
    sizes = [entry["batch_size"] for entry in stats["batch_stats"]]
    assert max(sizes) > 4, stats  # a run joined rows of several requests
    assert stats["execution_count"] < len(arrays)


def test_ppocr_classifier_batches_and_matches_onnxruntime(start_kernel):
    # A longer queue delay than the shared fixture's, so that the concurrent requests below join batches.
    text = models_yaml().replace("max_batch_size: 8\n      dynamic_batching: {max_queue_delay: 5ms}",
                                 "max_batch_size: 8\n      dynamic_batching: {max_queue_delay: 200ms}")
    assert "200ms" in text
    kernel = start_kernel(text)
    reference = Reference(PPOCR_CLS)
    images = [np.random.default_rng(i).random((1, 3, 48, 192), dtype=np.float32) for i in range(24)]

    def call(image):
        def infer(client):
            tensor = tritonclient_http.InferInput("x", list(image.shape), "FP32")
            tensor.set_data_from_numpy(image, binary_data=True)
            return client.infer("ppocr_cls", [tensor]).as_numpy(reference.output)
        return infer

    results = parallel(kernel, [call(image) for image in images], workers=24)
    # The comparison below is about batched runs: first prove that requests were joined.
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    stats = client.get_inference_statistics("ppocr_cls")["model_stats"][0]
    sizes = [entry["batch_size"] for entry in stats["batch_stats"]]
    assert max(sizes) > 1, stats
    assert stats["execution_count"] < len(images), stats
    for image, got in zip(images, results):
        assert got.shape == (1, 2)
        assert np.array_equal(got, reference.run(image))


def test_unknown_model_is_404(kernel, client):
    response = requests.get(f"http://127.0.0.1:{kernel.port('http')}/v2/models/nope", timeout=10)
    assert_error(response, 404, "Request for unknown model: 'nope' is not found")
    assert_error(post(kernel, "/v2/models/nope/infer", {"inputs": []}), 404, "'nope'")
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("nope")
    assert "unknown model" in kernel.log_text()


def good_input(rows=1):
    return {"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": [0.5] * (64 * rows)}


@pytest.mark.parametrize("body,fragment", [
    (b"{not json", "failed to parse the request JSON"),
    ({"inputs": []}, "expected 1 inputs but got 0 inputs for model 'demo'"),
    ({"inputs": [good_input(), {"name": "extra", "shape": [1], "datatype": "FP32", "data": [1]}]},
     "unexpected inference input 'extra' for model 'demo'"),
    ({"inputs": [dict(good_input(), datatype="FP64")]}, "data-type is 'FP64', but model 'demo' expects 'FP32'"),
    ({"inputs": [dict(good_input(), shape=[1, 63], data=[0.5] * 63)]},
     "unexpected shape for input 'input' for model 'demo'. Expected [-1,64], got [1,63]"),
    ({"inputs": [dict(good_input(), shape=[2, 64])]}, "unexpected number of elements for input 'input'"),
    ({"inputs": [dict(good_input(), shape=[33, 64], data=[0.0] * 64 * 33)]}, "batch-size must be <= 32"),
    ({"inputs": [good_input()], "outputs": [{"name": "nope"}]}, "unexpected inference output 'nope'"),
])
def test_bad_requests_are_400(kernel, body, fragment):
    assert_error(post(kernel, "/v2/models/demo/infer", body), 400, fragment)


def test_binary_sizes_that_disagree_are_400(kernel):
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 128}}]}).encode()
    for payload, fragment in [(b"\0" * 128, "binary_data_size 128 does not match"),
                              (b"\0" * 256 + b"\0", "binary_data_size 128 does not match")]:
        response = post(kernel, "/v2/models/demo/infer", header + payload,
                        {"Inference-Header-Content-Length": str(len(header))})
        assert_error(response, 400, fragment)
    good = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 256}}]}).encode()
    response = post(kernel, "/v2/models/demo/infer", good + b"\0" * 300, {"Inference-Header-Content-Length": str(len(good))})
    assert_error(response, 400, "binary bytes that no input claims")
    response = post(kernel, "/v2/models/demo/infer", good, {"Inference-Header-Content-Length": "99999"})
    assert_error(response, 400, "larger than the request body")


def test_model_that_fails_to_load_is_not_ready_and_others_serve(start_kernel, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an onnx model")
    kernel = start_kernel(models_yaml(f"    - name: broken\n      path: {broken}\n"), role="both")
    assert f"model 'broken' failed to load from {broken}" in kernel.log_text()
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    assert not client.is_model_ready("broken")
    assert not client.is_server_ready()
    assert client.is_model_ready("demo")
    response = post(kernel, "/v2/models/broken/infer", {"inputs": [good_input()]})
    # Triton: no version named and none ready is NOT_FOUND (404); the reason follows.
    assert_error(response, 404, "Request for unknown model: 'broken' has no available versions (version 1 is not at ready state")
    assert client.infer("demo", [demo_input(demo_rows(1, 3), False)]).as_numpy("output").shape == (1, 10)


def slow_kernel(start_kernel, tmp_path, options):
    path = make_slow_model(str(tmp_path / "slow.onnx"))
    extra = f"    - name: slow\n      path: {path}\n      instances: 1\n" + "".join(f"      {line}\n" for line in options)
    kernel = start_kernel(models_yaml(extra), role="both")
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}", network_timeout=120)
    return kernel, client


def slow_requests(kernel, count, rows=384):
    array = np.random.default_rng(5).standard_normal((rows, 256)).astype(np.float32)

    def infer(client):
        tensor = tritonclient_http.InferInput("x", list(array.shape), "FP32")
        tensor.set_data_from_numpy(array, binary_data=True)
        try:
            client.infer("slow", [tensor])
            return 200, ""
        except InferenceServerException as error:
            return int(error.status()), error.message()

    return parallel(kernel, [infer] * count, workers=count)


def test_full_queue_is_503(start_kernel, tmp_path):
    kernel, client = slow_kernel(start_kernel, tmp_path, ["max_queue: 1"])
    outcomes = slow_requests(kernel, 10)
    statuses = [status for status, _ in outcomes]
    assert set(statuses) <= {200, 503}, outcomes
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, outcomes
    assert all("the queue is full (max_queue 1)" in message for status, message in outcomes if status == 503)
    stats = client.get_inference_statistics("slow")["model_stats"][0]
    assert stats["queue_rejections"] == statuses.count(503)


def test_request_past_its_timeout_is_504_and_not_run(start_kernel, tmp_path):
    kernel, client = slow_kernel(start_kernel, tmp_path, ["timeout: 20ms"])
    outcomes = slow_requests(kernel, 6)
    statuses = [status for status, _ in outcomes]
    assert set(statuses) <= {200, 504}, outcomes
    assert statuses.count(504) >= 1, outcomes
    assert all("timed out" in message for status, message in outcomes if status == 504)
    stats = client.get_inference_statistics("slow")["model_stats"][0]
    assert stats["execution_count"] == statuses.count(200)
    assert "timed out" in kernel.log_text()


def test_check_reports_a_missing_model_file_and_loads_nothing(tmp_path):
    from conftest import KERNEL_BIN, with_core_section
    missing = tmp_path / "missing.onnx"
    config = tmp_path / "check.yaml"
    config.write_text(with_core_section(models_yaml(f"    - name: gone\n      path: {missing}\n"), str(tmp_path)))
    environment = dict(os.environ, KERNEL_ONNXRUNTIME_LIBRARY="/nonexistent/libonnxruntime.so")  # never opened by -t
    result = subprocess.run([KERNEL_BIN, "-t", "-c", str(config)], capture_output=True, text=True, timeout=60,
                            env=environment)
    assert result.returncode == 1, result.stderr
    assert f"inference.models[2].path: model file \"{missing}\" cannot be read" in result.stderr


def test_missing_model_file_at_run_is_not_fatal(start_kernel, tmp_path):
    missing = tmp_path / "missing.onnx"
    kernel = start_kernel(models_yaml(f"    - name: gone\n      path: {missing}\n"), role="both")
    assert f"model 'gone' failed to load from {missing}" in kernel.log_text()
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    assert not client.is_model_ready("gone")
    assert client.is_model_ready("demo")


def test_missing_runtime_library_stops_startup_with_install_hint(tmp_path):
    from conftest import KERNEL_BIN, with_core_section
    config = tmp_path / "kernel.yaml"
    config.write_text(with_core_section(models_yaml(), str(tmp_path)))
    environment = dict(os.environ, KERNEL_ONNXRUNTIME_LIBRARY="/nonexistent/libonnxruntime.so")
    result = subprocess.run([KERNEL_BIN, "--role", "both", "--config", str(config)], capture_output=True, text=True,
                            timeout=60, env=environment)
    assert result.returncode != 0
    assert "pip install onnxruntime" in result.stderr
    assert "/nonexistent/libonnxruntime.so" in result.stderr


def test_edge_role_does_not_run_models(tmp_path):
    from conftest import KERNEL_BIN, with_core_section
    config = tmp_path / "kernel.yaml"
    config.write_text(with_core_section(models_yaml(), str(tmp_path)))
    result = subprocess.run([KERNEL_BIN, "-t", "--role", "edge", "-c", str(config)], capture_output=True, text=True,
                            timeout=60)
    # The edge role does not run the inference module, so its location directive is unknown there.
    assert result.returncode == 1
    assert "inference" in result.stderr


def test_a_prefix_location_stands_for_v2(start_kernel, demo_reference):
    # Mounted on `/models/`, the protocol's `/v2/...` paths are served as `/models/...`.
    kernel = start_kernel(models_yaml(location="/models/"), role="both")
    base = f"http://127.0.0.1:{kernel.port('http')}"
    assert requests.get(f"{base}/models/health/ready", timeout=10).status_code == 200
    assert requests.get(f"{base}/models/", timeout=10).json()["name"] == "kernel"
    assert requests.get(f"{base}/models", timeout=10).status_code == 404, "location /models/ does not match /models"
    assert requests.get(f"{base}/models/models/demo", timeout=10).json()["name"] == "demo"
    rows = demo_rows(3, seed=11)
    body = {"inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32", "data": rows.flatten().tolist()}]}
    answer = post(kernel, "/models/models/demo/infer", body)
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    assert np.array_equal(np.array(output["data"], dtype=np.float32).reshape(output["shape"]), demo_reference.run(rows))
    # The protocol's own prefix is not looked for below the mount, nor outside it.
    assert requests.get(f"{base}/models/v2/health/ready", timeout=10).status_code == 404
    assert requests.get(f"{base}/v2/health/ready", timeout=10).status_code == 404


@pytest.mark.parametrize("location", ['"= /v2"', '"~ ^/v2/"'])
def test_inference_needs_a_prefix_location(tmp_path, location):
    from conftest import KERNEL_BIN, with_core_section
    config = tmp_path / "kernel.yaml"
    config.write_text(with_core_section(models_yaml(location=location), str(tmp_path)))
    result = subprocess.run([KERNEL_BIN, "-t", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "routing.servers[0].locations[0].inference: \"inference\" serves the paths under its location's prefix: " \
           "it needs a prefix location" in result.stderr, result.stderr


def test_worker_behind_real_nginx_over_uwsgi(start_kernel, tmp_path, demo_reference):
    """The nginx + uWSGI topology with the kernel as the worker: nginx `uwsgi_pass` → `kernel --role worker`."""
    from uwsgi_support.peers import Nginx, uwsgi_location
    worker_yaml = models_yaml().replace('http:\n  listen: "127.0.0.1:0"', 'uwsgi:\n  listen: "127.0.0.1:0"')
    kernel = start_kernel(worker_yaml, role="worker")
    nginx = Nginx(str(tmp_path), uwsgi_location("/v2/", f"127.0.0.1:{kernel.port('uwsgi')}"))
    try:
        client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{nginx.port}")
        assert client.is_server_ready()
        assert client.get_model_metadata("demo")["platform"] == "onnxruntime_onnx"
        for binary in (False, True):
            array = demo_rows(4, seed=40)
            outputs = [tritonclient_http.InferRequestedOutput("output", binary_data=binary)]
            result = client.infer("demo", [demo_input(array, binary)], outputs=outputs)
            assert np.array_equal(result.as_numpy("output"), demo_reference.run(array))
        response = requests.get(f"http://127.0.0.1:{nginx.port}/v2/models/nope", timeout=10)
        assert_error(response, 404, "'nope' is not found")
    finally:
        nginx.stop()


def test_reload_loads_the_models_again_and_keeps_serving(kernel, client, demo_reference):
    array = demo_rows(2, seed=77)
    before = client.infer("demo", [demo_input(array, False)]).as_numpy("output")
    assert kernel.control("reload").returncode == 0
    kernel.wait_for_log("configuration reloaded", timeout=30)
    assert kernel.log_text().count("model 'demo' version 1 ready") == 2
    fresh = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    after = fresh.infer("demo", [demo_input(array, True)]).as_numpy("output")
    assert np.array_equal(before, after) and np.array_equal(after, demo_reference.run(array))
    # The new generation counts from zero.
    assert fresh.get_inference_statistics("demo")["model_stats"][0]["inference_count"] == 2


# Sizes computed from request input: errors, never a crash.

def assert_still_serving(kernel, demo_reference):
    """A fresh client (a new connection) gets exact results after the bad request: the process did not die."""
    assert kernel.process.poll() is None, kernel.log_text()
    fresh = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    try:
        array = demo_rows(2, seed=90)
        assert np.array_equal(fresh.infer("demo", [demo_input(array, True)]).as_numpy("output"), demo_reference.run(array))
    finally:
        fresh.close()


def test_repeated_requested_output_is_400_and_the_kernel_keeps_serving(start_kernel, demo_reference):
    """With the shipped `client_max_body_size: 100m`, 3.4 million repeats of one requested output (a 58 MB body) asked
    for 32 rows x 10 FP32 = 1280 bytes each time: more than 4 GiB of response, once written until the process died."""
    kernel = start_kernel(models_yaml().replace("client_max_body_size: 16m", "client_max_body_size: 100m"), role="both")
    array = demo_rows(32, seed=8)
    inputs = json.dumps([{"name": "input", "shape": [32, 64], "datatype": "FP32", "data": array.flatten().tolist()}])
    repeats = 3_400_000
    body = ('{"parameters": {"binary_data_output": true}, "inputs": ' + inputs + ', "outputs": ['
            + ",".join(['{"name":"output"}'] * repeats) + "]}").encode()
    assert len(body) > 55_000_000
    response = post(kernel, "/v2/models/demo/infer", body)
    assert_error(response, 400, "output 'output' already exists in request")
    assert_still_serving(kernel, demo_reference)
    # Two entries are enough to be refused, also when they differ in their parameters.
    response = post(kernel, "/v2/models/demo/infer", {
        "inputs": [good_input()],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}, {"name": "output"}]})
    assert_error(response, 400, "output 'output' already exists in request")
    assert "output 'output' already exists in request" in kernel.log_text()
    assert_still_serving(kernel, demo_reference)


def make_identity_model(path):
    """FP32 "x" [-1, -1] → Identity → "y": every shape with two dimensions reaches the size checks and ONNX Runtime."""
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", "columns"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "columns"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def identity_kernel(start_kernel, tmp_path):
    path = make_identity_model(str(tmp_path / "identity.onnx"))
    extra = (f"    - name: identity\n      path: {path}\n      max_batch_size: 8\n"
             "      dynamic_batching: {max_queue_delay: 1ms}\n")
    return start_kernel(models_yaml(extra), role="both")


@pytest.mark.parametrize("shape", [[0, 2 ** 62], [2 ** 62, 0], [2 ** 40, 2 ** 40], [0, 2 ** 30], [2 ** 63 - 1, 0]])
def test_shapes_whose_sizes_overflow_are_400(identity_kernel, demo_reference, shape):
    for binary in (False, True):
        item = {"name": "x", "shape": shape, "datatype": "FP32"}
        item.update({"parameters": {"binary_data_size": 0}} if binary else {"data": []})
        response = post(identity_kernel, "/v2/models/identity/infer", {"inputs": [item]})
        if shape[0] > 8:
            assert_error(response, 400, "inference request batch-size must be <= 8 for 'identity'")
        else:
            assert_error(response, 400, f"input 'x' has a shape too large: [{shape[0]},{shape[1]}] of FP32")
    # The same shapes where the model fixes a dimension, and on a model with four dimensions.
    assert_error(post(identity_kernel, "/v2/models/demo/infer",
                      {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": []}]}), 400, "input")
    cls = {"name": "x", "shape": [0, 3] + shape, "datatype": "FP32", "data": []}
    assert_error(post(identity_kernel, "/v2/models/ppocr_cls/infer", {"inputs": [cls]}), 400, "shape too large")
    assert_still_serving(identity_kernel, demo_reference)


def test_concurrent_empty_requests_with_huge_rows_are_400(identity_kernel, demo_reference):
    """Requests that arrive together are joined into one run, whose outputs are split by rows of the output's row
    size: `[0, 2^62]` FP32 rows are 2^64 bytes. Refused at decoding, they never reach a batch."""
    item = {"name": "x", "shape": [0, 2 ** 62], "datatype": "FP32", "data": []}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post(identity_kernel, "/v2/models/identity/infer", {"inputs": [item]}),
                                  range(16)))
    for response in responses:
        assert_error(response, 400, "shape too large")
    assert_still_serving(identity_kernel, demo_reference)


def test_negative_dimensions_and_bad_binary_sizes_are_400(identity_kernel, demo_reference):
    for shape in ([-1, 4], [1, -4], [0, -1], [1, 2 ** 63]):
        response = post(identity_kernel, "/v2/models/identity/infer",
                        {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": []}]})
        assert_error(response, 400, "invalid shape: dimensions must be non-negative integers")
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    for value in ("-1", "+10", "1e3", "99999999999999999999999"):
        response = post(identity_kernel, "/v2/models/identity/infer", header + b"\0" * 8,
                        {"Inference-Header-Content-Length": value})
        assert_error(response, 400, f'invalid Inference-Header-Content-Length header "{value}"')
    # The header twice: the same length is that length; two lengths are none.
    import http.client
    for second, status in ((str(len(header)), 200), ("5", 400), ("abc", 400)):
        connection = http.client.HTTPConnection("127.0.0.1", identity_kernel.port("http"), timeout=30)
        connection.putrequest("POST", "/v2/models/identity/infer")
        connection.putheader("Content-Length", str(len(header) + 8))
        connection.putheader("Inference-Header-Content-Length", str(len(header)))
        connection.putheader("Inference-Header-Content-Length", second)
        connection.endheaders(header + b"\0" * 8)
        response = connection.getresponse()
        text = response.read().decode()
        connection.close()
        assert response.status == status, (second, text)
        if status == 400:
            assert "appears more than once with different values" in json.loads(text)["error"], text
    for size in (-8, 2 ** 63 - 1, 2 ** 64):
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                       "parameters": {"binary_data_size": size}}]}).encode()
        response = post(identity_kernel, "/v2/models/identity/infer", body + b"\0" * 8,
                        {"Inference-Header-Content-Length": str(len(body))})
        assert_error(response, 400, "binary_data_size")
    assert_still_serving(identity_kernel, demo_reference)


def test_empty_tensors_with_wide_rows_run_and_come_back_empty(identity_kernel, demo_reference):
    """Zero rows of 2^20 columns hold no element: they run (alone or joined with others) and come back empty."""
    def infer(rows, binary):
        def call(client):
            array = np.zeros((rows, 2 ** 20), dtype=np.float32)
            tensor = tritonclient_http.InferInput("x", list(array.shape), "FP32")
            tensor.set_data_from_numpy(array, binary_data=binary)
            output = tritonclient_http.InferRequestedOutput("y", binary_data=binary)
            return client.infer("identity", [tensor], outputs=[output]).as_numpy("y").shape
        return call

    assert parallel(identity_kernel, [infer(0, False), infer(0, True)], workers=1) == [(0, 2 ** 20)] * 2
    rows = [0, 1, 0, 2, 0, 0]
    shapes = parallel(identity_kernel, [infer(count, True) for count in rows], workers=len(rows))
    assert shapes == [(count, 2 ** 20) for count in rows]
    stats = requests.get(identity_kernel.url("/v2/models/identity/stats"), timeout=10).json()["model_stats"][0]
    assert stats["inference_count"] == 3
    assert_still_serving(identity_kernel, demo_reference)
