"""Triton's system shared memory extension, against `kernel --role both` with the real `tritonclient[http]` and its
`tritonclient.utils.shared_memory` regions: registration, status, inputs read from and outputs written into
regions (numbers and BYTES), Triton's statuses and words for what is refused, the CUDA endpoints of a server
without GPUs, `allow_client_shm` off, and the regions of one worker process reaching the others.
"""
import json
import os
import signal
import uuid

import numpy as np
import pytest
import requests

import tritonclient.http as tritonclient_http
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from conftest import child_pids
from inference_support import ROOT, ensure_models, models_yaml

ensure_models()

STRINGS = os.path.join(ROOT, "models", "strings", "1", "model.onnx")
ALLOWED = "  allow_client_shm: true\n"


def allowing(yaml_text):
    """`models_yaml` with `allow_client_shm: true` in its `inference:` section."""
    return yaml_text.replace("inference:\n", "inference:\n" + ALLOWED, 1)


def strings_model():
    assert os.path.exists(STRINGS), "scripts/models/make_models.py makes the strings model"
    return f"    - name: strings\n      path: {STRINGS}\n      max_batch_size: 8\n"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    from conftest import Kernel, with_core_section
    workdir = str(tmp_path_factory.mktemp("shm_kernel"))
    path = os.path.join(workdir, "kernel.yaml")
    with open(path, "w") as f:
        f.write(with_core_section(allowing(models_yaml(strings_model())), workdir))
    started = Kernel(path, "both", workdir, (), None)
    yield started
    started.stop()


def url(kernel, path):
    return f"http://127.0.0.1:{kernel.port('http')}{path}"


def assert_error(response, status, fragment):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert fragment in response.json()["error"], response.json()


@pytest.fixture
def client(kernel):
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    client.unregister_system_shared_memory()
    yield client
    client.unregister_system_shared_memory()
    client.close()


@pytest.fixture
def regions():
    """Makes shared memory objects (`create_shared_memory_region`), destroyed after the test."""
    made = []

    def make(byte_size):
        key = f"/kernel_test_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key[1:], key, byte_size)
        made.append(handle)
        return key, handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def rows(count):
    return np.arange(count * 64, dtype=np.float32).reshape(count, 64) / 100


def expected_output(client, array):
    tensor = tritonclient_http.InferInput("input", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=True)
    return client.infer("demo", [tensor]).as_numpy("output")


def test_inputs_are_read_from_and_outputs_written_into_registered_regions(client, regions):
    array = rows(3)
    expected = expected_output(client, array)
    in_key, in_handle = regions(array.nbytes)
    out_key, out_handle = regions(expected.nbytes)
    shm.set_shared_memory_region(in_handle, [array])
    client.register_system_shared_memory("input_data", in_key, array.nbytes)
    client.register_system_shared_memory("output_data", out_key, expected.nbytes)
    status = client.get_system_shared_memory_status()
    assert status == [{"name": "input_data", "key": in_key, "offset": 0, "byte_size": array.nbytes},
                      {"name": "output_data", "key": out_key, "offset": 0, "byte_size": expected.nbytes}]
    assert client.get_system_shared_memory_status("output_data") == status[1:]

    tensor = tritonclient_http.InferInput("input", list(array.shape), "FP32")
    tensor.set_shared_memory("input_data", array.nbytes)
    output = tritonclient_http.InferRequestedOutput("output", binary_data=True)
    output.set_shared_memory("output_data", expected.nbytes)
    result = client.infer("demo", [tensor], outputs=[output])
    # The answer names the output only: its bytes are in the region.
    assert result.get_response()["outputs"] == [{"name": "output", "datatype": "FP32", "shape": list(expected.shape)}]
    got = shm.get_contents_as_numpy(out_handle, np.float32, list(expected.shape))
    np.testing.assert_allclose(got, expected, rtol=1e-6)

    # An input in a region with the output in the body (JSON), and the other way round with a binary input.
    output = tritonclient_http.InferRequestedOutput("output", binary_data=False)
    np.testing.assert_allclose(client.infer("demo", [tensor], outputs=[output]).as_numpy("output"), expected, rtol=1e-6)
    shm.set_shared_memory_region(out_handle, [np.zeros_like(expected)])
    binary = tritonclient_http.InferInput("input", list(array.shape), "FP32")
    binary.set_data_from_numpy(array, binary_data=True)
    output = tritonclient_http.InferRequestedOutput("output")
    output.set_shared_memory("output_data", expected.nbytes)
    client.infer("demo", [binary], outputs=[output])
    np.testing.assert_allclose(shm.get_contents_as_numpy(out_handle, np.float32, list(expected.shape)), expected, rtol=1e-6)


