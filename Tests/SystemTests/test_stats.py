"""The stats server (`kernel.stats`, uWSGI's `--stats`) on the real binary: the JSON document uWSGI tools read,
`uwsgitop` itself reading it under tmux, and the listen queue of a listener that cannot accept."""
import http.client
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

STATS = """
kernel:
  pid: {workdir}/kernel.pid
  error_log: {{path: stderr, level: info}}
  event_loop_threads: 2
  stats: {stats}
{extra}
http:
  listen: {listen}
routing:
  servers:
    - locations:
        - location: /
          return: 200 "hello"
"""


def start(start_kernel, tmp_path, stats="127.0.0.1:0", listen='"127.0.0.1:0"', extra=""):
    return start_kernel(STATS.format(workdir=tmp_path, stats=stats, listen=listen, extra=extra))


def read_stats(kernel=None, address=None):
    """One connection to the stats server: the whole document, read until the server closes."""
    if address is None:
        host, port = kernel.address("stats").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=10)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(address)
    data = b""
    with sock:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def get(kernel, path="/"):
    conn = http.client.HTTPConnection("127.0.0.1", kernel.port(), timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_the_document_has_uwsgis_shape_and_counts_requests(start_kernel, tmp_path):
    kernel = start(start_kernel, tmp_path)
    document = read_stats(kernel)
    for key in ("version", "listen_queue", "listen_queue_errors", "load", "pid", "uid", "gid", "cwd", "sockets", "workers"):
        assert key in document, key
    assert document["pid"] == kernel.pid
    assert document["uid"] == os.getuid() and document["gid"] == os.getgid()
    assert document["cwd"] == str(tmp_path)
    assert [s["name"] for s in document["sockets"]] == [kernel.address("http")]
    assert document["sockets"][0]["proto"] == "http"
    assert document["sockets"][0]["max_queue"] == 1024, "kernel.listen_backlog's default"
    [worker] = document["workers"]
    for key in ("id", "pid", "accepting", "requests", "delta_requests", "exceptions", "harakiri_count", "signals",
                "status", "rss", "vsz", "running_time", "last_spawn", "respawn_count", "tx", "avg_rt", "apps", "cores"):
        assert key in worker, key
    assert worker["pid"] == kernel.pid and worker["accepting"] == 1 and worker["status"] == "idle"
    assert worker["rss"] > 0 and worker["vsz"] >= worker["rss"]
    assert worker["requests"] == 0 and worker["respawn_count"] == 1
    assert abs(worker["last_spawn"] - time.time()) < 3600

    for _ in range(7):
        assert get(kernel) == (200, b"hello")
    worker = read_stats(kernel)["workers"][0]
    assert worker["requests"] == 7
    assert worker["delta_requests"] == 7, "since the previous document"
    assert worker["tx"] > 7 * len(b"hello"), "heads and bodies"
    assert worker["running_time"] > 0 and worker["avg_rt"] > 0
    assert worker["apps"][0]["requests"] == 7 and worker["cores"][0]["requests"] == 7
    assert get(kernel) == (200, b"hello")
    worker = read_stats(kernel)["workers"][0]
    assert (worker["requests"], worker["delta_requests"]) == (8, 1)


def test_stats_on_a_unix_socket(start_kernel, tmp_path):
    path = f"/tmp/kernel-stats-{uuid.uuid4().hex[:8]}.sock"
    kernel = start(start_kernel, tmp_path, stats=f"unix:{path}")
    try:
        assert get(kernel) == (200, b"hello")
        assert read_stats(address=path)["workers"][0]["requests"] == 1
    finally:
        kernel.stop()
    assert not os.path.exists(path), "closing the server removes its socket"


def uwsgitop_script():
    """The `uwsgitop` script PyPI's package installs (run with this Python, whatever is first on PATH)."""
    distribution = importlib.metadata.distribution("uwsgitop")
    for file in distribution.files:
        if file.name == "uwsgitop" and "bin" in file.parts:
            return str(file.locate())
    raise AssertionError("the uwsgitop package has no uwsgitop script")


class Tmux:
    """A detached tmux session running one command, whose screen the test reads."""

    def __init__(self, command):
        self.name = f"kernel-test-{uuid.uuid4().hex[:8]}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "200", "-y", "40", command], check=True)

    def screen(self):
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True).stdout

    def wait_for(self, predicate, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"uwsgitop did not show what was expected:\n{self.screen()}")

    def close(self):
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def worker_row(screen, pid):
    """The fields of uwsgitop's row for the worker `pid`: WID % PID REQ RPS EXC SIG STATUS AVG RSS VSZ TX ..."""
    for line in screen.splitlines():
        fields = line.split()
        if len(fields) > 8 and fields[2] == str(pid):
            return fields
    return None


