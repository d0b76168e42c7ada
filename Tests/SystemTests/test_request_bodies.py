"""Request bodies larger than memory, on the real binary: `client_body_buffer_size` in memory, the rest spooled to
a temporary file under `client_body_temp_path` (removed when the request ends), `uwsgi_request_buffering off`
streaming, and bounded memory for a 1 GiB upload through `uwsgi_pass`.

`KERNEL_UPLOAD_GIB` sets the size of the bounded-memory uploads (`make stress` runs them with 5)."""
import os
import socket
import struct
import threading
import time

import pytest

from test_http_system import log_mark, wait_for_info

UPLOAD_GIB = float(os.environ.get("KERNEL_UPLOAD_GIB", "1"))
RSS_GROWTH_LIMIT = 64 << 20


class UWSGISink:
    """A uwsgi peer that reads each request's body, keeps none of it, and answers with the byte count."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.counts = []
        self.progress = 0                   # body bytes of the request being read
        self.reading = threading.Event()    # cleared: the sink stops reading (a slow upstream)
        self.reading.set()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    @staticmethod
    def read_exact(conn, n):
        data = bytearray()
        while len(data) < n:
            part = conn.recv(n - len(data))
            if not part:
                raise EOFError
            data += part
        return bytes(data)

    def handle(self, conn):
        with conn:
            _, size, _ = struct.unpack("<BHB", self.read_exact(conn, 4))
            block = self.read_exact(conn, size)
            variables, i = {}, 0
            while i < len(block):
                (klen,) = struct.unpack_from("<H", block, i); i += 2
                key = block[i:i + klen].decode(); i += klen
                (vlen,) = struct.unpack_from("<H", block, i); i += 2
                variables[key] = block[i:i + vlen].decode(); i += vlen
            remaining = int(variables.get("CONTENT_LENGTH") or 0)
            scratch = bytearray(1 << 20)
            got = 0
            self.progress = 0
            while got < remaining:
                self.reading.wait()
                n = conn.recv_into(scratch, min(len(scratch), remaining - got))
                if n == 0:
                    break
                got += n
                self.progress = got
            self.counts.append(got)
            body = str(got).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self):
        self.server.close()


@pytest.fixture
def sink():
    s = UWSGISink()
    yield s
    s.close()


def edge_config(sink, tmp, buffering=True, extra=""):
    return f"""
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
routing:
  servers:
    - client_max_body_size: 0
      client_body_temp_path: {tmp}
      locations:
        - location: /upload
          uwsgi_pass: 127.0.0.1:{sink.port}
          uwsgi_request_buffering: {"on" if buffering else "off"}
        - location: /small
          return: 200 "small"
{extra}
"""


def memory(kernel):
    """(VmRSS, VmHWM) of the kernel in bytes."""
    fields = {}
    with open(f"/proc/{kernel.pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def post(port, path, length, chunked=False, block=1 << 20):
    """Sends a body of `length` bytes (Content-Length, or chunked in `block`-sized chunks); returns status and body."""
    s = socket.create_connection(("127.0.0.1", port))
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % length
    s.sendall(b"POST %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%s\r\n\r\n" % (path.encode(), framing))
    data = b"u" * block
    sent = 0
    while sent < length:
        n = min(block, length - sent)
        if chunked:
            s.sendall(b"%x\r\n" % n + data[:n] + b"\r\n")
        else:
            s.sendall(data[:n] if n < block else data)
        sent += n
    if chunked:
        s.sendall(b"0\r\n\r\n")
    s.settimeout(60)
    answer = bytearray()
    while True:
        part = s.recv(65536)
        if not part:
            break
        answer += part
    s.close()
    head, _, body = bytes(answer).partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def leftover_files(tmp):
    return os.listdir(tmp) if os.path.isdir(tmp) else []


@pytest.mark.parametrize("buffering", [True, False], ids=["buffered", "unbuffered"])
def test_large_upload_through_uwsgi_pass_uses_bounded_memory(start_kernel, sink, tmp_path, buffering):
    tmp = str(tmp_path / "bodies")
    kernel = start_kernel(edge_config(sink, tmp, buffering))
    port = kernel.port()
    # Warm up: the first requests of a process allocate its pools.
    for _ in range(3):
        assert post(port, "/upload", 100_000) == (200, b"100000")
    rss_before, hwm_before = memory(kernel)
    size = int(UPLOAD_GIB * (1 << 30))
    status, body = post(port, "/upload", size)
    rss_after, hwm_after = memory(kernel)
    growth = hwm_after - hwm_before
    print(f"\nupload of {size} bytes ({'buffered' if buffering else 'unbuffered'}): VmHWM {hwm_before >> 20} -> "
          f"{hwm_after >> 20} MiB (growth {growth / (1 << 20):.1f} MiB), VmRSS {rss_before >> 20} -> {rss_after >> 20} MiB")
    assert (status, body) == (200, str(size).encode())
    assert growth < RSS_GROWTH_LIMIT, f"resident memory grew by {growth} bytes"
    assert leftover_files(tmp) == [], "the temporary file outlived its request"


def test_body_over_the_buffer_is_spooled_to_a_temporary_file_that_is_removed(start_kernel, sink, tmp_path):
    tmp = str(tmp_path / "not" / "there" / "yet")
    kernel = start_kernel(edge_config(sink, tmp))
    mark = log_mark(kernel)
    assert post(kernel.port(), "/upload", 16 * 1024) == (200, b"16384")      # fits client_body_buffer_size
    assert "buffered to a temporary file" not in kernel.log_text()[mark:]
    assert post(kernel.port(), "/upload", 16 * 1024 + 1) == (200, b"16385")
    text = kernel.wait_for_log(f"a client request body is buffered to a temporary file {tmp}/")
    assert "[warn]" in text[mark:]
    assert os.path.isdir(tmp), "the temp path was created"
    assert leftover_files(tmp) == []


def test_chunked_body_is_spooled_and_passed_with_its_length(start_kernel, sink, tmp_path):
    tmp = str(tmp_path / "bodies")
    kernel = start_kernel(edge_config(sink, tmp))
    assert post(kernel.port(), "/upload", 3_000_000, chunked=True, block=100_000) == (200, b"3000000")
    assert sink.counts[-1] == 3_000_000
    assert leftover_files(tmp) == []


def test_unbuffered_chunked_body_is_spooled_first(start_kernel, sink, tmp_path):
    # uwsgi needs CONTENT_LENGTH before the body: a chunked body is read whole even with buffering off.
    tmp = str(tmp_path / "bodies")
    kernel = start_kernel(edge_config(sink, tmp, buffering=False))
    assert post(kernel.port(), "/upload", 1_000_000, chunked=True, block=100_000) == (200, b"1000000")


def test_client_body_buffer_size_is_per_location(start_kernel, sink, tmp_path):
    tmp = str(tmp_path / "bodies")
    kernel = start_kernel(edge_config(sink, tmp, extra=f"""
        - location: /roomy
          uwsgi_pass: 127.0.0.1:{sink.port}
          client_body_buffer_size: 1m