def test_offsets_within_a_region_and_of_a_region_within_its_object(client, regions):
    one, two = rows(1), rows(2)[1:]
    key, handle = regions(4096 + 2 * one.nbytes + 1000)
    # The region starts 4096 bytes into the object; the tensors sit at offsets of the region.
    shm.set_shared_memory_region(handle, [one], offset=4096)
    shm.set_shared_memory_region(handle, [two], offset=4096 + one.nbytes)
    client.register_system_shared_memory("both", key, 2 * one.nbytes + 1000, offset=4096)
    for offset, array in ((0, one), (one.nbytes, two)):
        tensor = tritonclient_http.InferInput("input", [1, 64], "FP32")
        tensor.set_shared_memory("both", one.nbytes, offset=offset)
        output = tritonclient_http.InferRequestedOutput("output")
        output.set_shared_memory("both", 1000, offset=2 * one.nbytes)
        result = client.infer("demo", [tensor], outputs=[output])
        shape = result.get_output("output")["shape"]
        got = shm.get_contents_as_numpy(handle, np.float32, shape, offset=4096 + 2 * one.nbytes)
        np.testing.assert_allclose(got, expected_output(client, array), rtol=1e-6)


def test_bytes_tensors_through_regions_in_tritons_serialisation(client, regions):
    elements = np.array([[b"", "h\u00e9llo \u6f22\u5b57".encode(), b"a\x00b", b"x" * 300]], dtype=np.object_)
    serialised = serialize_byte_tensor(elements)
    size = len(serialised.item())
    in_key, in_handle = regions(size)
    out_key, out_handle = regions(size + 64)
    shm.set_shared_memory_region(in_handle, [serialised])
    client.register_system_shared_memory("strings_in", in_key, size)
    client.register_system_shared_memory("strings_out", out_key, size + 64)
    tensor = tritonclient_http.InferInput("INPUT0", [1, 4], "BYTES")
    tensor.set_shared_memory("strings_in", size)
    output = tritonclient_http.InferRequestedOutput("OUTPUT0")
    output.set_shared_memory("strings_out", size + 64)
    result = client.infer("strings", [tensor], outputs=[output])
    assert result.get_output("OUTPUT0") == {"name": "OUTPUT0", "datatype": "BYTES", "shape": [1, 4]}
    got = shm.get_contents_as_numpy(out_handle, np.object_, [1, 4])
    assert got.reshape(-1).tolist() == elements.reshape(-1).tolist()
    # Elements that do not fill the part the input names are refused, as a binary input's would be.
    tensor.set_shared_memory("strings_in", size - 1)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("strings", [tensor])
    assert raised.value.status() == "400"


def test_registration_is_refused_in_tritons_words(kernel, client, regions):
    key, _ = regions(256)
    client.register_system_shared_memory("taken", key, 256)
    with pytest.raises(InferenceServerException) as raised:
        client.register_system_shared_memory("taken", key, 128)
    assert raised.value.status() == "400" and "shared memory region 'taken' already in manager" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.register_system_shared_memory("absent", "/kernel_test_no_such_object", 64)
    assert raised.value.status() == "500"
    assert "Unable to open shared memory region: '/kernel_test_no_such_object'" in raised.value.message()
    for byte_size, offset in ((257, 0), (256, 1), (1, 256)):
        with pytest.raises(InferenceServerException) as raised:
            client.register_system_shared_memory("beyond", key, byte_size, offset=offset)
        assert raised.value.status() == "400"
        assert "failed to register shared memory region 'beyond': invalid args" in raised.value.message()
    base = url(kernel, "/v2/systemsharedmemory/region/r/register")
    assert_error(requests.post(base, data=json.dumps({"byte_size": 4})), 400, "Shared memory register request has no 'key' field")
    assert_error(requests.post(base, data=json.dumps({"key": key})), 400, "Shared memory register request has no 'byte_size' field")
    assert_error(requests.post(base, data=json.dumps({"key": 7, "byte_size": 4})), 400, "non-string as string")
    assert_error(requests.post(base, data=json.dumps({"key": key, "byte_size": -4})), 400, "non-unsigned-integer")
    assert_error(requests.post(base, data=json.dumps({"key": "///", "byte_size": 4})), 400, "invalid shm key '///'")
    assert_error(requests.post(base, data=json.dumps({"key": "/../etc/passwd", "byte_size": 4})), 500, "Unable to open shared memory region")
    assert_error(requests.post(base, data=json.dumps({"key": key, "byte_size": 2 ** 64 - 1})), 400, "invalid args")
    assert_error(requests.post(base, data=json.dumps({"key": key, "offset": 257, "byte_size": 0})), 400, "invalid args")
    assert_error(requests.post(base, data=json.dumps({"key": key, "offset": 0, "byte_size": 0})), 400, "unable to process address space")
    assert_error(requests.post(base, data=json.dumps({"key": "/triton_python_backend_shm_region_7", "byte_size": 4})), 400,
                 "as the key contains the reserved prefix 'triton_python_backend_shm_region_'")
    assert_error(requests.post(base, data="{"), 400, "failed to parse the request JSON buffer")
    assert_error(requests.post(url(kernel, "/v2/systemsharedmemory/register"), data="{}"), 400,
                 "'region name' is necessary to register system shared memory region")
    assert_error(requests.get(base), 405, "not allowed")
    assert_error(requests.post(url(kernel, "/v2/systemsharedmemory/region/r/status")), 405, "not allowed")
    assert requests.get(url(kernel, "/v2/systemsharedmemory/region/r/frob")).status_code == 404
    assert [region["name"] for region in client.get_system_shared_memory_status()] == ["taken"]
    with pytest.raises(InferenceServerException) as raised:
        client.get_system_shared_memory_status("absent")
    assert raised.value.status() == "404" and "Unable to find system shared memory region: 'absent'" in raised.value.message()
    # Unregistering what is not registered is done, as in Triton.
    client.unregister_system_shared_memory("absent")
    client.unregister_system_shared_memory("taken")
    assert client.get_system_shared_memory_status() == []


