"""Triton's trace extension against `kernel --role both` with the real `tritonclient[http]`: the settings (global
and per model), Triton's checks and words, sampling by rate and count, and the trace files in Triton's format."""
import glob
import json
import os

import numpy as np
import pytest

import tritonclient.http as tritonclient_http
from tritonclient.utils import InferenceServerException

from inference_support import ensure_models, models_yaml

ensure_models()

TIMESTAMPS = ["HTTP_RECV_START", "HTTP_RECV_END", "REQUEST_START", "QUEUE_START", "INFER_RESPONSE_COMPLETE",
              "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END", "REQUEST_END",
              "HTTP_SEND_START", "HTTP_SEND_END"]


def traced(trace_file):
    return models_yaml().replace("inference:\n", f"inference:\n  trace: {{file: {trace_file}, level: OFF}}\n", 1)


def connect(kernel):
    return tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")


def infer(client, count, rows=1):
    for _ in range(count):
        tensor = tritonclient_http.InferInput("input", [rows, 64], "FP32")
        tensor.set_data_from_numpy(np.full((rows, 64), 0.25, dtype=np.float32), binary_data=True)
        client.infer("demo", [tensor], request_id="req-7")


def traces(path):
    """{id: [objects]} of one trace file (a JSON array of Triton's trace objects)."""
    with open(path) as f:
        objects = json.load(f)
    found = {}
    for item in objects:
        found.setdefault(item["id"], []).append(item)
    return found


def names(objects):
    return [item["timestamps"][0]["name"] for item in objects if "timestamps" in item]


def test_the_settings_are_tritons_and_refused_as_triton_refuses_them(start_kernel):
    client = connect(start_kernel(models_yaml()))
    assert client.get_trace_settings() == {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1",
                                           "log_frequency": "0", "trace_file": "", "trace_mode": "triton"}
    for settings, status, fragment in (
            ({"trace_level": ["TIMESTAMPS"]}, "400", "trace file name is not given"),
            ({"trace_file": "/tmp/x.json"}, "501", "trace file location can not be updated through network protocol"),
            ({"trace_rate": "abc"}, "400", "Unable to parse 'trace_rate', got: abc"),
            ({"trace_count": "-2"}, "400", "Unable to parse 'trace_count'. Expecting value >= -1, got:-2"),
            ({"trace_level": ["OFF", "TIMESTAMPS"]}, "400", "Expect only one trace level 'OFF' is specified"),
            ({"trace_rate": 5}, "400", "non-string as string")):
        with pytest.raises(InferenceServerException) as raised:
            client.update_trace_settings(settings=settings)
        assert raised.value.status() == status and fragment in raised.value.message(), (settings, raised.value)
    for call in (lambda: client.get_trace_settings(model_name="nope"),
                 lambda: client.update_trace_settings(model_name="nope", settings={"trace_rate": "2"})):
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() == "404" and "Request for unknown model: 'nope' is not found" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.update_trace_settings(settings={"trace_count": "99999999999"})
    assert "Unable to parse 'trace_count', value is out of range [ -1, 2147483647 ], got: 99999999999" in raised.value.message()
    assert client.update_trace_settings(settings={"trace_rate": "10"})["trace_rate"] == "10"
    assert client.get_trace_settings(model_name="demo")["trace_rate"] == "10"
    assert client.update_trace_settings(settings={"trace_rate": None})["trace_rate"] == "1000"
    assert "trace" in client.get_server_metadata()["extensions"]
    client.close()


