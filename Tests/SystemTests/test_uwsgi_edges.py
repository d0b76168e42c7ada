"""Edges of `uwsgi_pass` and of the two listeners, with the real binary and real peers: interim 1xx answers from
uWSGI, header names with `_` (`underscores_in_headers`, `ignore_invalid_headers`), HEAD's Content-Length through
`uwsgi_pass`, the one Content-Length limit of the HTTP and uwsgi listeners, and `uwsgi --ping` against a worker.
"""
import http.client
import json
import socket
import struct
import subprocess
import threading

import pytest

from uwsgi_support.peers import UWSGI, UWSGIApp, Nginx, uwsgi_location, http_request as request

INT_MAX = str(2 ** 63 - 1)  # 19 digits: nginx's NGX_MAX_OFF_T_VALUE
TWENTY_DIGITS = "1" + "0" * 19


def raw_exchange(port, data):
    """Sends `data`, half-closes, and reads everything until the peer closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def uwsgi_packet(pairs, body=b"", modifier1=0):
    block = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in pairs)
    return bytes([modifier1]) + struct.pack("<H", len(block)) + b"\x00" + block + body


@pytest.fixture
def app(tmp_path):
    started = UWSGIApp(str(tmp_path))
    yield started
    started.stop()


def edge_config(app_port, http_extra=""):
    return f"""
http:
  listen: "127.0.0.1:0"
{http_extra}uwsgi: {{}}
routing:
  servers:
    - client_max_body_size: 1m
      locations:
        - location: /
          uwsgi_pass: 127.0.0.1:{app_port}
          uwsgi_read_timeout: 30s
"""


@pytest.fixture
def edge(start_kernel, app):
    return start_kernel(edge_config(app.port), role="edge"), app


# Interim answers.

def test_interim_answers_from_uwsgi_are_skipped(edge):
    kernel, app = edge
    # The app really sends them: the same request straight to uWSGI shows 100 and 103 ahead of the 201.
    vars_ = [(b"REQUEST_METHOD", b"GET"), (b"PATH_INFO", b"/interim"), (b"REQUEST_URI", b"/interim"),
             (b"SERVER_PROTOCOL", b"HTTP/1.1"), (b"SERVER_NAME", b"x"), (b"SERVER_PORT", b"80")]
    direct = raw_exchange(app.port, uwsgi_packet(vars_))
    assert direct.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"), direct
    assert b"\r\n\r\nHTTP/1.1 201 CREATED\r\n" in direct, direct

    response, body = request(kernel.port("http"), "GET", "/interim")
    assert response.status == 201
    assert body == b"the final answer"
    assert response.getheader("Link") is None
    # The connection carries on: the next request on it is answered too (the 1xx heads left nothing behind).
    conn = http.client.HTTPConnection("127.0.0.1", kernel.port("http"), timeout=30)
    for _ in range(2):
        conn.request("GET", "/interim")
        answer = conn.getresponse()
        assert (answer.status, answer.read()) == (201, b"the final answer")
    conn.close()


def test_interim_answers_from_a_raw_upstream_are_skipped(start_kernel):
    """A peer that sends every kind of 1xx (101 too) with headers of their own, then the answer."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    answer = (b"HTTP/1.1 100 Continue\r\n\r\n"
              b"HTTP/1.1 102 Processing\r\nContent-Length: 7\r\n\r\n"
              b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\nSet-Cookie: interim=1\r\n\r\n"
              b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: nothing\r\n\r\n"
              b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\ndone")

    def serve():
        for _ in range(1):
            conn, _ = server.accept()
            with conn:
                header = conn.recv(4, socket.MSG_WAITALL)
                size = struct.unpack("<H", header[1:3])[0]
                conn.recv(size, socket.MSG_WAITALL)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        kernel = start_kernel(edge_config(server.getsockname()[1]), role="edge")
        response, body = request(kernel.port("http"), "GET", "/x")
        assert response.status == 200
        assert body == b"done"
        assert response.getheader("Link") is None and response.getheader("Set-Cookie") is None
        thread.join(timeout=30)
    finally:
        server.close()


# Header names with underscores and other invalid names.

def test_underscored_header_is_dropped_and_logged(edge):
    kernel, _ = edge
    response, body = request(kernel.port("http"), "GET", "/h",
                             headers=[("X-Forwarded-For", "1.1.1.1"), ("X_Forwarded_For", "6.6.6.6"), ("X.Dot", "d")])
    assert response.status == 200
    seen = json.loads(body)["headers"]
    assert bytes.fromhex(seen["X_FORWARDED_FOR"]) == b"1.1.1.1"
    assert not any(key.startswith("X_DOT") or key.startswith("X.DOT") for key in seen)
    log = kernel.wait_for_log('client sent invalid header line: "X.Dot: d"')
    assert ('[info]' in log and 'client sent invalid header line: "X_Forwarded_For: 6.6.6.6" while reading client '
            'request headers, client: 127.0.0.1, server: 127.0.0.1:0, request: "GET /h HTTP/1.1"') in log


