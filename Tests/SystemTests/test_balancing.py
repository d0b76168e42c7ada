"""upstreams: (Modules/Balancing) on the real binary: a kernel edge balancing uwsgi_pass across kernel workers."""
import collections
import http.client
import subprocess

from peer_support import closed_port

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


# hash KEY [consistent]: the same keys reach the same workers through the kernel edge as through nginx itself.

HASH_EDGE = """
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
upstreams:
  backend:
    method: {method}
    servers:
{servers}
routing:
  servers:
    - locations:
        - location: /
          uwsgi_pass: backend
"""

NGINX_HASH = """
daemon off;
worker_processes 1;
error_log {prefix}/error.log;
pid {prefix}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream backend {{
        {method};
{servers}
    }}
    server {{
        listen unix:{prefix}/nginx.sock;
        location / {{ include /etc/nginx/uwsgi_params; uwsgi_pass backend; }}
    }}
}}
"""


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: nginx listens on one, as a test may not take a fixed port."""

    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self):
        import socket
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def answer_unix(path, uri):
    conn = UnixHTTPConnection(path)
    conn.request("GET", uri)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body


def start_nginx(tmp_path, method, servers):
    import os
    import time
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    config = prefix / "nginx.conf"
    config.write_text(NGINX_HASH.format(prefix=prefix, method=method,
                                        servers="\n".join(f"        server {line};" for line in servers)))
    process = subprocess.Popen(["nginx", "-c", str(config), "-p", str(prefix)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    socket_path = str(prefix / "nginx.sock")
    deadline = time.time() + 20
    while not os.path.exists(socket_path):
        assert process.poll() is None, (prefix / "error.log").read_text()
        assert time.time() < deadline, "nginx did not start"
        time.sleep(0.02)
    return process, socket_path


def hash_setup(start_kernel, tmp_path, method):
    names = ("w1", "w2", "w3")
    workers = [start_kernel(WORKER.format(name=name), role="worker", name=f"{name}.yaml") for name in names]
    servers = [f"127.0.0.1:{workers[0].port('uwsgi')} weight=2",
               f"127.0.0.1:{workers[1].port('uwsgi')}",
               f"127.0.0.1:{workers[2].port('uwsgi')}"]
    edge = start_kernel(HASH_EDGE.format(method=method, servers="\n".join(f"      - {line}" for line in servers)),
                        role="edge", name="edge.yaml")
    nginx, socket_path = start_nginx(tmp_path, method, servers)
    return edge, nginx, socket_path


def check_hash_like_nginx(start_kernel, tmp_path, method):
    edge, nginx, socket_path = hash_setup(start_kernel, tmp_path, method)
    try:
        users = [f"user{index}" for index in range(60)]
        through_edge = {}
        for user in users:
            first = answer(edge.port(), f"/?user={user}")
            again = answer(edge.port(), f"/profile?user={user}")
            assert first[0] == 200 and again == first, (user, first, again)
            through_edge[user] = first[1]
        through_nginx = {user: answer_unix(socket_path, f"/?user={user}")[1] for user in users}
        assert through_edge == through_nginx
        # The keys spread over every worker.
        assert set(through_edge.values()) == {"w1", "w2", "w3"}, collections.Counter(through_edge.values())
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)


def test_hash_by_arg_user_sticks_to_a_worker_as_nginx_maps_it(start_kernel, tmp_path):
    check_hash_like_nginx(start_kernel, tmp_path, "hash $arg_user")


def test_consistent_hash_maps_users_as_nginx_does(start_kernel, tmp_path):
    check_hash_like_nginx(start_kernel, tmp_path, "hash $arg_user consistent")


def test_random_two_spreads_over_the_workers(start_kernel):
    edge = start_edge(start_kernel, "random two least_conn")
    counts = collections.Counter(answer(edge.port())[1] for _ in range(40))
    # Weights 3 and 1, one request at a time (every pair ties on connections): both are used.
    assert counts["w1"] + counts["w2"] == 40 and counts["w1"] > 0 and counts["w2"] > 0, counts


def test_unknown_method_and_queue_without_max_conns_are_refused(kernel_bin, tmp_path):
    for method, message in [("fastest", 'unknown balancing method "fastest"'),
                            ("hash $nosuch", 'method hash: unknown "nosuch" variable')]:
        path = tmp_path / "bad.yaml"
        path.write_text(EDGE.format(method=method, a=1, b=2, dead=3))
        result = subprocess.run([kernel_bin, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 1 and message in result.stderr, result.stderr
    path = tmp_path / "queue.yaml"
    path.write_text(EDGE.format(method="least_conn", a=1, b=2, dead=3).replace("    servers:", "    queue: 10\n    servers:"))
    result = subprocess.run([kernel_bin, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "queue needs max_conns=" in result.stderr, result.stderr


# least_queue: kernel workers report their model queue depth; the edge strips the header and balances on it.

MODEL_WORKER = """
http:
  listen: "127.0.0.1:0"
uwsgi:
  listen: "127.0.0.1:0"
inference:
  models:
    - name: slow
      path: {model}
      instances: 1
      max_queue: 1000
routing:
  servers:
    - client_max_body_size: 64m
      add_header: ["X-Worker {name} always"]
      locations:
        - location: "^~ /v2"
          inference: {{}}
