"""The HTTP listener over real sockets: keep-alive, pipelining, bodies and their limits, timeouts, virtual servers,
locations, access logs and IPv6, as an nginx operator expects them.

The helpers at the top (raw-socket client, response parser, log and liveness checks) are shared with
test_http_hostile.py.
"""
import datetime
import email.utils
import json
import os
import re
import socket
import subprocess
import time

import pytest

# --------------------------------------------------------------------------------------------------------------
# Raw HTTP client
# --------------------------------------------------------------------------------------------------------------

STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ([^\r\n]*)")
IMF_FIXDATE = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                         r"\d{4} \d{2}:\d{2}:\d{2} GMT")


class Response:
    """One parsed HTTP response."""

    def __init__(self, status, reason, headers, body, raw_head):
        self.status = status
        self.reason = reason
        self.headers = headers          # [(name, value)] in order
        self.body = body
        self.raw_head = raw_head

    def header(self, name):
        values = self.all(name)
        assert len(values) <= 1, f"{name} appears {len(values)} times in {self.raw_head!r}"
        return values[0] if values else None

    def all(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    @property
    def closes(self):
        return (self.header("Connection") or "").lower() == "close"

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.headers} {self.body[:80]!r}>"


class PeerClosed(Exception):
    """The server closed the connection in the middle of a response."""


class Conn:
    """A client connection that sends raw bytes and parses the responses strictly."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0, family=socket.AF_INET):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _until(self, marker):
        while marker not in self.buf:
            if not self._fill():
                raise PeerClosed(f"connection closed before {marker!r}; have {self.buf!r}")
        index = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:index], self.buf[index:]
        return out

    def _exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise PeerClosed(f"connection closed with {len(self.buf)} of {n} body bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, head_request=False):
        """The next response (1xx responses included), or None when the connection closed before one began."""
        while not self.buf:
            if not self._fill():
                return None
        head = self._until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        match = STATUS_LINE.fullmatch(lines[0])
        assert match, f"not an HTTP/1.x status line: {lines[0]!r} (response {head!r})"
        status = int(match.group(1))
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep and name and name.strip() == name, f"malformed response header line {line!r}"
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        response = Response(status, match.group(2).decode("latin-1"), headers, b"", head)
        if head_request or status < 200 or status in (204, 304):
            return response
        te = response.header("Transfer-Encoding")
        length = response.header("Content-Length")
        if te is not None:
            assert te.lower() == "chunked" and length is None, head
            parts = []  # joined once: a large body in many chunks stays linear
            while True:
                size = int(self._until(b"\r\n")[:-2].split(b";")[0], 16)
                if size == 0:
                    self._until(b"\r\n")
                    break
                parts.append(self._exact(size))
                assert self._exact(2) == b"\r\n"
            response.body = b"".join(parts)
        elif length is not None:
            response.body = self._exact(int(length))
        else:
            while self._fill():
                pass
            response.body, self.buf = self.buf, b""
        return response

    def final_response(self, head_request=False):
        """The next final (non-1xx) response."""
        while True:
            response = self.response(head_request)
            if response is None or response.status >= 200:
                return response

    def responses_until_close(self):
        """Every response until the server closes the connection."""
        out = []
        while True:
            response = self.response()
            if response is None:
                return out
            out.append(response)

    def closed_by_peer(self, wait=5.0):
        """True when the server closes the connection (EOF or reset) within `wait` seconds with nothing more sent."""
        self.sock.settimeout(wait)
        try:
            return not self._fill() and not self.buf
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request_bytes(method="GET", target="/", host="localhost", headers=(), body=b"", version="HTTP/1.1"):
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get(port, target="/", host="localhost", headers=(), timeout=5.0, family=socket.AF_INET, address="127.0.0.1"):
    """One request on a fresh connection; returns the response."""
    with Conn(port, address, timeout, family) as conn:
        conn.send(request_bytes("GET", target, host, headers=headers))
        return conn.final_response()


def exchange(port, payload, timeout=5.0):
    """Sends raw bytes on a fresh connection and reads responses until the server closes it."""
    with Conn(port, timeout=timeout) as conn:
        try:
            conn.send(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return conn.responses_until_close()


# --------------------------------------------------------------------------------------------------------------
# Log and liveness checks
# --------------------------------------------------------------------------------------------------------------

def log_mark(kernel):
    """The current length of the kernel's log; later checks look only at what follows."""
    return len(kernel.log_text())


