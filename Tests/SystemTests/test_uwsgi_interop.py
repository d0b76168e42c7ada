"""uwsgi interop with the real peers: nginx in front of a kernel uwsgi listener, and uWSGI + Flask behind a kernel
`uwsgi_pass`.

(a) nginx --uwsgi--> kernel (uwsgi listener, routing) --uwsgi_pass--> uWSGI + Flask: the kernel speaks uwsgi on
    both sides, so the app's echo checks the whole chain byte for byte.
(b) client --HTTP--> kernel edge --uwsgi_pass--> uWSGI + Flask.
"""
import hashlib
import http.client
import json
import os
import socket
import time

import pytest

from test_http_system import Conn
from uwsgi_support.peers import Nginx, UWSGIApp, uwsgi_location, UWSGI, NGINX, http_request as request

# Both peers are installed by `make test` (scripts/setup.sh): without them these tests fail, they never skip.
assert UWSGI and os.path.exists(NGINX), "nginx and uwsgi are missing: run scripts/setup.sh"

TEN_MB = 10 * 1024 * 1024


def payload(size):
    block = hashlib.sha256(b"kernel").digest() * 64
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
def app(tmp_path):
    started = UWSGIApp(str(tmp_path))
    yield started
    started.stop()


@pytest.fixture
def nginx_factory(tmp_path):
    started = []

    def start(locations, client_max_body_size="100m"):
        nginx = Nginx(str(tmp_path), locations, client_max_body_size)
        started.append(nginx)
        return nginx

    yield start
    for nginx in started:
        nginx.stop()


WORKER = """
uwsgi:
  listen: ["127.0.0.1:0", {{address: "unix:{sock}", mode: "0666"}}]
  buffer_size: 64k
routing:
  servers:
    - client_max_body_size: 20m
      locations:
        - location: = /hello
          return: 200 "hello from kernel"
        - location: /small/
          client_max_body_size: 1k
          return: 200 "small ok"
        - location: /app/
          uwsgi_pass: 127.0.0.1:{app_port}
          uwsgi_param: {{SCRIPT_NAME: ""}}
"""


@pytest.fixture
def chain(tmp_path, start_kernel, app, nginx_factory):
    """nginx (TCP and unix locations) -> kernel uwsgi listener -> uWSGI + Flask."""
    sock = str(tmp_path / "kernel-uwsgi.sock")
    kernel = start_kernel(WORKER.format(sock=sock, app_port=app.port), role="both")
    tcp = kernel.port("uwsgi", configured="127.0.0.1:0")
    limited = "            client_max_body_size 1m;\n"
    nginx = nginx_factory([
        uwsgi_location("/", f"127.0.0.1:{tcp}") + uwsgi_location("/limited/", f"127.0.0.1:{tcp}", limited),
        uwsgi_location("/", f"unix:{sock}") + uwsgi_location("/limited/", f"unix:{sock}", limited),
    ])
    return kernel, nginx, app


def test_nginx_to_kernel_return(chain):
    kernel, nginx, _ = chain
    for port in nginx.ports:
        response, body = request(port, "GET", "/hello")
        assert response.status == 200, body
        assert body == b"hello from kernel"
        assert response.getheader("Content-Type") == "text/plain"


def test_nginx_to_kernel_not_found_is_json(chain):
    _, nginx, _ = chain
    response, body = request(nginx.port, "GET", "/nowhere")
    assert response.status == 404
    assert json.loads(body) == {"error": "not found"}
    assert response.getheader("Content-Type") == "application/json"


