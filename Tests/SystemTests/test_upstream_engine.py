"""The upstream engine on the real binary, through `uwsgi_pass`: `uwsgi_next_upstream_tries`,
`uwsgi_next_upstream_timeout`, every peer down, and the keepalive keys of an `upstreams:` group."""
import http.client
import json
import subprocess
from peer_support import closed_port, HangingBackend


def get(port, path="/"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body


def edge_yaml(servers, location_extra="", group_extra=""):
    lines = "\n".join(f"      - {server}" for server in servers)
    return f"""
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
upstreams:
  backend:
    servers:
{lines}
{group_extra}
routing:
  servers:
    - locations:
        - location: /
          uwsgi_pass: backend
{location_extra}
"""


def test_next_upstream_tries_limits_the_peers_tried(start_kernel):
    dead = [f"127.0.0.1:{closed_port()} max_fails=0" for _ in range(3)]
    edge = start_kernel(edge_yaml(dead, "          uwsgi_next_upstream_tries: 2"), role="edge", name="edge.yaml")
    status, body = get(edge.port())
    assert status == 502, body
    log = edge.wait_for_log("connect() failed (111: Connection refused)", count=2)
    # Two peers of the three, then the answer: no third connect.
    assert log.count("connect() failed (111: Connection refused)") == 2, log


def test_without_tries_every_peer_is_tried_once(start_kernel):
    dead = [f"127.0.0.1:{closed_port()} max_fails=0" for _ in range(3)]
    edge = start_kernel(edge_yaml(dead), role="edge", name="edge.yaml")
    status, _ = get(edge.port())
    assert status == 502
    assert edge.wait_for_log("connect() failed", count=3).count("connect() failed") == 3


def test_next_upstream_timeout_stops_trying_other_peers(start_kernel):
    backends = [HangingBackend() for _ in range(3)]
    try:
        # Each peer times out after 1s; once 1.5s have passed since the first attempt no other is tried: the
        # second peer is tried (1s < 1.5s), the third is not (2s).
        servers = [f"127.0.0.1:{b.port} max_fails=0" for b in backends]
        extra = ("          uwsgi_read_timeout: 1s\n"
                 "          uwsgi_next_upstream_timeout: 1500ms")
        edge = start_kernel(edge_yaml(servers, extra), role="edge", name="edge.yaml")
        status, body = get(edge.port())
        assert status == 504, body
        assert [b.accepted for b in backends] == [1, 1, 0]
        assert edge.log_text().count("upstream timed out (110: Connection timed out)") == 2
    finally:
        for backend in backends:
            backend.close()


def test_every_peer_down_is_502_at_once_naming_the_group(start_kernel):
    dead = [f"127.0.0.1:{closed_port()} max_fails=1 fail_timeout=60s" for _ in range(2)]
    edge = start_kernel(edge_yaml(dead), role="edge", name="edge.yaml")
    # The first request fails at both peers and marks them down.
    status, _ = get(edge.port())
    assert status == 502
    edge.wait_for_log("connect() failed", count=2)
    # Now every peer is down: 502 at once, no connect, the group named in the answer and the log.
    status, body = get(edge.port())
    assert status == 502
    assert json.loads(body) == {"error": 'no live upstreams in upstream "backend"'}
    log = edge.wait_for_log("no live upstreams while connecting to upstream")
    assert log.count("connect() failed") == 2, log
    line = next(l for l in log.splitlines() if "no live upstreams" in l)
    assert '[error]' in line and 'upstream: "uwsgi://backend"' in line and 'request: "GET / HTTP/1.1"' in line, line


def check_config(kernel_bin, tmp_path, text):
    path = tmp_path / "check.yaml"
    path.write_text(text)
    return subprocess.run([kernel_bin, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)


def test_keepalive_keys_of_a_group_are_accepted(kernel_bin, tmp_path):
    text = edge_yaml(["127.0.0.1:6666"], "          uwsgi_next_upstream_tries: 3\n          uwsgi_next_upstream_timeout: 10s",
                     "    keepalive: 16\n    keepalive_timeout: 4s\n    keepalive_requests: 1000")
    result = check_config(kernel_bin, tmp_path, text)
    assert result.returncode == 0, result.stderr


def test_keepalive_timeout_without_keepalive_is_refused(kernel_bin, tmp_path):
    result = check_config(kernel_bin, tmp_path, edge_yaml(["127.0.0.1:6666"], "", "    keepalive_timeout: 4s"))
    assert result.returncode == 1, result
    assert 'upstreams.backend.keepalive_timeout: "keepalive_timeout" and "keepalive_requests" need "keepalive"' in result.stderr, result.stderr


def test_a_bad_keepalive_count_is_refused(kernel_bin, tmp_path):
    result = check_config(kernel_bin, tmp_path, edge_yaml(["127.0.0.1:6666"], "", "    keepalive: 0"))
    assert result.returncode == 1, result
    assert "upstreams.backend.keepalive" in result.stderr, result.stderr


def test_negative_tries_are_refused(kernel_bin, tmp_path):
    result = check_config(kernel_bin, tmp_path, edge_yaml(["127.0.0.1:6666"], "          uwsgi_next_upstream_tries: -1"))
    assert result.returncode == 1, result
    assert "uwsgi_next_upstream_tries" in result.stderr, result.stderr