def wait_for_info(kernel, phrase, since=0, timeout=5.0, count=1, level="info"):
    """Waits for `count` error-log lines at `level` containing `phrase` and `client: 127.0.0.1`, written after
    `since`; returns them."""
    pattern = re.compile(r"^\S+ \S+ \[" + level + r"\] \d+#\d+: .*" + re.escape(phrase) + r".*$", re.M)
    deadline = time.time() + timeout
    while True:
        text = kernel.log_text()[since:]
        found = [line for line in pattern.findall(text) if "client: 127.0.0.1" in line or "client: ::1" in line]
        if len(found) >= count:
            return found
        if time.time() > deadline:
            raise AssertionError(f"no [info] line with {phrase!r} (x{count}) in the kernel log:\n{text}")
        time.sleep(0.02)


def assert_alive(kernel, host="localhost"):
    """The process runs and answers a plain GET / with 200 on a fresh connection."""
    assert kernel.process.poll() is None, f"kernel exited with {kernel.process.returncode}:\n{kernel.log_text()}"
    response = get(kernel.port(), "/", host=host)
    assert response is not None and response.status == 200, (response, kernel.log_text()[-3000:])
    assert kernel.process.poll() is None


def no_crash_lines(kernel):
    text = kernel.log_text()
    for word in ("Fatal error", "[emerg]", "[alert]", "[crit]", "Illegal instruction", "Segmentation fault"):
        assert word not in text, f"{word!r} in the kernel log:\n{text[-3000:]}"


def read_lines(path, count, timeout=5.0):
    """The first `count` lines of a file once they are written."""
    deadline = time.time() + timeout
    while True:
        lines = open(path, encoding="utf-8").read().splitlines() if os.path.exists(path) else []
        if len(lines) >= count or time.time() > deadline:
            return lines
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------------------

def config(http_extra="", server_extra="", listen='"127.0.0.1:0"'):
    """One server: `/` returns "root", `/echo` returns the query argument `i`, `/body` takes bodies up to 1k."""
    return f"""
http:
  listen: {listen}
{http_extra}
routing:
  servers:
    - client_max_body_size: 1k
{server_extra}
      locations:
        - location: /
          return: 200 "root"
        - location: /echo
          return: 200 "echo $arg_i"
        - location: /body
          return: 200 "body taken"
        - location: /upload             # reads the body (to a peer no test reaches: refusals come first)
          proxy_pass: http://127.0.0.1:1
"""


@pytest.fixture
def kernel(start_kernel):
    k = start_kernel(config())
    yield k
    no_crash_lines(k)


# --------------------------------------------------------------------------------------------------------------
# Keep-alive and pipelining
# --------------------------------------------------------------------------------------------------------------

def test_keepalive_serves_many_requests_on_one_connection(kernel):
    with Conn(kernel.port()) as conn:
        for i in range(50):
            conn.send(request_bytes("GET", f"/echo?i={i}"))
            response = conn.final_response()
            assert response is not None, f"connection closed after {i} requests"
            assert response.status == 200
            assert response.body == f"echo {i}".encode()
            assert response.header("Connection") == "keep-alive"
        assert not conn.closed_by_peer(wait=0.3)
    assert_alive(kernel)


def test_pipelined_requests_are_answered_in_order(kernel):
    count = 40
    payload = b"".join(request_bytes("GET", f"/echo?i={i}") for i in range(count))
    with Conn(kernel.port()) as conn:
        conn.send(payload)
        bodies = [conn.final_response().body for _ in range(count)]
    assert bodies == [f"echo {i}".encode() for i in range(count)]
    assert_alive(kernel)


def test_pipelined_mix_of_bodies_and_heads_stays_in_step(kernel):
    chunked = request_bytes("POST", "/body", headers=[("Transfer-Encoding", "chunked")], body=b"3\r\nabc\r\n0\r\n\r\n")
    sized = request_bytes("POST", "/body", headers=[("Content-Length", "5")], body=b"hello")
    payload = chunked + request_bytes("HEAD", "/echo?i=1") + sized + request_bytes("GET", "/echo?i=2")
    with Conn(kernel.port()) as conn:
        conn.send(payload)
        first = conn.final_response()
        head = conn.final_response(head_request=True)
        third = conn.final_response()
        fourth = conn.final_response()
    assert (first.status, first.body) == (200, b"body taken")
    assert head.status == 200 and head.header("Content-Length") == str(len(b"echo 1"))
    assert (third.status, third.body) == (200, b"body taken")
    assert (fourth.status, fourth.body) == (200, b"echo 2")


