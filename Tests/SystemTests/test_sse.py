"""Server-sent events through proxy_pass: an upstream that sends one event every 100 ms must reach the client one
event at a time, not in one piece at the end, with `proxy_buffering off` and with an upstream's
`X-Accel-Buffering: no`."""
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

EVENTS = 6
INTERVAL = 0.1


class EventSource:
    """An HTTP/1.1 server that answers every request with EVENTS server-sent events, INTERVAL apart, chunked;
    `/accel` adds `X-Accel-Buffering: no`."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                if self.path.startswith("/accel"):
                    self.send_header("X-Accel-Buffering", "no")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(EVENTS):
                    event = b"data: event %d\n\n" % i
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                    time.sleep(INTERVAL)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def events():
    source = EventSource()
    yield source
    source.close()


CONFIG = """
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /unbuffered/
          proxy_pass: http://127.0.0.1:{port}/
          proxy_buffering: off
        - location: /
          proxy_pass: http://127.0.0.1:{port}
"""


def arrival_times(port, path):
    """Sends a GET and returns (head, [time each event's text was first seen]), reading the raw bytes as they come."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: sse.test\r\nAccept: text/event-stream\r\n\r\n".encode())
    data = b""
    seen = []
    while True:
        part = sock.recv(65536)
        now = time.monotonic()
        if not part:
            break
        data += part
        while len(seen) < EVENTS and b"data: event %d\n\n" % len(seen) in data:
            seen.append(now)
        if data.endswith(b"0\r\n\r\n"):
            break
    sock.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return head, seen


@pytest.mark.parametrize("path", ["/unbuffered/stream", "/accel"])
def test_events_arrive_one_by_one(start_kernel, events, path):
    kernel = start_kernel(CONFIG.format(port=events.port), role="edge")
    head, seen = arrival_times(kernel.port(), path)
    assert head.startswith("HTTP/1.1 200"), head
    assert "transfer-encoding: chunked" in head.lower(), head
    assert "x-accel-buffering" not in head.lower(), head
    assert len(seen) == EVENTS, seen
    gaps = [later - earlier for earlier, later in zip(seen, seen[1:])]
    # The upstream spaces them 100 ms apart: were they held back, they would arrive together at the end. The
    # margins are wide (a busy machine may bunch two), but most must come apart and the whole spread must show.
    assert seen[-1] - seen[0] >= (EVENTS - 1) * INTERVAL * 0.5, gaps
    assert sum(1 for gap in gaps if gap >= INTERVAL * 0.3) >= len(gaps) - 2, gaps