def test_tensors_that_do_not_fit_their_regions_are_refused(kernel, client, regions):
    array = rows(2)
    key, handle = regions(array.nbytes)
    shm.set_shared_memory_region(handle, [array])
    client.register_system_shared_memory("r", key, array.nbytes)

    def refused(inputs, outputs=None):
        with pytest.raises(InferenceServerException) as raised:
            client.infer("demo", inputs, outputs=outputs)
        return raised.value.status(), raised.value.message()

    tensor = tritonclient_http.InferInput("input", [2, 64], "FP32")
    tensor.set_shared_memory("r", array.nbytes // 2)
    status, message = refused([tensor])
    assert status == "400" and f"input byte size mismatch for input 'input' for model 'demo'. Expected {array.nbytes}, got {array.nbytes // 2}" in message
    tensor.set_shared_memory("r", array.nbytes, offset=4)
    assert refused([tensor]) == ("400", "Invalid offset + byte size for shared memory region: 'r'")
    tensor.set_shared_memory("r", 4, offset=array.nbytes)
    assert refused([tensor]) == ("400", "Invalid offset for shared memory region: 'r'")
    tensor.set_shared_memory("nowhere", array.nbytes)
    assert refused([tensor]) == ("404", "Unable to find shared memory region: 'nowhere'")
    tensor = tritonclient_http.InferInput("input", [2, 64], "FP32")  # the client keeps an offset once set
    tensor.set_shared_memory("r", array.nbytes)
    small = tritonclient_http.InferRequestedOutput("output")
    small.set_shared_memory("r", 8)
    before = requests.get(url(kernel, "/v2/models/demo/stats")).json()["model_stats"][0]["inference_stats"]["success"]["count"]
    status, message = refused([tensor], [small])
    assert status == "500" and "shared memory size specified with the request for output 'output' (8 bytes) should be at least 80 bytes" in message, message
    # The output's size is known before the run (its dimensions are the model's): refused before it, not counted.
    assert requests.get(url(kernel, "/v2/models/demo/stats")).json()["model_stats"][0]["inference_stats"]["success"]["count"] == before
    # Data and a region for one input, a region with classification or binary data for an output.
    both = {"name": "input", "shape": [2, 64], "datatype": "FP32", "data": array.reshape(-1).tolist(),
            "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": array.nbytes}}
    infer = url(kernel, "/v2/models/demo/infer")
    assert_error(requests.post(infer, data=json.dumps({"inputs": [both]})), 400,
                 "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', 'shared_memory_region' in 'parameters'. But set 'data' 'shared_memory_region'")
    neither = {"name": "input", "shape": [2, 64], "datatype": "FP32"}
    assert_error(requests.post(infer, data=json.dumps({"inputs": [neither]})), 400, "But no field is set")
    good = dict(both)
    del good["data"]
    for parameters, fragment in (({"classification": 2}, "Output can't set both 'shared_memory_region' and 'classification'"),
                                 ({"binary_data": True}, "Output can't set both 'shared_memory_region' and 'binary_data'")):
        output = {"name": "output", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 64, **parameters}}
        assert_error(requests.post(infer, data=json.dumps({"inputs": [good], "outputs": [output]})), 400, fragment)
    # Offsets and sizes are unsigned 64-bit integers, checked as Triton checks them.
    for offset, size, fragment in ((2 ** 64 - 32, 4, "Invalid offset for shared memory region: 'r'"),
                                   (8, 2 ** 64 - 4, "Integer overflow detected: byte_size (18446744073709551612) + offset (8)")):
        huge = dict(good, parameters={"shared_memory_region": "r", "shared_memory_byte_size": size, "shared_memory_offset": offset})
        assert_error(requests.post(infer, data=json.dumps({"inputs": [huge]})), 400, fragment)
    named = {"id": "abc", "inputs": [dict(good, parameters={"shared_memory_region": "r", "shared_memory_byte_size": 8})]}
    assert_error(requests.post(infer, data=json.dumps(named)), 400, "[request id: abc] input byte size mismatch")
    # The object shrunk under its registration: the read comes short, and the client hears of it.
    os.truncate("/dev/shm/" + key.lstrip("/"), 8)
    assert_error(requests.post(infer, data=json.dumps({"inputs": [good]})), 400, "no longer holds the")
    assert client.is_server_live()


