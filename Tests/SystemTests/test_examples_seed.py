"""The tutorial's server blocks as shipped in etc/examples/seed-*.yaml, each booted as a kernel edge with real
backends: uWSGI + Flask for the uwsgi example, small Python HTTP servers that report what they received for the
proxy_pass ones.

Each test copies etc/ as a fresh clone has it and starts the example from there (its relative pid path included).
The only change made to a file is its ports: the listen port becomes 0 and each backend port the port of a backend
this test bound, by rewriting the text of the temporary copy, because the fixed ports the examples name would
collide between parallel runs and with whatever else runs on the machine. Every other line is the shipped one.
"""
import collections
import http.client
import http.server
import json
import os
import re
import shutil
import socket
import threading

import pytest

from conftest import ROOT, Kernel
from uwsgi_support.peers import UWSGI, UWSGIApp

assert UWSGI, "uwsgi is missing: run scripts/setup.sh"

LIMIT = 100 * 1024 * 1024  # client_max_body_size 100m


def boot_example(tmp_path, name, ports):
    """Starts etc/examples/NAME from a fresh copy of etc/ with `ports` ({shipped: bound}) replaced."""
    shutil.copytree(os.path.join(ROOT, "etc"), tmp_path / "etc")
    example = tmp_path / "etc" / "examples" / name
    text = example.read_text()
    for shipped, bound in ports.items():
        assert shipped in text, f"{name} no longer names {shipped}"
        text = text.replace(shipped, bound)
    example.write_text(text)
    return Kernel(str(example), "edge", str(tmp_path))


@pytest.fixture
def boot(tmp_path):
    started = []

    def start(name, ports):
        kernel = boot_example(tmp_path, name, ports)
        started.append(kernel)
        return kernel

    yield start
    for kernel in started:
        kernel.stop()


def request(port, method="GET", path="/", headers=(), body=None, source="127.0.0.1"):
    """One request on a new connection from `source`; returns (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    conn.putrequest(method, path, skip_accept_encoding=True, skip_host="Host" in dict(headers))
    for name, value in dict(headers).items():
        conn.putheader(name, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    if body is not None:
        conn.send(body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response.headers, data


def too_large(port, path="/"):
    """A head declaring one byte more than 100m and no body: the edge must answer 413 before reading any."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {LIMIT + 1}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = client.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


# ------------------------------------------------------------------------------------------- seed-ip-hash-uwsgi

@pytest.fixture
def uwsgi_pair(tmp_path):
    """Two uWSGI + Flask apps on ports of their own, each adding an `X-Backend` header with its name."""
    apps = {}
    try:
        for name in ("a", "b"):
            workdir = tmp_path / f"uwsgi-{name}"
            workdir.mkdir()
            apps[name] = UWSGIApp(str(workdir), extra=("--add-header", f"X-Backend: {name}"))
        yield apps
    finally:
        for app in apps.values():
            app.stop()


def test_seed_ip_hash_uwsgi(boot, uwsgi_pair):
    edge = boot("seed-ip-hash-uwsgi.yaml", {"listen: 9002": "listen: 0",
                                             "127.0.0.1:8003": f"127.0.0.1:{uwsgi_pair['a'].port}",
                                             "127.0.0.1:8004": f"127.0.0.1:{uwsgi_pair['b'].port}"})
    port = edge.port()
    # ip_hash hashes the first three octets, so the sources differ in the third one (all of 127/8 is loopback).
    chosen = {}
    for third in range(8):
        source = f"127.0.{third}.1"
        seen = set()
        for _ in range(4):
            status, headers, body = request(port, path="/who", source=source)
            assert status == 200, body
            assert json.loads(body)["environ"]["REMOTE_ADDR"] == source
            seen.add(headers["X-Backend"])
        assert len(seen) == 1, (source, seen)  # sticky
        chosen[source] = seen.pop()
    assert set(chosen.values()) == {"a", "b"}, chosen  # different clients reach both servers
    # A body within client_max_body_size reaches the app whole; one declared above it is refused before it is sent.
    body = os.urandom(1024 * 1024)
    status, _, answer = request(port, "POST", "/upload", body=body)
    assert status == 200 and json.loads(answer)["body_length"] == len(body)
    assert too_large(port) == 413


# ------------------------------------------------------------------------------------------- HTTP backends