# --------------------------------------------------------------------------------------------------------------
# Request bodies and client_max_body_size
# --------------------------------------------------------------------------------------------------------------

def test_chunked_request_body_is_accepted(kernel):
    body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("POST", "/body", headers=[("Transfer-Encoding", "chunked")], body=body))
        response = conn.final_response()
        assert (response.status, response.body) == (200, b"body taken")
        assert response.header("Connection") == "keep-alive"
        # The body was consumed exactly: the next request on the connection is read from the right place.
        conn.send(request_bytes("GET", "/echo?i=after"))
        assert conn.final_response().body == b"echo after"
    assert_alive(kernel)


def test_chunked_body_of_exactly_the_limit_is_accepted(kernel):
    body = b"400\r\n" + b"x" * 1024 + b"\r\n0\r\n\r\n"
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("POST", "/body", headers=[("Transfer-Encoding", "chunked")], body=body))
        assert conn.final_response().status == 200


def test_content_length_over_the_limit_gets_413_before_the_body_is_sent(kernel):
    mark = log_mark(kernel)
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("POST", "/body", headers=[("Content-Length", "2048")]))   # head only
        response = conn.final_response()
        assert response.status == 413
        assert response.closes
        assert response.header("Content-Type") == "application/json"
        assert "error" in response.json()
        assert conn.closed_by_peer()
    wait_for_info(kernel, "client intended to send too large body: 2048 bytes", since=mark, level="error")
    assert_alive(kernel)


def test_expect_100_continue_over_the_limit_gets_413_and_no_100(kernel):
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("POST", "/body", headers=[("Content-Length", "4096"), ("Expect", "100-continue")]))
        response = conn.response()
        assert response.status == 413, "a body over the limit must not be invited with 100 Continue"


def test_expect_100_continue_within_the_limit_is_invited(kernel):
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("POST", "/body", headers=[("Content-Length", "5"), ("Expect", "100-continue")]))
        interim = conn.response()
        assert interim.status == 100
        conn.send(b"hello")
        assert conn.final_response().status == 200


def test_expect_100_continue_from_http10_gets_no_interim_response(kernel):
    # RFC 9110 10.1.1: a server must not send 100 Continue to an HTTP/1.0 client.
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("POST", "/body", host=None, version="HTTP/1.0",
                                headers=[("Content-Length", "5"), ("Expect", "100-continue")]))
        time.sleep(0.3)
        conn.send(b"hello")
        response = conn.response()
        assert (response.status, response.body) == (200, b"body taken")


def test_chunked_body_growing_past_the_limit_gets_413(kernel):
    mark = log_mark(kernel)
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("POST", "/upload", headers=[("Transfer-Encoding", "chunked")]))
        conn.send(b"200\r\n" + b"a" * 512 + b"\r\n")
        conn.send(b"200\r\n" + b"b" * 512 + b"\r\n")
        conn.send(b"1\r\nc\r\n")               # 1025 bytes: one past the limit
        response = conn.final_response()
        assert response.status == 413
        assert response.closes
        assert conn.closed_by_peer()
    wait_for_info(kernel, "too large", since=mark, level="error")
    assert_alive(kernel)


# --------------------------------------------------------------------------------------------------------------
# Response headers, HEAD, HTTP/1.0
# --------------------------------------------------------------------------------------------------------------

def test_server_and_date_headers_are_well_formed(kernel):
    response = get(kernel.port(), "/")
    server = response.header("Server")
    assert re.fullmatch(r"kernel/\d+\.\d+\.\d+", server), server
    date = response.header("Date")
    assert IMF_FIXDATE.fullmatch(date), date
    sent = email.utils.parsedate_to_datetime(date)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - sent).total_seconds()) < 3600
    assert response.header("Content-Length") == "4"
    assert response.header("Content-Type") == "text/plain"


def test_server_tokens_off_names_only_the_product(start_kernel):
    kernel = start_kernel(config(http_extra="  server_tokens: false"))
    assert get(kernel.port(), "/").header("Server") == "kernel"


