"""`health: ready` (/healthz) and `health: live` (/livez) on the real binary, and the inference module's
/v2/health/ready, which reports the same readiness: the conditions that make a process not ready, and liveness
staying 200 through them. (The stopping flag and a closed listener, which a running process cannot show from
outside on its own, are covered by Tests/KernelCoreTests/ReadinessTests.swift.)"""
import errno
import os
import time

import requests

from inference_support import DEMO, ensure_models
from peer_support import closed_port

ensure_models()

HEALTH = """
        - location: = /healthz
          health: ready
        - location: = /livez
          health: live
"""


def get(kernel, path):
    return requests.get(kernel.url(path), timeout=10)


def test_ready_and_live_when_everything_is_up(start_kernel):
    backend = start_kernel('http:\n  listen: "127.0.0.1:0"\nrouting:\n  servers:\n    - locations:\n'
                           '        - location: /\n          return: 200 "ok"\n', role="edge", name="backend.yaml")
    kernel = start_kernel(f"""
http:
  listen: "127.0.0.1:0"
upstreams:
  backend:
    servers:
      - 127.0.0.1:{backend.port()}
routing:
  servers:
    - locations:
{HEALTH}
        - location: /
          proxy_pass: http://backend
""", role="edge")
    ready = get(kernel, "/healthz")
    assert ready.status_code == 200 and ready.json() == {"ready": True}, ready.text
    assert ready.headers["Content-Type"] == "application/json"
    live = get(kernel, "/livez")
    assert live.status_code == 200 and live.json() == {"live": True}
    assert requests.head(kernel.url("/healthz"), timeout=10).status_code == 200
    assert requests.post(kernel.url("/healthz"), timeout=10).status_code == 405


def test_a_group_whose_every_peer_is_down_is_not_ready(start_kernel):
    # Two peers: the only server of a group is never marked down by its failures (nginx ignores max_fails there).
    first = closed_port()
    second = closed_port()
    while second == first:
        second = closed_port()
    kernel = start_kernel(f"""
http:
  listen: "127.0.0.1:0"
upstreams:
  backend:
    servers:
      - 127.0.0.1:{first} max_fails=1 fail_timeout=60s
      - 127.0.0.1:{second} max_fails=1 fail_timeout=60s
  spare:
    servers:
      - 127.0.0.1:{closed_port()} down
routing:
  servers:
    - locations:
{HEALTH}
        - location: /
          proxy_pass: http://backend
""", role="edge")
    # `spare` is used by no location: it does not count. `backend`'s peer is up until it fails.
    assert get(kernel, "/healthz").status_code == 200
    assert get(kernel, "/x").status_code == 502
    ready = get(kernel, "/healthz")
    assert ready.status_code == 503, ready.text
    assert ready.json() == {"ready": False, "not_ready": [
        {"check": "upstream", "name": "backend", "reason": "no live peer (2 down)"}]}
    assert get(kernel, "/livez").status_code == 200


def test_a_down_server_line_counts_as_down(start_kernel):
    kernel = start_kernel(f"""
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
upstreams:
  models:
    servers:
      - 127.0.0.1:{closed_port()} down
routing:
  servers:
    - locations:
{HEALTH}
        - location: /
          uwsgi_pass: models
""", role="edge")
    ready = get(kernel, "/healthz")
    assert ready.status_code == 503
    assert ready.json()["not_ready"] == [{"check": "upstream", "name": "models", "reason": "no live peer (1 down)"}]


def test_a_model_that_did_not_load_is_live_but_not_ready(start_kernel, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    kernel = start_kernel(f"""
http:
  listen: "127.0.0.1:0"
inference:
  models:
    - name: demo
      path: {DEMO}
      warmup: 1
    - name: broken
      path: {broken}
routing:
  servers:
    - locations:
{HEALTH}
        - location: "^~ /v2"
          inference: {{}}
""", role="both")
    ready = get(kernel, "/healthz")
    assert ready.status_code == 503
    reasons = ready.json()["not_ready"]
    assert [(r["check"], r["name"]) for r in reasons] == [("models", "broken")], reasons
    assert reasons[0]["reason"].startswith("not loaded: "), reasons
    assert get(kernel, "/livez").status_code == 200
    # Triton's endpoints say the same: live, and not ready (400) with the reason.
    assert get(kernel, "/v2/health/live").status_code == 200
    triton = get(kernel, "/v2/health/ready")
    assert triton.status_code == 400 and "models 'broken': not loaded" in triton.json()["error"], triton.text
    assert get(kernel, "/v2/models/demo/ready").status_code == 200


def write_when_read(fifo, data, timeout=30):
    """Writes `data` into the FIFO `fifo` once a reader has opened it (bounded wait: never blocks past `timeout`)."""
    deadline = time.time() + timeout
    while True:
        try:
            descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as error:
            if error.errno != errno.ENXIO or time.time() > deadline:
                raise
            time.sleep(0.02)
    os.set_blocking(descriptor, True)
    with os.fdopen(descriptor, "wb") as f:
        f.write(data)


def test_a_model_still_loading_is_live_but_not_ready(start_kernel, tmp_path):
    # The model file is a FIFO: ONNX Runtime's read of it waits until the test writes the model, so the load is
    # held open for as long as the test needs, without a sleep.
    fifo = str(tmp_path / "demo.onnx")
    os.mkfifo(fifo)
    kernel = start_kernel(f"""
http:
  listen: "127.0.0.1:0"
inference:
  load_before_listen: false
  models:
    - name: demo
      path: {fifo}
      warmup: 1
routing:
  servers:
    - locations:
{HEALTH}
        - location: "^~ /v2"
          inference: {{}}
""", role="both")
    try:
        ready = get(kernel, "/healthz")
        assert ready.status_code == 503, ready.text
        assert ready.json() == {"ready": False, "not_ready": [{"check": "models", "name": "demo", "reason": "loading"}]}
        assert get(kernel, "/livez").status_code == 200
        assert get(kernel, "/v2/health/live").status_code == 200
        assert get(kernel, "/v2/health/ready").status_code == 400
    finally:
        with open(DEMO, "rb") as f:
            write_when_read(fifo, f.read())
    kernel.wait_for_log("inference: model 'demo' version 1 ready", timeout=30)
    assert get(kernel, "/healthz").json() == {"ready": True}
    assert get(kernel, "/v2/health/ready").status_code == 200
    body = '{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [%s]}]}' % ",".join(["0.5"] * 64)
    assert requests.post(kernel.url("/v2/models/demo/infer"), data=body, timeout=30).status_code == 200
