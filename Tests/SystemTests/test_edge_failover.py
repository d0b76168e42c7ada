"""Failover of a kernel edge's `proxy_pass` to an `upstreams:` group of two kernel workers over HTTP: one worker
killed while `wrk` runs through the edge, brought back on its port, a worker that hangs, every worker down."""
import calendar
import collections
import http.client
import json
import re
import signal
import time

from load_support import WrkRun
from peer_support import closed_port, HangingBackend

WORKER = """
http:
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
upstreams:
  backend:
    protocol: http
    keepalive: 8
    servers:
{servers}
routing:
  servers:
    - locations:
        - location: /
          proxy_pass: http://backend
          proxy_read_timeout: 1s
"""


def edge_yaml(servers):
    return EDGE.format(servers="\n".join(f"      - {server}" for server in servers))


def answer(port, path="/"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body


def wait_for(predicate, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def refusal_times(edge, port):
    """When (seconds of the log's clock) the edge's connects to `port` were refused."""
    times = []
    for line in edge.log_text().splitlines():
        if "connect() failed (111: Connection refused)" in line and f'upstream: "http://127.0.0.1:{port}"' in line:
            stamp = time.strptime(line[:19], "%Y/%m/%d %H:%M:%S")
            times.append(calendar.timegm(stamp))
    return times


def start_workers(start_kernel, names=("w1", "w2")):
    return [start_kernel(WORKER.format(address="127.0.0.1:0", name=name), role="worker", name=f"{name}.yaml")
            for name in names]


def test_a_worker_killed_under_load_loses_no_request_and_comes_back(start_kernel):
    workers = start_workers(start_kernel)
    ports = [worker.port() for worker in workers]
    edge = start_kernel(edge_yaml([f"127.0.0.1:{port} max_fails=1 fail_timeout=1s" for port in ports]), role="edge",
                        name="edge.yaml")
    assert collections.Counter(answer(edge.port()) for _ in range(4)) == {(200, "w1"): 2, (200, "w2"): 2}

    wrk = WrkRun(f"http://127.0.0.1:{edge.port()}/", edge.port(), connections=8)
    wrk.wait_until_loaded()
    workers[0].killed = True
    workers[0].process.send_signal(signal.SIGKILL)
    workers[0].process.wait(10)
    # In nginx's words for what the failing attempt was doing: a refused connect, or a request the kill cut off.
    wait_for(lambda: re.search(r'upstream server temporarily disabled while (connecting to upstream|reading response '
                               rf'header from upstream|reading upstream), upstream: "127\.0\.0\.1:{ports[0]}"',
                               edge.log_text()), "the dead worker disabled")
    # After fail_timeout (1s) the dead worker is tried again under the load, fails, and is disabled again; the
    # requests that tried it are passed to w2. The log's clock has whole seconds: a refusal stamped two seconds
    # after the first is one after fail_timeout.
    # (The first failure may be a request the kill cut off rather than a refused connect.)
    wait_for(lambda: refusal_times(edge, ports[0]), "a connect to the dead worker refused")
    first = refusal_times(edge, ports[0])[0]
    wait_for(lambda: refusal_times(edge, ports[0])[-1] >= first + 2, "the dead worker to be tried after fail_timeout")
    requests, output = wrk.finish()
    assert requests > 0, output
    assert "Non-2xx" not in output, output
    assert "Socket errors" not in output, output

    # The worker comes back on its port: once fail_timeout is over, requests reach it again.
    start_kernel(WORKER.format(address=f"127.0.0.1:{ports[0]}", name="w1-again"), role="worker", name="w1-again.yaml")
    wait_for(lambda: (200, "w1-again") in [answer(edge.port()) for _ in range(4)], "the restarted worker to serve")
    served = collections.Counter(answer(edge.port()) for _ in range(10))
    assert set(served) == {(200, "w1-again"), (200, "w2")}, served
    assert "no live upstreams" not in edge.log_text()
    # wrk's connections reset when it was interrupted are logged in nginx's words (`recv() failed (104: ...)`).
    assert "(errno: " not in edge.log_text(), edge.log_text()


def test_a_hanging_worker_is_a_504_alone_and_passed_over_beside_another(start_kernel):
    hanging = HangingBackend()
    try:
        alone = start_kernel(edge_yaml([f"127.0.0.1:{hanging.port}"]), role="edge", name="alone.yaml")
        status, body = answer(alone.port())
        assert status == 504, body
        alone.wait_for_log("upstream timed out (110: Connection timed out) while reading response header from upstream")
        assert f'upstream: "http://127.0.0.1:{hanging.port}/"' in alone.log_text() or \
            f'upstream: "http://127.0.0.1:{hanging.port}"' in alone.log_text(), alone.log_text()

        worker = start_workers(start_kernel, ("w2",))[0]
        paired = start_kernel(edge_yaml([f"127.0.0.1:{hanging.port} max_fails=1 fail_timeout=30s",
                                         f"127.0.0.1:{worker.port()}"]), role="edge", name="paired.yaml")
        # `proxy_next_upstream` is `error timeout` by default: the GET that timed out is sent to w2.
        served = collections.Counter(answer(paired.port()) for _ in range(4))
        assert served == {(200, "w2"): 4}, served
        log = paired.wait_for_log("upstream timed out (110: Connection timed out) while reading response header")
        assert log.count("upstream timed out") == 1, log
        assert 'upstream server temporarily disabled while reading response header from upstream, ' \
            f'upstream: "127.0.0.1:{hanging.port}"' in log, log
    finally:
        hanging.close()


def test_every_worker_down_is_a_502_naming_the_group(start_kernel):
    dead = [closed_port(), closed_port()]
    edge = start_kernel(edge_yaml([f"127.0.0.1:{port} fail_timeout=30s" for port in dead]), role="edge")
    # The first request tries both and fails with the last connect error; both are then disabled.
    status, body = answer(edge.port())
    assert status == 502, body
    log = edge.wait_for_log("connect() failed (111: Connection refused)", count=2)
    for port in dead:
        assert f'upstream server temporarily disabled while connecting to upstream, upstream: "127.0.0.1:{port}", ' \
            f'group: "backend"' in log, log
    # Within fail_timeout no peer is left: 502 at once with nginx's words and the group.
    status, body = answer(edge.port(), "/again")
    assert status == 502, body
    assert json.loads(body) == {"error": "no live upstreams in upstream \"backend\""}
    log = edge.wait_for_log("no live upstreams while connecting to upstream")
    line = [line for line in log.splitlines() if "no live upstreams while connecting" in line][0]
    assert "[error]" in line and 'request: "GET /again HTTP/1.1"' in line and 'upstream: "http://backend"' in line, line
    assert log.count("connect() failed (111: Connection refused)") == 2, log


CHECKED_WORKER = """
http:
  listen: "{address}"
routing:
  servers:
    - locations:
        - location: = /healthz
          return: 200 "ok"
        - location: /
          return: 200 "{name}"
"""

CHECKED_EDGE = """
http:
  listen: "127.0.0.1:0"
upstreams:
  backend:
    protocol: http
    keepalive: 8
    health_check: {{interval: 200ms, uri: /healthz, status: 200-299, rise: 2, fall: 2, timeout: 1s}}
    servers: [127.0.0.1:{a}, 127.0.0.1:{b}]
routing:
  servers:
    - locations:
        - location: /
          proxy_pass: http://backend
"""


def test_health_checks_over_http_take_a_stopped_worker_out_and_back(start_kernel):
    workers = [start_kernel(CHECKED_WORKER.format(address="127.0.0.1:0", name=name), role="worker",
                            name=f"{name}.yaml") for name in ("w1", "w2")]
    ports = [worker.port() for worker in workers]
    edge = start_kernel(CHECKED_EDGE.format(a=ports[0], b=ports[1]), role="edge", name="edge.yaml")
    assert collections.Counter(answer(edge.port()) for _ in range(4)) == {(200, "w1"): 2, (200, "w2"): 2}

    workers[0].stop()
    edge.wait_for_log(f"peer 127.0.0.1:{ports[0]} is unhealthy after 2 failed health checks of /healthz")
    assert f'request: "GET /healthz HTTP/1.1", upstream: "http://127.0.0.1:{ports[0]}"' in edge.log_text()
    # The checks took it out: no request goes to it, none fails, none is retried.
    before = edge.log_text().count("while connecting to upstream, client: 127.0.0.1")
    assert collections.Counter(answer(edge.port()) for _ in range(6)) == {(200, "w2"): 6}
    assert edge.log_text().count("while connecting to upstream, client: 127.0.0.1") == before

    start_kernel(CHECKED_WORKER.format(address=f"127.0.0.1:{ports[0]}", name="w1-again"), role="worker",
                 name="w1-again.yaml")
    edge.wait_for_log(f"peer 127.0.0.1:{ports[0]} is healthy again after 2 passed health checks of /healthz")
    assert collections.Counter(answer(edge.port()) for _ in range(4)) == {(200, "w1-again"): 2, (200, "w2"): 2}