def test_head_has_the_length_but_no_body(kernel):
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("HEAD", "/") + request_bytes("GET", "/echo?i=next"))
        head = conn.final_response(head_request=True)
        assert head.status == 200
        assert head.header("Content-Length") == "4"
        # Had the HEAD response carried a body, these bytes would be in front of the next status line.
        following = conn.final_response()
        assert following.status == 200 and following.body == b"echo next"


def test_http10_closes_by_default(kernel):
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("GET", "/", host=None, version="HTTP/1.0"))
        response = conn.final_response()
        assert response.status == 200 and response.body == b"root"
        assert response.closes
        assert conn.closed_by_peer()


def test_http10_keeps_alive_when_asked(kernel):
    with Conn(kernel.port()) as conn:
        for i in range(3):
            conn.send(request_bytes("GET", f"/echo?i={i}", host=None, version="HTTP/1.0",
                                    headers=[("Connection", "keep-alive")]))
            response = conn.final_response()
            assert response.body == f"echo {i}".encode()
            assert response.header("Connection").lower() == "keep-alive"
        conn.send(request_bytes("GET", "/", host=None, version="HTTP/1.0"))
        assert conn.final_response().closes
        assert conn.closed_by_peer()


def test_http11_connection_close_is_honoured(kernel):
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("GET", "/", headers=[("Connection", "close")]) + request_bytes("GET", "/echo?i=2"))
        responses = conn.responses_until_close()
    assert [r.status for r in responses] == [200]
    assert responses[0].closes


# --------------------------------------------------------------------------------------------------------------
# keepalive_requests, keepalive_timeout, client_header_timeout, client_body_timeout
# --------------------------------------------------------------------------------------------------------------

def test_keepalive_requests_closes_after_the_last_response(start_kernel):
    kernel = start_kernel(config(http_extra="  keepalive_requests: 3"))
    with Conn(kernel.port()) as conn:
        seen = []
        for i in range(3):
            conn.send(request_bytes("GET", f"/echo?i={i}"))
            response = conn.final_response()
            seen.append((response.body, response.header("Connection")))
        assert seen == [(b"echo 0", "keep-alive"), (b"echo 1", "keep-alive"), (b"echo 2", "close")]
        assert conn.closed_by_peer()


def test_keepalive_requests_does_not_answer_pipelined_requests_past_the_last(start_kernel):
    kernel = start_kernel(config(http_extra="  keepalive_requests: 3"))
    with Conn(kernel.port()) as conn:
        conn.send(b"".join(request_bytes("GET", f"/echo?i={i}") for i in range(5)))
        responses = conn.responses_until_close()
    assert [r.body for r in responses] == [b"echo 0", b"echo 1", b"echo 2"]
    assert responses[-1].closes


def test_keepalive_requests_zero_serves_one_request_per_connection(start_kernel):
    kernel = start_kernel(config(http_extra="  keepalive_requests: 0"))
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("GET", "/echo?i=1") + request_bytes("GET", "/echo?i=2"))
        responses = conn.responses_until_close()
    assert [(r.body, r.header("Connection")) for r in responses] == [(b"echo 1", "close")]


def test_keepalive_timeout_closes_an_idle_connection(start_kernel):
    kernel = start_kernel(config(http_extra="  keepalive_timeout: 1s"))
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("GET", "/"))
        assert conn.final_response().header("Connection") == "keep-alive"
        assert conn.closed_by_peer(wait=6), "the idle keep-alive connection stayed open"
    assert_alive(kernel)


def test_keepalive_timeout_zero_disables_keepalive(start_kernel):
    kernel = start_kernel(config(http_extra="  keepalive_timeout: 0"))
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("GET", "/"))
        assert conn.final_response().closes
        assert conn.closed_by_peer()


def test_client_header_timeout_answers_408_and_closes(start_kernel):
    kernel = start_kernel(config(http_extra="  client_header_timeout: 1s"))
    mark = log_mark(kernel)
    with Conn(kernel.port(), timeout=6) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: loc")
        time.sleep(0.3)
        conn.send(b"alhost\r\nX-Slow: 1")       # still incomplete
        response = conn.final_response()
        assert response is not None, "closed without a 408"
        assert response.status == 408
        assert response.closes
        assert conn.closed_by_peer()
    wait_for_info(kernel, "client timed out", since=mark)
    assert_alive(kernel)


