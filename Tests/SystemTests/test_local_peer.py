"""`local` servers of an upstream group (`--role both`): the process's own worker side answers in-process, with no
socket, balanced with remote workers like any peer."""
import subprocess

import requests

WORKER = """
uwsgi:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /v2/
          return: 200 "remote"
"""

BOTH = """
http:
  listen: "127.0.0.1:0"
uwsgi:
  listen: "unix:{sock}"
upstreams:
  models:
    servers:
      - local
      - 127.0.0.1:{remote}
routing:
  servers:
    - listen: "127.0.0.1:0"
      locations:
        - location: /v2/
          uwsgi_pass: models
    - listen: "unix:{sock}"
      locations:
        - location: /v2/
          return: 200 "local $server_protocol"
"""


def test_a_local_server_is_balanced_with_a_remote_worker(start_kernel, tmp_path):
    worker = start_kernel(WORKER, role="worker", name="worker.yaml")
    both = start_kernel(BOTH.format(sock=tmp_path / "w.sock", remote=worker.port("uwsgi")), role="both", name="both.yaml")
    answers = [requests.get(both.url("/v2/models"), timeout=10) for _ in range(10)]
    assert {r.status_code for r in answers} == {200}
    bodies = [r.text for r in answers]
    # Round robin over the two servers: the local one answers through the worker side's own location, routed as a
    # request of the uwsgi listener, without a socket between them.
    assert bodies.count("remote") == 5, bodies
    assert bodies.count("local HTTP/1.1") == 5, bodies


LOOP = """
http:
  listen: "127.0.0.1:0"
upstreams:
  self:
    servers: [local]
routing:
  servers:
    - locations:
        - location: /
          uwsgi_pass: self
uwsgi: {}
"""


def test_a_local_peer_that_routes_back_into_itself_is_a_502_not_a_loop(start_kernel):
    kernel = start_kernel(LOOP, role="both")
    response = requests.get(kernel.url("/x"), timeout=10)
    assert response.status_code == 502
    kernel.wait_for_log("local peer reached again from the worker side")


def test_a_local_server_needs_role_both(kernel_bin, tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(LOOP)
    result = subprocess.run([kernel_bin, "-t", "-c", str(path), "--role", "edge"], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "a local server needs --role both" in result.stderr, result.stderr
    assert "edge.yaml:6:" in result.stderr, result.stderr