"""))
    mark = log_mark(kernel)
    assert post(kernel.port(), "/roomy", 500_000) == (200, b"500000")
    assert "buffered to a temporary file" not in kernel.log_text()[mark:]


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_unbuffered_body_reaches_the_upstream_while_it_arrives(start_kernel, sink, tmp_path):
    kernel = start_kernel(edge_config(sink, str(tmp_path / "bodies"), buffering=False))
    s = socket.create_connection(("127.0.0.1", kernel.port()))
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 2000000\r\n\r\n")
    s.sendall(b"u" * 1_000_000)
    # Half the body is sent and the client waits: the upstream already has it.
    assert wait_until(lambda: sink.progress >= 1_000_000), sink.progress
    s.sendall(b"u" * 1_000_000)
    s.settimeout(10)
    answer = b""
    while not answer.endswith(b"2000000"):
        part = s.recv(65536)
        if not part:
            break
        answer += part
    s.close()
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\n2000000"), answer
    assert "buffered to a temporary file" not in kernel.log_text()


def test_buffered_body_reaches_the_upstream_only_when_whole(start_kernel, sink, tmp_path):
    kernel = start_kernel(edge_config(sink, str(tmp_path / "bodies")))
    s = socket.create_connection(("127.0.0.1", kernel.port()))
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 2000000\r\n\r\n")
    s.sendall(b"u" * 1_000_000)
    kernel.wait_for_log("buffered to a temporary file")
    assert not wait_until(lambda: sink.counts or sink.progress, timeout=0.5), "the upstream was contacted early"
    s.sendall(b"u" * 1_000_000)
    s.settimeout(10)
    assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")
    s.close()


def test_unbuffered_upload_waits_for_a_slow_upstream_with_bounded_memory(start_kernel, sink, tmp_path):
    kernel = start_kernel(edge_config(sink, str(tmp_path / "bodies"), buffering=False))
    port = kernel.port()
    assert post(port, "/upload", 100_000) == (200, b"100000")
    _, hwm_before = memory(kernel)
    sink.reading.clear()                 # the upstream stops reading
    size = 512 << 20
    result = {}
    sender = threading.Thread(target=lambda: result.update(answer=post(port, "/upload", size)), daemon=True)
    sender.start()
    # The client is held back (the kernel stops reading it) instead of the body piling up in the kernel.
    assert wait_until(lambda: sink.progress == 0 and memory(kernel)[1] - hwm_before < RSS_GROWTH_LIMIT, timeout=1)
    time.sleep(1.0)                      # a while of the upstream not reading (not a timing assertion)
    _, hwm_stalled = memory(kernel)
    sink.reading.set()
    sender.join(timeout=120)
    assert result.get("answer") == (200, str(size).encode()), result
    assert hwm_stalled - hwm_before < RSS_GROWTH_LIMIT, f"memory grew by {hwm_stalled - hwm_before} bytes while stalled"


def test_unbuffered_client_leaving_mid_body_closes_the_upstream(start_kernel, sink, tmp_path):
    kernel = start_kernel(edge_config(sink, str(tmp_path / "bodies"), buffering=False))
    s = socket.create_connection(("127.0.0.1", kernel.port()))
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2000000\r\n\r\n" + b"u" * 500_000)
    assert wait_until(lambda: sink.progress >= 500_000)
    s.close()
    # The sink sees the end of its connection: it records what it got.
    assert wait_until(lambda: sink.counts and sink.counts[-1] == 500_000), sink.counts
    assert post(kernel.port(), "/small", 0) == (200, b"small")


def test_return_answers_a_spooled_body_without_reading_it_back(start_kernel, sink, tmp_path):
    # nginx's return discards the body. A spooled one stays in its file: memory does not grow by its size, and a
    # client that half-closes once it has sent everything still gets its answer (it was once a 499 while the file
    # was read back).
    tmp = str(tmp_path / "bodies")
    kernel = start_kernel(edge_config(sink, tmp, extra='        - location: /fixed\n          return: 200 "fixed"\n'
                                                       '        - location: /templated\n          return: 200 "$uri"\n'
                                                       '        - location: /healthz\n          health: live\n'))
    size = 96 << 20
    _, hwm_before = memory(kernel)
    assert post(kernel.port(), "/fixed", size) == (200, b"fixed")
    assert post(kernel.port(), "/templated", size, chunked=True) == (200, b"/templated")
    _, hwm_after = memory(kernel)
    assert hwm_after - hwm_before < RSS_GROWTH_LIMIT, f"peak resident memory grew by {hwm_after - hwm_before} bytes"
    for path in ("/fixed", "/templated", "/small", "/healthz"):
        with socket.create_connection(("127.0.0.1", kernel.port()), timeout=30) as s:
            # GET: health answers other methods with 405; a GET may carry a body all the same.
            s.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1048576\r\n\r\n" % path.encode() + b"x" * (1 << 20))
            s.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), (path, answer)
    assert leftover_files(tmp) == []
