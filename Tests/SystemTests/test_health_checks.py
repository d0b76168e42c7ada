"""Active health checks (`health_check:` of an `upstreams:` group) on the real binary: a kernel edge checks two
kernel workers over uwsgi, takes one out when its health URI fails or it stops, and back once it passes again."""
import collections
import http.client
import os
import subprocess

from conftest import with_core_section

WORKER = """
uwsgi:
  listen: "{address}"
routing:
  servers:
    - locations:
        - location: = /healthz
          return: {health}
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
    health_check: {{interval: 200ms, uri: /healthz, status: 200-299, rise: 2, fall: 2, timeout: 1s}}
    servers:
      - 127.0.0.1:{a}
      - 127.0.0.1:{b}
routing:
  servers:
    - locations:
        - location: /
          uwsgi_pass: backend
"""


def answer(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/")
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body


def start(start_kernel):
    workers = [start_kernel(WORKER.format(address="127.0.0.1:0", name=name, health='200 "ok"'), role="worker",
                            name=f"{name}.yaml") for name in ("w1", "w2")]
    ports = [worker.port("uwsgi") for worker in workers]
    edge = start_kernel(EDGE.format(a=ports[0], b=ports[1]), role="edge", name="edge.yaml")
    # The first round of checks ends before the edge listens, and a first pass is enough (nginx Plus's mandatory).
    for port in ports:
        assert f"peer 127.0.0.1:{port} is healthy after 1 passed health check of /healthz" in edge.log_text()
    return edge, workers, ports


def rewrite(worker, text):
    """Writes a worker's new configuration (with its own pid file) and reloads it."""
    name = os.path.basename(worker.config_path).rsplit(".", 1)[0]
    with open(worker.config_path, "w") as f:
        f.write(with_core_section(text, worker.workdir, pid=f"{name}.pid"))
    result = worker.control("reload")
    assert result.returncode == 0, result


def served(edge, count=10):
    return collections.Counter(answer(edge.port()) for _ in range(count))


def test_a_peer_whose_health_uri_fails_is_avoided_until_it_passes_rise_checks(start_kernel):
    edge, workers, ports = start(start_kernel)
    assert served(edge) == {(200, "w1"): 5, (200, "w2"): 5}

    # w2 keeps answering "/" but its health URI fails: the checks, not the requests, take it out.
    rewrite(workers[1], WORKER.format(address="127.0.0.1:0", name="w2", health="503"))
    edge.wait_for_log(f"peer 127.0.0.1:{ports[1]} is unhealthy after 2 failed health checks of /healthz (status 503)")
    assert served(edge) == {(200, "w1"): 10}

    rewrite(workers[1], WORKER.format(address="127.0.0.1:0", name="w2", health="204"))
    edge.wait_for_log(f"peer 127.0.0.1:{ports[1]} is healthy again after 2 passed health checks of /healthz")
    assert served(edge) == {(200, "w1"): 5, (200, "w2"): 5}
    assert "[warn]" in edge.log_text() and "[notice]" in edge.log_text()


def test_a_stopped_peer_is_taken_out_and_a_restarted_one_comes_back(start_kernel):
    edge, workers, ports = start(start_kernel)
    workers[0].stop()
    edge.wait_for_log(f"peer 127.0.0.1:{ports[0]} is unhealthy after 2 failed health checks of /healthz "
                      "(no valid answer, see the error above)")
    assert f'connect() failed (111: Connection refused) while connecting to upstream, client: -, server: , ' \
        f'request: "GET /healthz HTTP/1.1", upstream: "uwsgi://127.0.0.1:{ports[0]}"' in edge.log_text()
    # No request is sent to the stopped worker: none fails, none needs a retry.
    assert served(edge) == {(200, "w2"): 10}

    start_kernel(WORKER.format(address=f"127.0.0.1:{ports[0]}", name="w1-again", health='200 "ok"'), role="worker",
                 name="w1-again.yaml")
    edge.wait_for_log(f"peer 127.0.0.1:{ports[0]} is healthy again after 2 passed health checks of /healthz")
    assert served(edge) == {(200, "w1-again"): 5, (200, "w2"): 5}


def test_health_check_errors_name_their_place(kernel_bin, tmp_path):
    path = tmp_path / "bad.yaml"

    def check(text):
        path.write_text(text)
        result = subprocess.run([kernel_bin, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 1, result
        return result.stderr

    edge = EDGE.format(a=1, b=2)
    assert (':8:19: upstreams.backend.health_check: upstream "backend": health_check needs the group\'s protocol'
            in check(edge.replace("    protocol: uwsgi\n", "\n")))
    assert ":7:15: upstreams.backend.protocol: expected one of" in check(edge.replace("protocol: uwsgi", "protocol: grpc"))
    assert ('upstreams.backend.health_check.status: expected a status from 100 to 599 or a range such as 200-399, '
            'found "299-200"') in check(edge.replace("200-299", "299-200"))
    assert "upstreams.backend.health_check.ris: unknown key" in check(edge.replace("rise: 2", "ris: 2"))
    stderr = check(edge.replace("protocol: uwsgi", "protocol: http"))
    assert ':16:23: routing.servers[0].locations[0].uwsgi_pass: upstream "backend" speaks http (its protocol:), not uwsgi' \
        in stderr, stderr


def test_a_reloaded_edge_checks_again_before_it_takes_over_and_the_old_checks_stop(start_kernel):
    edge, workers, ports = start(start_kernel)
    assert edge.control("reload").returncode == 0
    edge.wait_for_log("configuration reloaded (generation 2)")
    text = edge.log_text()
    reloaded = text[text.index("reloading configuration"):]
    for port in ports:
        assert f"peer 127.0.0.1:{port} is healthy after 1 passed health check of /healthz" in reloaded, reloaded
    assert served(edge) == {(200, "w1"): 5, (200, "w2"): 5}
    # Only the new generation checks now: a stopped worker is reported once, not by two generations.
    workers[0].stop()
    edge.wait_for_log(f"peer 127.0.0.1:{ports[0]} is unhealthy after 2 failed health checks")
    edge.wait_for_log("connect() failed (111: Connection refused) while connecting to upstream", count=4)
    assert edge.log_text().count(f"peer 127.0.0.1:{ports[0]} is unhealthy") == 1


VHOST_WORKER = """
uwsgi:
  listen: "127.0.0.1:0"
routing:
  servers:
    - server_name: api.internal
      locations:
        - location: = /healthz
          return: 200 "ok"
    - server_name: other
      default_server: true
      locations:
        - location: = /healthz
          return: 503 "not this host"
"""

VHOST_EDGE = """
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
upstreams:
  checked:
    protocol: uwsgi
    health_check: {{interval: 200ms, uri: /healthz{host}}}
    servers:
      - 127.0.0.1:{port}
routing:
  servers:
    - locations:
        - location: /
          uwsgi_pass: checked
"""


def test_the_checks_host_reaches_a_backend_that_routes_by_host(start_kernel):
    worker = start_kernel(VHOST_WORKER, role="worker", name="worker.yaml")
    port = worker.port("uwsgi")
    named = start_kernel(VHOST_EDGE.format(port=port, host=", host: api.internal"), role="edge", name="named.yaml")
    assert f"peer 127.0.0.1:{port} is healthy after 1 passed health check of /healthz" in named.log_text()
    # Without `host` the checks ask for the group's name, which this backend's default server answers 503.
    unnamed = start_kernel(VHOST_EDGE.format(port=port, host=""), role="edge", name="unnamed.yaml")
    assert f"peer 127.0.0.1:{port} is unhealthy" in unnamed.log_text()
