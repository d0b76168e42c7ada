"""upstreams: (Modules/Balancing) on the real binary: a kernel edge balancing uwsgi_pass across kernel workers."""
import collections
import http.client
import subprocess

WORKER = """
uwsgi:
  listen: "127.0.0.1:0"
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
    method: {method}
    servers:
      - 127.0.0.1:{a} weight=3
      - 127.0.0.1:{b}
      - 127.0.0.1:{dead} max_fails=1 fail_timeout=30s
routing:
  servers:
    - locations:
        - location: /
          uwsgi_pass: backend
          uwsgi_next_upstream: [error, timeout]
"""


def answer(port, path="/"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body


def closed_port():
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_edge(start_kernel, method):
    workers = [start_kernel(WORKER.format(name=name), role="worker", name=f"{name}.yaml") for name in ("w1", "w2")]
    edge = start_kernel(EDGE.format(method=method, a=workers[0].port("uwsgi"), b=workers[1].port("uwsgi"),
                                    dead=closed_port()), role="edge", name="edge.yaml")
    return edge


def test_weighted_round_robin_across_workers_skips_a_dead_server(start_kernel):
    edge = start_edge(start_kernel, "round_robin")
    counts = collections.Counter()
    for _ in range(50):
        status, body = answer(edge.port())
        assert status == 200, body
        counts[body] += 1
    # weight=3 against 1; the dead third server is tried once, fails, is retried elsewhere and marked down.
    assert counts["w1"] + counts["w2"] == 50
    assert 35 <= counts["w1"] <= 40 and 10 <= counts["w2"] <= 15, counts
    log = edge.log_text()
    assert "connect() failed (111: Connection refused)" in log
    assert 'upstream server temporarily disabled' in log and 'group: "backend"' in log


def test_ip_hash_keeps_a_client_on_one_worker(start_kernel):
    edge = start_edge(start_kernel, "ip_hash")
    bodies = {answer(edge.port())[1] for _ in range(20)}
    assert len(bodies) == 1 and bodies <= {"w1", "w2"}, bodies


def test_upstream_errors_name_their_place(kernel_bin, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(EDGE.format(method="ip_hash", a=1, b=2, dead=3).replace("weight=3", "weight=0"))
    result = subprocess.run([kernel_bin, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result
    assert ':9:9: upstreams.backend.servers[0]: upstream server: invalid weight "0"' in result.stderr, result.stderr


def test_least_conn_serves_sequential_requests_by_weight(start_kernel):
    # One request at a time: every server has none in flight, so weighted round robin breaks the tie (3:1).
    edge = start_edge(start_kernel, "least_conn")
    counts = collections.Counter(answer(edge.port())[1] for _ in range(40))
    assert counts["w1"] + counts["w2"] == 40 and counts["w1"] > 2 * counts["w2"] > 0, counts
