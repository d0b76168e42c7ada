"""A model's queue as the real binary runs it: deadlines that fire while a long batch runs, priority levels, clients
that leave, a full queue's answer, and where each request's time went (Triton's statistics, `Server-Timing`, the
`$inference_*` access-log variables).

The slow model is made here with `onnx.helper`: a chain of 384x384 MatMul+Tanh on a value computed from the input
(so ONNX Runtime cannot fold it away), whose result is multiplied by 0 and added to `x`. It answers `y = x` for FP32
`x` [-1, 1] after a few hundred milliseconds whatever the batch. Only the order of events is asserted, never a
duration.
"""
import concurrent.futures
import json
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest
import requests

import tritonclient.http as tritonclient_http

from inference_support import DEMO, ensure_models

ensure_models()

#: Layers of the slow model's chain: about 300 ms on this machine with one thread (each layer 384^3 multiply-adds).
SLOW_LAYERS = 150


def make_slow_model(path, layers=SLOW_LAYERS, width=384):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(13)
    weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    seed = rng.standard_normal((width, width)).astype(np.float32)
    initializers = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(seed, "seed"),
                    numpy_helper.from_array(np.array(0, dtype=np.float32), "zero")]
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], keepdims=1),
             helper.make_node("Mul", ["mean", "seed"], ["t0"])]
    previous = "t0"
    for layer in range(layers):
        nodes.append(helper.make_node("MatMul", [previous, "w"], [f"m{layer}"]))
        nodes.append(helper.make_node("Tanh", [f"m{layer}"], [f"t{layer + 1}"]))
        previous = f"t{layer + 1}"
    nodes += [helper.make_node("ReduceMean", [previous], ["s"], keepdims=0),
              helper.make_node("Mul", ["s", "zero"], ["z"]),
              helper.make_node("Add", ["x", "z"], ["y"])]
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def slow_path(tmp_path):
    """The shared `models/slow` when it exists, else one made in the test's directory."""
    shared = os.path.join(os.path.dirname(DEMO), "..", "..", "slow", "1", "model.onnx")
    if os.path.exists(shared):
        return os.path.abspath(shared)
    return make_slow_model(str(tmp_path / "slow.onnx"))


LOG_FORMAT = ("$status $request_time q=$inference_queue_time c=$inference_compute_time "
              "b=$inference_batch_size d=$inference_decode_time e=$inference_encode_time")


def kernel_yaml(slow, slow_options=(), demo=True):
    options = "".join(f"      {line}\n" for line in slow_options)
    demo_entry = f"""    - name: demo
      path: {DEMO}
      max_batch_size: 32
      dynamic_batching: {{max_queue_delay: 2ms}}
""" if demo else ""
    return f"""
http:
  listen: "127.0.0.1:0"
inference:
  models:
{demo_entry}    - name: slow
      path: {slow}
      instances: 1
{options}
routing:
  log_format:
    timing: '{LOG_FORMAT}'
  servers:
    - access_log: {{path: access.log, format: timing}}
      locations:
        - location: "^~ /v2"
          inference: {{}}
"""


def infer_body(value, rows=1, priority=None):
    body = {"inputs": [{"name": "x", "shape": [rows, 1], "datatype": "FP32", "data": [value] * rows}]}
    if priority is not None:
        body["parameters"] = {"priority": priority}
    return json.dumps(body)


def post_infer(kernel, model, body, headers=None, timeout=60):
    return requests.post(kernel.url(f"/v2/models/{model}/infer"), data=body, headers=headers or {}, timeout=timeout)


def stats(kernel, model):
    return requests.get(kernel.url(f"/v2/models/{model}/stats"), timeout=30).json()["model_stats"][0]


def wait_for_stats(kernel, model, condition, timeout=20):
    deadline = time.time() + timeout
    while True:
        current = stats(kernel, model)
        if condition(current) or time.time() > deadline:
            return current
        time.sleep(0.05)


def access_lines(kernel, count, timeout=10):
    path = os.path.join(kernel.workdir, "access.log")
    deadline = time.time() + timeout
    lines = []
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                lines = [line for line in f.read().splitlines() if line]
            if len(lines) >= count:
                break
        time.sleep(0.05)
    return lines


class Timed:
    """A request sent on its own thread, with when its answer arrived (monotonic seconds)."""

    def __init__(self, send):
        self.response = None
        self.arrived = None
        self.thread = threading.Thread(target=self._run, args=(send,))
        self.thread.start()

    def _run(self, send):
        self.response = send()
        self.arrived = time.monotonic()

    def result(self):
        self.thread.join(60)
        return self.response