@pytest.mark.parametrize("server", [0, 1], ids=["tcp", "unix"])
def test_query_strings_and_headers_through_the_chain(chain, server):
    _, nginx, _ = chain
    response, body = request(nginx.ports[server], "GET", f"/app/q%20x?a=1&b=%20two&a=3",
                             headers={"X-Test": "abc", "X-Multi-Word-Header": "v"})
    assert response.status == 200, body
    seen = json.loads(body)
    assert seen["environ"]["QUERY_STRING"] == "a=1&b=%20two&a=3"
    assert seen["args"] == {"a": ["1", "3"], "b": [" two"]}
    assert seen["path"] == "/app/q x"
    assert bytes.fromhex(seen["headers"]["X_TEST"]) == b"abc"
    assert bytes.fromhex(seen["headers"]["X_MULTI_WORD_HEADER"]) == b"v"
    assert seen["environ"]["REMOTE_ADDR"] == "127.0.0.1"
    assert response.getheader("X-App") == "flask"


@pytest.mark.parametrize("server", [0, 1], ids=["tcp", "unix"])
def test_ten_megabyte_body_round_trip(chain, server):
    _, nginx, _ = chain
    data = payload(TEN_MB)
    response, body = request(nginx.ports[server], "POST", "/app/raw", body=data,
                             headers={"Content-Type": "application/octet-stream"})
    assert response.status == 200
    assert len(body) == TEN_MB
    assert body == data


STREAMED = "".join(f"part {i}\n" for i in range(20000)).encode()


@pytest.mark.parametrize("server", [0, 1], ids=["tcp", "unix"])
def test_close_delimited_answer_through_the_chain(chain, server):
    _, nginx, _ = chain
    response, body = request(nginx.ports[server], "GET", "/app/stream?parts=20000")
    assert response.status == 200
    assert body == STREAMED


def test_client_max_body_size_of_the_kernel(chain):
    kernel, nginx, _ = chain
    for port in nginx.ports:
        response, body = request(port, "POST", "/small/x", body=b"x" * 2048)
        assert response.status == 413, body
        assert json.loads(body) == {"error": "request body too large"}
        response, body = request(port, "POST", "/small/x", body=b"x" * 512)
        assert response.status == 200 and body == b"small ok"
    assert "client intended to send too large body: 2048 bytes" in kernel.stderr_text()


def test_client_max_body_size_of_nginx(chain):
    _, nginx, _ = chain
    for port in nginx.ports:
        response, _ = request(port, "POST", "/limited/app/raw", body=b"x" * (2 * 1024 * 1024))
        assert response.status == 413
        response, body = request(port, "POST", "/limited/app/raw", body=b"y" * 1000)
        assert response.status == 404, body  # /limited/app/raw is no kernel location: the kernel's own 404


def test_app_error_and_app_gone_through_the_chain(chain):
    kernel, nginx, app = chain
    response, body = request(nginx.port, "GET", "/app/status/500")
    assert response.status == 500
    assert body == b"status 500 from the app"
    app.kill()
    response, body = request(nginx.port, "GET", "/app/x")
    assert response.status == 502
    assert json.loads(body) == {"error": "bad gateway"}
    assert f"connect() failed (111: Connection refused) while connecting to upstream" in kernel.stderr_text()
    assert f'upstream: "uwsgi://127.0.0.1:{app.port}"' in kernel.stderr_text()


def raw_uwsgi(port, packet, read=True):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(packet)
        if not read:
            return b""
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                # Closing with unread input resets the connection: a close all the same.
                chunk = b""
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def packet(pairs, body=b"", modifier1=0, size=None):
    import struct
    block = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in pairs)
    return bytes([modifier1]) + struct.pack("<H", len(block) if size is None else size) + b"\x00" + block + body