def test_client_header_timeout_on_a_kept_alive_connection(start_kernel):
    kernel = start_kernel(config(http_extra="  client_header_timeout: 1s"))
    with Conn(kernel.port(), timeout=6) as conn:
        conn.send(request_bytes("GET", "/"))
        assert conn.final_response().status == 200
        conn.send(b"GET /echo?i=2 HTTP/1.1\r\nHo")
        response = conn.final_response()
        assert response is not None and response.status == 408
        assert conn.closed_by_peer()
    assert_alive(kernel)


def test_client_header_timeout_on_a_silent_connection_closes_without_a_response(start_kernel):
    kernel = start_kernel(config(http_extra="  client_header_timeout: 1s"))
    with Conn(kernel.port(), timeout=6) as conn:
        assert conn.response() is None          # nginx closes a connection that never sent a byte quietly
    assert_alive(kernel)


def test_client_body_timeout_answers_408_and_closes(start_kernel):
    kernel = start_kernel(config(http_extra="  client_body_timeout: 1s"))
    mark = log_mark(kernel)
    with Conn(kernel.port(), timeout=6) as conn:
        conn.send(request_bytes("POST", "/upload", headers=[("Content-Length", "100")], body=b"only part"))
        response = conn.final_response()
        assert response is not None, "closed without a 408"
        assert response.status == 408
        assert response.closes
        assert conn.closed_by_peer()
    wait_for_info(kernel, "client timed out", since=mark)
    assert_alive(kernel)


def test_client_body_timeout_is_between_reads_not_for_the_whole_body(start_kernel):
    kernel = start_kernel(config(http_extra="  client_body_timeout: 1s"))
    with Conn(kernel.port(), timeout=6) as conn:
        conn.send(request_bytes("POST", "/upload", headers=[("Content-Length", "6")]))
        for byte in b"abcdef":                  # 6 x 0.4 s: longer than the timeout in total, never between reads
            time.sleep(0.4)
            conn.send(bytes([byte]))
        response = conn.final_response()
        # The whole body was read (no 408), then the proxy found no peer.
        assert response.status == 502, response


def test_client_body_timeout_on_a_stalled_chunked_body(start_kernel):
    kernel = start_kernel(config(http_extra="  client_body_timeout: 1s"))
    with Conn(kernel.port(), timeout=6) as conn:
        conn.send(request_bytes("POST", "/upload", headers=[("Transfer-Encoding", "chunked")], body=b"10\r\nabc"))
        response = conn.final_response()
        assert response is not None and response.status == 408
        assert conn.closed_by_peer()
    assert_alive(kernel)


# --------------------------------------------------------------------------------------------------------------
# Virtual servers and locations through real requests
# --------------------------------------------------------------------------------------------------------------

TWO_SERVERS = """
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - server_name: [alpha.test]
      locations:
        - location: /
          return: 200 "alpha $host"
    - server_name: [beta.test, "*.beta.test"]
      locations:
        - location: /
          return: 200 "beta $host"
    - server_name: [gamma.test]
      default_server: true
      locations:
        - location: /
          return: 200 "gamma $host"
"""


@pytest.mark.parametrize("host, server", [
    ("alpha.test", b"alpha"),
    ("beta.test", b"beta"),
    ("BETA.Test:8080", b"beta"),
    ("beta.test.", b"beta"),
    ("www.beta.test", b"beta"),
    ("unknown.test", b"gamma"),
    ("127.0.0.1", b"gamma"),
])
def test_server_is_chosen_by_host(start_kernel, host, server):
    kernel = start_kernel(TWO_SERVERS)
    response = get(kernel.port(), "/", host=host)
    assert response.status == 200
    assert response.body.split()[0] == server, response.body


@pytest.mark.parametrize("host, value", [
    ("www.Beta.TEST:8080", b"www.beta.test"),
    ("beta.test.", b"beta.test"),              # nginx drops one trailing dot from $host
])
def test_host_variable_is_normalised(start_kernel, host, value):
    kernel = start_kernel(TWO_SERVERS)
    response = get(kernel.port(), "/", host=host)
    assert response.body == b"beta " + value


