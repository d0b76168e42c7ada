"""`server NAME:PORT resolve` with a group `resolver:` on the real binary: a DNS server on loopback (dnslib) whose
records the test changes while a kernel edge balances `uwsgi_pass` over the addresses, without a reload."""
import collections
import http.client
import subprocess
import threading

import dnslib
import pytest
from dnslib.server import BaseResolver, DNSLogger, DNSServer

WORKER = """
uwsgi:
  listen: "{address}"
routing:
  servers:
    - locations:
        - location: /
          return: 200 "{name}"
"""

EDGE = """
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
upstreams:
  backend:
    protocol: uwsgi
    resolver: 127.0.0.1:{dns} {valid}ipv6=off
    resolver_timeout: 5s
    servers:
      - app.internal:{port} resolve
routing:
  servers:
    - locations:
        - location: /
          uwsgi_pass: backend
"""


class Records(BaseResolver):
    """A name server for `app.internal` whose A records the test sets; TTL 1 s."""

    def __init__(self):
        self.lock = threading.Lock()
        self.addresses = []
        self.failing = False

    def set(self, *addresses):
        with self.lock:
            self.addresses = list(addresses)

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        with self.lock:
            addresses = list(self.addresses)
        if self.failing:
            reply.header.rcode = dnslib.RCODE.SERVFAIL
            return reply
        if name != "app.internal" or not addresses:
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
            return reply
        if request.q.qtype == dnslib.QTYPE.A:
            for address in addresses:
                reply.add_answer(dnslib.RR(request.q.qname, dnslib.QTYPE.A, ttl=1, rdata=dnslib.A(address)))
        return reply


