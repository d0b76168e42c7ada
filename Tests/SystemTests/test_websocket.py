"""A WebSocket echo through the kernel edge: `proxy_pass` with nginx's three lines for WebSocket
(`proxy_http_version 1.1`, `proxy_set_header Upgrade $http_upgrade`, `proxy_set_header Connection "upgrade"`) tunnels
the upgraded connection to a real `websockets` server; a location without them sends no `Upgrade` upstream, so the
server refuses the handshake as it refuses any plain HTTP request (426), as it does behind nginx."""
import os
import socket
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import serve


class EchoBackend:
    """A threaded `websockets` server on 127.0.0.1 port 0 that echoes every message. It records the headers of each
    handshake it was sent, the messages it received, and when a connection ended; the text message "close please"
    makes it close the connection itself (code 1000, reason "bye")."""

    def __init__(self):
        self.handshakes = []
        self.received = []
        self.closed = threading.Event()
        self.lock = threading.Lock()

        def process_request(connection, request):
            with self.lock:
                headers = {k.lower(): v for k, v in request.headers.raw_items()}
                headers[":port"] = connection.remote_address[1]
                self.handshakes.append(headers)
            return None

        def echo(websocket):
            try:
                for message in websocket:
                    with self.lock:
                        self.received.append(message)
                    if message == "close please":
                        websocket.close(1000, "bye")
                        break
                    websocket.send(message)
            finally:
                self.closed.set()

        self.server = serve(echo, "127.0.0.1", 0, process_request=process_request, max_size=None,
                            compression=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received_count(self):
        with self.lock:
            return len(self.received)

    def close(self):
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture
def backend():
    server = EchoBackend()
    yield server
    server.close()


CONFIG = """
http:
  listen: "127.0.0.1:0"
upstreams:
  pooled:
    protocol: http
    keepalive: 4
    servers: [127.0.0.1:{port}]
routing:
  servers:
    - access_log: {{path: {log}, format: combined}}
      locations:
        - location: /ws/
          proxy_pass: http://127.0.0.1:{port}
          proxy_http_version: "1.1"
          proxy_set_header:
            Upgrade: $http_upgrade
            Connection: upgrade
          proxy_read_timeout: 30s
        - location: /plain/
          proxy_pass: http://127.0.0.1:{port}
        - location: /pooled/
          proxy_pass: http://pooled
          proxy_set_header:
            Upgrade: $http_upgrade
            Connection: upgrade
"""


def start(start_kernel, backend, tmp_path):
    log = os.path.join(str(tmp_path), "access.log")
    kernel = start_kernel(CONFIG.format(port=backend.port, log=log), role="edge")
    return kernel, log


def access_lines(log):
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [line for line in f if line.strip()]


def wait_for(predicate, what, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def ws_url(kernel, path):
    return f"ws://127.0.0.1:{kernel.port()}{path}"


def test_text_and_binary_messages_cross_both_ways(start_kernel, backend, tmp_path):
    kernel, log = start(start_kernel, backend, tmp_path)
    with connect(ws_url(kernel, "/ws/echo"), max_size=None, compression=None, open_timeout=10) as ws:
        for message in ["hello", "ünïcödé ✓", "x" * 70000]:
            ws.send(message)
            assert ws.recv(timeout=10) == message
        for message in [b"\x00\x01\x02\xff", bytes(range(256)) * 300]:
            ws.send(message)
            assert ws.recv(timeout=10) == message
    handshake = backend.handshakes[0]
    assert handshake["upgrade"] == "websocket"
    assert handshake["connection"] == "upgrade"
    assert "sec-websocket-key" in handshake and handshake["sec-websocket-version"] == "13"
    # The client's close ends the backend's connection and the tunnel: its access line is written with 101.
    assert backend.closed.wait(10)
    wait_for(lambda: len(access_lines(log)) == 1, "the tunnel's access line")
    line = access_lines(log)[0]
    assert '"GET /ws/echo HTTP/1.1" 101 ' in line, line


def test_megabyte_messages_with_backpressure(start_kernel, backend, tmp_path):
    kernel, _ = start(start_kernel, backend, tmp_path)
    messages = [os.urandom(1 << 20) for _ in range(12)]
    with connect(ws_url(kernel, "/ws/big"), max_size=None, compression=None, open_timeout=10) as ws:
        failure = []

        def send_all():
            try:
                for message in messages:
                    ws.send(message)
            except Exception as error:  # reported by the main thread
                failure.append(error)

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        # The client reads nothing until the backend has echoed a few: the echoes fill every buffer on the way
        # back, the tunnel holds its reads, and the sender is held back in turn. Nothing is lost or reordered.
        wait_for(lambda: backend.received_count() >= 2, "the backend to receive two messages", timeout=60)
        for expected in messages:
            got = ws.recv(timeout=60)
            assert got == expected
        sender.join(60)
        assert not failure, failure
        ws.send("after")
        assert ws.recv(timeout=10) == "after"


def test_the_backend_closing_ends_the_tunnel(start_kernel, backend, tmp_path):
    kernel, log = start(start_kernel, backend, tmp_path)
    with connect(ws_url(kernel, "/ws/server-closes"), open_timeout=10) as ws:
        ws.send("one")
        assert ws.recv(timeout=10) == "one"
        ws.send("close please")
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=10)
        assert ws.close_code == 1000 and ws.close_reason == "bye"
    wait_for(lambda: len(access_lines(log)) == 1, "the tunnel's access line")
    assert '"GET /ws/server-closes HTTP/1.1" 101 ' in access_lines(log)[0]


def test_the_client_closing_ends_the_tunnel(start_kernel, backend, tmp_path):
    kernel, log = start(start_kernel, backend, tmp_path)
    with connect(ws_url(kernel, "/ws/client-closes"), open_timeout=10) as ws:
        ws.send("one")
        assert ws.recv(timeout=10) == "one"
        ws.close(1000, "done")
        assert ws.close_code == 1000
    assert backend.closed.wait(10)
    wait_for(lambda: len(access_lines(log)) == 1, "the tunnel's access line")
    assert '"GET /ws/client-closes HTTP/1.1" 101 ' in access_lines(log)[0]
    # The edge still serves: a second tunnel works.
    with connect(ws_url(kernel, "/ws/again"), open_timeout=10) as again:
        again.send("two")
        assert again.recv(timeout=10) == "two"


def test_a_location_without_the_upgrade_lines_does_not_tunnel(start_kernel, backend, tmp_path):
    kernel, log = start(start_kernel, backend, tmp_path)
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(kernel, "/plain/echo"), open_timeout=10)
    # nginx sends no Upgrade without `proxy_set_header Upgrade`: the server answers a plain request with 426.
    assert refused.value.response.status_code == 426
    handshake = backend.handshakes[0]
    assert "upgrade" not in handshake
    assert handshake["connection"] == "close"
    wait_for(lambda: len(access_lines(log)) == 1, "the access line")
    assert '"GET /plain/echo HTTP/1.1" 426 ' in access_lines(log)[0]


