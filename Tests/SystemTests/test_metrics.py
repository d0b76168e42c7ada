"""`metrics: {}` on the real binary: Prometheus text format that `promtool check metrics` accepts, with counters
that move as requests, a model inference and an upstream failure happen."""
import json
import os
import shutil
import signal
import subprocess
import time

import requests

from conftest import child_pids
from inference_support import DEMO, ensure_models
from peer_support import closed_port

ensure_models()

BACKEND = """
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /
          return: 200 "backend"
"""

KERNEL = """
http:
  listen: "127.0.0.1:0"
inference:
  models:
    - name: demo
      path: {demo}
      max_batch_size: 8
      warmup: 1
upstreams:
  backend:
    servers:
      - 127.0.0.1:{dead} max_fails=1 fail_timeout=60s
      - 127.0.0.1:{live}
routing:
  servers:
    - server_name: api
      locations:
        - location: = /metrics
          metrics: {{}}
        - location: = /triton/metrics
          metrics: {{triton: true}}
        - location: /hello
          return: 200 "hello"
        - location: "^~ /v2"
          inference: {{}}
        - location: /api/
          proxy_pass: http://backend
"""


def start(start_kernel):
    backend = start_kernel(BACKEND, role="edge", name="backend.yaml")
    dead = closed_port()
    kernel = start_kernel(KERNEL.format(demo=DEMO, dead=dead, live=backend.port()), role="both")
    kernel.dead_peer, kernel.live_peer = f"127.0.0.1:{dead}", f"127.0.0.1:{backend.port()}"
    return kernel


def scrape(kernel, path="/metrics"):
    response = requests.get(kernel.url(path), timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return response.text


def samples(text):
    """{(name, frozenset(labels)): value} of the sample lines (the kernel's label values hold no ',' or '}')."""
    found = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        pairs = frozenset(tuple(item.split("=", 1)) for item in labels.rstrip("}").split(",") if item)
        found[(name, frozenset((k, v.strip('"')) for k, v in pairs))] = float(value)
    return found


def value(text, name, **labels):
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def test_promtool_accepts_the_metrics(start_kernel):
    kernel = start(start_kernel)
    assert requests.get(kernel.url("/hello"), timeout=10).status_code == 200
    # Until the dead peer has been tried once (and the request passed on): the retry counter exists from then on.
    for _ in range(2):
        assert requests.get(kernel.url("/api/x"), timeout=10).status_code == 200
    text = scrape(kernel)
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by scripts/setup.sh (Debian's prometheus package)"
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr + text
    for family in ("kernel_http_requests_total", "kernel_http_request_duration_seconds", "kernel_connections_open",
                   "kernel_upstream_peer_up", "kernel_upstream_peer_failures_total", "kernel_upstream_retries_total",
                   "kernel_model_queue_depth", "kernel_model_batch_size", "kernel_model_queue_duration_seconds",
                   "kernel_model_compute_duration_seconds", "kernel_model_failures_total",
                   "kernel_process_resident_memory_bytes"):
        assert f"# TYPE {family} " in text, family
        assert f"# HELP {family} " in text, family
    assert "nv_inference" not in text


TRITON_FAMILIES = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                   "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                   "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
                   "nv_inference_compute_output_duration_us", "nv_inference_pending_request_count")


def promtool_faults_beyond_tritons_names(text):
    """What `promtool check metrics` says of `text` other than its naming lints on Triton's own names (units in
    the name, no `_total`), which Triton's dashboards depend on."""
    result = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=30)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.strip() and not (line.split(" ", 1)[0] in TRITON_FAMILIES and (
        "should have \"_total\" suffix" in line or "abbreviated units" in line or "should not have \"_count\" suffix" in line))]


def test_tritons_families_are_served_where_asked(start_kernel):
    kernel = start(start_kernel)
    text = scrape(kernel, "/triton/metrics")
    assert promtool_faults_beyond_tritons_names(text) == [], text
    for family in TRITON_FAMILIES:
        assert f"# TYPE {family} " in text, family
        assert f"# HELP {family} " in text, family
    assert "# HELP nv_inference_request_success Number of successful inference requests, all batch sizes\n" in text
    assert "# TYPE kernel_connections_open gauge" in text  # the kernel's own families stay beside them


