"""`metrics: {}` on the real binary: Prometheus text format that `promtool check metrics` accepts, with counters
that move as requests, a model inference and an upstream failure happen."""
import json
import shutil
import subprocess

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
    assert value(after, "kernel_connections_open", listener="127.0.0.1:0") >= 1
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
        assert value(after, name, model="demo") - value(before, name, model="demo") == 1, name
    assert value(after, "kernel_model_batch_size_sum", model="demo") - value(before, "kernel_model_batch_size_sum", model="demo") == 2
    assert value(after, "kernel_model_batch_size_bucket", model="demo", le="2.0") >= 1
    assert value(after, "kernel_model_queue_depth", model="demo") == 0
    # A request the protocol refuses never reaches the model: not a model failure.
    assert value(after, "kernel_model_failures_total", model="demo") == value(before, "kernel_model_failures_total", model="demo")


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