def test_uwsgitop_shows_the_worker_its_requests_rss_and_status(start_kernel, tmp_path):
    assert shutil.which("tmux"), "tmux is installed by scripts/setup.sh"
    kernel = start(start_kernel, tmp_path)
    address = kernel.address("stats")
    top = Tmux(f"env -u COLUMNS -u LINES TERM=xterm {sys.executable} {uwsgitop_script()} --frequency 1 {address}")
    try:
        screen = top.wait_for(lambda text: worker_row(text, kernel.pid) is not None)
        assert "WID" in screen and "STATUS" in screen and "RSS" in screen, screen
        assert f"masterpid: {kernel.pid}" in screen, screen
        row = worker_row(screen, kernel.pid)
        assert row[3] == "0", f"no request yet: {row}"
        for _ in range(25):
            assert get(kernel) == (200, b"hello")
        screen = top.wait_for(lambda text: (worker_row(text, kernel.pid) or [None] * 4)[3] == "25")
        row = worker_row(screen, kernel.pid)
        assert row[7] == "idle", row
        assert row[9].endswith("M"), f"RSS in megabytes: {row}"
        assert "req: 25" in screen, screen
    finally:
        top.close()


def test_a_full_accept_queue_is_logged_and_in_the_stats(start_kernel, tmp_path):
    """A kernel out of descriptors stops accepting (nginx's accept_mutex_delay); connections then wait in the
    listen queue of 8 until it is full, which the sampler sees, logs and counts."""
    kernel = start(start_kernel, tmp_path, listen='[{address: "127.0.0.1:0", backlog: 8}]',
                   extra="  worker_rlimit_nofile: 64")
    port = kernel.port()
    held = []
    try:
        # A connect completes once the system queued it. A SYN that finds the queue full is dropped and sent again
        # a second later, when a kernel that accepts has made room: a connect still waiting after 2.5 s means the
        # queue stays full, which is where the test stops adding more.
        for _ in range(500):
            sock = socket.socket()
            sock.settimeout(2.5)
            held.append(sock)
            try:
                sock.connect(("127.0.0.1", port))
            except OSError:
                break
        else:
            raise AssertionError("500 connections were all accepted: the descriptor limit did not apply")
        kernel.wait_for_log(f'*** listen queue of socket "http 127.0.0.1:{port}" full !!! (', timeout=15)
    finally:
        for sock in held:
            sock.close()
    # The stats server needs a descriptor too: it answers once the clients are gone and the kernel accepts again.
    deadline = time.time() + 15
    while True:
        try:
            document = read_stats(kernel)
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    assert document["listen_queue_errors"] >= 1, document
    assert document["sockets"][0]["max_queue"] == 8, document
    assert get(kernel) == (200, b"hello")
    kernel.wait_for_log("accept() failed (24: Too many open files)")


WORKERS = """
kernel:
  pid: {workdir}/kernel.pid
  error_log: {{path: stderr, level: info}}
  event_loop_threads: 1
  processes: 2
  stats: 127.0.0.1:0
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /
          return: 200 "hello"
"""


def test_the_master_serves_the_stats_of_its_workers_to_uwsgitop(start_kernel, tmp_path):
    kernel = start_kernel(WORKERS.format(workdir=tmp_path))
    workers = [int(pid) for pid in re.findall(r"start worker process (\d+) ", kernel.log_text())]
    assert len(workers) == 2
    document = read_stats(kernel)
    assert document["pid"] == kernel.pid, "the master's pid, as uWSGI's"
    assert sorted(w["pid"] for w in document["workers"]) == sorted(workers)
    assert sorted(w["id"] for w in document["workers"]) == [1, 2]
    assert all(w["respawn_count"] == 1 and w["status"] == "idle" and w["rss"] > 0 for w in document["workers"])
    assert [s["name"] for s in document["sockets"]] == [kernel.address("http")]
    top = Tmux(f"env -u COLUMNS -u LINES TERM=xterm {sys.executable} {uwsgitop_script()} --frequency 1 {kernel.address('stats')}")
    try:
        top.wait_for(lambda text: all(worker_row(text, pid) for pid in workers))
        for _ in range(30):
            assert get(kernel) == (200, b"hello")
        # Both rows are there and their counts add up to the requests made (each connection went to one of them).
        screen = top.wait_for(lambda text: sum(int((worker_row(text, pid) or [0] * 4)[3]) for pid in workers) == 30)
        assert f"masterpid: {kernel.pid}" in screen and "req: 30" in screen, screen
    finally:
        top.close()
