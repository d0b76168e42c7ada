"""Hostile input against the HTTP listener over real sockets.

Every attack asserts the exact status nginx (or, where the kernel's documented contract is stricter, that contract)
gives, that nothing sent behind a refused request is processed, that an info-level line names the refusal in the
error log, and that the process survives: afterwards it is alive and a plain GET / still answers 200.
"""
import os
import random
import socket
import ssl
import threading
import time

import pytest

from test_http_system import (Conn, assert_alive, exchange, get, log_mark, no_crash_lines, read_lines,
                              request_bytes, wait_for_info)

BIG_TEXT = "b" * 8000

HOSTILE = f"""
http:
  listen: "127.0.0.1:0"
  client_header_timeout: 1s
  client_body_timeout: 1s
  send_timeout: 1s
  large_client_header_buffers: 4 1k
routing:
  servers:
    - client_max_body_size: 1k
      access_log: {{path: access.log, format: combined}}
      locations:
        - location: /
          return: 200 "ok"
        - location: /x
          return: 200 "x"
        - location: /smuggled
          return: 200 "SMUGGLED"
        - location: /big
          return: 200 "{BIG_TEXT}"
        - location: /upload             # reads the body (to a peer no test reaches: refusals come first)
          proxy_pass: http://127.0.0.1:1
"""

# A complete request pipelined behind every attack: it must never be answered.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.fixture
def kernel(start_kernel):
    k = start_kernel(HOSTILE)
    yield k
    no_crash_lines(k)


def access_log(kernel):
    return "\n".join(read_lines(os.path.join(kernel.workdir, "access.log"), 0, timeout=0))


def assert_not_smuggled(kernel, responses):
    assert all(b"SMUGGLED" not in r.body for r in responses), responses
    time.sleep(0.1)
    assert "/smuggled" not in access_log(kernel), access_log(kernel)


def test_the_smuggling_detector_sees_a_request_for_the_smuggled_location(kernel):
    # The negative checks below rely on this: a request that reaches /smuggled is visible in the body and the log.
    response = get(kernel.port(), "/smuggled")
    assert (response.status, response.body) == (200, b"SMUGGLED")
    assert any("GET /smuggled HTTP/1.1" in line for line in read_lines(os.path.join(kernel.workdir, "access.log"), 1))