def start_long_batch(kernel, model="slow"):
    """One request that occupies the only instance; returns once the instance has taken it (the stats show
    nothing until it ends, so this waits until the kernel logs nothing else: the queue then holds only what the
    test sends next)."""
    running = Timed(lambda: post_infer(kernel, model, infer_body(1.0)))
    # The instance is idle and `max_queue_delay` is 0: the request starts as soon as it is queued. A short pause
    # lets it arrive first; the assertions below hold whichever way the race goes, only less tellingly.
    time.sleep(0.1)
    return running


def test_a_queued_request_expires_at_its_deadline_while_a_long_batch_runs_and_never_runs(start_kernel, tmp_path):
    kernel = start_kernel(kernel_yaml(slow_path(tmp_path)))
    running = start_long_batch(kernel)
    # A deadline forwarded by an edge (X-Kernel-Timeout-Ms), far shorter than the running batch.
    expiring = Timed(lambda: post_infer(kernel, "slow", infer_body(2.0), headers={"X-Kernel-Timeout-Ms": "50"}))
    late = expiring.result()
    assert late.status_code == 504, late.text
    assert "dropped from the queue: its deadline passed" in late.json()["error"]
    first = running.result()
    assert first.status_code == 200, first.text
    # The 504 came at its deadline, before the batch it waited behind ended.
    assert expiring.arrived < running.arrived
    model = wait_for_stats(kernel, "slow", lambda s: s["inference_stats"]["success"]["count"] == 1)
    assert model["execution_count"] == 1, "the expired request never ran"
    assert model["timeouts"] == 1
    assert model["inference_stats"]["fail"]["count"] == 1


def test_the_models_timeout_expires_a_queued_request_during_a_long_batch(start_kernel, tmp_path):
    kernel = start_kernel(kernel_yaml(slow_path(tmp_path), ["timeout: 50ms"]))
    running = start_long_batch(kernel)
    expiring = Timed(lambda: post_infer(kernel, "slow", infer_body(2.0)))
    assert expiring.result().status_code == 504
    assert "timed out after 0.05s in the queue" in expiring.response.json()["error"]
    assert running.result().status_code == 200
    assert expiring.arrived < running.arrived
    model = wait_for_stats(kernel, "slow", lambda s: s["execution_count"] >= 1)
    assert model["execution_count"] == 1
    assert model["timeouts"] == 1


def test_priorities_reorder_a_full_queue(start_kernel, tmp_path):
    kernel = start_kernel(kernel_yaml(slow_path(tmp_path), [
        "max_batch_size: 1", "dynamic_batching: {priority_levels: 2, default_priority_level: 2}"]))
    # Out of range: Triton's words for a negative level, 400, never queued.
    refused = post_infer(kernel, "slow", infer_body(0.0, priority=-1))
    assert refused.status_code == 400
    assert refused.json() == {"error": "invalid value for 'priority', expected value >= 0."}
    assert post_infer(kernel, "slow", infer_body(0.0), headers={"X-Kernel-Priority": "high"}).status_code == 400

    running = start_long_batch(kernel)
    sent = []
    # Three requests at the default (low) level, then two at level 1: one by parameters.priority, one by header.
    for index, (priority, headers) in enumerate([(None, {}), (2, {}), (7, {}), (1, {}), (None, {"X-Kernel-Priority": "1"})]):
        body = infer_body(float(10 + index), priority=priority)
        sent.append(Timed(lambda body=body, headers=headers: post_infer(kernel, "slow", body, headers=headers)))
        time.sleep(0.03)
    for request in sent:
        assert request.result().status_code == 200, request.response.text
    assert running.result().status_code == 200
    order = [index for index, _ in sorted(enumerate(sent), key=lambda item: item[1].arrived)]
    # Level 1 first (in arrival order), then the default level; 7 is past priority_levels: the default level.
    assert order == [3, 4, 0, 1, 2], order
    # Each answer is its own request's.
    assert [r.response.json()["outputs"][0]["data"][0] for r in sent] == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert stats(kernel, "slow")["execution_count"] == 6


