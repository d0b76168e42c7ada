"""The keepalive pool of an `upstreams:` group end to end: `proxy_pass` to a real HTTP/1.1 backend that records
which connection (the edge's client port) carried each request and the `Connection` header it was sent."""
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

RETRY_LINE = "upstream closed a kept-alive connection before answering"


class RecordingBackend:
    """A threaded HTTP/1.1 server on 127.0.0.1 port 0 that answers every request with a small JSON body and keeps
    its connections open, as HTTP/1.1 servers do. Modes, for servers that end connections on their own:

    - `idle_timeout`: an idle connection is closed after that many seconds (the handler's socket timeout);
    - `close_after_response`: every connection is closed right after its first answer, without `Connection: close`;
    - `drop_reused`: a second request on a connection is read and the connection closed without an answer (a
      server that closed an idle connection just as the request was on its way);
    - `drop_reused_after`: the same, the close coming that many seconds after the request was read (a server that
      took the request and failed on it).
    """

    def __init__(self, idle_timeout=None, close_after_response=False, drop_reused=False, drop_reused_after=None):
        self.requests = []  # (client port, method, Connection header, body length)
        self.closed_connections = 0
        self.dropped = 0
        self.dropped_methods = []
        drop_reused = drop_reused or drop_reused_after is not None
        self.lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = idle_timeout

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                self.served = 0

            def finish(self):
                super().finish()
                with backend.lock:
                    backend.closed_connections += 1

            def answer(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length) if length else b""
                if drop_reused and self.served >= 1:
                    if drop_reused_after:
                        time.sleep(drop_reused_after)
                    with backend.lock:
                        backend.dropped += 1
                        backend.dropped_methods.append(self.command)
                    self.close_connection = True
                    return
                self.served += 1
                with backend.lock:
                    backend.requests.append((self.client_address[1], self.command,
                                             self.headers.get("Connection"), len(body)))
                if self.path == "/no-content":
                    self.send_response(204)
                    self.end_headers()
                    return
                if self.path == "/chunked-one-write":
                    # The whole chunked answer, last chunk included, in one write; the connection stays open.
                    data = json.dumps({"port": self.client_address[1], "served": self.served}).encode()
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n"
                                     + b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n")
                    return
                if self.path in ("/too-long", "/after-last-chunk"):
                    # More bytes than the answer's framing covers, in the same write as the answer.
                    data = json.dumps({"port": self.client_address[1], "served": self.served}).encode()
                    if self.path == "/too-long":
                        framed = b"Content-Length: %d\r\n\r\n" % len(data) + data
                    else:
                        framed = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + framed + b"EXTRA")
                    return
                data = json.dumps({"port": self.client_address[1], "served": self.served}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                if close_after_response:
                    self.close_connection = True

            do_GET = do_POST = do_HEAD = answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def seen(self):
        with self.lock:
            return list(self.requests)

    def closed(self):
        with self.lock:
            return self.closed_connections

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends():
    started = []

    def make(**kwargs):
        backend = RecordingBackend(**kwargs)
        started.append(backend)
        return backend

    yield make
    for backend in started:
        backend.close()


def edge_yaml(port, group_extra=""):
    return f"""
http:
  listen: "127.0.0.1:0"
upstreams:
  backend:
    protocol: http
    servers: [127.0.0.1:{port}]
{group_extra}
routing:
  servers:
    - client_max_body_size: 10m
      locations:
        - location: /
          proxy_pass: http://backend
"""


KEEPALIVE = "    keepalive: 4\n"


def wait_for(predicate, what, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def send(conn, method="GET", path="/", body=None):
    conn.request(method, path, body=body, headers={"Content-Type": "text/plain"} if body is not None else {})
    response = conn.getresponse()
    data = response.read()
    assert response.status == 200, data
    return json.loads(data)


def test_sequential_requests_reuse_one_upstream_connection(start_kernel, backends):
    backend = backends()
    edge = start_kernel(edge_yaml(backend.port, KEEPALIVE), role="edge")
    conn = http.client.HTTPConnection("127.0.0.1", edge.port(), timeout=30)
    for i in range(20):
        send(conn, *(("POST", "/p", b"x" * i) if i % 2 else ("GET", f"/g{i}")))
    conn.close()
    seen = backend.seen()
    assert len(seen) == 20
    # One client connection stays on one event loop, whose pool hands the same upstream connection back each time.
    assert len({port for port, *_ in seen}) == 1, seen
    # With a keepalive group the edge does not ask the upstream to close.
    assert all(connection is None for _, _, connection, _ in seen), seen
    # A client's own `Connection: close` is hop-by-hop: it ends the client's connection, not the upstream's.
    conn = http.client.HTTPConnection("127.0.0.1", edge.port(), timeout=30)
    conn.request("GET", "/closing", headers={"Connection": "close"})
    response = conn.getresponse()
    response.read()
    assert response.status == 200 and response.getheader("Connection") == "close"
    conn.close()
    port, _, connection, _ = backend.seen()[-1]
    assert connection is None, backend.seen()[-1]
    # Separate client connections may land on either of the two event loops: at most one connection each.
    for _ in range(10):
        conn = http.client.HTTPConnection("127.0.0.1", edge.port(), timeout=30)
        send(conn)
        conn.close()
    assert len({port for port, *_ in backend.seen()}) <= 2, backend.seen()


def test_a_chunked_answer_whose_last_chunk_comes_with_its_payload_ends_at_once(start_kernel, backends):
    """A kept-alive upstream that writes a whole chunked answer at once and keeps its connection: the answer ends
    when its last chunk arrives (not at proxy_read_timeout), and the connection goes back to the pool."""
    backend = backends()
    edge = start_kernel(edge_yaml(backend.port, KEEPALIVE).replace(
        "proxy_pass: http://backend", "proxy_pass: http://backend\n          proxy_read_timeout: 20s"), role="edge")
    conn = http.client.HTTPConnection("127.0.0.1", edge.port(), timeout=5)
    started = time.time()
    answers = [send(conn, path="/chunked-one-write") for _ in range(3)]
    conn.close()
    # Each would otherwise wait for the 20 s read timeout (and the client's 5 s timeout fails first).
    assert time.time() - started < 5
    assert [answer["served"] for answer in answers] == [1, 2, 3], answers
    assert len({answer["port"] for answer in answers}) == 1, answers


def test_without_keepalive_every_request_has_its_own_connection(start_kernel, backends):
    backend = backends()
    edge = start_kernel(edge_yaml(backend.port), role="edge")
    conn = http.client.HTTPConnection("127.0.0.1", edge.port(), timeout=30)
    for i in range(6):
        send(conn, "GET", f"/{i}")
    conn.close()
    seen = backend.seen()
    assert len({port for port, *_ in seen}) == 6, seen
    assert all(connection == "close" for _, _, connection, _ in seen), seen


def test_keepalive_requests_closes_after_that_many(start_kernel, backends):
    backend = backends()
    edge = start_kernel(edge_yaml(backend.port, KEEPALIVE + "    keepalive_requests: 3\n"), role="edge")
    conn = http.client.HTTPConnection("127.0.0.1", edge.port(), timeout=30)
    for i in range(9):
        send(conn, "GET", f"/{i}")
    conn.close()
    ports = [port for port, *_ in backend.seen()]
    # Three requests a connection, in order: the fourth request opens a new one.
    assert len(set(ports)) == 3, ports
    assert ports[0:3] == [ports[0]] * 3 and ports[3:6] == [ports[3]] * 3 and ports[6:9] == [ports[6]] * 3, ports


def test_a_backend_closing_idle_connections_fails_no_request(start_kernel, backends):
    backend = backends(idle_timeout=1)
    edge = start_kernel(edge_yaml(backend.port, KEEPALIVE), role="edge")
    conn = http.client.HTTPConnection("127.0.0.1", edge.port(), timeout=30)
    for round_number in range(3):
        send(conn, "GET", f"/g{round_number}")
        send(conn, "POST", f"/p{round_number}", b"body" * 100)
        # The backend closes the idle upstream connection after 1 s; the next round finds it gone.
        wait_for(lambda: backend.closed() >= round_number + 1, "the backend to close its idle connection")
    conn.close()
    assert [method for _, method, _, _ in backend.seen()] == ["GET", "POST"] * 3
    assert "[error]" not in edge.log_text(), edge.log_text()


def test_a_backend_closing_after_each_answer_fails_no_request(start_kernel, backends):
    backend = backends(close_after_response=True)
    edge = start_kernel(edge_yaml(backend.port, KEEPALIVE), role="edge")
    conn = http.client.HTTPConnection("127.0.0.1", edge.port(), timeout=30)
    for i in range(10):
        send(conn, *(("POST", "/p", b"y" * 1000) if i % 2 else ("GET", f"/g{i}")))
    conn.close()
    seen = backend.seen()
    assert len(seen) == 10 and len({port for port, *_ in seen}) == 10, seen
    assert "[error]" not in edge.log_text(), edge.log_text()


def test_a_request_meeting_a_closing_connection_is_sent_again(start_kernel, backends):
    backend = backends(drop_reused=True)
    edge = start_kernel(edge_yaml(backend.port, KEEPALIVE), role="edge")
    conn = http.client.HTTPConnection("127.0.0.1", edge.port(), timeout=30)
    for i in range(6):
        send(conn, *(("POST", f"/p{i}", b"z" * 500) if i % 2 else ("GET", f"/g{i}")))
    conn.close()
    seen = backend.seen()
    # Every request after the first met a kept connection that the backend closed on reading it: each was sent
    # again on a new connection and answered there, GET and POST alike (the POST's body whole).
    assert [method for _, method, _, _ in seen] == ["GET", "POST"] * 3, seen
    assert all(length == 500 for _, method, _, length in seen if method == "POST"), seen
    assert backend.dropped == 5
    log = edge.wait_for_log(RETRY_LINE, count=5)
    retry_lines = [line for line in log.splitlines() if RETRY_LINE in line]
    assert len(retry_lines) == 5, log
    assert all("[info]" in line and f'upstream: "http://127.0.0.1:{backend.port}"' in line for line in retry_lines), log
    assert "[error]" not in log, log


def test_a_post_the_upstream_took_before_closing_is_not_sent_again(start_kernel, backends):
    # The upstream reads the request on a kept connection and closes it a second later without answering: it may
    # have acted on it. A GET goes again on a new connection; a POST does not (nginx's 502), unlike a close that
    # crosses the request (the test above).
    backend = backends(drop_reused_after=1.0)
    edge = start_kernel(edge_yaml(backend.port, KEEPALIVE), role="edge")
    conn = http.client.HTTPConnection("127.0.0.1", edge.port(), timeout=30)
    send(conn, "GET", "/first")
    send(conn, "GET", "/second")  # dropped on the kept connection a second after it was read, then answered anew
    assert backend.dropped_methods == ["GET"], backend.dropped_methods
    conn.request("POST", "/pay", body=b"p" * 100)  # on the new connection, kept: dropped the same way
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 502, response.status
    assert backend.dropped_methods == ["GET", "POST"], backend.dropped_methods
    assert [method for _, method, _, _ in backend.seen()] == ["GET", "GET"], "the POST was not sent again"
    assert RETRY_LINE in edge.log_text()


def test_head_and_bodiless_answers_keep_the_connection(start_kernel, backends):
    backend = backends()
    edge = start_kernel(edge_yaml(backend.port, KEEPALIVE), role="edge")
    conn = http.client.HTTPConnection("127.0.0.1", edge.port(), timeout=30)
    for method, path, status in [("GET", "/a", 200), ("HEAD", "/b", 200), ("GET", "/no-content", 204),
                                 ("HEAD", "/c", 200), ("GET", "/d", 200)]:
        conn.request(method, path)
        response = conn.getresponse()
        data = response.read()
        assert response.status == status and (data == b"") == (method == "HEAD" or status == 204), (method, path, data)
    conn.close()
    # A HEAD answer's Content-Length and a 204 frame no body: the connection goes back to the pool each time.
    assert len({port for port, *_ in backend.seen()}) == 1, backend.seen()


def test_a_large_post_meeting_a_closing_connection_is_sent_again_whole(start_kernel, backends):
    backend = backends(drop_reused=True)
    edge = start_kernel(edge_yaml(backend.port, KEEPALIVE), role="edge")
    conn = http.client.HTTPConnection("127.0.0.1", edge.port(), timeout=30)
    big = b"q" * (3 << 20)
    send(conn, "POST", "/first", big)
    # The next request meets the connection the backend drops: the 3 MiB body (spooled by the edge) goes again whole.
    send(conn, "POST", "/second", big)
    conn.close()
    assert [length for *_, length in backend.seen()] == [len(big), len(big)], backend.seen()
    edge.wait_for_log(RETRY_LINE)


def test_an_upstream_sending_more_than_its_framing_is_logged_and_its_connection_not_reused(start_kernel, backends):
    """nginx's warnings for bytes after an answer's end; the client gets the framed body only, and the connection,
    no longer trusted, is not used again."""
    backend = backends()
    edge = start_kernel(edge_yaml(backend.port, KEEPALIVE), role="edge")
    conn = http.client.HTTPConnection("127.0.0.1", edge.port(), timeout=10)
    first = send(conn, path="/too-long")
    second = send(conn, path="/after-last-chunk")
    third = send(conn)
    conn.close()
    assert first["served"] == 1 and second["served"] == 1 and third["served"] == 1, (first, second, third)
    assert len({first["port"], second["port"], third["port"]}) == 3, (first, second, third)
    log = edge.wait_for_log("upstream sent data after final chunk")
    lines = [line for line in log.splitlines() if "upstream sent" in line]
    assert len(lines) == 2, log
    assert '[warn]' in lines[0] and 'upstream sent more data than specified in "Content-Length" header while reading upstream' in lines[0], log
    assert f'upstream: "http://127.0.0.1:{backend.port}' in lines[0] and 'request: "GET /too-long HTTP/1.1"' in lines[0], log
    assert '[warn]' in lines[1] and 'request: "GET /after-last-chunk HTTP/1.1"' in lines[1], log