def test_request_counters_and_latency_move(start_kernel):
    kernel = start(start_kernel)
    before = scrape(kernel)
    for _ in range(3):
        assert requests.get(kernel.url("/hello"), timeout=10).status_code == 200
    assert requests.get(kernel.url("/nowhere"), timeout=10).status_code == 404
    after = scrape(kernel)
    labels = dict(server="api", location="/hello")
    assert value(after, "kernel_http_requests_total", status="200", **labels) - \
        value(before, "kernel_http_requests_total", status="200", **labels) == 3
    assert value(after, "kernel_http_request_duration_seconds_count", **labels) - \
        value(before, "kernel_http_request_duration_seconds_count", **labels) == 3
    assert value(after, "kernel_http_request_duration_seconds_bucket", le="+Inf", **labels) == \
        value(after, "kernel_http_request_duration_seconds_count", **labels)
    # The first scrape counted itself once it was written.
    assert value(after, "kernel_http_requests_total", server="api", location="= /metrics", status="200") >= 1
    assert value(after, "kernel_connections_open", listener=f"127.0.0.1:{kernel.port()}") >= 1
    assert value(after, "kernel_process_resident_memory_bytes", worker="0") > 1_000_000


def test_a_model_inference_moves_the_model_metrics(start_kernel):
    kernel = start(start_kernel)
    before = scrape(kernel, "/triton/metrics")
    body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [0.5] * 128}]}
    response = requests.post(kernel.url("/v2/models/demo/infer"), data=json.dumps(body), timeout=30)
    assert response.status_code == 200, response.text
    bad = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 3}]}
    assert requests.post(kernel.url("/v2/models/demo/infer"), data=json.dumps(bad), timeout=30).status_code == 400
    after = scrape(kernel, "/triton/metrics")
    for name in ("kernel_model_batch_size_count", "kernel_model_compute_duration_seconds_count",
                 "kernel_model_queue_duration_seconds_count"):
        assert value(after, name, model="demo", version="1") - value(before, name, model="demo", version="1") == 1, name
    assert value(after, "kernel_model_batch_size_sum", model="demo", version="1") - value(before, "kernel_model_batch_size_sum", model="demo", version="1") == 2
    assert value(after, "kernel_model_batch_size_bucket", model="demo", version="1", le="2.0") >= 1
    assert value(after, "kernel_model_queue_depth", model="demo", version="1") == 0
    # A request the protocol refuses never reaches the model: not a model failure.
    assert value(after, "kernel_model_failures_total", model="demo", version="1") == value(before, "kernel_model_failures_total", model="demo", version="1")
    # Triton's metrics, as its statistics count: one request of two rows, one run, its time in microseconds.
    def moved(name, **labels):
        return value(after, name, model="demo", version="1", **labels) - value(before, name, model="demo", version="1", **labels)
    assert moved("nv_inference_request_success") == 1
    assert moved("nv_inference_count") == 2
    assert moved("nv_inference_exec_count") == 1
    for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
        assert ("nv_inference_request_failure", frozenset({("model", "demo"), ("version", "1"), ("reason", reason)})) in samples(after)
        assert moved("nv_inference_request_failure", reason=reason) == 0
    assert moved("nv_inference_compute_infer_duration_us") > 0
    assert moved("nv_inference_request_duration_us") >= moved("nv_inference_queue_duration_us") + moved("nv_inference_compute_infer_duration_us")
    assert value(after, "nv_inference_pending_request_count", model="demo", version="1") == 0
    stats = requests.get(kernel.url("/v2/models/demo/stats"), timeout=10).json()["model_stats"][0]
    assert value(after, "nv_inference_request_success", model="demo", version="1") == stats["inference_stats"]["success"]["count"]
    assert value(after, "nv_inference_exec_count", model="demo", version="1") == stats["execution_count"]


INFERENCE_WORKERS = """
kernel:
  event_loop_threads: 1
  processes: 2
http:
  listen: "127.0.0.1:0"
inference:
  models:
    - name: demo
      path: {demo}
      max_batch_size: 8
      max_queue: 1
      warmup: 1
routing:
  servers:
    - locations:
        - location: = /metrics
          metrics: {{triton: true}}
        - location: "^~ /v2"
          inference: {{}}
"""