def test_a_full_queue_answers_its_status_with_retry_after(start_kernel, tmp_path):
    kernel = start_kernel(kernel_yaml(slow_path(tmp_path), ["max_queue: 1", "queue_full_status: 429"]))
    running = start_long_batch(kernel)
    queued = Timed(lambda: post_infer(kernel, "slow", infer_body(2.0)))
    time.sleep(0.05)
    rejected = post_infer(kernel, "slow", infer_body(3.0))
    if rejected.status_code == 200:
        pytest.fail("the queue was not full: the long batch ended before the third request arrived")
    assert rejected.status_code == 429, rejected.text
    assert rejected.json() == {"error": "Exceeds maximum queue size: inference request for model 'slow' rejected: the queue is full (max_queue 1)"}
    assert int(rejected.headers["Retry-After"]) >= 1
    assert queued.result().status_code == 200
    assert running.result().status_code == 200
    model = stats(kernel, "slow")
    assert model["queue_rejections"] == 1
    assert model["execution_count"] == 2


def raw_request(kernel, body, protocol="http"):
    """Sends an infer request on a socket of its own and returns the socket, unanswered."""
    connection = socket.create_connection(("127.0.0.1", kernel.port(protocol)), timeout=30)
    head = (f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    connection.sendall(head.encode() + body.encode())
    return connection


def test_a_client_that_disconnects_leaves_no_work_behind(start_kernel, tmp_path):
    kernel = start_kernel(kernel_yaml(slow_path(tmp_path)))
    running = start_long_batch(kernel)
    leaving = raw_request(kernel, infer_body(2.0))
    time.sleep(0.05)
    leaving.close()
    assert running.result().status_code == 200
    model = wait_for_stats(kernel, "slow", lambda s: s["cancellations"] == 1 and s["execution_count"] >= 1)
    assert model["cancellations"] == 1, model
    # Later requests still run; the one whose client left never did.
    assert post_infer(kernel, "slow", infer_body(3.0)).status_code == 200
    model = stats(kernel, "slow")
    assert model["execution_count"] == 2, "the abandoned request never ran"
    assert model["inference_stats"]["success"]["count"] == 2
    # The access log says 499, as nginx logs a client that closed its connection.
    statuses = [line.split()[0] for line in access_lines(kernel, 4)]
    assert "499" in statuses, statuses


def test_statistics_and_server_timing_add_up_and_move(start_kernel, tmp_path):
    kernel = start_kernel(kernel_yaml(slow_path(tmp_path)))
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    try:
        before = client.get_inference_statistics("demo")["model_stats"][0]
        assert before["execution_count"] == 0
        assert set(before["inference_stats"]) >= {"success", "fail", "queue", "compute_input", "compute_infer",
                                                 "compute_output", "cache_hit", "cache_miss"}
        assert before["batch_stats"] == [] and before["memory_usage"] == []

        rows = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32)
        body = json.dumps({"inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32",
                                       "data": rows.ravel().tolist()}]})
        timings = []
        for _ in range(5):
            started = time.monotonic()
            response = post_infer(kernel, "demo", body)
            total_ms = (time.monotonic() - started) * 1000
            assert response.status_code == 200
            metrics = {}
            for part in response.headers["Server-Timing"].split(","):
                name, *params = [item.strip() for item in part.split(";")]
                metrics[name] = dict(param.split("=", 1) for param in params)
            assert set(metrics) == {"queue", "batch", "compute_input", "compute_infer", "compute_output", "decode", "encode"}
            assert metrics["batch"]["desc"] == '"3"'
            spent = sum(float(metrics[name]["dur"]) for name in metrics if name != "batch")
            assert spent <= total_ms, (spent, total_ms)
            timings.append(metrics)

        after = client.get_inference_statistics("demo")["model_stats"][0]
        inference = after["inference_stats"]
        assert after["inference_count"] == 15
        assert after["execution_count"] == 5
        assert inference["success"]["count"] == 5
        for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
            assert inference[phase]["count"] == 5
        assert inference["fail"]["count"] == 0
        # Each request's queue and compute time fit in its whole time, so the sums do too.
        spent = sum(inference[phase]["ns"] for phase in ("queue", "compute_input", "compute_infer", "compute_output"))
        assert 0 < spent <= inference["success"]["ns"]
        assert after["batch_stats"][0]["batch_size"] == 3
        assert after["batch_stats"][0]["compute_infer"]["count"] == 5
        assert after["last_inference"] > 0
        # The per-version path and the whole server's answer the same shape.
        versioned = client.get_inference_statistics("demo", "1")["model_stats"][0]
        assert versioned["execution_count"] == 5
        names = {model["name"] for model in client.get_inference_statistics()["model_stats"]}
        assert names == {"demo", "slow"}
    finally:
        client.close()

    # The access log has the same figures, in seconds with milliseconds as $request_time.
    lines = access_lines(kernel, 12)
    inferred = [line.split() for line in lines if " b=3 " in line]
    assert len(inferred) == 5, lines
    for fields in inferred:
        values = dict(field.split("=", 1) for field in fields[2:])
        request_time = float(fields[1])
        queue, compute = float(values["q"]), float(values["c"])
        # Each value is rounded to the millisecond on its own: two roundings may exceed the total's by 1 ms.
        assert queue + compute <= request_time + 0.001, fields
        assert float(values["d"]) >= 0 and float(values["e"]) >= 0
    # A request no model answered (the statistics) has the variables not found: `-`.
    assert any(line.startswith("200") and " q=- c=- b=- d=- e=-" in line for line in lines), lines


