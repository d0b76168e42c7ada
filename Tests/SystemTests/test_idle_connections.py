"""10,000 idle keep-alive connections held by one kernel while requests on other connections still succeed (nginx's
and uWSGI's users count on idle clients costing a descriptor and a little memory, not a thread)."""
import http.client
import os
import resource
import selectors
import socket

from load_support import established_connections

IDLE = 10_000

CONFIG = """
kernel:
  pid: {workdir}/kernel.pid
  error_log: {{path: stderr, level: notice}}
  event_loop_threads: 2
  worker_rlimit_nofile: {files}
http:
  listen: "127.0.0.1:0"
  keepalive_timeout: 120s
  keepalive_requests: 1000
routing:
  servers:
    - locations:
        - location: /
          return: 200 "hello"
"""

REQUEST = b"GET /idle HTTP/1.1\r\nHost: idle\r\n\r\n"


def raise_open_file_limit(wanted):
    """This process holds the client ends: its soft limit goes up to `wanted` (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        raise AssertionError(f"the hard RLIMIT_NOFILE ({hard}) is below the {wanted} descriptors this test needs")
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return soft, hard


def exchange_on_all(sockets):
    """One request on each connection, all in flight at once; returns how many got a whole 200 answer."""
    selector = selectors.DefaultSelector()
    received = {}
    for sock in sockets:
        sock.sendall(REQUEST)
        received[sock] = b""
        selector.register(sock, selectors.EVENT_READ)
    complete = 0
    pending = len(sockets)
    while pending:
        events = selector.select(timeout=30)
        assert events, f"{pending} connections got no answer within 30 s"
        for key, _ in events:
            sock = key.fileobj
            chunk = sock.recv(4096)
            assert chunk, "a kept-alive connection was closed"
            received[sock] += chunk
            head, _, body = received[sock].partition(b"\r\n\r\n")
            if body == b"hello":
                assert head.startswith(b"HTTP/1.1 200"), head
                complete += 1
                pending -= 1
                selector.unregister(sock)
    selector.close()
    return complete


def test_ten_thousand_idle_keepalive_connections_are_held_while_others_are_served(start_kernel, tmp_path):
    files = IDLE + 2000
    previous = raise_open_file_limit(files)
    idle = []
    try:
        kernel = start_kernel(CONFIG.format(workdir=tmp_path, files=files))
        port = kernel.port()
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        # Each becomes a kept-alive connection: one request answered, then idle.
        assert exchange_on_all(idle) == IDLE
        # The kernel's ends of the connections (local port: the listener's).
        assert established_connections(port) >= IDLE

        for _ in range(50):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"hello")
            conn.close()

        # The idle ones are still open and still served.
        assert exchange_on_all(idle[::100]) == IDLE // 100
        assert established_connections(port) >= IDLE
        assert "Too many open files" not in kernel.log_text()
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, previous)
