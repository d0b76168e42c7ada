"""proxy_pass (Modules/HTTP, the client side) on the real binary, against a real HTTP backend in the test that
reports what it received: the request line, the headers, the body."""
import hashlib
import http.client
import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from peer_support import closed_port


class Backend:
    """A threaded HTTP/1.1 server on 127.0.0.1 port 0. `/report...` answers with JSON of what it received; other
    paths are the behaviours the tests need (chunked answers, large bodies, hostile heads, a hang)."""

    def __init__(self):
        backend = self
        self.hang = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def read_body(self):
                digest = hashlib.sha256()
                size = 0
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        line = self.rfile.readline()
                        n = int(line.split(b";")[0], 16)
                        if n == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        left = n
                        while left:
                            part = self.rfile.read(min(left, 1 << 20))
                            digest.update(part)
                            size += len(part)
                            left -= len(part)
                        self.rfile.readline()
                else:
                    left = int(self.headers.get("Content-Length", "0"))
                    while left:
                        part = self.rfile.read(min(left, 1 << 20))
                        if not part:
                            break
                        digest.update(part)
                        size += len(part)
                        left -= len(part)
                return size, digest.hexdigest()

            def send_raw(self, data):
                self.wfile.write(data)
                self.wfile.flush()
                self.close_connection = True

            def handle_one(self):
                path = self.path
                if "/hang" in path:
                    backend.hang.wait(30)
                    self.close_connection = True
                    return
                size, digest = self.read_body()
                if "/dup-length" in path:
                    return self.send_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
                if "/length-and-chunked" in path:
                    return self.send_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                                         b"5\r\nhello\r\n0\r\n\r\n")
                if "/bad-chunk" in path:
                    return self.send_raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
                if "/latin" in path:
                    return self.send_raw(b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok")
                if "/obs-fold" in path:
                    return self.send_raw(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nok")
                if "/chunked" in path:
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    for piece in (b"one ", b"two ", b"three"):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if "/big" in path:
                    total = int(path.split("=")[1])
                    block = b"x" * (1 << 20)
                    self.send_response(200)
                    self.send_header("Content-Length", str(total))
                    self.end_headers()
                    left = total
                    while left:
                        n = min(left, len(block))
                        self.wfile.write(block[:n])
                        left -= n
                    return
                if "/sse" in path:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-cache")
                    if "accel" in path:
                        self.send_header("X-Accel-Buffering", "no")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(5):
                        event = b"data: event %d\n\n" % i
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                        self.wfile.flush()
                        time.sleep(0.1)
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if "/not-modified" in path:
                    self.send_response(304)
                    self.send_header("ETag", '"v1"')
                    self.send_header("Content-Length", "1234")
                    self.end_headers()
                    return
                if "/relative-redirect" in path:
                    self.send_response(302)
                    self.send_header("Location", "/two/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if "/redirect" in path:
                    self.send_response(302)
                    self.send_header("Location", f"http://{self.headers['Host']}/two/landing")
                    self.send_header("Refresh", f"5; url=http://{self.headers['Host']}/two/later")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                report = {
                    "method": self.command,
                    "uri": path,
                    "version": self.request_version,
                    "headers": [[k, v] for k, v in self.headers.items()],
                    "body_size": size,
                    "body_sha256": digest,
                }
                data = json.dumps(report).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Pad", "avoid browser bug")
                self.send_header("X-Accel-Redirect", "/internal")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.hang.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backend():
    server = Backend()
    yield server
    server.close()


TUTORIAL = """
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - client_max_body_size: 300m
      locations:
        - location: /
          proxy_pass: http://127.0.0.1:{port}
          proxy_set_header:
            Host: $host
            X-Real-IP: $remote_addr
            X-Forwarded-For: $proxy_add_x_forwarded_for
            X-Forwarded-Protocol: $scheme
        - location: /one/
          proxy_pass: http://127.0.0.1:{port}/two/
        - location: /relative/
          proxy_pass: http://127.0.0.1:{port}/two/
          absolute_redirect: off
        - location: /defaults/
          proxy_pass: http://127.0.0.1:{port}
        - location: "~ ^/re/(?<rest>.*)$"
          proxy_pass: http://127.0.0.1:{port}/captured/$rest
        - location: /stream-up/
          proxy_pass: http://127.0.0.1:{port}
          proxy_request_buffering: off
        - location: /unbuffered/
          proxy_pass: http://127.0.0.1:{port}/
          proxy_buffering: off
        - location: /quick/
          proxy_pass: http://127.0.0.1:{port}/
          proxy_read_timeout: 1s
        - location: /refused/
          proxy_pass: http://127.0.0.1:{refused}
"""


def start(start_kernel, backend):
    return start_kernel(TUTORIAL.format(port=backend.port, refused=closed_port()), role="edge")


def request(kernel, method, path, body=None, headers=None, chunked=False, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", kernel.port(), timeout=timeout)
    conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def report(kernel, method, path, **kwargs):
    response, data = request(kernel, method, path, **kwargs)
    assert response.status == 200, data
    return response, json.loads(data)


def header(report, name):
    values = [v for k, v in report["headers"] if k.lower() == name.lower()]
    return values


def test_the_tutorials_four_headers_reach_the_backend(start_kernel, backend):
    kernel = start(start_kernel, backend)
    response, seen = report(kernel, "GET", "/api/x?q=1", headers={
        "Host": "example.test", "X-Forwarded-For": "203.0.113.7", "X-Custom": "kept",
        "Keep-Alive": "timeout=5", "Connection": "keep-alive, X-Custom-Hop", "TE": "trailers"})
    assert seen["method"] == "GET" and seen["uri"] == "/api/x?q=1" and seen["version"] == "HTTP/1.1"
    assert header(seen, "Host") == ["example.test"]
    assert header(seen, "X-Real-IP") == ["127.0.0.1"]
    assert header(seen, "X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert header(seen, "X-Forwarded-Protocol") == ["http"]
    assert header(seen, "X-Custom") == ["kept"]
    # Hop-by-hop fields never cross; the proxy says its own Connection.
    assert header(seen, "Keep-Alive") == [] and header(seen, "TE") == []
    assert header(seen, "Connection") == ["close"]
    # nginx's hidden defaults: X-Pad and X-Accel-* never reach the client.
    assert response.getheader("X-Pad") is None and response.getheader("X-Accel-Redirect") is None


def test_defaults_send_proxy_host_and_connection_close(start_kernel, backend):
    kernel = start(start_kernel, backend)
    _, seen = report(kernel, "GET", "/defaults/a%20b?x=%41", headers={"Host": "client.test"})
    assert header(seen, "Host") == [f"127.0.0.1:{backend.port}"]
    assert header(seen, "Connection") == ["close"]
    # Without a URI part the URI goes as the client sent it, escapes and all.
    assert seen["uri"] == "/defaults/a%20b?x=%41"


def test_uri_part_replaces_the_location_prefix(start_kernel, backend):
    kernel = start(start_kernel, backend)
    _, seen = report(kernel, "GET", "/one/sub/page?k=v")
    assert seen["uri"] == "/two/sub/page?k=v"
    # The normalised URI is used, escaped again.
    _, seen = report(kernel, "GET", "/one/a%20b/../c%3Fd")
    assert seen["uri"] == "/two/c%3Fd"


def test_regex_location_uri_with_a_named_capture(start_kernel, backend):
    kernel = start(start_kernel, backend)
    _, seen = report(kernel, "GET", "/re/items/7?ignored=1")
    assert seen["uri"] == "/captured/items/7"
    # The capture is decoded: a CR, a space or a tab of the client's goes on escaped, never into the request line
    # (the location's `.` stops at a line feed, which the unit tests cover).
    _, seen = report(kernel, "GET", "/re/b%0dX-Injected:%201%09x")
    assert seen["uri"] == "/captured/b%0DX-Injected:%201%09x"
    assert header(seen, "X-Injected") == []


def test_length_and_chunked_request_bodies_arrive_with_their_length(start_kernel, backend):
    kernel = start(start_kernel, backend)
    body = b"0123456789" * 5000
    _, seen = report(kernel, "POST", "/api/upload", body=body)
    assert seen["body_size"] == len(body) and seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert header(seen, "Content-Length") == [str(len(body))]
    # A chunked upload is read whole (buffering on) and goes on with its length.
    _, seen = report(kernel, "POST", "/api/upload", body=iter([body[:1000], body[1000:]]), chunked=True)
    assert seen["body_size"] == len(body) and header(seen, "Transfer-Encoding") == []
    assert header(seen, "Content-Length") == [str(len(body))]


def test_a_100m_body_streams_up_and_down(start_kernel, backend):
    kernel = start(start_kernel, backend)
    size = 110 * 1024 * 1024
    block = b"y" * (1 << 20)

    def blocks():
        for _ in range(size // len(block)):
            yield block

    digest = hashlib.sha256()
    for part in blocks():
        digest.update(part)
    _, seen = report(kernel, "PUT", "/stream-up/report", body=blocks(), headers={"Content-Length": str(size)}, timeout=120)
    assert seen["body_size"] == size and seen["body_sha256"] == digest.hexdigest()

    conn = http.client.HTTPConnection("127.0.0.1", kernel.port(), timeout=120)
    conn.request("GET", f"/unbuffered/big?n={size}")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Length") == str(size)
    received = 0
    while True:
        part = response.read(1 << 20)
        if not part:
            break
        received += len(part)
    conn.close()
    assert received == size


def test_a_chunked_answer_reaches_the_client_whole(start_kernel, backend):
    kernel = start(start_kernel, backend)
    response, data = request(kernel, "GET", "/unbuffered/chunked")
    assert response.status == 200 and data == b"one two three"
    response, data = request(kernel, "GET", "/defaults/chunked")
    assert response.status == 200 and data == b"one two three"


@pytest.mark.parametrize("path,message", [
    ("/defaults/dup-length", "upstream sent duplicate header line: \"Content-Length: 6\", previous value: \"Content-Length: 5\""),
    ("/defaults/length-and-chunked", "upstream sent \"Content-Length\" and \"Transfer-Encoding\" headers at the same time"),
    ("/defaults/obs-fold", "upstream sent invalid header"),
])
def test_a_hostile_head_is_a_502_and_a_log_line(start_kernel, backend, path, message):
    kernel = start(start_kernel, backend)
    response, data = request(kernel, "GET", path)
    assert response.status == 502, data
    assert json.loads(data)["error"]
    kernel.wait_for_log(message)
    assert "while reading response header from upstream" in kernel.log_text()


def test_bad_chunking_breaks_the_answer_off(start_kernel, backend):
    kernel = start(start_kernel, backend)
    conn = http.client.HTTPConnection("127.0.0.1", kernel.port(), timeout=10)
    conn.request("GET", "/defaults/bad-chunk")
    response = conn.getresponse()
    # The head was valid and passed on; the body cannot be completed, so the connection is cut.
    with pytest.raises((http.client.IncompleteRead, http.client.HTTPException, ConnectionError)):
        response.read()
    conn.close()
    kernel.wait_for_log("upstream sent invalid chunked response while reading upstream")
    # One failure, one error-log line, naming the upstream as nginx's does (the client side adds none of its own).
    time.sleep(0.3)  # a second line would follow within the same event-loop turns
    errors = [entry for entry in kernel.log_text().splitlines() if "[error]" in entry]
    assert len(errors) == 1, errors
    assert 'upstream: "http://127.0.0.1:' in errors[0], errors


def test_an_upstream_that_hangs_is_a_504(start_kernel, backend):
    kernel = start(start_kernel, backend)
    response, data = request(kernel, "GET", "/quick/hang")
    assert response.status == 504, data
    kernel.wait_for_log("upstream timed out (110: Connection timed out) while reading response header from upstream")


def test_a_client_that_leaves_before_the_head_closes_the_upstream_connection_and_blames_no_peer(start_kernel, backend):
    # nginx's proxy_ignore_client_abort off: the upstream connection closes with the client's, and its read
    # timeout does not run out later as a failure of the peer's.
    kernel = start(start_kernel, backend)
    client = socket.create_connection(("127.0.0.1", kernel.port()), timeout=10)
    client.sendall(b"GET /quick/hang HTTP/1.1\r\nHost: localhost\r\n\r\n")
    time.sleep(0.3)
    client.close()
    kernel.wait_for_log("client prematurely closed connection, so upstream connection is closed too while reading "
                        "response header from upstream")
    time.sleep(1.5)  # past proxy_read_timeout (1s)
    assert "upstream timed out" not in kernel.log_text()
    response, _ = request(kernel, "GET", "/quick/x")
    assert response.status == 200


def test_connection_refused_is_a_502(start_kernel, backend):
    kernel = start(start_kernel, backend)
    response, data = request(kernel, "GET", "/refused/x")
    assert response.status == 502, data
    kernel.wait_for_log("connect() failed (111: Connection refused) while connecting to upstream")


def test_proxy_redirect_default_rewrites_location_and_refresh(start_kernel, backend):
    kernel = start(start_kernel, backend)
    response, _ = request(kernel, "GET", "/one/redirect")
    assert response.status == 302
    # The rewritten Location goes out absolute (absolute_redirect), as nginx's header filter sends it; the
    # rewritten Refresh and a Location the upstream sent as a path stay as they are, as in nginx.
    assert response.getheader("Location") == f"http://127.0.0.1:{kernel.port()}/one/landing"
    assert response.getheader("Refresh") == "5; url=/one/later"
    response, _ = request(kernel, "GET", "/one/relative-redirect")
    assert response.status == 302
    assert response.getheader("Location") == "/two/elsewhere"
    response, _ = request(kernel, "GET", "/relative/redirect")
    assert response.getheader("Location") == "/relative/landing"


def test_a_304_keeps_the_upstreams_length_and_the_connection(start_kernel, backend):
    # RFC 9110 8.6: a 304's Content-Length is the length of what it stands for; nginx passes it on. No body follows.
    kernel = start(start_kernel, backend)
    conn = http.client.HTTPConnection("127.0.0.1", kernel.port(), timeout=10)
    conn.request("GET", "/defaults/not-modified", headers={"If-None-Match": '"v1"'})
    response = conn.getresponse()
    assert (response.status, response.getheader("Content-Length"), response.getheader("ETag")) == (304, "1234", '"v1"')
    assert response.read() == b""
    conn.request("GET", "/defaults/after")
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["uri"] == "/defaults/after"
    conn.close()


def test_a_named_group_is_proxied_to_with_its_name_as_host(start_kernel, backend):
    kernel = start_kernel(f"""
http:
  listen: "127.0.0.1:0"
upstreams:
  backend:
    servers: [127.0.0.1:{closed_port()} max_fails=1, 127.0.0.1:{backend.port}]
routing:
  servers:
    - locations:
        - location: /
          proxy_pass: http://backend
""", role="edge")
    for _ in range(3):
        _, seen = report(kernel, "GET", "/g")
        assert header(seen, "Host") == ["backend"] and seen["uri"] == "/g"


SERVER_LEVEL = """
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - proxy_set_header:
        Host: $host
        X-From: server
      proxy_read_timeout: 30s
      locations:
        - location: /inherits/
          proxy_pass: http://127.0.0.1:{port}
        - location: /own/
          proxy_pass: http://127.0.0.1:{port}
          proxy_set_header:
            X-From: location
"""


def test_server_level_proxy_directives_are_inherited_unless_the_location_writes_its_own(start_kernel, backend):
    """nginx's merge: a location without `proxy_set_header` takes the server's lines; one with its own lines
    takes only those (and the defaults), never a mix."""
    kernel = start_kernel(SERVER_LEVEL.format(port=backend.port), role="edge")
    _, seen = report(kernel, "GET", "/inherits/x", headers={"Host": "client.test"})
    assert header(seen, "X-From") == ["server"]
    assert header(seen, "Host") == ["client.test"]
    _, seen = report(kernel, "GET", "/own/x", headers={"Host": "client.test"})
    assert header(seen, "X-From") == ["location"]
    assert header(seen, "Host") == [f"127.0.0.1:{backend.port}"], "the server's Host line is not merged in"


def test_a_bad_server_level_proxy_directive_names_its_line(kernel_bin, tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(SERVER_LEVEL.format(port=8000).replace("proxy_read_timeout: 30s", "proxy_read_timeout: soon"))
    result = subprocess.run([kernel_bin, "-t", "-c", str(path), "--role", "edge"], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "edge.yaml:9:" in result.stderr and "proxy_read_timeout" in result.stderr, result.stderr


def test_header_values_in_another_charset_cross_as_the_bytes_they_came_as(start_kernel, backend):
    """nginx passes a header's bytes on as they came: an ISO-8859-1 value (obs-text) reaches the backend, and a
    backend's reaches the client, unchanged, not as UTF-8 with replacement characters."""
    kernel = start(start_kernel, backend)
    # http.client and http.server read and write header text as ISO-8859-1: "caf\xe9" is the byte 0xE9.
    _, seen = report(kernel, "GET", "/api/charset-in", headers={"Host": "h", "X-Name": "caf\xe9", "X-Raw": "\xff\xfe",
                                                                "X-A": "\xff", "X-B": "\xfe",
                                                                "X-Forwarded-For": "proxy-\xe9"})
    assert header(seen, "X-Name") == ["caf\xe9"]
    # A `proxy_set_header` value that takes the client's value as a part ($proxy_add_x_forwarded_for) keeps its bytes.
    assert header(seen, "X-Forwarded-For") == ["proxy-\xe9, 127.0.0.1"]
    assert header(seen, "X-Raw") == ["\xff\xfe"]
    # Two values that read as the same text (one U+FFFD each) keep their own bytes.
    assert header(seen, "X-A") == ["\xff"] and header(seen, "X-B") == ["\xfe"]
    response, data = request(kernel, "GET", "/latin")
    assert response.status == 200 and data == b"ok"
    assert response.getheader("X-Name") == "caf\xe9"