def test_bad_packets_at_the_kernel_listener(chain):
    kernel, _, _ = chain
    port = kernel.port("uwsgi", configured="127.0.0.1:0")
    base = [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/hello")]
    answer = raw_uwsgi(port, packet(base + [(b"CONTENT_LENGTH", b"5abc")], b"12345"))
    assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n")
    assert raw_uwsgi(port, b"\x00\xff\xff\x00") == b""
    assert raw_uwsgi(port, packet(base, modifier1=7)) == b""
    assert raw_uwsgi(port, b"\x00\x04\x00\x00\x09\x00AA") == b""
    log = kernel.stderr_text()
    assert 'invalid CONTENT_LENGTH "5abc"' in log
    assert "-- unavailable modifier requested: 7 --" in log
    assert "invalid uwsgi request" in log
    # The listener still serves after all that.
    answer = raw_uwsgi(port, packet([(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/hello"), (b"SERVER_PROTOCOL", b"HTTP/1.1")]))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"hello from kernel")
    # uWSGI's modifier 30 (`uwsgi_modifier1 30` with a SCRIPT_NAME) is a request like modifier 0's.
    answer = raw_uwsgi(port, packet([(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/hello"), (b"SCRIPT_NAME", b"/app"),
                                     (b"SERVER_PROTOCOL", b"HTTP/1.1")], modifier1=30))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"hello from kernel")
    # A body above client_max_body_size is answered 413 at once; a client that then stops sending it and closes
    # ends the drain, which is not logged as a request cut short.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(packet(base + [(b"CONTENT_LENGTH", b"209715200"), (b"SERVER_PROTOCOL", b"HTTP/1.1")], b"x" * 1000))
        assert s.recv(65536).startswith(b"HTTP/1.1 413 ")
    answer = raw_uwsgi(port, packet([(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/hello"), (b"SERVER_PROTOCOL", b"HTTP/1.1")]))
    assert answer.endswith(b"hello from kernel")
    time.sleep(0.5)
    log = kernel.stderr_text()
    assert "client intended to send too large body: 209715200 bytes" in log, log
    assert "while reading client request body" not in log, log
    # A refused request's line names the client the front proxy names.
    answer = raw_uwsgi(port, packet([(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/a b"), (b"REMOTE_ADDR", b"10.9.8.7")]))
    assert answer.startswith(b"HTTP/1.0 400 ")
    kernel.wait_for_log('client sent invalid uwsgi request: invalid REQUEST_URI "/a b", client: 10.9.8.7')


def test_block_over_buffer_size_is_logged_and_closed(tmp_path, start_kernel):
    kernel = start_kernel("""
uwsgi:
  listen: 127.0.0.1:0
  buffer_size: 4k
""", role="worker")
    port = kernel.port("uwsgi")
    assert raw_uwsgi(port, b"\x00\x01\x10\x00" + b"\x00" * 4097) == b""
    kernel.wait_for_log("invalid request block size: 4097 (max 4096)...skip")


# (b) a kernel edge speaking HTTP in front of uWSGI.

EDGE = """
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
routing:
  servers:
    - client_max_body_size: 20m
      locations:
        - location: /
          uwsgi_pass: 127.0.0.1:{app_port}
          uwsgi_read_timeout: 30s
"""


@pytest.fixture
def edge(start_kernel, app):
    kernel = start_kernel(EDGE.format(app_port=app.port), role="edge")
    return kernel, app


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_edge_methods(edge, method):
    kernel, _ = edge
    response, body = request(kernel.port("http"), method, "/m?x=1", body=b"abc" if method in ("POST", "PUT", "PATCH") else None)
    assert response.status == 200, body
    seen = json.loads(body)
    assert seen["environ"]["REQUEST_METHOD"] == method
    assert seen["environ"]["QUERY_STRING"] == "x=1"
    assert seen["environ"]["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert seen["environ"]["REQUEST_URI"] == "/m?x=1"
    assert seen["environ"]["PATH_INFO"] == "/m"
    assert seen["environ"]["REMOTE_ADDR"] == "127.0.0.1"
    assert seen["environ"]["SERVER_PORT"] == str(kernel.port("http"))
    assert seen["environ"]["REQUEST_SCHEME"] == "http"
    assert "HTTPS" not in seen["environ"]


def test_edge_head(edge):
    kernel, _ = edge
    response, body = request(kernel.port("http"), "HEAD", "/m")
    assert response.status == 200 and body == b""


def test_edge_headers_and_non_ascii(edge):
    kernel, _ = edge
    conn = http.client.HTTPConnection("127.0.0.1", kernel.port("http"), timeout=30)
    conn.putrequest("GET", "/h", skip_accept_encoding=True)
    conn.putheader("X-Utf8", "caf\u00e9 \u2603".encode("utf-8"))
    conn.putheader("X-Dup", "1")
    conn.putheader("X-Dup", "2")
    conn.endheaders()
    response = conn.getresponse()
    seen = json.loads(response.read())
    conn.close()
    assert response.status == 200
    assert bytes.fromhex(seen["headers"]["X_UTF8"]) == "caf\u00e9 \u2603".encode("utf-8")
    assert bytes.fromhex(seen["headers"]["X_DUP"]) == b"1, 2"
    # The app's ISO-8859-1 "é" (one byte, not UTF-8) reaches the client as that byte, as nginx passes it
    # (docs/configuration.md, `uwsgi:`).
    assert response.getheader("X-Reply-Latin1").encode("latin-1") == "caf\u00e9".encode("latin-1")
    assert response.getheader("X-App") == "flask"


@pytest.mark.parametrize("size", [0, 1, 65535, 1024 * 1024, TEN_MB])
def test_edge_bodies(edge, size):
    kernel, _ = edge
    data = payload(size)
    response, body = request(kernel.port("http"), "POST", "/raw", body=data)
    assert response.status == 200
    assert body == data


def test_edge_close_delimited_answer(edge):
    kernel, _ = edge
    response, body = request(kernel.port("http"), "GET", "/stream?parts=20000")
    assert response.status == 200
    assert body == STREAMED


def test_edge_app_error_is_passed_through(edge):
    kernel, _ = edge
    response, body = request(kernel.port("http"), "GET", "/status/500")
    assert response.status == 500
    assert body == b"status 500 from the app"


def test_edge_app_killed_is_502(edge):
    kernel, app = edge
    app.kill()
    response, body = request(kernel.port("http"), "GET", "/x")
    assert response.status == 502
    assert json.loads(body) == {"error": "bad gateway"}
    log = kernel.stderr_text()
    assert "connect() failed (111: Connection refused) while connecting to upstream" in log
    assert f'upstream: "uwsgi://127.0.0.1:{app.port}"' in log


EDGE_BUFFERING = """
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
routing:
  servers:
    - locations:
        - location: /app/
          uwsgi_pass: 127.0.0.1:{app_port}
          uwsgi_param: {{SCRIPT_NAME: ""}}
"""


def test_a_slow_client_gets_a_whole_large_answer_and_does_not_hold_the_uwsgi_worker(tmp_path, start_kernel):
    # nginx's uwsgi_buffering: the answer is read ahead into memory and then a temporary file, so the worker is
    # let go at once. Unbuffered (`uwsgi_buffering: off`), uWSGI gives up writing to a reader that stalls past its
    # socket timeout (2 s here) and the client's answer ends short: this test then fails.
    (tmp_path / "app").mkdir()
    app = UWSGIApp(str(tmp_path / "app"), workers=1, extra=("--socket-timeout", "2"))
    try:
        kernel = start_kernel(EDGE_BUFFERING.format(app_port=app.port), role="edge")
        slow = Conn(kernel.port(), timeout=30)
        # 48 MiB: more than the sockets' buffers hold between the two ends, so the rest must wait in the kernel.
        slow.send(b"GET /app/big-stream?mib=48 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        kernel.wait_for_log("an upstream response is buffered to a temporary file", timeout=10)
        # The one worker is free while the slow client has read next to nothing: another request is answered.
        response, body = request(kernel.port(), "GET", "/app/while-the-slow-one-reads", timeout=5)
        assert response.status == 200 and json.loads(body)["path"] == "/app/while-the-slow-one-reads", body
        time.sleep(3)  # past uWSGI's socket timeout
        answer = slow.final_response()
        slow.sock.close()
        assert answer.status == 200 and answer.header("Transfer-Encoding") == "chunked", answer
        assert len(answer.body) == 48 << 20 and set(answer.body) == {ord("k")}
        assert "TIMEOUT" not in open(app.log, errors="replace").read()
    finally:
        app.stop()