"""

MODEL_EDGE = """
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
upstreams:
  models:
    method: {method}
    servers:
      - 127.0.0.1:{a}
      - 127.0.0.1:{b}
routing:
  servers:
    - client_max_body_size: 64m
      locations:
        - location: "^~ /v2"
          uwsgi_pass: models
"""


def infer_body(rows):
    """An infer request of `rows` rows in the binary tensor extension, so the model's work, not JSON, is its cost."""
    import json
    import numpy as np
    data = np.random.default_rng(rows).standard_normal((rows, 256)).astype(np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "x", "shape": [rows, 256], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(data)}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    return header, data


def post_infer(port, body):
    header, data = body
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v2/models/slow/infer", body=header + data,
                 headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status, {name.lower(): value for name, value in response.getheaders()}


def model_workers(start_kernel, tmp_path, method):
    from inference_support import make_slow_model
    model = make_slow_model(str(tmp_path / "slow.onnx"))
    workers = [start_kernel(MODEL_WORKER.format(model=model, name=name), role="worker", name=f"{name}.yaml")
               for name in ("A", "B")]
    for worker in workers:
        worker.wait_for_log("model 'slow' version 1 ready", timeout=60)
    edge = start_kernel(MODEL_EDGE.format(method=method, a=workers[0].port("uwsgi"), b=workers[1].port("uwsgi")),
                        role="edge", name="edge.yaml")
    return workers, edge


def test_queue_depth_header_reaches_the_edge_and_stops_there(start_kernel, tmp_path):
    workers, edge = model_workers(start_kernel, tmp_path, "least_queue")
    status, headers = post_infer(workers[0].port("http"), infer_body(1))
    assert status == 200 and headers.get("x-kernel-queue-depth") == "0", headers
    for _ in range(4):
        status, headers = post_infer(edge.port("http"), infer_body(1))
        assert status == 200 and headers["x-worker"] in ("A", "B"), headers
        assert "x-kernel-queue-depth" not in headers, headers


def light_requests_while_a_is_loaded(start_kernel, tmp_path, method):
    """Where 20 one-at-a-time light requests through the edge go while traffic the edge never sees (another
    edge's) keeps worker A's model queue deep."""
    import threading
    workers, edge = model_workers(start_kernel, tmp_path, method)
    heavy = infer_body(384)
    stop = threading.Event()

    def load_a():
        while not stop.is_set():
            post_infer(workers[0].port("http"), heavy)

    threads = [threading.Thread(target=load_a, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        light = infer_body(1)
        # Wait (bounded) until A's queue is deep before the edge sends anything.
        import time
        deadline = time.time() + 30
        while int(post_infer(workers[0].port("http"), light)[1]["x-kernel-queue-depth"]) < 2:
            assert time.time() < deadline, "worker A's model queue never filled"
        counts = collections.Counter()
        for _ in range(20):
            status, headers = post_infer(edge.port("http"), light)
            assert status == 200, headers
            counts[headers["x-worker"]] += 1
        return counts
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)


def test_least_queue_prefers_the_worker_whose_model_queue_is_short(start_kernel, tmp_path):
    counts = light_requests_while_a_is_loaded(start_kernel, tmp_path, "least_queue")
    # least_queue hears A's depth in A's answers and sends it little more than a probe every two seconds (a
    # report's lifetime).
    assert counts["B"] >= 16, counts


def test_least_conn_cannot_see_a_model_queue(start_kernel, tmp_path):
    # The same traffic under least_conn: one request at a time ties on connections, so A gets every other one.
    counts = light_requests_while_a_is_loaded(start_kernel, tmp_path, "least_conn")
    assert counts["A"] >= 8, counts


QUEUE_EDGE = """
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
upstreams:
  models:
    queue: {queue}
    servers:
      - 127.0.0.1:{a} max_conns=1
routing:
  servers:
    - client_max_body_size: 64m
      locations:
        - location: "^~ /v2"
          uwsgi_pass: models
"""


def concurrent_heavy_through(start_kernel, tmp_path, queue, count):
    import concurrent.futures
    workers, _ = model_workers(start_kernel, tmp_path, "least_conn")
    edge = start_kernel(QUEUE_EDGE.format(queue=queue, a=workers[0].port("uwsgi")), role="edge", name="queue-edge.yaml")
    heavy = infer_body(384)
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        statuses = list(pool.map(lambda _: post_infer(edge.port("http"), heavy)[0], range(count)))
    return edge, statuses


def test_queue_waits_for_a_server_at_max_conns(start_kernel, tmp_path):
    edge, statuses = concurrent_heavy_through(start_kernel, tmp_path, '"10 timeout=60s"', 4)
    # One at a time reaches the worker (max_conns=1); the others wait in the queue instead of failing.
    assert statuses == [200] * 4, statuses
    assert "upstream queue" not in edge.log_text()


def test_a_full_queue_answers_502(start_kernel, tmp_path):
    edge, statuses = concurrent_heavy_through(start_kernel, tmp_path, "1", 6)
    # One runs, one waits, and those arriving meanwhile find the queue full: 502, as nginx Plus answers.
    assert set(statuses) == {200, 502} and statuses.count(200) >= 2, statuses
    assert 'upstream queue is full while connecting to upstream, group: "models"' in edge.log_text()