def test_underscored_header_alone_never_becomes_x_forwarded_for(edge):
    kernel, _ = edge
    response, body = request(kernel.port("http"), "GET", "/h", headers=[("X_Forwarded_For", "6.6.6.6")])
    assert response.status == 200
    assert "X_FORWARDED_FOR" not in json.loads(body)["headers"]


def test_underscores_in_headers_on_passes_it_unmerged(start_kernel, app):
    kernel = start_kernel(edge_config(app.port, "  underscores_in_headers: on\n"), role="edge")
    response, body = request(kernel.port("http"), "GET", "/h",
                             headers=[("X-Forwarded-For", "1.1.1.1"), ("X_Forwarded_For", "6.6.6.6")])
    assert response.status == 200
    # As from nginx: two HTTP_X_FORWARDED_FOR, never one "1.1.1.1, 6.6.6.6"; the app's environ keeps the last.
    assert bytes.fromhex(json.loads(body)["headers"]["X_FORWARDED_FOR"]) == b"6.6.6.6"
    assert "client sent invalid header line" not in kernel.log_text()


def test_ignore_invalid_headers_off_passes_invalid_names(start_kernel, app):
    kernel = start_kernel(edge_config(app.port, "  ignore_invalid_headers: off\n"), role="edge")
    response, body = request(kernel.port("http"), "GET", "/h", headers=[("X.Dot", "d")])
    assert response.status == 200
    assert bytes.fromhex(json.loads(body)["headers"]["X.DOT"]) == b"d"
    assert "client sent invalid header line" not in kernel.log_text()