def test_absolute_form_target_chooses_the_server_by_its_host(start_kernel):
    kernel = start_kernel(TWO_SERVERS)
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("GET", "http://beta.test/x?y=1", host="alpha.test"))
        response = conn.final_response()
    # RFC 9112 3.2.2 and nginx: the authority of an absolute-form target replaces the Host header.
    assert (response.status, response.body) == (200, b"beta beta.test")


REDIRECTS = """
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /redir/
          return: 301 https://example.com$request_uri
        - location: /show/
          return: 200 "uri=$uri args=$args request_uri=$request_uri"
        - location: = /relative
          return: 302 /landing$is_args$args
        - location: = /relative-kept
          absolute_redirect: off
          return: 302 /landing
"""


def test_a_relative_redirect_goes_out_absolute_as_nginx_sends_it(start_kernel):
    kernel = start_kernel(REDIRECTS)
    for host, target, location in (("Example.TEST:8443", "/relative?a=1", f"http://example.test:{kernel.port()}/landing?a=1"),
                                   ("localhost", "/relative-kept", "/landing")):
        with Conn(kernel.port()) as conn:
            conn.send(request_bytes("GET", target, host=host))
            response = conn.final_response()
        assert response.status == 302 and response.header("Location") == location, response


@pytest.mark.parametrize("target, location, shown", [
    # nginx's `$request_uri` starts at the path of an absolute-form target: the redirect idiom stays on its host.
    ("http://evil.test/redir/x?y", "https://example.com/redir/x?y", None),
    ("/redir/a//b?c", "https://example.com/redir/a//b?c", None),
    # A fragment ends `$uri` and `$args`; `$request_uri` keeps the target as received.
    ("/show/a?x=1#y", None, b"uri=/show/a args=x=1 request_uri=/show/a?x=1#y"),
    ("/show/a#b?c=1", None, b"uri=/show/a args= request_uri=/show/a#b?c=1"),
    ("http://h.test/show/p?q", None, b"uri=/show/p args=q request_uri=/show/p?q"),
])
def test_request_uri_and_args_read_the_target_as_nginx_does(start_kernel, target, location, shown):
    kernel = start_kernel(REDIRECTS)
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("GET", target, host="localhost"))
        response = conn.final_response()
    if location:
        assert response.status == 301 and response.header("Location") == location, response
    else:
        assert (response.status, response.body) == (200, shown)


PRECEDENCE = """
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: "= /"
          return: 200 "A"
        - location: /
          return: 200 "B"
        - location: /documents/
          return: 200 "C"
        - location: "^~ /images/"
          return: 200 "D"
        - location: "~* \\\\.(gif|jpg|jpeg)$"
          return: 200 "E"
        - location: "~ ^/re/(\\\\w+)/(\\\\d+)$"
          return: 200 "F $1 $2"
"""


@pytest.mark.parametrize("target, body", [
    ("/", b"A"),
    ("/index.html", b"B"),
    ("/documents/document.html", b"C"),
    ("/images/1.gif", b"D"),
    ("/documents/1.jpg", b"E"),
    ("/documents/1.JPG", b"E"),
    ("/documents/1.jpg?x=.png", b"E"),
    ("/re/abc/42", b"F abc 42"),
    ("/%64ocuments/a.html", b"C"),                  # matched after percent-decoding
    ("/images/../documents/a.html", b"C"),          # and after normalisation
    ("//documents//a.html", b"C"),
    ("/?x=1", b"A"),
])
def test_location_precedence_through_real_requests(start_kernel, target, body):
    kernel = start_kernel(PRECEDENCE)
    response = get(kernel.port(), target)
    assert (response.status, response.body) == (200, body), target


# --------------------------------------------------------------------------------------------------------------
# Access logs
# --------------------------------------------------------------------------------------------------------------