class ReportingBackend:
    """An HTTP/1.1 server on 127.0.0.1 port 0 answering every request with JSON of what it received."""

    def __init__(self, name):
        self.name = name
        self.requests = []
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = {"backend": backend.name, "method": self.command, "path": self.path,
                        "headers": [[k, v] for k, v in self.headers.items()], "body_length": len(body)}
                backend.requests.append(seen)
                data = json.dumps(seen).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends():
    started = []

    def start(*names):
        made = [ReportingBackend(name) for name in names]
        started.extend(made)
        return made

    yield start
    for backend in started:
        backend.stop()


def header(seen, name):
    values = [v for k, v in seen["headers"] if k.lower() == name.lower()]
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


TUTORIAL_METHODS = "POST,GET,PATCH,PUT,DELETE"
TUTORIAL_HEADERS = "Authorization,Origin,X-Requested-With,Content-Type,Accept"


def check_cors(port, backends_reached):
    """The tutorial's CORS, done right: any origin, no credentials, preflight answered at the edge."""
    before = sum(len(b.requests) for b in backends_reached)
    status, headers, _ = request(port, "OPTIONS", "/api", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "Content-Type"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert set(re.split(r",\s*", headers["Access-Control-Allow-Methods"])) >= set(TUTORIAL_METHODS.split(","))
    assert "content-type" in headers["Access-Control-Allow-Headers"].lower()
    assert headers["Access-Control-Allow-Credentials"] is None  # browsers reject it beside "*"
    assert sum(len(b.requests) for b in backends_reached) == before  # the preflight never reached a backend
    status, headers, body = request(port, "GET", "/api", headers={"Origin": "https://app.example"})
    assert status == 200, body
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Allow-Credentials"] is None
    status, headers, _ = request(port, "GET", "/api")
    assert status == 200 and headers["Access-Control-Allow-Origin"] is None  # no Origin, not a CORS request


def check_too_large(port, backends_reached):
    before = sum(len(b.requests) for b in backends_reached)
    assert too_large(port) == 413
    assert sum(len(b.requests) for b in backends_reached) == before


# ------------------------------------------------------------------------------------------- seed-proxy-cors

def test_seed_proxy_cors(boot, backends):
    (backend,) = backends("app")
    edge = boot("seed-proxy-cors.yaml", {"listen: 9000": "listen: 0",
                                          "http://127.0.0.1:8000": f"http://127.0.0.1:{backend.port}"})
    port = edge.port()
    status, _, body = request(port, "POST", "/predict?x=1", body=b"hello",
                              headers={"Host": "Models.Example:9000", "X-Forwarded-For": "10.0.0.7"})
    assert status == 200, body
    seen = json.loads(body)
    assert seen["method"] == "POST" and seen["path"] == "/predict?x=1" and seen["body_length"] == 5
    # The four proxy_set_header lines, as the backend saw them.
    assert header(seen, "Host") == "models.example"  # nginx's $host: the name without the port, lowercased
    assert header(seen, "X-Real-IP") == "127.0.0.1"
    assert header(seen, "X-Forwarded-For") == "10.0.0.7, 127.0.0.1"
    assert header(seen, "X-Forwarded-Protocol") == "http"
    check_cors(port, [backend])
    check_too_large(port, [backend])


# ------------------------------------------------------------------------------------------- seed-round-robin

def test_seed_round_robin(boot, backends):
    first, second = backends("8001", "8002")
    edge = boot("seed-round-robin.yaml", {"listen: 9001": "listen: 0",
                                           "127.0.0.1:8001": f"127.0.0.1:{first.port}",
                                           "127.0.0.1:8002": f"127.0.0.1:{second.port}"})
    port = edge.port()
    order = []
    for _ in range(20):
        status, _, body = request(port, "GET", "/work")
        assert status == 200, body
        order.append(json.loads(body)["backend"])
    assert collections.Counter(order) == {"8001": 10, "8002": 10}, order
    assert all(a != b for a, b in zip(order, order[1:])), order  # round robin alternates
    check_cors(port, [first, second])
    check_too_large(port, [first, second])


# ------------------------------------------------------------------------------------------- seed-weighted

def test_seed_weighted(boot, backends):
    first, second = backends("8005", "8006")
    edge = boot("seed-weighted.yaml", {"listen: 9003": "listen: 0",
                                        "127.0.0.1:8005": f"127.0.0.1:{first.port}",
                                        "127.0.0.1:8006": f"127.0.0.1:{second.port}"})
    port = edge.port()
    counts = collections.Counter()
    for _ in range(40):
        status, _, body = request(port, "GET", "/")
        assert status == 200, body
        counts[json.loads(body)["backend"]] += 1
    assert counts == {"8005": 20, "8006": 20}, counts  # weight=10 and weight=10: 1:1