def test_control_bytes_in_a_name_are_still_400(edge):
    kernel, _ = edge
    answer = raw_exchange(kernel.port("http"), b"GET /h HTTP/1.1\r\nHost: a\r\nX\x01Y: 1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer


# HEAD through uwsgi_pass.

def test_head_keeps_the_upstreams_content_length(edge):
    kernel, _ = edge
    get, body = request(kernel.port("http"), "GET", "/parse")
    assert get.status == 200 and body == b'{"status":"ok"}'
    head, nothing = request(kernel.port("http"), "HEAD", "/parse")
    assert head.status == 200 and nothing == b""
    assert head.getheader("Content-Length") == str(len(body))
    assert head.getheader("Content-Type") == "application/json"


def test_head_without_an_upstream_length_sends_none(edge):
    kernel, _ = edge
    # A generator: uWSGI sends no Content-Length, so the length is unknown (nginx sends none either), and the
    # connection stays usable without any body bytes.
    conn = http.client.HTTPConnection("127.0.0.1", kernel.port("http"), timeout=30)
    conn.request("HEAD", "/stream?parts=3")
    head = conn.getresponse()
    assert head.status == 200 and head.read() == b""
    assert head.getheader("Content-Length") is None and head.getheader("Transfer-Encoding") is None
    conn.request("GET", "/parse")
    after = conn.getresponse()
    assert (after.status, after.read()) == (200, b'{"status":"ok"}')
    conn.close()


def test_head_through_nginx_and_a_kernel_worker_keeps_the_length(tmp_path, start_kernel, app):
    """nginx -> kernel uwsgi listener -> uwsgi_pass -> uWSGI: the worker writes the app's length for HEAD too."""
    kernel = start_kernel(f"""
uwsgi:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /
          uwsgi_pass: 127.0.0.1:{app.port}
""", role="both")
    nginx = Nginx(str(tmp_path), uwsgi_location("/", f"127.0.0.1:{kernel.port('uwsgi')}"))
    try:
        get, body = request(nginx.port, "GET", "/parse")
        head, nothing = request(nginx.port, "HEAD", "/parse")
        assert (get.status, head.status, nothing) == (200, 200, b"")
        assert head.getheader("Content-Length") == str(len(body)) == "15"
    finally:
        nginx.stop()


# One Content-Length limit on both listeners.

WORKER = """
http:
  listen: "127.0.0.1:0"
uwsgi:
  listen: "127.0.0.1:0"
routing:
  servers:
    - client_max_body_size: 1k
      locations:
        - location: /
          return: 200 "served"
"""


@pytest.fixture
def both_listeners(start_kernel):
    return start_kernel(WORKER, role="both")


def test_http_listener_content_length_digits(both_listeners):
    kernel = both_listeners
    port = kernel.port("http")
    head = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n"
    assert raw_exchange(port, head.format(INT_MAX).encode()).startswith(b"HTTP/1.1 413 ")
    assert raw_exchange(port, head.format(TWENTY_DIGITS).encode()).startswith(b"HTTP/1.1 400 ")
    assert raw_exchange(port, head.format(str(2 ** 63)).encode()).startswith(b"HTTP/1.1 400 ")
    zeros = raw_exchange(port, head.format("0" * 20 + "3").encode() + b"abc")
    assert zeros.startswith(b"HTTP/1.1 200 OK\r\n") and zeros.endswith(b"served"), zeros
    log = kernel.log_text()
    assert f"client intended to send too large body: {INT_MAX} bytes" in log
    assert 'client sent invalid "Content-Length" header' in log


def test_uwsgi_listener_content_length_digits(both_listeners):
    kernel = both_listeners
    port = kernel.port("uwsgi")
    base = [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/"), (b"SERVER_PROTOCOL", b"HTTP/1.1")]
    big = raw_exchange(port, uwsgi_packet(base + [(b"CONTENT_LENGTH", INT_MAX.encode())]))
    assert big.startswith(b"HTTP/1.1 413 "), big
    invalid = raw_exchange(port, uwsgi_packet(base + [(b"CONTENT_LENGTH", TWENTY_DIGITS.encode())]))
    assert invalid.startswith(b"HTTP/1.0 400 Bad Request\r\n"), invalid
    zeros = raw_exchange(port, uwsgi_packet(base + [(b"CONTENT_LENGTH", b"0" * 20 + b"3")], b"abc"))
    assert zeros.startswith(b"HTTP/1.1 200 OK\r\n") and zeros.endswith(b"served"), zeros
    log = kernel.log_text()
    assert f"client intended to send too large body: {INT_MAX} bytes" in log
    assert f'client sent invalid CONTENT_LENGTH "{TWENTY_DIGITS}" in uwsgi request' in log


# Ping.

def test_uwsgi_ping_against_a_worker(both_listeners):
    kernel = both_listeners
    port = kernel.port("uwsgi")
    assert raw_exchange(port, b"\x64\x00\x00\x00") == b"\x64\x00\x00\x01"
    result = subprocess.run([UWSGI, "--ping", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    # A ping is no request: the listener serves requests as before.
    answer = raw_exchange(port, uwsgi_packet([(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/"),
                                              (b"SERVER_PROTOCOL", b"HTTP/1.1")]))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"served")


def test_uwsgi_ping_fails_without_a_worker():
    """The check above can fail: `uwsgi --ping` exits non-zero when nothing answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        threading.Thread(target=lambda: silent.accept()[0].close(), daemon=True).start()
        result = subprocess.run([UWSGI, "--ping", f"127.0.0.1:{port}", "--ping-timeout", "2"],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode != 0


# What a packet may carry into a request passed on over HTTP.

class CapturingBackend:
    """An HTTP backend that records every request head it reads and answers 200 "up"."""

    def __init__(self):
        self.heads = []
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.heads.append(data)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nup")

    def close(self):
        self.server.close()


def exchange_without_half_close(port, data):
    """Sends `data` and reads until the peer closes: a proxied request whose client half-closes is a client that left
    (499), as nginx takes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_packet_cannot_write_head_lines_into_a_proxied_request(start_kernel):
    backend = CapturingBackend()
    try:
        # `both`: the worker's uwsgi listener and the edge's proxy_pass in one process.
        kernel = start_kernel(f"""
http:
  listen: "127.0.0.1:0"
uwsgi:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /p/
          proxy_pass: http://127.0.0.1:{backend.port}
""", role="both")
        port = kernel.port("uwsgi")
        get = [(b"REQUEST_METHOD", b"GET"), (b"SERVER_PROTOCOL", b"HTTP/1.1")]
        plain = exchange_without_half_close(port, uwsgi_packet(get + [(b"REQUEST_URI", b"/p/a"), (b"HTTP_X_A", b"v")]))
        assert plain.startswith(b"HTTP/1.1 200 OK\r\n") and plain.endswith(b"up"), plain
        smuggling = [
            [(b"REQUEST_URI", b"/p/b HTTP/1.1\r\nHost: evil\r\n\r\nGET /admin")],
            [(b"PATH_INFO", b"/p/c"), (b"QUERY_STRING", b"a=1 HTTP/1.1\r\nX-Injected: 1")],
            [(b"REQUEST_URI", b"/p/d"), (b"HTTP_X_A", b"v\r\nX-Injected: 1")],
            [(b"REQUEST_URI", b"/p/e"), (b"HTTP_X:INJECTED", b"1")],
            [(b"REQUEST_URI", b"/p/f"), (b"CONTENT_TYPE", b"a/b\r\nX-Injected: 1")],
        ]
        for variables in smuggling:
            answer = exchange_without_half_close(port, uwsgi_packet(get + variables))
            assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n"), (variables, answer)
        assert len(backend.heads) == 1, backend.heads
        assert b"X-A: v\r\n" in backend.heads[0]
        assert kernel.log_text().count("client sent invalid uwsgi request") == len(smuggling)
    finally:
        backend.close()