def test_access_log_combined_lines(start_kernel, tmp_path):
    path = tmp_path / "access.log"
    kernel = start_kernel(config(server_extra=f"      access_log: {{path: {path}, format: combined}}"))
    get(kernel.port(), "/echo?i=7", headers=[("User-Agent", 'probe "x"/1.0'), ("Referer", "http://r.test/p")])
    with Conn(kernel.port()) as conn:
        conn.send(request_bytes("POST", "/body", headers=[("Content-Length", "3")], body=b"abc"))
        conn.final_response()
    lines = read_lines(path, 2)
    assert len(lines) == 2, lines
    pattern = re.compile(r'127\.0\.0\.1 - - \[(\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] '
                         r'"([^"]*)" (\d{3}) (\d+) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"')
    first = pattern.fullmatch(lines[0])
    assert first, lines[0]
    datetime.datetime.strptime(first.group(1), "%d/%b/%Y:%H:%M:%S %z")
    assert first.group(2, 3, 4, 5) == ("GET /echo?i=7 HTTP/1.1", "200", "6", "http://r.test/p")
    assert first.group(6) == r'probe \x22x\x22/1.0'     # nginx escapes the quote
    second = pattern.fullmatch(lines[1])
    assert second, lines[1]
    assert second.group(2, 3, 4, 5, 6) == ("POST /body HTTP/1.1", "200", "10", "-", "-")


def test_access_log_json_lines(start_kernel, tmp_path):
    path = tmp_path / "access.json"
    kernel = start_kernel(config(server_extra=f"      access_log: {{path: {path}, format: json}}"))
    get(kernel.port(), "/echo?i=8", headers=[("User-Agent", "probe\u00e9"), ("Referer", 'say "hi"')])
    get(kernel.port(), "/nothing-here/../")
    lines = read_lines(path, 2)
    assert len(lines) == 2, lines
    entry = json.loads(lines[0])
    for key in ("time", "remote_addr", "request", "status", "body_bytes_sent", "request_time", "http_referer",
                "http_user_agent", "server_name", "location", "protocol"):
        assert key in entry, (key, entry)
    assert entry["remote_addr"] == "127.0.0.1"
    assert entry["request"] == "GET /echo?i=8 HTTP/1.1"
    assert entry["status"] == 200 and entry["body_bytes_sent"] == 6
    assert entry["http_referer"] == 'say "hi"'
    assert entry["location"] == "/echo"
    assert entry["protocol"] == "http"
    assert isinstance(entry["request_time"], (int, float)) and entry["request_time"] >= 0
    datetime.datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
    assert json.loads(lines[1])["location"] == "/"


