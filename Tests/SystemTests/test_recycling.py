"""Recycling and watchdogs on the real binary (uWSGI's harakiri, max-requests, reload-on-rss, max-worker-lifetime,
and the listen backlog): what one process (`processes: 0`) shows, the 504 and the log lines, and with worker
processes (`processes: 2`) the replacements, under load, with no failed request."""
import http.client
import json
import os
import re
import socket
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from peer_support import HangingBackend  # noqa: E402

RECYCLING = """
kernel:
  pid: {workdir}/kernel.pid
  error_log: {{path: stderr, level: info}}
  event_loop_threads: 2
{keys}
http:
  listen: {listen}
routing:
  servers:
    - access_log: {{path: {workdir}/access.log, format: json}}
      locations:
        - location: /stuck
          proxy_pass: http://127.0.0.1:{hanging}
          proxy_read_timeout: 60s
        - location: /
          return: 200 "hello"
"""


@pytest.fixture
def hanging():
    backend = HangingBackend()
    yield backend
    backend.close()


def start(start_kernel, tmp_path, hanging, keys, listen='"127.0.0.1:0"'):
    return start_kernel(RECYCLING.format(workdir=tmp_path, keys=keys, listen=listen, hanging=hanging.port))


def get(kernel, path="/", timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", kernel.port(), timeout=timeout)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def access_log(tmp_path):
    with open(os.path.join(tmp_path, "access.log")) as f:
        return [json.loads(line) for line in f]


def test_harakiri_answers_the_stuck_request_504_and_logs_what_it_waited_for(start_kernel, tmp_path, hanging):
    kernel = start(start_kernel, tmp_path, hanging, "  harakiri: 1")
    stuck = {}
    thread = threading.Thread(target=lambda: stuck.update(answer=get(kernel, "/stuck?id=7")))
    thread.start()
    # The stuck request holds nothing up: the others are answered meanwhile.
    for _ in range(10):
        assert get(kernel) == (200, b"hello")
    thread.join(timeout=30)
    assert stuck["answer"] == (504, b'{"error":"gateway timeout"}'), "the kernel's 504, as for an upstream timeout"
    text = kernel.wait_for_log("HARAKIRI on worker 0")
    port = kernel.port()
    assert (f'request stuck for 1s (harakiri 1s), answered 504, while waiting for upstream "http://127.0.0.1:{hanging.port}", '
            f'client: 127.0.0.1, server: , request: "GET /stuck?id=7 HTTP/1.1", location: "/stuck", '
            f'host: "127.0.0.1:{port}"') in text
    # With no master nobody replaces the process: it says so and serves on.
    assert "worker replacement asked for (harakiri), but the kernel runs as one process (kernel.processes: 0)" in text
    assert "Seeya" not in text, "the process does not go"
    assert get(kernel) == (200, b"hello")
    logged = [(line["request"], line["status"]) for line in access_log(tmp_path)]
    assert ("GET /stuck?id=7 HTTP/1.1", 504) in logged, logged


def test_harakiri_names_the_model_a_request_waited_in(start_kernel, tmp_path):
    """A request held in a model's queue (a batch that waits 10 s for company) is the stuck one here."""
    from inference_support import DEMO, ensure_models
    ensure_models()
    kernel = start_kernel(f"""
kernel:
  pid: {tmp_path}/kernel.pid
  error_log: {{path: stderr, level: info}}
  event_loop_threads: 2
  harakiri: 1
http:
  listen: "127.0.0.1:0"
inference:
  models:
    - name: demo
      path: {DEMO}
      max_batch_size: 32
      dynamic_batching: {{max_queue_delay: 10s, preferred_batch_sizes: [32]}}
routing:
  servers:
    - locations:
        - location: "^~ /v2"
          inference: {{}}
""")
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]})
    conn = http.client.HTTPConnection("127.0.0.1", kernel.port(), timeout=30)
    conn.request("POST", "/v2/models/demo/infer", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert (response.status, response.read()) == (504, b'{"error":"gateway timeout"}')
    conn.close()
    text = kernel.wait_for_log("HARAKIRI on worker 0")
    assert ('answered 504, while queued or running in model "demo" (queue depth 0), client: 127.0.0.1, server: , '
            'request: "POST /v2/models/demo/infer HTTP/1.1", location: "^~ /v2"') in text


def test_a_request_answered_in_time_is_untouched_by_harakiri(start_kernel, tmp_path, hanging):
    kernel = start(start_kernel, tmp_path, hanging, "  harakiri: 30")
    for _ in range(5):
        assert get(kernel) == (200, b"hello")
    assert "HARAKIRI" not in kernel.log_text()


def test_max_requests_is_logged_once_when_reached(start_kernel, tmp_path, hanging):
    kernel = start(start_kernel, tmp_path, hanging, "  max_requests: 3")
    for _ in range(6):
        assert get(kernel) == (200, b"hello")
    text = kernel.wait_for_log("max requests reached (3 >= 3)")
    assert text.count("max requests reached") == 1
    assert text.count("worker replacement asked for (max_requests)") == 1


def test_reload_on_rss_is_checked_after_a_request(start_kernel, tmp_path, hanging):
    kernel = start(start_kernel, tmp_path, hanging, "  reload_on_rss: 1m")
    assert "reload-on-rss" not in kernel.log_text(), "checked after a request, not at start"
    assert get(kernel) == (200, b"hello")
    text = kernel.wait_for_log("reload-on-rss reached (")
    assert "bytes)" in text and "worker replacement asked for (reload_on_rss)" in text


def test_max_worker_lifetime_is_checked_while_idle(start_kernel, tmp_path, hanging):
    kernel = start(start_kernel, tmp_path, hanging, "  max_worker_lifetime: 1s")
    kernel.wait_for_log("worker 0 lifetime reached, it was running for 1 second(s)")
    kernel.wait_for_log("worker replacement asked for (max_worker_lifetime)")
    assert get(kernel) == (200, b"hello")


def test_a_backlog_above_somaxconn_is_warned_about(start_kernel, tmp_path, hanging):
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    if somaxconn >= 65535:
        pytest.fail("net.core.somaxconn is at 65535: no backlog can exceed it")
    kernel = start(start_kernel, tmp_path, hanging, "  listen_backlog: 65535")
    text = kernel.wait_for_log("is larger than net.core.somaxconn")
    assert (f"listen backlog 65535 of http 127.0.0.1:0 is larger than net.core.somaxconn ({somaxconn}): the system "
            f"caps the accept queue at {somaxconn}") in text
    assert get(kernel) == (200, b"hello")


def test_a_listen_lines_own_backlog_wins_over_the_kernels(start_kernel, tmp_path, hanging):
    kernel = start(start_kernel, tmp_path, hanging, "  listen_backlog: 2048\n  stats: 127.0.0.1:0",
                   listen='["127.0.0.1:0", {address: "127.0.0.2:0", backlog: 16}]')
    host, port = kernel.address("stats").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    # max_queue is the backlog as the system applies it (TCP_INFO of the listening socket).
    queues = {entry["name"]: entry["max_queue"] for entry in json.loads(data)["sockets"]}
    assert queues == {kernel.address("http", "127.0.0.1:0"): 2048, kernel.address("http", "127.0.0.2:0"): 16}
    assert "somaxconn" not in kernel.log_text()


# With worker processes (`processes: 2`): the master replaces a worker that asks, and no request fails.

PROCESSES = """
kernel:
  pid: {workdir}/kernel.pid
  error_log: {{path: stderr, level: info}}
  event_loop_threads: 1
  processes: 2
  worker_reload_mercy: 10s
  stats: 127.0.0.1:0
{keys}
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /stuck
          proxy_pass: http://127.0.0.1:{hanging}
          proxy_read_timeout: 60s
        - location: /
          return: 200 "hello"
"""


def start_processes(start_kernel, tmp_path, hanging, keys):
    return start_kernel(PROCESSES.format(workdir=tmp_path, keys=keys, hanging=hanging.port))


def worker_pids(kernel):
    """The worker processes the master started, in order."""
    return [int(pid) for pid in re.findall(r"start worker process (\d+) ", kernel.log_text())]


def stats(kernel):
    host, port = kernel.address("stats").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return json.loads(data)


def serve_under_load(kernel, count, threads=4):
    """`count` requests from `threads` clients, each on its own keep-alive connection; returns the statuses."""
    statuses = []
    lock = threading.Lock()

    def client(n):
        conn = http.client.HTTPConnection("127.0.0.1", kernel.port(), timeout=30)
        for _ in range(n):
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                status = response.status if body == b"hello" else f"{response.status} {body!r}"
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", kernel.port(), timeout=30)
            except (OSError, http.client.HTTPException) as error:
                status = repr(error)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", kernel.port(), timeout=30)
            with lock:
                statuses.append(status)
        conn.close()

    workers = [threading.Thread(target=client, args=(count // threads,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    return statuses


def test_max_requests_recycles_workers_under_load_with_no_failed_request(start_kernel, tmp_path, hanging):
    kernel = start_processes(start_kernel, tmp_path, hanging, "  max_requests: 100")
    first = worker_pids(kernel)
    assert len(first) == 2
    statuses = serve_under_load(kernel, 800)
    assert statuses == [200] * 800, [s for s in statuses if s != 200][:5]
    text = kernel.wait_for_log("...The work of process", count=2)
    assert "max requests reached (100 >= 100): ...The work of process" in text
    kernel.wait_for_log("asks to be replaced (max_requests): starting its replacement", count=2)
    assert len(worker_pids(kernel)) >= 4, "each recycled worker got a replacement"


def test_reload_on_rss_recycles_with_no_failed_request(start_kernel, tmp_path, hanging):
    kernel = start_processes(start_kernel, tmp_path, hanging, "  reload_on_rss: 1m")
    statuses = serve_under_load(kernel, 60, threads=2)
    assert statuses == [200] * 60, [s for s in statuses if s != 200][:5]
    kernel.wait_for_log("asks to be replaced (reload_on_rss): starting its replacement")
    assert "reload-on-rss reached (" in kernel.log_text()
    assert len(worker_pids(kernel)) >= 3


def test_harakiri_gives_504_a_new_worker_and_leaves_the_others_alone(start_kernel, tmp_path, hanging):
    kernel = start_processes(start_kernel, tmp_path, hanging, "  harakiri: 1")
    first = worker_pids(kernel)
    assert len(first) == 2
    stuck = {}
    thread = threading.Thread(target=lambda: stuck.update(answer=get(kernel, "/stuck")))
    thread.start()
    statuses = serve_under_load(kernel, 200, threads=2)
    thread.join(timeout=30)
    assert stuck["answer"] == (504, b'{"error":"gateway timeout"}')
    assert statuses == [200] * 200, [s for s in statuses if s != 200][:5]
    text = kernel.wait_for_log("asks to be replaced (harakiri): starting its replacement")
    found = re.search(r"HARAKIRI on worker [12] \(pid: (\d+)\): request stuck for 1s \(harakiri 1s\), answered 504, "
                      r'while waiting for upstream "http://127.0.0.1:\d+", client: 127.0.0.1, server: , '
                      r'request: "GET /stuck HTTP/1.1", location: "/stuck"', text)
    assert found, text
    stuck_pid = int(found.group(1))
    assert stuck_pid in first
    kernel.wait_for_log(f"worker process {stuck_pid} exited with code 0")
    # Two workers serve: the untouched one and the replacement, which the stats show.
    replacement = [pid for pid in worker_pids(kernel) if pid not in first]
    assert len(replacement) == 1, worker_pids(kernel)
    deadline = time.time() + 20
    while {w["pid"] for w in stats(kernel)["workers"]} != (set(first) - {stuck_pid}) | set(replacement):
        assert time.time() < deadline, stats(kernel)
        time.sleep(0.1)
    assert serve_under_load(kernel, 40, threads=2) == [200] * 40


def test_max_worker_lifetime_replaces_both_workers_with_no_failed_request(start_kernel, tmp_path, hanging):
    kernel = start_processes(start_kernel, tmp_path, hanging, "  max_worker_lifetime: 1s")
    first = worker_pids(kernel)
    statuses = []
    deadline = time.time() + 30
    while kernel.log_text().count("asks to be replaced (max_worker_lifetime)") < 2:
        assert time.time() < deadline, kernel.log_text()
        statuses += serve_under_load(kernel, 20, threads=2)
    assert statuses and statuses == [200] * len(statuses), [s for s in statuses if s != 200][:5]
    assert re.search(r"worker [12] lifetime reached, it was running for \d+ second\(s\): \.\.\.The work of process", kernel.log_text())
    for pid in first:
        kernel.wait_for_log(f"worker process {pid} exited with code 0")


STREAMING_EDGE = """
kernel:
  pid: {workdir}/edge.pid
  error_log: {{path: stderr, level: info}}
  harakiri: 1
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /upload
          proxy_pass: http://127.0.0.1:{backend}
          proxy_request_buffering: off
"""

READING_BACKEND = """
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /
          return: 200 "stored"
"""


def test_harakiri_counts_a_streamed_upload_from_its_last_byte(start_kernel, tmp_path):
    """With `proxy_request_buffering off` the handler starts while the body still arrives; harakiri counts from
    the end of the body, as uWSGI's does, so an upload slower than the harakiri is not taken for a stuck request.
    The backend reads the whole body (it buffers it) before it answers."""
    backend = start_kernel(READING_BACKEND, role="edge", name="backend.yaml")
    edge = start_kernel(STREAMING_EDGE.format(workdir=tmp_path, backend=backend.port()), role="edge", name="edge.yaml")
    parts = [b"a" * 1000, b"b" * 1000, b"c" * 1000]
    with socket.create_connection(("127.0.0.1", edge.port()), timeout=30) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\nConnection: close\r\n\r\n")
        for part in parts:   # 2.4 s of upload, past the 1 s harakiri
            time.sleep(0.8)
            s.sendall(part)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert answer.endswith(b"stored"), answer
    assert "HARAKIRI" not in edge.log_text()