def test_sampled_requests_are_written_every_log_frequency_traces(start_kernel, tmp_path):
    path = str(tmp_path / "trace.json")
    kernel = start_kernel(traced(path))
    client = connect(kernel)
    settings = client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "log_frequency": "2"})
    assert settings == {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1", "log_frequency": "2",
                        "trace_file": path, "trace_mode": "triton"}
    with pytest.raises(InferenceServerException) as raised:
        client.update_trace_settings(settings={"trace_rate": "0"})
    assert raised.value.status() == "400" and "Attempting to set invalid trace setting :sample rate must be non-zero" in raised.value.message()
    infer(client, 5)
    client.close()
    kernel.stop()
    # Two full files of two traces, and the last one written when the kernel stopped.
    assert sorted(os.path.basename(p) for p in glob.glob(path + "*")) == ["trace.json.0", "trace.json.1", "trace.json.2"]
    counts = [len(traces(f"{path}.{index}")) for index in range(3)]
    assert counts == [2, 2, 1]
    for trace in traces(f"{path}.0").values():
        assert names(trace) == TIMESTAMPS
        header = [item for item in trace if "model_name" in item]
        assert header == [{"id": trace[0]["id"], "model_name": "demo", "model_version": 1, "request_id": "req-7"}]
        stamps = {item["timestamps"][0]["name"]: item["timestamps"][0]["ns"] for item in trace if "timestamps" in item}
        assert stamps["REQUEST_START"] <= stamps["QUEUE_START"] <= stamps["COMPUTE_START"] <= stamps["COMPUTE_INPUT_END"] \
            <= stamps["COMPUTE_OUTPUT_START"] <= stamps["COMPUTE_END"] <= stamps["REQUEST_END"]


def test_a_models_own_rate_and_count_and_its_tensors(start_kernel, tmp_path):
    path = str(tmp_path / "trace.json")
    kernel = start_kernel(traced(path))
    client = connect(kernel)
    settings = client.update_trace_settings(model_name="demo", settings={
        "trace_level": ["TIMESTAMPS", "TENSORS"], "trace_rate": "2", "trace_count": "2"})
    assert settings["trace_level"] == ["TIMESTAMPS", "TENSORS"] and settings["trace_count"] == "2"
    # The global settings are untouched.
    assert client.get_trace_settings()["trace_level"] == ["OFF"]
    infer(client, 7, rows=2)
    # Requests 2 and 4 were traced; the count is spent.
    assert client.get_trace_settings(model_name="demo")["trace_count"] == "0"
    written = traces(path + ".0")
    assert len(written) == 2
    for trace in written.values():
        tensors = [item for item in trace if "activity" in item]
        assert [item["activity"] for item in tensors] == ["TENSOR_QUEUE_INPUT", "TENSOR_BACKEND_OUTPUT"]
        assert tensors[0]["tensor"] == {"name": "input", "data": ",".join(["0.25"] * 128), "shape": "2,64", "dtype": "FP32"}
        assert tensors[1]["tensor"]["name"] == "output" and tensors[1]["tensor"]["shape"].startswith("2,")
    # Cleared, the model follows the global settings again.
    cleared = client.update_trace_settings(model_name="demo", settings={"trace_level": None, "trace_rate": None, "trace_count": None})
    assert cleared == client.get_trace_settings()
    infer(client, 3)
    assert not os.path.exists(path + ".1")
    client.close()


def test_settings_reach_every_worker_process(start_kernel, tmp_path):
    path = str(tmp_path / "trace.json")
    core = (f"kernel:\n  pid: {tmp_path}/kernel.pid\n  error_log: {{path: stderr, level: notice}}\n"
            "  event_loop_threads: 1\n  shutdown_timeout: 10s\n  processes: 2\n")
    kernel = start_kernel(core + traced(path))
    client = connect(kernel)
    client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "log_frequency": "1"})
    client.close()
    for _ in range(20):
        fresh = connect(kernel)  # a new connection each: either worker process may take it
        assert fresh.get_trace_settings()["trace_level"] == ["TIMESTAMPS"]
        infer(fresh, 1)
        fresh.close()
    kernel.stop()
    # Each worker writes its own files; together they hold every request.
    files = glob.glob(path + ".pid*")
    assert sum(len(traces(f)) for f in files) == 20, files