def test_access_log_records_refused_requests(start_kernel, tmp_path):
    # nginx writes every request it answered, refusals included, to the access log (fail2ban and friends read it).
    path = tmp_path / "access.log"
    kernel = start_kernel(config(server_extra=f"      access_log: {{path: {path}, format: combined}}"))
    exchange(kernel.port(), b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n")
    lines = read_lines(path, 1)
    assert len(lines) == 1 and '" 400 ' in lines[0], lines


NAMED_FORMAT = """
http:
  listen: "127.0.0.1:0"
routing:
  log_format:
    detailed: '$remote_addr:$remote_port "$request" $status $body_bytes_sent $request_time $request_id [$upstream_addr] $arg_page $http_x_trace $cookie_sid $host $connection_requests'
    api: {{escape: json, format: '{{"uri":"$uri","agent":"$http_user_agent","id":"$user_id","first":"$1"}}'}}
  servers:
    - server_name: logged.test
      access_log: {{path: {detailed}, format: detailed}}
      locations:
        - location: /
          return: 200 "root"
        - location: "~ ^/users/(?<user_id>\\\\d+)(?:/(?P<tab>[a-z]+))?$"
          access_log: {{path: {api}, format: api}}
          return: 200 "user $user_id tab [$tab] first $1"
        - location: "~ ^/api/(?!internal)"
          return: 200 "public"
"""


def test_named_log_format_with_several_variables(start_kernel, tmp_path):
    detailed, api = tmp_path / "detailed.log", tmp_path / "api.log"
    kernel = start_kernel(NAMED_FORMAT.format(detailed=detailed, api=api))
    get(kernel.port(), "/?page=3&x=1", host="Logged.Test:81", headers=[("X-Trace", "t-1"), ("Cookie", "a=1; sid=s9")])
    get(kernel.port(), "/users/42/posts", host="logged.test", headers=[("User-Agent", 'say "hi"')])
    lines = read_lines(detailed, 1)
    assert len(lines) == 1, lines
    match = re.fullmatch(r'127\.0\.0\.1:(\d+) "GET /\?page=3&x=1 HTTP/1\.1" 200 4 (\d+\.\d{3}) ([0-9a-f]{32}) \[-\] 3 t-1 s9 logged\.test (\d+)',
                         lines[0])
    assert match, lines[0]
    assert int(match.group(1)) > 0 and float(match.group(2)) >= 0
    entry = json.loads(read_lines(api, 1)[0])
    assert entry == {"uri": "/users/42/posts", "agent": 'say "hi"', "id": "42", "first": "42"}
    no_crash_lines(kernel)


COUNTED_FORMAT = """
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
routing:
  log_format:
    counted: '$connection $connection_requests $status $body_bytes_sent $bytes_sent [$upstream_addr] [$upstream_status] [$upstream_response_time]'
  servers:
    - access_log: {{path: {path}, format: counted}}
      locations:
        - location: /
          return: 200 "hello"
        - location: /dead/
          uwsgi_pass: 127.0.0.1:{dead}
          uwsgi_connect_timeout: 2s
"""


def test_access_log_counts_connections_requests_bytes_and_upstream_tries(start_kernel, tmp_path):
    # The listener numbers its connections and requests and counts the head in $bytes_sent; a failed upstream try
    # shows its address and the 502 it stands for, as nginx's access log does.
    path = tmp_path / "counted.log"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    kernel = start_kernel(COUNTED_FORMAT.format(path=path, dead=dead))
    with Conn(kernel.port()) as conn:
        for _ in range(2):
            conn.send(request_bytes("GET", "/"))
            assert conn.final_response().status == 200
    assert get(kernel.port(), "/dead/x").status == 502
    lines = read_lines(path, 3)
    assert len(lines) == 3, lines
    first, second, third = (line.split(" ") for line in lines)
    assert first[0] == second[0] != third[0] and int(first[0]) > 0, lines
    assert (first[1], second[1], third[1]) == ("1", "2", "1"), lines
    assert first[2:4] == ["200", "5"] and int(first[4]) > 5 + len("HTTP/1.1 200 OK\r\n"), lines
    assert first[5:] == ["[-]", "[-]", "[-]"], lines
    assert third[2] == "502" and third[5] == f"[127.0.0.1:{dead}]" and third[6] == "[502]", lines
    assert re.fullmatch(r"\[\d+\.\d{3}\]", third[7]), lines
    no_crash_lines(kernel)


def test_regex_location_with_named_captures_and_lookahead(start_kernel, tmp_path):
    kernel = start_kernel(NAMED_FORMAT.format(detailed=tmp_path / "d.log", api=tmp_path / "a.log"))
    response = get(kernel.port(), "/users/7/settings", host="logged.test")
    assert (response.status, response.body) == (200, b"user 7 tab [settings] first 7")
    assert get(kernel.port(), "/users/7", host="logged.test").body == b"user 7 tab [] first 7"
    assert get(kernel.port(), "/api/v1", host="logged.test").body == b"public"
    assert get(kernel.port(), "/api/internal", host="logged.test").body == b"root"
    no_crash_lines(kernel)


def test_bad_regular_expression_fails_the_start_with_pcre_message(kernel_bin, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(PRECEDENCE.replace('"~ ^/re/(\\\\w+)/(\\\\d+)$"', '"~ ^/re/(?<x\\\\w+)"'))
    result = subprocess.run([kernel_bin, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result
    assert 'location: invalid regular expression "^/re/(?<x\\w+)": ' in result.stderr, result.stderr
    assert "syntax error in subpattern name (missing terminator?) at offset 9" in result.stderr, result.stderr
    assert ":17:21: routing.servers[0].locations[5].location" in result.stderr, result.stderr


# --------------------------------------------------------------------------------------------------------------
# IPv6
# --------------------------------------------------------------------------------------------------------------

def test_ipv6_listener(start_kernel):
    kernel = start_kernel(config(listen='"[::1]:0"').replace("$arg_i", "$arg_i $remote_addr"))
    address = kernel.address()
    assert address.startswith("[::1]:"), address
    port = kernel.port()
    with Conn(port, "::1", family=socket.AF_INET6) as conn:
        conn.send(request_bytes("GET", "/echo?i=6", host="[::1]:%d" % port))
        response = conn.final_response()
        assert (response.status, response.body) == (200, b"echo 6 ::1")
        conn.send(request_bytes("GET", "/"))
        assert conn.final_response().status == 200
    assert_alive_v6 = get(port, "/", host="localhost", family=socket.AF_INET6, address="::1")
    assert assert_alive_v6.status == 200 and kernel.process.poll() is None