def tls_client_hello():
    """The first flight of a real TLS client."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def post(headers, body=b"", target="/"):
    return request_bytes("POST", target, headers=headers, body=body)


def chunked(body):
    return post([("Transfer-Encoding", "chunked")], body)


H = b"Host: localhost\r\n"

# (id, payload, status, info-level log phrase)
REFUSALS = [
    # Not HTTP at all.
    ("garbage-binary", b"\x8f" + random.Random(20261125).randbytes(700) + b"\r\n\r\n", 400,
     "client sent invalid request line"),
    ("garbage-no-line-end", b"\x00\x01\x02\x03", 400, "client sent invalid request line"),
    ("tls-client-hello", tls_client_hello(), 400, "client sent invalid request line"),
    # nginx refuses the preface's asterisk target before it reads the version: 400, not 505.
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "client sent invalid request target"),
    # Request line.
    ("nul-in-target", b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n", 400, "client sent invalid request line"),
    ("nul-in-method", b"G\x00T / HTTP/1.1\r\n" + H + b"\r\n", 400, "client sent invalid request line"),
    ("bare-cr-in-request-line", b"GET /\r HTTP/1.1\r\n" + H + b"\r\n", 400, "client sent invalid request line"),
    # CR alone as the line ending: refused at the byte after it, as nginx does, not at the header timeout.
    ("bare-cr-line-endings", b"GET / HTTP/1.1\rHost: a\r\r", 400, "client sent invalid request line"),
    ("bare-cr-ending-a-header", b"GET / HTTP/1.1\r\nHost: a\rX-A: b\r", 400, "client sent invalid header line"),
    ("space-in-target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400, "client sent invalid request line"),
    ("target-without-slash", b"GET x HTTP/1.1\r\n" + H + b"\r\n", 400, "client sent invalid"),
    ("connect-authority-form", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 400,
     "client sent invalid"),
    ("http-0.9-simple-request", b"GET /\r\n", 400, "client sent invalid request line"),
    # Methods as nginx reads them: upper-case letters, `_` and `-`; TRACE never answered.
    ("method-lower-case", b"get / HTTP/1.1\r\n" + H + b"\r\n", 400, "client sent invalid method"),
    ("method-with-a-dot", b"GE.T / HTTP/1.1\r\n" + H + b"\r\n", 400, "client sent invalid method"),
    ("trace", b"TRACE / HTTP/1.1\r\n" + H + b"\r\n", 405, "client sent TRACE method"),
    # The asterisk form, and absolute forms whose host nginx would not read.
    ("options-asterisk", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", 400, "client sent invalid request target"),
    ("get-asterisk", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400, "client sent invalid request target"),
    ("absolute-unclosed-ip-literal", b"GET http://[/ HTTP/1.1\r\n" + H + b"\r\n", 400,
     "client sent invalid request target"),
    ("absolute-user-info", b"GET http://user@localhost/ HTTP/1.1\r\n" + H + b"\r\n", 400,
     "client sent invalid request target"),
    ("absolute-two-dots", b"GET http://a..b/ HTTP/1.1\r\n" + H + b"\r\n", 400, "client sent invalid request target"),
    ("absolute-scheme-digit-first", b"GET 1http://localhost/ HTTP/1.1\r\n" + H + b"\r\n", 400,
     "client sent invalid request target"),
    ("absolute-bad-port", b"GET http://localhost:8x/ HTTP/1.1\r\n" + H + b"\r\n", 400,
     "client sent invalid request target"),
    ("version-lower-case", b"GET / http/1.1\r\n" + H + b"\r\n", 400, "client sent invalid request line"),
    ("version-trailing-word", b"GET / HTTP/1.1 x\r\n" + H + b"\r\n", 400, "client sent invalid request line"),
    ("version-2.0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505, "client sent unsupported HTTP version"),
    ("version-3.0", b"GET / HTTP/3.0\r\n" + H + b"\r\n", 505, "client sent unsupported HTTP version"),
    ("version-0.9", b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505, "client sent unsupported HTTP version"),
    ("version-leading-zero", b"GET / HTTP/01.1\r\n" + H + b"\r\n", 400, "client sent invalid request line"),
    ("request-line-too-long", b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\n" + H + b"\r\n", 414,
     "client sent too long URI"),
    ("method-too-long-no-space", b"A" * 5000, 414, "client sent too long URI"),
    # The line ending counts, as nginx's buffer holds it: 1023 bytes and CRLF do not fit in 1k (1022 do, below).
    ("request-line-1023-and-crlf", b"GET /" + b"a" * 1009 + b" HTTP/1.1\r\n" + H + b"\r\n", 414,
     "client sent too long URI"),
    # Request target.
    ("dotdot-escapes-root", b"GET /../etc/passwd HTTP/1.1\r\n" + H + b"\r\n", 400,
     "client sent invalid request target"),
    ("dotdot-twice", b"GET /a/../../etc/passwd HTTP/1.1\r\n" + H + b"\r\n", 400,
     "client sent invalid request target"),
    ("dotdot-at-end", b"GET /.. HTTP/1.1\r\n" + H + b"\r\n", 400, "client sent invalid request target"),
    ("dotdot-percent-encoded", b"GET /%2e%2E/etc/passwd HTTP/1.1\r\n" + H + b"\r\n", 400,
     "client sent invalid request target"),
    ("dotdot-encoded-slashes", b"GET /a/..%2f..%2fetc/passwd HTTP/1.1\r\n" + H + b"\r\n", 400,
     "client sent invalid request target"),
    ("percent-encoded-nul", b"GET /a%00b HTTP/1.1\r\n" + H + b"\r\n", 400, "client sent invalid request target"),
    ("bad-percent-escape", b"GET /%zz HTTP/1.1\r\n" + H + b"\r\n", 400, "client sent invalid request target"),
    ("truncated-percent-escape", b"GET /a%4 HTTP/1.1\r\n" + H + b"\r\n", 400,
     "client sent invalid request target"),
    # Header lines.
    ("header-line-too-long", b"GET / HTTP/1.1\r\n" + H + b"X-Long: " + b"v" * 1100 + b"\r\n\r\n", 431,
     "client sent too long header line"),
    ("header-line-1023-and-crlf", b"GET / HTTP/1.1\r\n" + H + b"X-Long: " + b"v" * 1015 + b"\r\n\r\n", 431,
     "client sent too long header line"),
    ("too-many-headers", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%03d: %s\r\n" % (i, b"v" * 90) for i in range(60))
     + b"\r\n", 431, "client sent too large request header"),
    ("thousands-of-tiny-headers", b"GET / HTTP/1.1\r\n" + H + b"X: y\r\n" * 3000 + b"\r\n", 431,
     "client sent too large request header"),
    ("nul-in-header-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x00c\r\n\r\n", 400,
     "client sent invalid header line"),
    ("bare-cr-in-header-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\rc\r\n\r\n", 400,
     "client sent invalid header line"),
    ("control-byte-in-header-name", b"GET / HTTP/1.1\r\n" + H + b"X\x01A: b\r\n\r\n", 400,
     "client sent invalid header line"),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n  folded\r\n\r\n", 400, "client sent invalid header line"),
    ("obs-fold-first-line", b"GET / HTTP/1.1\r\n " + H + b"\r\n", 400, "client sent invalid header line"),
    ("header-without-colon", b"GET / HTTP/1.1\r\n" + H + b"NoColonHere\r\n\r\n", 400,
     "client sent invalid header line"),
    ("space-before-colon", b"GET / HTTP/1.1\r\n" + H + b"X-A : b\r\n\r\n", 400, "client sent invalid header line"),
    ("tab-before-colon", b"GET / HTTP/1.1\r\n" + H + b"X-A\t: b\r\n\r\n", 400, "client sent invalid header line"),
    ("empty-header-name", b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n", 400, "client sent invalid header line"),
    # Host.
    ("missing-host", b"GET / HTTP/1.1\r\n\r\n", 400, 'client sent HTTP/1.1 request without "Host" header'),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "client sent"),
    ("host-with-slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "client sent invalid host header"),
    ("host-with-dotdot", b"GET / HTTP/1.1\r\nHost: ../a\r\n\r\n", 400, "client sent invalid host header"),
    ("host-with-space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "client sent invalid host header"),
    ("host-empty", b"GET / HTTP/1.1\r\nHost: \r\n\r\n", 400, "client sent invalid host header"),
    # nginx's ngx_http_validate_host: two dots in a row, or nothing but a dot before the port.
    ("host-two-dots", b"GET / HTTP/1.1\r\nHost: a..b\r\n\r\n", 400, "client sent invalid host header"),
    ("host-only-a-dot", b"GET / HTTP/1.1\r\nHost: .:80\r\n\r\n", 400, "client sent invalid host header"),
    # Content-Length.
    ("content-length-and-transfer-encoding",
     post([("Content-Length", "5"), ("Transfer-Encoding", "chunked")], b"0\r\n\r\n"), 400,
     'client sent "Content-Length" and "Transfer-Encoding" headers at the same time'),
    ("two-different-content-lengths", post([("Content-Length", "5"), ("Content-Length", "6")], b"hello!"), 400,
     "client sent duplicate header line"),
    ("two-equal-content-lengths", post([("Content-Length", "5"), ("Content-Length", "5")], b"hello"), 400,
     "client sent duplicate header line"),
    ("content-length-list", post([("Content-Length", "5, 5")], b"hello"), 400,
     'client sent invalid "Content-Length" header'),
    ("content-length-5abc", post([("Content-Length", "5abc")], b"hello"), 400,
     'client sent invalid "Content-Length" header'),
    ("content-length-plus", post([("Content-Length", "+5")], b"hello"), 400,
     'client sent invalid "Content-Length" header'),
    ("content-length-negative", post([("Content-Length", "-1")]), 400, 'client sent invalid "Content-Length" header'),
    ("content-length-empty", post([("Content-Length", "")]), 400, 'client sent invalid "Content-Length" header'),
    ("content-length-2^64", post([("Content-Length", str(2 ** 64))]), 400,
     'client sent invalid "Content-Length" header'),
    ("content-length-2^63", post([("Content-Length", str(2 ** 63))]), 400,
     'client sent invalid "Content-Length" header'),
    # nginx: the largest off_t parses, and is then too large for client_max_body_size.
    ("content-length-2^63-1", post([("Content-Length", str(2 ** 63 - 1))]), 413,
     "client intended to send too large body: 9223372036854775807 bytes"),
    ("content-length-over-limit", post([("Content-Length", "1025")], b"z" * 1025), 413,
     "client intended to send too large body: 1025 bytes"),
    # Transfer-Encoding.
    ("transfer-encoding-gzip", post([("Transfer-Encoding", "gzip")]), 501, 'client sent unknown "Transfer-Encoding"'),
    ("transfer-encoding-chunked-gzip", post([("Transfer-Encoding", "chunked, gzip")], b"0\r\n\r\n"), 501,
     'client sent unknown "Transfer-Encoding"'),
    ("transfer-encoding-gzip-chunked", post([("Transfer-Encoding", "gzip, chunked")], b"0\r\n\r\n"), 501,
     'client sent unknown "Transfer-Encoding"'),
    ("transfer-encoding-identity", post([("Transfer-Encoding", "identity")]), 501,
     'client sent unknown "Transfer-Encoding"'),
    ("transfer-encoding-quoted", post([("Transfer-Encoding", '"chunked"')], b"0\r\n\r\n"), 501,
     'client sent unknown "Transfer-Encoding"'),
    ("transfer-encoding-twice", post([("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
                                     b"0\r\n\r\n"), 400, "client sent"),
    ("transfer-encoding-on-http-1.0",
     b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
     'client sent HTTP/1.0 request with "Transfer-Encoding" header'),
    # Chunked framing.
    ("chunk-size-zz", chunked(b"zz\r\nhello\r\n0\r\n\r\n"), 400, "client sent invalid chunked body"),
    ("chunk-size-negative", chunked(b"-1\r\nhello\r\n0\r\n\r\n"), 400, "client sent invalid chunked body"),
    ("chunk-size-overflow", chunked(b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), 400,
     "client sent invalid chunked body"),
    ("chunk-size-2^64", chunked(b"10000000000000000\r\nhello\r\n0\r\n\r\n"), 400, "client sent invalid chunked body"),
    ("chunk-size-0x-prefix", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400, "client sent invalid chunked body"),
    ("chunk-size-plus", chunked(b"+5\r\nhello\r\n0\r\n\r\n"), 400, "client sent invalid chunked body"),
    ("chunk-size-empty", chunked(b"\r\nhello\r\n0\r\n\r\n"), 400, "client sent invalid chunked body"),
    ("chunk-data-longer-than-size", chunked(b"3\r\nhello\r\n0\r\n\r\n"), 400, "client sent invalid chunked body"),
    # Limits bind where the body is read (a `return` discards it, as nginx does: see below).
    ("chunked-body-over-limit", post([("Transfer-Encoding", "chunked")], b"401\r\n" + b"q" * 1025 + b"\r\n0\r\n\r\n",
                                     target="/upload"), 413, "too large"),
    ("chunk-size-1m-over-limit", post([("Transfer-Encoding", "chunked")], b"100000\r\nabc", target="/upload"), 413,
     "too large"),
    # nginx: a chunk size near the largest off_t is refused as invalid framing before any limit applies.
    ("chunk-size-2^63-1", chunked(b"7fffffffffffffff\r\nabc"), 400, "client sent invalid chunked body"),
]


def test_a_body_a_return_does_not_use_is_discarded_and_the_request_behind_it_answered(kernel):
    # nginx answers a `return` at once and discards the body, with no limit on a chunked one (its discarding
    # does not count): the request behind a well-framed body is a request, answered in turn.
    body = b"401\r\n" + b"q" * 1025 + b"\r\n0\r\n\r\n"
    responses = exchange(kernel.port(), chunked(body) + request_bytes("GET", "/x", headers=[("Connection", "close")]))
    assert [(r.status, r.body) for r in responses] == [(200, b"ok"), (200, b"x")], responses
    # Declared by Content-Length, the limit applies before a byte is read (nginx's 413 at the location).
    responses = exchange(kernel.port(), post([("Content-Length", "1025")], b"q" * 1025) + SMUGGLED)
    assert [r.status for r in responses] == [413], responses
    assert_not_smuggled(kernel, responses)


@pytest.mark.parametrize("payload, status, phrase", [case[1:] for case in REFUSALS],
                         ids=[case[0] for case in REFUSALS])
def test_refused_with_exact_status_nothing_behind_it_processed(kernel, payload, status, phrase):
    mark = log_mark(kernel)
    responses = exchange(kernel.port(), payload + SMUGGLED)
    assert [r.status for r in responses] == [status], responses
    response = responses[0]
    assert response.closes, response
    assert response.header("Content-Type") == "application/json"
    assert isinstance(response.json()["error"], str)
    assert response.header("Server") and response.header("Date")
    assert_not_smuggled(kernel, responses)
    # nginx logs a body over client_max_body_size at [error], a malformed request at [info].
    wait_for_info(kernel, phrase, since=mark, level="error" if status == 413 else "info")
    assert_alive(kernel)


# --------------------------------------------------------------------------------------------------------------
# Accepted oddities: lenient where nginx and RFC 9112 are lenient, never at the cost of framing.
# --------------------------------------------------------------------------------------------------------------

def test_lines_that_fit_the_buffer_with_their_ending_are_served(kernel):
    # large_client_header_buffers 4 1k: 1022 bytes and CRLF, or 1023 and a bare LF, fit (nginx's limits exactly).
    for ending in (b"\r\n", b"\n"):
        line = b"GET /x?" + b"q" * (1022 + (len(ending) == 1) - 16) + b" HTTP/1.1"
        header = b"X-Long: " + b"v" * (1022 + (len(ending) == 1) - 8)
        assert len(line) + len(ending) == 1024 and len(header) + len(ending) == 1024
        payload = line + ending + b"Host: localhost" + ending + header + ending + b"Connection: close" + ending + ending
        responses = exchange(kernel.port(), payload)
        assert [(r.status, r.body) for r in responses] == [(200, b"x")], ending
    assert_alive(kernel)


def test_bare_lf_line_endings_are_accepted_as_nginx_does(kernel):
    responses = exchange(kernel.port(), b"GET /x HTTP/1.1\nHost: localhost\nConnection: close\n\n")
    assert [(r.status, r.body) for r in responses] == [(200, b"x")]
    assert_alive(kernel)


def test_absolute_form_target_is_routed_by_its_path(kernel):
    # nginx reads any scheme, in any case, and routes by the path.
    for scheme in (b"http", b"HTTP", b"https", b"ftp", b"svn+ssh"):
        responses = exchange(kernel.port(), b"GET " + scheme + b"://example.com/x?q=1 HTTP/1.1\r\nHost: localhost\r\n"
                                            b"Connection: close\r\n\r\n")
        assert [(r.status, r.body) for r in responses] == [(200, b"x")], scheme


def test_a_backslash_in_host_is_accepted_as_nginx_on_linux_does(kernel):
    responses = exchange(kernel.port(), b"GET /x HTTP/1.1\r\nHost: a\\b\r\nConnection: close\r\n\r\n")
    assert [(r.status, r.body) for r in responses] == [(200, b"x")]


def test_dotdot_inside_root_is_normalised(kernel):
    responses = exchange(kernel.port(), b"GET /a/../x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert [(r.status, r.body) for r in responses] == [(200, b"x")]


def test_leading_empty_lines_before_a_request_are_ignored(kernel):
    responses = exchange(kernel.port(), b"\r\n\r\nGET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert [(r.status, r.body) for r in responses] == [(200, b"x")]


def test_transfer_encoding_is_case_insensitive(kernel):
    payload = post([("Transfer-Encoding", "CHUNKED"), ("Connection", "close")], b"3\r\nabc\r\n0\r\n\r\n")
    responses = exchange(kernel.port(), payload)
    assert [(r.status, r.body) for r in responses] == [(200, b"ok")]


# --------------------------------------------------------------------------------------------------------------
# Request smuggling: a second request hidden in the first must never be answered.
# --------------------------------------------------------------------------------------------------------------

def smuggling_cl_te():
    """Front end reads Content-Length, back end reads chunked: the bytes after `0` become a request."""
    body = b"0\r\n\r\n" + SMUGGLED
    return post([("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked")], body)


def smuggling_te_cl():
    """Front end reads chunked, back end reads Content-Length: 4, the chunk's data becomes a request."""
    inner = b"GPOST /smuggled HTTP/1.1\r\nHost: localhost\r\nContent-Length: 15\r\n\r\nx=1"
    body = b"%x\r\n" % len(inner) + inner + b"\r\n0\r\n\r\n"
    return post([("Content-Length", "4"), ("Transfer-Encoding", "chunked")], body)