def test_the_cuda_endpoints_answer_as_a_server_without_gpus(kernel, client, regions):
    assert requests.get(url(kernel, "/v2/cudasharedmemory/status")).json() == []
    assert_error(requests.get(url(kernel, "/v2/cudasharedmemory/region/x/status")), 404, "Unable to find cuda shared memory region: 'x'")
    assert_error(requests.post(url(kernel, "/v2/cudasharedmemory/region/x/register"), data="{}"), 400,
                 "failed to register CUDA shared memory region: 'x', GPUs not supported")
    client.unregister_cuda_shared_memory()
    client.unregister_cuda_shared_memory("x")
    key, _ = regions(64)
    client.register_system_shared_memory("system", key, 64)
    assert_error(requests.get(url(kernel, "/v2/cudasharedmemory/region/system/status")), 404,
                 "The region named 'system' is registered as system shared memory, not CUDA shared memory")
    extensions = requests.get(url(kernel, "/v2")).json()["extensions"]
    assert "system_shared_memory" in extensions and "cuda_shared_memory" in extensions


def test_without_allow_client_shm_registration_is_501(start_kernel, regions):
    kernel = start_kernel(models_yaml())
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    key, _ = regions(64)
    for call in (lambda: client.register_system_shared_memory("r", key, 64), client.unregister_system_shared_memory,
                 client.unregister_cuda_shared_memory):
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() == "501" and "Client shared memory is disabled" in raised.value.message()
    assert client.get_system_shared_memory_status() == []
    client.close()


def test_a_region_registered_through_one_worker_process_serves_through_every_one(start_kernel, tmp_path, regions):
    core = (f"kernel:\n  pid: {tmp_path}/kernel.pid\n  error_log: {{path: stderr, level: info}}\n"
            "  event_loop_threads: 1\n  shutdown_timeout: 10s\n  processes: 2\n")
    kernel = start_kernel(core + allowing(models_yaml()))
    array = rows(1)
    key, handle = regions(array.nbytes)
    shm.set_shared_memory_region(handle, [array])
    base = f"http://127.0.0.1:{kernel.port('http')}"
    register = requests.post(base + "/v2/systemsharedmemory/region/shared/register",
                             data=json.dumps({"key": key, "offset": 0, "byte_size": array.nbytes}), timeout=10)
    assert register.status_code == 200, register.text
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                        "parameters": {"shared_memory_region": "shared", "shared_memory_byte_size": array.nbytes}}]}
    # A worker started after the registration (here: one killed and started again) replays it.
    victim = child_pids(kernel.pid)[0]
    os.kill(victim, signal.SIGKILL)
    kernel.wait_for_log(f"worker process {victim} exited on signal 9", timeout=10)
    kernel.wait_for_log("replayed 1 command(s) shared before it started", timeout=30)
    kernel.wait_for_log("started: role both", timeout=30, count=3)
    for _ in range(40):
        with requests.Session() as session:  # a new connection each time: either worker process may take it
            response = session.post(base + "/v2/models/demo/infer", data=json.dumps(body), timeout=10)
            assert response.status_code == 200, response.text
            status = session.get(base + "/v2/systemsharedmemory/status", timeout=10).json()
            assert [region["name"] for region in status] == ["shared"]
    assert requests.post(base + "/v2/systemsharedmemory/region/shared/unregister", timeout=10).status_code == 200
    for _ in range(20):
        with requests.Session() as session:
            response = session.post(base + "/v2/models/demo/infer", data=json.dumps(body), timeout=10)
            assert response.status_code == 404, response.text
    kernel.wait_for_log("system shared memory region 'shared' registered")