@pytest.fixture
def name_server():
    records = Records()
    server = DNSServer(records, address="127.0.0.1", port=0, logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data"))
    server.start_thread()
    records.port = server.server.server_address[1]
    yield records
    server.stop()
    server.server.server_close()


def answer(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/")
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body


def start_workers(start_kernel):
    """Two kernel workers on one port of two loopback addresses, as two pods behind one service name."""
    first = start_kernel(WORKER.format(address="127.0.0.2:0", name="w1"), role="worker", name="w1.yaml")
    port = first.port("uwsgi")
    second = start_kernel(WORKER.format(address=f"127.0.0.3:{port}", name="w2"), role="worker", name="w2.yaml")
    return port, first, second


def test_peers_follow_the_names_records_without_a_reload(start_kernel, name_server):
    port, _, _ = start_workers(start_kernel)
    name_server.set("127.0.0.2")
    edge = start_kernel(EDGE.format(dns=name_server.port, port=port, valid=""), role="edge", name="edge.yaml")
    assert f"peer 127.0.0.2:{port} of app.internal:{port} added" in edge.log_text(), "resolved before listening"
    assert {answer(edge.port()) for _ in range(6)} == {(200, "w1")}

    # The name moves to the second pod: the edge finds out when the TTL (1 s) expires.
    name_server.set("127.0.0.3")
    edge.wait_for_log(f"peer 127.0.0.3:{port} of app.internal:{port} added")
    edge.wait_for_log(f"peer 127.0.0.2:{port} of app.internal:{port} removed")
    assert {answer(edge.port()) for _ in range(6)} == {(200, "w2")}

    # Both pods: both serve.
    name_server.set("127.0.0.2", "127.0.0.3")
    edge.wait_for_log(f"peer 127.0.0.2:{port} of app.internal:{port} added", count=2)
    counts = collections.Counter(answer(edge.port()) for _ in range(10))
    assert counts == {(200, "w1"): 5, (200, "w2"): 5}, counts
    assert "reload" not in edge.log_text().lower()


def test_a_name_that_does_not_resolve_yet_gives_502_until_it_does(start_kernel, name_server):
    port, _, _ = start_workers(start_kernel)
    edge = start_kernel(EDGE.format(dns=name_server.port, port=port, valid="valid=1s "), role="edge", name="edge.yaml")
    assert "app.internal could not be resolved (3: Host not found)" in edge.log_text()
    status, body = answer(edge.port())
    assert status == 502 and "no live upstreams" in body, (status, body)
    assert 'no live upstreams while connecting to upstream' in edge.log_text()

    name_server.set("127.0.0.3")
    edge.wait_for_log(f"peer 127.0.0.3:{port} of app.internal:{port} added")
    assert answer(edge.port()) == (200, "w2")

    # The name vanishes (NXDOMAIN): nginx removes its peers.
    name_server.set()
    edge.wait_for_log(f"peer 127.0.0.3:{port} of app.internal:{port} removed")
    assert answer(edge.port())[0] == 502


def test_a_name_that_fails_to_resolve_keeps_its_last_peers(start_kernel, name_server):
    port, _, _ = start_workers(start_kernel)
    name_server.set("127.0.0.2")
    edge = start_kernel(EDGE.format(dns=name_server.port, port=port, valid="").replace("5s", "1s"),
                        role="edge", name="edge.yaml")
    assert answer(edge.port()) == (200, "w1")
    name_server.failing = True
    edge.wait_for_log("app.internal could not be resolved (2: Server failure)", count=2)
    assert answer(edge.port()) == (200, "w1")
    assert "removed" not in edge.log_text()


def test_resolve_errors_name_their_place(kernel_bin, tmp_path):
    path = tmp_path / "bad.yaml"
    without_resolver = EDGE.format(dns=53, port=6666, valid="").replace("    resolver: 127.0.0.1:53 ipv6=off\n", "")
    path.write_text(without_resolver)
    result = subprocess.run([kernel_bin, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and ":8:23: upstreams.backend.resolver_timeout: resolver_timeout needs a resolver" \
        in result.stderr, result.stderr

    path.write_text(without_resolver.replace("    resolver_timeout: 5s\n", ""))
    result = subprocess.run([kernel_bin, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result
    assert ':9:9: upstreams.backend.servers[0]: no resolver defined to resolve app.internal:6666 in upstream "backend"' \
        in result.stderr, result.stderr

    path.write_text(EDGE.format(dns=53, port=6666, valid="valid=0s "))
    result = subprocess.run([kernel_bin, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and ':8:15: upstreams.backend.resolver: resolver: invalid valid "0s"' in result.stderr, \
        result.stderr

    path.write_text(EDGE.format(dns=53, port=6666, valid="").replace("app.internal:6666 resolve", "unix:/x.sock resolve"))
    result = subprocess.run([kernel_bin, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "resolve needs a host name" in result.stderr, result.stderr


HTTP_WORKER = """
http:
  listen: "{address}"
routing:
  servers:
    - locations:
        - location: /
          return: 200 "{name}"
"""

HTTP_EDGE = """
http:
  listen: "127.0.0.1:0"
upstreams:
  backend:
    protocol: http
    keepalive: 4
    resolver: 127.0.0.1:{dns} ipv6=off
    servers:
      - app.internal:{port} resolve
routing:
  servers:
    - locations:
        - location: /
          proxy_pass: http://backend
"""


def test_proxy_pass_follows_the_records_too_with_a_keepalive_pool(start_kernel, name_server):
    """The same group machinery behind `proxy_pass`: a peer the name stops having takes no new request, even
    with idle pooled connections to it."""
    first = start_kernel(HTTP_WORKER.format(address="127.0.0.2:0", name="w1"), role="worker", name="w1.yaml")
    port = first.port("http")
    start_kernel(HTTP_WORKER.format(address=f"127.0.0.3:{port}", name="w2"), role="worker", name="w2.yaml")
    name_server.set("127.0.0.2")
    edge = start_kernel(HTTP_EDGE.format(dns=name_server.port, port=port), role="edge", name="edge.yaml")
    assert {answer(edge.port()) for _ in range(6)} == {(200, "w1")}
    name_server.set("127.0.0.3")
    edge.wait_for_log(f"peer 127.0.0.2:{port} of app.internal:{port} removed")
    assert {answer(edge.port()) for _ in range(6)} == {(200, "w2")}