def smuggling_te_obfuscated(value):
    body = b"0\r\n\r\n" + SMUGGLED
    return (b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n" % len(body) + value + b"\r\n\r\n" + body)


SMUGGLING = [
    ("CL.TE", smuggling_cl_te(), 400),
    ("TE.CL", smuggling_te_cl(), 400),
    ("TE-space-before-colon", smuggling_te_obfuscated(b"Transfer-Encoding : chunked"), 400),
    ("TE-vertical-tab", smuggling_te_obfuscated(b"Transfer-Encoding:\x0bchunked"), 400),
    ("TE-xchunked", smuggling_te_obfuscated(b"Transfer-Encoding: xchunked"), 400),
    ("TE-trailing-space", smuggling_te_obfuscated(b"Transfer-Encoding: chunked "), 400),
    ("TE-obs-fold", smuggling_te_obfuscated(b"Transfer-Encoding:\r\n chunked"), 400),
    ("TE-second-header", smuggling_te_obfuscated(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x"), 400),
    ("TE-nul", smuggling_te_obfuscated(b"Transfer-Encoding: chunked\x00"), 400),
    ("CL-duplicate", b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n"
     % len(SMUGGLED) + SMUGGLED, 400),
]


@pytest.mark.parametrize("payload, status", [case[1:] for case in SMUGGLING], ids=[case[0] for case in SMUGGLING])
def test_request_smuggling_is_refused(kernel, payload, status):
    mark = log_mark(kernel)
    responses = exchange(kernel.port(), payload + request_bytes("GET", "/x"))
    assert [r.status for r in responses] == [status], responses
    assert responses[0].closes
    assert_not_smuggled(kernel, responses)
    wait_for_info(kernel, "client sent", since=mark)
    assert_alive(kernel)


def test_body_of_a_get_is_read_as_a_body_not_as_a_request(kernel):
    payload = request_bytes("GET", "/x", headers=[("Content-Length", str(len(SMUGGLED)))], body=SMUGGLED)
    with Conn(kernel.port()) as conn:
        conn.send(payload + request_bytes("GET", "/", headers=[("Connection", "close")]))
        responses = conn.responses_until_close()
    assert [(r.status, r.body) for r in responses] == [(200, b"x"), (200, b"ok")]
    assert_not_smuggled(kernel, responses)


def test_request_hidden_in_chunk_data_is_not_answered(kernel):
    body = b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n"
    payload = post([("Transfer-Encoding", "chunked")], body) + request_bytes("GET", "/x", headers=[("Connection", "close")])
    responses = exchange(kernel.port(), payload)
    assert [(r.status, r.body) for r in responses] == [(200, b"ok"), (200, b"x")]
    assert_not_smuggled(kernel, responses)


def test_requests_pipelined_after_a_bad_request_are_not_processed(kernel):
    good = request_bytes("GET", "/x")
    payload = good + b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n" + SMUGGLED + good + good
    responses = exchange(kernel.port(), payload)
    assert [r.status for r in responses] == [200, 400], responses
    assert responses[0].body == b"x"
    assert_not_smuggled(kernel, responses)
    assert_alive(kernel)


def test_requests_pipelined_after_a_413_are_not_processed(kernel):
    payload = post([("Content-Length", "2000")], b"z" * 2000) + SMUGGLED
    responses = exchange(kernel.port(), payload)
    assert [r.status for r in responses] == [413]
    assert_not_smuggled(kernel, responses)
    assert_alive(kernel)


# --------------------------------------------------------------------------------------------------------------
# TLS, slow and misbehaving clients, connection floods
# --------------------------------------------------------------------------------------------------------------

def test_tls_handshake_against_plain_http_fails_fast(kernel):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", kernel.port()), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)) as failure:
            context.wrap_socket(raw, server_hostname="localhost")
        assert not isinstance(failure.value, socket.timeout), "the handshake hung instead of failing"
    assert_alive(kernel)


def open_sockets(kernel):
    """The kernel's open sockets: listeners and connections (other descriptors come and go during startup)."""
    count = 0
    for fd in os.listdir(f"/proc/{kernel.pid}/fd"):
        try:
            count += os.readlink(f"/proc/{kernel.pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def fd_listing(kernel):
    """What the kernel's open descriptors are, for failure messages."""
    out = []
    for fd in sorted(os.listdir(f"/proc/{kernel.pid}/fd"), key=int):
        try:
            out.append(f"{fd}->{os.readlink(f'/proc/{kernel.pid}/fd/{fd}')}")
        except OSError:
            pass
    return " ".join(out)


def wait_for_sockets(kernel, at_most, timeout=8.0):
    deadline = time.time() + timeout
    while open_sockets(kernel) > at_most and time.time() < deadline:
        time.sleep(0.1)
    return open_sockets(kernel)


def test_slowloris_connections_get_408_while_others_are_served(kernel):
    mark = log_mark(kernel)
    slow = []
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", kernel.port()))
        s.setblocking(False)
        s.send(b"GET / HTTP/1.1\r\n")
        slow.append([s, b"", False])
    served = 0
    deadline = time.time() + 6
    while time.time() < deadline and not all(closed for _, _, closed in slow):
        for entry in slow:
            s, got, closed = entry
            if closed:
                continue
            try:
                s.send(b"X-Trickle: 1\r\n")
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass
            try:
                while True:
                    data = s.recv(4096)
                    if not data:
                        entry[2] = True
                        break
                    entry[1] += data
            except BlockingIOError:
                pass
            except ConnectionResetError:
                entry[2] = True
        response = get(kernel.port(), "/", timeout=3)
        assert response.status == 200
        served += 1
        time.sleep(0.25)
    for s, _, _ in slow:
        s.close()
    assert served > 0
    statuses = [got.split(b"\r\n", 1)[0] for _, got, _ in slow]
    assert all(closed for _, _, closed in slow), "trickling connections were not closed by client_header_timeout"
    assert all(line.startswith(b"HTTP/1.1 408 ") for line in statuses), statuses
    wait_for_info(kernel, "client timed out", since=mark, count=len(slow))
    assert_alive(kernel)


def test_200_connections_dropped_mid_request(kernel):
    assert_alive(kernel)
    baseline = open_sockets(kernel)
    partials = [
        b"GET /",
        b"GET / HTTP/1.1\r\nHost: local",
        post([("Content-Length", "100")], b"only ten b"),
        post([("Transfer-Encoding", "chunked")], b"10\r\nabc"),
        b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n",           # the response is being written when dropped
        b"",
    ]
    sockets = []
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", kernel.port()))
        if partials[i % len(partials)]:
            s.sendall(partials[i % len(partials)])
        sockets.append(s)
    for i, s in enumerate(sockets):
        if i % 2:
            # An abortive close: the kernel sees a reset rather than an end of input.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    assert_alive(kernel)
    assert wait_for_sockets(kernel, baseline) <= baseline, ("connections dropped by clients were not closed",
                                                            fd_listing(kernel))
    assert_alive(kernel)


def test_client_that_never_reads_does_not_block_others(kernel):
    mark = log_mark(kernel)
    baseline = open_sockets(kernel)
    before = fd_listing(kernel)
    hog = socket.create_connection(("127.0.0.1", kernel.port()))
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.settimeout(2)
    try:
        hog.sendall(request_bytes("GET", "/big") * 3000)      # 24 MB of responses nobody reads
    except (socket.timeout, BrokenPipeError, ConnectionResetError):
        pass
    for i in range(10):
        response = get(kernel.port(), "/x", timeout=3)
        assert (response.status, response.body) == (200, b"x")
    # send_timeout (1s) ends the stalled connection and frees it.
    wait_for_info(kernel, "client timed out (110: Connection timed out) while sending response to client", since=mark)
    hog.close()
    assert wait_for_sockets(kernel, baseline) <= baseline, (before, fd_listing(kernel))
    assert_alive(kernel)


def test_client_that_closes_right_after_sending(kernel):
    for i in range(30):
        s = socket.create_connection(("127.0.0.1", kernel.port()))
        if i % 3 == 0:
            s.sendall(request_bytes("GET", "/big"))
        elif i % 3 == 1:
            s.sendall(post([("Content-Length", "5")], b"hello"))
        else:
            s.sendall(request_bytes("GET", "/x") * 50)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    assert_alive(kernel)


def test_client_that_closes_in_the_middle_of_its_body_is_logged(kernel):
    mark = log_mark(kernel)
    for body in (post([("Content-Length", "100")], b"abcdefghij", target="/upload"),
                 post([("Transfer-Encoding", "chunked")], b"10\r\nabc", target="/upload")):
        with socket.create_connection(("127.0.0.1", kernel.port())) as s:
            s.sendall(body)
            time.sleep(0.1)
    wait_for_info(kernel, "client prematurely closed connection", since=mark, count=2)
    assert_alive(kernel)


def test_client_that_closes_in_the_middle_of_its_head_is_logged(kernel):
    mark = log_mark(kernel)
    for partial in (b"GET / HTTP/1.1\r\nHost: localhost\r\n", request_bytes("GET", "/x") + b"GET /"):
        with socket.create_connection(("127.0.0.1", kernel.port())) as s:
            s.sendall(partial)
            time.sleep(0.1)
            if partial.startswith(b"GET /x"):
                s.recv(65536)
    wait_for_info(kernel, "client prematurely closed connection while reading client request headers", since=mark,
                  count=2)
    # A connection that sent nothing is no request: nothing logged for it.
    with socket.create_connection(("127.0.0.1", kernel.port())):
        time.sleep(0.1)
    assert_alive(kernel)


def test_client_that_half_closes_after_its_request_still_gets_the_response(kernel):
    # `printf 'GET / HTTP/1.0\r\n\r\n' | nc -N host port` and similar one-shot clients shut their write side.
    with Conn(kernel.port()) as conn:
        conn.send(b"GET /x HTTP/1.0\r\n\r\n")
        conn.sock.shutdown(socket.SHUT_WR)
        responses = conn.responses_until_close()
    assert [(r.status, r.body) for r in responses] == [(200, b"x")]


def test_pipelined_requests_before_a_half_close_are_all_answered(kernel):
    with Conn(kernel.port()) as conn:
        conn.send(b"".join(request_bytes("GET", "/x") for _ in range(20))
                  + post([("Content-Length", "5")], b"hello"))
        conn.sock.shutdown(socket.SHUT_WR)
        responses = conn.responses_until_close()
    assert [(r.status, r.body) for r in responses] == [(200, b"x")] * 20 + [(200, b"ok")]


def test_thousand_pipelined_requests_in_one_send(kernel):
    count = 1000
    with Conn(kernel.port(), timeout=20) as conn:
        conn.send(request_bytes("GET", "/x") * (count - 1) + request_bytes("GET", "/", headers=[("Connection", "close")]))
        responses = conn.responses_until_close()
    assert len(responses) == count
    assert all(r.status == 200 for r in responses)
    assert responses[-1].body == b"ok"
    assert_alive(kernel)


def test_all_attacks_at_once_against_one_process(kernel):
    """Every refusal above, 3 times each, from concurrent clients; then the process still serves."""
    payloads = [case[1] + SMUGGLED for case in REFUSALS] * 3
    expected = [case[2] for case in REFUSALS] * 3
    results = [None] * len(payloads)

    def attack(index):
        try:
            results[index] = [r.status for r in exchange(kernel.port(), payloads[index], timeout=10)]
        except Exception as error:          # recorded and asserted below
            results[index] = error

    threads = [threading.Thread(target=attack, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    mismatches = [(REFUSALS[i % len(REFUSALS)][0], expected[i], results[i])
                  for i in range(len(payloads)) if results[i] != [expected[i]]]
    assert not mismatches, mismatches
    assert_not_smuggled(kernel, [])
    assert_alive(kernel)


# --------------------------------------------------------------------------------------------------------------
# Framing edge cases that must not desynchronise the connection
# --------------------------------------------------------------------------------------------------------------

def test_request_sent_one_byte_at_a_time(kernel):
    payload = post([("Transfer-Encoding", "chunked")], b"3\r\nabc\r\n0\r\n\r\n") + request_bytes("GET", "/x")
    with Conn(kernel.port()) as conn:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(payload)):
            conn.send(payload[i:i + 1])
        first = conn.final_response()
        second = conn.final_response()
    assert (first.status, first.body, second.status, second.body) == (200, b"ok", 200, b"x")


def test_oversized_chunked_trailer_is_refused(kernel):
    trailer = b"".join(b"X-T%03d: %s\r\n" % (i, b"t" * 200) for i in range(30))     # 6 KB > 4 x 1k
    mark = log_mark(kernel)
    responses = exchange(kernel.port(), post([("Transfer-Encoding", "chunked")], b"3\r\nabc\r\n0\r\n" + trailer + b"\r\n",
                                             target="/upload") + SMUGGLED)
    assert [r.status for r in responses] == [400], responses
    assert_not_smuggled(kernel, responses)
    wait_for_info(kernel, "client sent", since=mark)
    assert_alive(kernel)


def test_upgrade_requests_get_a_plain_http11_response(kernel):
    payload = request_bytes("GET", "/x", headers=[("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
                                                  ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")])
    with Conn(kernel.port()) as conn:
        conn.send(payload)
        response = conn.final_response()
        assert (response.status, response.body) == (200, b"x")
        conn.send(request_bytes("GET", "/"))
        assert conn.final_response().status == 200


def test_client_gets_the_413_while_it_keeps_sending_a_large_body(kernel):
    # nginx's lingering close: the response is not lost to a reset while the client is still sending.
    with Conn(kernel.port(), timeout=10) as conn:
        conn.send(post([("Content-Length", str(8 * 1024 * 1024))]))
        failures = []

        def pour():
            try:
                for _ in range(64):
                    conn.sock.sendall(b"p" * 65536)
            except OSError as error:
                failures.append(error)

        sender = threading.Thread(target=pour)
        sender.start()
        response = conn.final_response()
        sender.join(15)
    assert response is not None and response.status == 413
    assert_alive(kernel)


def test_request_line_just_under_the_limit_is_served(kernel):
    target = b"/x?" + b"q" * 900
    responses = exchange(kernel.port(), b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert [(r.status, r.body) for r in responses] == [(200, b"x")]


def test_many_idle_connections_do_not_stop_service(kernel):
    idle = [socket.create_connection(("127.0.0.1", kernel.port())) for _ in range(300)]
    try:
        for _ in range(5):
            assert get(kernel.port(), "/x", timeout=3).status == 200
    finally:
        for s in idle:
            s.close()
    assert_alive(kernel)


@pytest.mark.parametrize("payload", [
    b"HEAD / HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5abc\r\n\r\n",
    b"HEAD /a%00 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4096\r\n\r\n",
], ids=["invalid-header", "invalid-content-length", "invalid-target", "body-over-limit"])
def test_refusal_of_a_head_request_has_no_body(kernel, payload):
    # RFC 9110 9.3.2, and nginx: a response to HEAD carries no content, refusals included.
    with Conn(kernel.port()) as conn:
        conn.send(payload)
        response = conn.response(head_request=True)
        assert response.status in (400, 413)
        assert int(response.header("Content-Length")) > 0
        assert conn.closed_by_peer(), f"bytes after the head of a HEAD response: {conn.buf!r}"
    assert_alive(kernel)


def test_mutated_requests_never_hang_crash_or_answer_500(kernel):
    """2000 deterministic mutations of valid requests, each on its own connection closed for writing."""
    rng = random.Random(20261125)
    seeds = [
        b"GET /x?a=1 HTTP/1.1\r\nHost: localhost\r\nUser-Agent: f\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nT: v\r\n\r\n",
        b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ]
    alphabet = b"\r\n :\t\x00/%.0123456789abcdefABCDEF-;,\"\x7f\xff"
    problems = []
    for _ in range(2000):
        data = bytearray(rng.choice(seeds) * rng.randint(1, 3))
        for _ in range(rng.randint(1, 6)):
            op, pos = rng.random(), rng.randrange(len(data) + 1)
            if op < 0.4:
                data[pos:pos] = bytes([rng.choice(alphabet)])
            elif pos < len(data) and op < 0.7:
                del data[pos]
            elif pos < len(data):
                data[pos] = rng.choice(alphabet)
        with socket.create_connection(("127.0.0.1", kernel.port()), timeout=5) as s:
            s.sendall(bytes(data))
            s.shutdown(socket.SHUT_WR)
            out = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    out += chunk
            except socket.timeout:
                problems.append(("hang", bytes(data), out))
            except ConnectionResetError:
                problems.append(("reset", bytes(data), out))
        if out and not out.startswith(b"HTTP/1.1 "):
            problems.append(("not an HTTP response", bytes(data), out))
        if b"HTTP/1.1 500 " in out:
            problems.append(("500", bytes(data), out))
    assert not problems, problems[:5]
    assert "[error]" not in kernel.log_text()
    assert_alive(kernel)


def resident_mb(kernel):
    with open(f"/proc/{kernel.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) // 1024


def pour(kernel, head, filler, megabytes=16):
    """Sends `head` and then `filler` until `megabytes` are sent or the kernel stops taking them."""
    with socket.create_connection(("127.0.0.1", kernel.port()), timeout=3) as s:
        try:
            s.sendall(head)
            for _ in range(megabytes * 16):
                s.sendall(filler * (65536 // len(filler)))
        except (socket.timeout, BrokenPipeError, ConnectionResetError):
            pass


def test_memory_stays_bounded_under_endless_input(kernel):
    assert_alive(kernel)
    before = resident_mb(kernel)
    pour(kernel, b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Endless: ", b"a")                    # one header line
    pour(kernel, b"GET /", b"a")                                                               # one request line
    pour(kernel, chunked(b"5;"), b"e")                                                         # a chunk extension
    pour(kernel, chunked(b"5\r\nhello\r\n0\r\n"), b"X-Trailer: t\r\n")                          # trailer fields
    pour(kernel, b"", request_bytes("GET", "/big"))                                          # unread pipelining
    assert_alive(kernel)
    grown = resident_mb(kernel) - before
    assert grown < 64, f"resident memory grew by {grown} MB while clients sent endless input"


def test_slow_but_steady_reader_gets_every_pipelined_response_intact(kernel):
    count = 900
    with Conn(kernel.port(), timeout=10) as conn:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        conn.send(request_bytes("GET", "/big") * count + request_bytes("GET", "/", headers=[("Connection", "close")]))
        responses = []
        while True:
            response = conn.response()
            if response is None:
                break
            responses.append(response)
            if len(responses) % 100 == 0:
                time.sleep(0.05)
    assert len(responses) == count + 1
    assert all(r.status == 200 and r.body == BIG_TEXT.encode() for r in responses[:count])
    assert responses[-1].body == b"ok"
