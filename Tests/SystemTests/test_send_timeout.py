"""`send_timeout` between two successive writes, on the real binary: a client that stops reading its last response
is disconnected `send_timeout` after the last progress (HTTP and uwsgi listeners), one that reads slowly but steadily
gets its whole response."""
import socket
import struct
import time

from test_http_hostile import open_sockets, fd_listing
from test_http_system import log_mark, wait_for_info

BIG = 4 << 20          # far more than the socket buffers of a client that does not read

CONFIG = f"""
http:
  listen: "127.0.0.1:0"
  send_timeout: 1s
uwsgi:
  listen: "127.0.0.1:0"
  send_timeout: 1s
routing:
  servers:
    - locations:
        - location: /big
          return: 200 "{"b" * BIG}"
"""


def stalled_client(port, request):
    """A client that sends `request` and never reads: a small receive buffer, set before the connection opens."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(request)
    return s


def closed_by_the_kernel_within(kernel, baseline, seconds):
    """Waits (bounded) until the kernel holds no more sockets than `baseline`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if open_sockets(kernel) <= baseline:
            return True
        time.sleep(0.05)
    return open_sockets(kernel) <= baseline


def uwsgi_packet(path):
    pairs = [("REQUEST_METHOD", "GET"), ("REQUEST_URI", path), ("PATH_INFO", path), ("QUERY_STRING", ""),
             ("SERVER_PROTOCOL", "HTTP/1.0"), ("SERVER_NAME", "localhost"), ("SERVER_PORT", "80"),
             ("REMOTE_ADDR", "127.0.0.1"), ("CONTENT_LENGTH", "")]
    block = b"".join(struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode() for k, v in pairs)
    return struct.pack("<BHB", 0, len(block), 0) + block


def test_http10_client_that_stops_reading_is_disconnected_after_send_timeout(start_kernel):
    kernel = start_kernel(CONFIG)
    baseline = open_sockets(kernel)
    mark = log_mark(kernel)
    client = stalled_client(kernel.port(), b"GET /big HTTP/1.0\r\n\r\n")
    try:
        # send_timeout is 1 s: the connection is gone by 1 s + 1 s.
        assert closed_by_the_kernel_within(kernel, baseline, 2.0), fd_listing(kernel)
        wait_for_info(kernel, "client timed out (110: Connection timed out) while sending response to client, "
                              "client: 127.0.0.1, server: 127.0.0.1:0", since=mark)
    finally:
        client.close()


def test_the_last_response_of_a_kept_alive_connection_is_bounded_too(start_kernel):
    kernel = start_kernel(CONFIG)
    baseline = open_sockets(kernel)
    client = stalled_client(kernel.port(), b"GET /big HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    try:
        assert closed_by_the_kernel_within(kernel, baseline, 2.0), fd_listing(kernel)
    finally:
        client.close()


def test_a_slow_reader_that_keeps_reading_gets_the_whole_response(start_kernel):
    # 16 MB read at about 5 MB/s: several send_timeouts in total, and the socket buffers drain (which is when the
    # kernel can write again) well within one.
    size = 16 << 20
    kernel = start_kernel(f"""
http:
  listen: "127.0.0.1:0"
  send_timeout: 2s
routing:
  servers:
    - locations:
        - location: /huge
          return: 200 "{"h" * size}"
""")
    client = socket.create_connection(("127.0.0.1", kernel.port()))
    client.sendall(b"GET /huge HTTP/1.0\r\n\r\n")
    client.settimeout(10)
    received = bytearray()
    try:
        while True:
            part = client.recv(65536)
            if not part:
                break
            received += part
            time.sleep(0.01)
    finally:
        client.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    assert len(body) == size
    assert "client timed out" not in kernel.log_text()


def test_uwsgi_peer_that_stops_reading_is_disconnected_after_send_timeout(start_kernel):
    kernel = start_kernel(CONFIG)
    baseline = open_sockets(kernel)
    mark = log_mark(kernel)
    client = stalled_client(kernel.port("uwsgi"), uwsgi_packet("/big"))
    try:
        assert closed_by_the_kernel_within(kernel, baseline, 2.0), fd_listing(kernel)
        wait_for_info(kernel, "client timed out (110: Connection timed out) while sending response to client, "
                              "client: 127.0.0.1, server: 127.0.0.1:0", since=mark)
    finally:
        client.close()
