#!/usr/bin/env python3
"""The HTTP edge: kernel `--role edge` (`proxy_pass` to an `upstreams:` group with a keepalive pool) against nginx
(`upstream` with `keepalive`, `proxy_http_version 1.1`, `Connection ""`) in front of the same backend, in the same
run, rounds alternating.

The backend is a kernel `--role worker` with an HTTP listener answering `return 200` (one event-loop thread), the
same process for both edges. Each round runs `wrk -c64` against one edge and then the other; req/s, p99, and the CPU
each edge process (nginx: master and workers) used per request, read from /proc/PID/stat before and after. Before
measuring, each side is checked to be what it claims: its port is its process's, its answers carry its `Server`
header and the backend's body and `X-Backend` header. Prints a markdown section (bench/run.sh collects it).
"""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from common import (KERNEL_BIN, NGINX_HTTP_PREAMBLE, NGINX_HTTP_TEMP_PATHS, Stack, alternate_rounds, edge_table,  # noqa: E402
                    free_port, nginx_user_line, verify_listener, wait_port, wrk)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
DURATION = os.environ.get("BENCH_DURATION", "10s")
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
THREADS = int(os.environ.get("BENCH_EDGE_THREADS", str(os.cpu_count() or 1)))
KEEPALIVE = int(os.environ.get("BENCH_KEEPALIVE", "64"))
PATH = "/hello"
BODY = b"hello"

BACKEND_YAML = """
kernel:
  pid: {dir}/backend.pid
  error_log: {{path: {dir}/backend.log, level: warn}}
  event_loop_threads: 1
http:
  listen: 127.0.0.1:{port}
  keepalive_requests: 100000
routing:
  servers:
    - locations:
        - location: /
          return: 200 "hello"
          add_header: "X-Backend kernel-worker"
"""

EDGE_YAML = """
kernel:
  pid: {dir}/edge.pid
  error_log: {{path: {dir}/edge.log, level: warn}}
  event_loop_threads: {threads}
http:
  listen: 127.0.0.1:{port}
upstreams:
  backend:
    keepalive: {keepalive}
    servers:
      - 127.0.0.1:{backend}
routing:
  servers:
    - locations:
        - location: /
          proxy_pass: http://backend
"""

NGINX_CONF = NGINX_HTTP_PREAMBLE + "http {{\n" + NGINX_HTTP_TEMP_PATHS + """    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive {keepalive};
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def header():
    return ["## proxy_pass edge: kernel edge vs nginx, keepalive to the same backend\n",
            f"Command: `make bench` (bench/http/proxy.py; BENCH_ROUNDS={ROUNDS} BENCH_DURATION={DURATION} "
            f"BENCH_CONNECTIONS={CONNECTIONS}): kernel `--role edge` ({THREADS} event-loop threads, `upstreams:` with "
            f"`keepalive: {KEEPALIVE}`, `proxy_pass: http://backend`) and nginx (`worker_processes {THREADS}`, "
            f"`upstream` with `keepalive {KEEPALIVE}`, `proxy_http_version 1.1`, `proxy_set_header Connection \"\"`, "
            f"access_log off) in front of one kernel worker answering `return 200 \"hello\"`; `wrk -t2 "
            f"-c{CONNECTIONS} -d{DURATION}` on `{PATH}`, rounds alternating which edge goes first, after a 2 s warm-up "
            "of each. CPU per request: the edge process's utime + stime over the round (nginx: master and workers) "
            "divided by the requests answered. Each edge's port was checked to be its process's, with its `Server` "
            "header and the backend's answer.\n"]


def main():
    work = tempfile.mkdtemp(prefix="kernel-bench-proxy-")
    stack = Stack(work)
    try:
        backend_port, edge_port, nginx_port = free_port(), free_port(), free_port()
        edge_config = os.path.join(work, "edge.yaml")
        with open(edge_config, "w") as f:
            f.write(EDGE_YAML.format(dir=work, threads=THREADS, port=edge_port, backend=backend_port, keepalive=KEEPALIVE))
        check = subprocess.run([KERNEL_BIN, "-t", "--role", "edge", "--config", edge_config], capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit(f"the edge configuration fails `kernel -t`:\n{check.stderr}")
        backend_config = os.path.join(work, "backend.yaml")
        with open(backend_config, "w") as f:
            f.write(BACKEND_YAML.format(dir=work, port=backend_port))
        nginx_conf = os.path.join(work, "nginx.conf")
        with open(nginx_conf, "w") as f:
            f.write(NGINX_CONF.format(dir=work, threads=THREADS, port=nginx_port, backend=backend_port,
                                      keepalive=KEEPALIVE, user=nginx_user_line()))
        stack.start([KERNEL_BIN, "--role", "worker", "--config", backend_config], "backend.stderr")
        wait_port(backend_port)
        edge = stack.start([KERNEL_BIN, "--role", "edge", "--config", edge_config], "edge.stderr")
        nginx = stack.start(["nginx", "-c", nginx_conf, "-p", work], "nginx.stderr")
        for port in (edge_port, nginx_port):
            wait_port(port)
            stack.check_alive()
        edge_url = f"http://127.0.0.1:{edge_port}{PATH}"
        nginx_url = f"http://127.0.0.1:{nginx_port}{PATH}"
        for url in (edge_url, nginx_url):
            wrk(url, CONNECTIONS, "2s")
        for name, port, process, server in (("kernel edge", edge_port, edge, "kernel"), ("nginx", nginx_port, nginx, "nginx")):
            seen = verify_listener(name, port, process, server, PATH, BODY, "X-Backend")
            if set(seen) != {"kernel-worker"}:
                raise SystemExit(f"{name}: expected the backend's answers, saw {seen}")
        rows = alternate_rounds(stack, ROUNDS, CONNECTIONS, DURATION, (edge_url, edge), (nginx_url, nginx))
    except BaseException:
        stack.dump_logs()
        raise
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)

    out = header() + edge_table(rows)
    print("\n".join(out))


if __name__ == "__main__":
    main()