class SwitchingBackend:
    """A raw server that answers any request head with `101 Switching Protocols` (whether it was asked to switch or
    not) and then echoes bytes: a backend no `Upgrade` header decides for. Records each head it read."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.heads = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                part = conn.recv(65536)
                if not part:
                    return
                data += part
            head, rest = data.split(b"\r\n\r\n", 1)
            self.heads.append(head.decode("latin-1"))
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n" + rest)
            while True:
                part = conn.recv(65536)
                if not part:
                    return
                conn.sendall(part)

    def close(self):
        self.sock.close()


def upgrade_request(kernel, path):
    client = socket.create_connection(("127.0.0.1", kernel.port()), timeout=10)
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: edge.test\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        part = client.recv(65536)
        assert part, data
        data += part
    head, rest = data.split(b"\r\n\r\n", 1)
    return client, head.decode("latin-1"), rest


def test_a_101_to_a_request_sent_without_upgrade_is_refused(start_kernel, tmp_path):
    switching = SwitchingBackend()
    try:
        kernel, _ = start(start_kernel, switching, tmp_path)
        # Through the WebSocket location the client's Upgrade goes upstream, and the 101 opens the tunnel.
        client, head, rest = upgrade_request(kernel, "/ws/raw")
        with client:
            assert head.startswith("HTTP/1.1 101 "), head
            assert "upgrade: echo" in head.lower() and "connection: upgrade" in head.lower(), head
            client.sendall(b"ping")
            echoed = rest
            while len(echoed) < 4:
                echoed += client.recv(65536)
            assert echoed == b"ping"
        assert "upgrade: echo" in switching.heads[0].lower(), switching.heads[0]
        # Through the plain location the client's Upgrade (hop-by-hop) is not sent: the upstream was not asked to
        # switch, so its 101 is an invalid answer (502), never a tunnel.
        client, head, _ = upgrade_request(kernel, "/plain/raw")
        client.close()
        assert head.startswith("HTTP/1.1 502 "), head
        assert "upgrade" not in switching.heads[1].lower(), switching.heads[1]
        kernel.wait_for_log('upstream sent "101 Switching Protocols" to a request without "Upgrade" while reading '
                            'response header from upstream')
    finally:
        switching.close()


def test_a_keepalive_group_tunnels_and_never_pools_the_tunnel(start_kernel, backend, tmp_path):
    kernel, log = start(start_kernel, backend, tmp_path)
    for round_number in range(3):
        with connect(ws_url(kernel, f"/pooled/{round_number}"), open_timeout=10) as ws:
            ws.send(f"message {round_number}")
            assert ws.recv(timeout=10) == f"message {round_number}"
    # Each handshake went upstream with the upgrade lines, and each tunnel had its own connection (an upgraded
    # connection never returns to the pool), all three ending with their 101 lines.
    assert len(backend.handshakes) == 3
    assert all(h["upgrade"] == "websocket" and h["connection"] == "upgrade" for h in backend.handshakes)
    assert len({h[":port"] for h in backend.handshakes}) == 3, backend.handshakes
    wait_for(lambda: len(access_lines(log)) == 3, "three access lines")
    assert all(" 101 " in line for line in access_lines(log)), access_lines(log)