def test_tritons_metrics_are_summed_over_worker_processes(start_kernel):
    kernel = start_kernel(INFERENCE_WORKERS.format(demo=DEMO))
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]})
    for _ in range(20):   # a new connection each: both workers answer some
        response = requests.post(kernel.url("/v2/models/demo/infer"), data=body, headers={"Connection": "close"}, timeout=30)
        assert response.status_code == 200, response.text
    text = scrape(kernel)
    assert promtool_faults_beyond_tritons_names(text) == [], text
    assert value(text, "nv_inference_request_success", model="demo", version="1") == 20
    assert value(text, "nv_inference_count", model="demo", version="1") == 20
    # The statistics extension sums the same counters over the same processes.
    stats = requests.get(kernel.url("/v2/models/demo/stats"), timeout=10).json()["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 20


def test_an_upstream_failure_moves_peer_state_failures_and_retries(start_kernel):
    kernel = start(start_kernel)
    before = scrape(kernel)
    peer = kernel.dead_peer
    assert value(before, "kernel_upstream_peer_up", upstream="backend", peer=peer) == 1
    assert value(before, "kernel_upstream_peer_failures_total", upstream="backend", peer=peer) == 0
    # Round robin tries the dead server first: refused, passed on to the live one, and the dead one marked down.
    response = requests.get(kernel.url("/api/x"), timeout=10)
    assert response.status_code == 200 and response.text == "backend"
    after = scrape(kernel)
    assert value(after, "kernel_upstream_peer_up", upstream="backend", peer=peer) == 0
    assert value(after, "kernel_upstream_peer_failures_total", upstream="backend", peer=peer) == 1
    assert value(after, "kernel_upstream_retries_total", upstream="backend") - \
        value(before, "kernel_upstream_retries_total", upstream="backend") == 1
    assert value(after, "kernel_upstream_peer_up", upstream="backend", peer=kernel.live_peer) == 1
    assert value(after, "kernel_http_requests_total", server="api", location="/api/", status="200") == 1


def test_counters_go_on_across_a_reload(start_kernel):
    kernel = start(start_kernel)
    for _ in range(2):
        assert requests.get(kernel.url("/hello"), timeout=10).status_code == 200
    labels = dict(server="api", location="/hello", status="200")
    assert value(scrape(kernel), "kernel_http_requests_total", **labels) == 2
    assert kernel.control("reload").returncode == 0
    kernel.wait_for_log("configuration reloaded (generation 2)", timeout=30)
    assert requests.get(kernel.url("/hello"), timeout=10).status_code == 200
    assert value(scrape(kernel), "kernel_http_requests_total", **labels) == 3


WORKERS = """
kernel:
  event_loop_threads: 1
  processes: 2
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: = /metrics
          metrics: {}
        - location: /
          return: 200 "hello $pid"
"""


def test_worker_processes_are_merged_with_the_masters_families(start_kernel):
    """With `processes: 2` the process answering /metrics sums every worker's counters, each worker's own gauges
    keep their `worker` label, and the master adds the worker table and restarts by cause."""
    kernel = start_kernel(WORKERS)
    port = kernel.port()
    for _ in range(20):   # a new connection each: both workers answer some
        assert requests.get(kernel.url("/"), headers={"Connection": "close"}, timeout=10).status_code == 200
    text = scrape(kernel)
    result = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr + text
    assert value(text, "kernel_http_requests_total", server="", location="/", status="200") == 20
    assert value(text, "kernel_workers", pool="main", state="serving") == 2
    assert value(text, "kernel_process_resident_memory_bytes", worker="1") > 1_000_000
    assert value(text, "kernel_process_resident_memory_bytes", worker="2") > 1_000_000
    # Each worker samples its accept queue about once a second; both have after a few.
    queues = [("kernel_listen_queue", frozenset({("listener", f"127.0.0.1:{port}"), ("worker", w)})) for w in "12"]
    deadline = time.time() + 10
    while not all(q in samples(text) for q in queues) and time.time() < deadline:
        time.sleep(0.2)
        text = scrape(kernel)
    assert all(q in samples(text) for q in queues), text
    assert value(text, "kernel_connections_open", listener=f"127.0.0.1:{port}") >= 1

    victim = child_pids(kernel.pid)[0]
    os.kill(victim, signal.SIGKILL)
    kernel.wait_for_log(f"worker process {victim} exited on signal 9", timeout=10)
    deadline = time.time() + 10
    while True:
        text = scrape(kernel)
        if value(text, "kernel_workers", pool="main", state="serving") == 2 or time.time() > deadline:
            break
        time.sleep(0.1)
    assert value(text, "kernel_workers", pool="main", state="serving") == 2
    assert value(text, "kernel_worker_restarts_total", pool="main", cause="signal") == 1
    assert value(text, "kernel_worker_restarts_total", pool="main", cause="exit") == 0