def test_a_uwsgi_client_that_leaves_drops_its_queued_request(start_kernel, tmp_path):
    slow = slow_path(tmp_path)
    text = kernel_yaml(slow, demo=False).replace('http:\n  listen: "127.0.0.1:0"\n',
                                                 'http:\n  listen: "127.0.0.1:0"\nuwsgi:\n  listen: "127.0.0.1:0"\n')
    kernel = start_kernel(text)
    running = start_long_batch(kernel)
    body = infer_body(2.0).encode()
    variables = {"REQUEST_METHOD": "POST", "REQUEST_URI": "/v2/models/slow/infer", "PATH_INFO": "/v2/models/slow/infer",
                 "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.1", "CONTENT_TYPE": "application/json",
                 "CONTENT_LENGTH": str(len(body)), "HTTP_HOST": "localhost", "SERVER_NAME": "localhost",
                 "SERVER_PORT": "80", "REMOTE_ADDR": "127.0.0.1"}
    packet = b"".join(len(k).to_bytes(2, "little") + k.encode() + len(v).to_bytes(2, "little") + v.encode()
                      for k, v in variables.items())
    connection = socket.create_connection(("127.0.0.1", kernel.port("uwsgi")), timeout=30)
    connection.sendall(bytes([0]) + len(packet).to_bytes(2, "little") + bytes([0]) + packet + body)
    time.sleep(0.05)
    connection.close()
    assert running.result().status_code == 200
    model = wait_for_stats(kernel, "slow", lambda s: s["cancellations"] == 1)
    assert model["cancellations"] == 1, model
    assert model["execution_count"] == 1


def test_a_client_of_the_edge_that_leaves_drops_the_request_it_queued_at_a_local_worker(start_kernel, tmp_path):
    """--role both: the edge passes to a `local` server; the client leaving reaches the worker side's queue with
    no socket between them, as a remote worker learns it from its connection closing."""
    sock = tmp_path / "w.sock"
    text = f"""
http:
  listen: "127.0.0.1:0"
uwsgi:
  listen: "unix:{sock}"
upstreams:
  models:
    servers: [local]
inference:
  models:
    - name: slow
      path: {slow_path(tmp_path)}
      instances: 1
routing:
  servers:
    - listen: "127.0.0.1:0"
      locations:
        - location: /v2/
          uwsgi_pass: models
          uwsgi_read_timeout: 60s
    - listen: "unix:{sock}"
      locations:
        - location: "^~ /v2"
          inference: {{}}
"""
    kernel = start_kernel(text, role="both")
    running = start_long_batch(kernel)
    leaving = raw_request(kernel, infer_body(2.0))
    time.sleep(0.05)
    leaving.close()
    assert running.result().status_code == 200
    model = wait_for_stats(kernel, "slow", lambda s: s["cancellations"] == 1)
    assert model["cancellations"] == 1, model
    assert model["execution_count"] == 1, "the abandoned request never ran"


def test_a_fast_stop_lets_the_running_batch_end_before_the_process_does(start_kernel, tmp_path):
    """SIGTERM (nginx's fast stop) drops what waits, but the batch ONNX Runtime is running ends before the process
    exits: exiting under it would tear the runtime down mid-run (its errors on stderr) and complete the request on
    event loops already shut down (SwiftNIO's error)."""
    slow = make_slow_model(str(tmp_path / "slower.onnx"), layers=SLOW_LAYERS * 4)
    kernel = start_kernel(kernel_yaml(slow, demo=False))
    client = socket.create_connection(("127.0.0.1", kernel.port()))
    body = infer_body(1.0).encode()
    client.sendall(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    time.sleep(0.5)  # the request is in its batch within milliseconds; the batch runs for over a second
    os.kill(kernel.pid, signal.SIGTERM)
    assert kernel.wait_exit() == 0
    client.close()
    log = kernel.log_text()
    assert "fast shutdown" in log
    assert "Cannot schedule tasks" not in log, log
    assert "[E:onnxruntime" not in log, log
