"""`metrics: {}` on the real binary: Prometheus text format that `promtool check metrics` accepts, with counters
that move as requests, a model inference and an upstream failure happen."""
import json
import os
import shutil
import signal
import subprocess
import time

import requests

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


def scrape(kernel):
    response = requests.get(kernel.url("/metrics"), timeout=10)
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
    before = scrape(kernel)
    body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [0.5] * 128}]}
    response = requests.post(kernel.url("/v2/models/demo/infer"), data=json.dumps(body), timeout=30)
    assert response.status_code == 200, response.text
    bad = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 3}]}
    assert requests.post(kernel.url("/v2/models/demo/infer"), data=json.dumps(bad), timeout=30).status_code == 400
    after = scrape(kernel)
    for name in ("kernel_model_batch_size_count", "kernel_model_compute_duration_seconds_count",
                 "kernel_model_queue_duration_seconds_count"):
        assert value(after, name, model="demo", version="1") - value(before, name, model="demo", version="1") == 1, name
    assert value(after, "kernel_model_batch_size_sum", model="demo", version="1") - value(before, "kernel_model_batch_size_sum", model="demo", version="1") == 2
    assert value(after, "kernel_model_batch_size_bucket", model="demo", version="1", le="2.0") >= 1
    assert value(after, "kernel_model_queue_depth", model="demo", version="1") == 0
    # A request the protocol refuses never reaches the model: not a model failure.
    assert value(after, "kernel_model_failures_total", model="demo", version="1") == value(before, "kernel_model_failures_total", model="demo", version="1")


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


def worker_pids(master):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[1]) == master:
                found.append(int(entry))
    return found


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

    victim = worker_pids(kernel.pid)[0]
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
