#!/usr/bin/env python3
"""The edge over uwsgi: kernel `--role edge` (`upstreams:` + `uwsgi_pass`) against nginx (`upstream` +
`uwsgi_pass`) in front of the same workers, in the same run, rounds alternating.

Two backends, each measured with both edges:
- two kernel workers (`--role worker`, uwsgi listener, `return 200` of the Flask app's JSON), round robin;
- one uWSGI + Flask app (Tests/SystemTests/uwsgi_support/app.py, `--master --lazy --workers 3`).

Neither edge keeps uwsgi connections alive (uwsgi has no keep-alive; nginx connects per request too). Each round runs
`wrk -c32` against one edge and then the other; the CPU each edge process (nginx: master and workers) used in the
round is read from /proc/PID/stat (utime + stime) before and after and divided by the requests it answered. Before
measuring, each side is checked to be what it claims: the port wrk loads is listened on by that edge's process (its
socket inode in /proc/PID/fd), its answers carry that edge's `Server` header and the backend's body, and the two
kernel workers both answer. Prints a markdown section (bench/run.sh collects it into docs/performance.md).
"""
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from common import (ROOT, KERNEL_BIN, NGINX_HTTP_PREAMBLE, NGINX_HTTP_TEMP_PATHS, Stack, alternate_rounds,  # noqa: E402
                    edge_table, free_port, nginx_user_line, verify_listener, wait_port, wrk)

APP_DIR = os.path.join(ROOT, "Tests", "SystemTests", "uwsgi_support")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
DURATION = os.environ.get("BENCH_DURATION", "10s")
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
THREADS = int(os.environ.get("BENCH_EDGE_THREADS", str(os.cpu_count() or 1)))
PATH = "/v1/parse"
BODY = b'{"status":"ok"}'

NGINX_CONF = NGINX_HTTP_PREAMBLE + "http {{\n" + NGINX_HTTP_TEMP_PATHS + """    upstream workers {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ include /etc/nginx/uwsgi_params; uwsgi_pass workers; }}
    }}
}}
"""

EDGE_YAML = """
kernel:
  pid: {dir}/edge.pid
  error_log: {{path: {dir}/edge.log, level: warn}}
  event_loop_threads: {threads}
http:
  listen: 127.0.0.1:{port}
uwsgi: {{}}
upstreams:
  workers:
    servers:
{servers}
routing:
  servers:
    - locations:
        - location: /
          uwsgi_pass: workers
"""

WORKER_YAML = """
kernel:
  pid: {dir}/worker-{name}.pid
  error_log: {{path: {dir}/worker-{name}.log, level: warn}}
  event_loop_threads: 1
uwsgi:
  listen: 127.0.0.1:{port}
  buffer_size: 64k
routing:
  servers:
    - locations:
        - location: {path}
          return: 200 '{body}'
          add_header: "X-Worker {name}"
"""


def compare(backend):
    """Both edges in front of `backend` ("kernel" or "uwsgi"); a list of (kernel, nginx) results per round."""
    work = tempfile.mkdtemp(prefix=f"kernel-bench-edge-{backend}-")
    stack = Stack(work)
    try:
        if backend == "kernel":
            ports = [free_port(), free_port()]
            for index, port in enumerate(ports, 1):
                config = os.path.join(work, f"worker-{index}.yaml")
                with open(config, "w") as f:
                    f.write(WORKER_YAML.format(dir=work, name=index, port=port, path=PATH, body=BODY.decode()))
                stack.start([KERNEL_BIN, "--role", "worker", "--config", config], f"worker-{index}.stderr")

            def backend_check(name, seen):
                if set(seen) != {"1", "2"}:
                    raise SystemExit(f"{name}: the two kernel workers should both answer, saw {seen}")
        else:
            ports = [free_port()]
            stack.start(["uwsgi", "--socket", f"127.0.0.1:{ports[0]}", "--master", "--lazy", "--workers", "3",
                         "--buffer-size", "65536", "--wsgi-file", os.path.join(APP_DIR, "app.py"), "--callable", "app",
                         "--chdir", APP_DIR, "--disable-logging", "--die-on-term", "--add-header", "X-Worker: uwsgi",
                         "--logto", os.path.join(work, "uwsgi.log")], "uwsgi.stderr", start_new_session=True)

            def backend_check(name, seen):
                if set(seen) != {"uwsgi"}:
                    raise SystemExit(f"{name}: expected the uWSGI app's answers, saw {seen}")
        for port in ports:
            wait_port(port)
            stack.check_alive()
        edge_port, nginx_port = free_port(), free_port()
        edge_config = os.path.join(work, "edge.yaml")
        with open(edge_config, "w") as f:
            f.write(EDGE_YAML.format(dir=work, threads=THREADS, port=edge_port,
                                     servers="\n".join(f"      - 127.0.0.1:{p}" for p in ports)))
        nginx_conf = os.path.join(work, "nginx.conf")
        with open(nginx_conf, "w") as f:
            f.write(NGINX_CONF.format(dir=work, threads=THREADS, port=nginx_port,
                                      user=nginx_user_line(),
                                      servers="\n".join(f"        server 127.0.0.1:{p};" for p in ports)))
        edge = stack.start([KERNEL_BIN, "--role", "edge", "--config", edge_config], "edge.stderr")
        nginx = stack.start(["nginx", "-c", nginx_conf, "-p", work], "nginx.stderr")
        for port in (edge_port, nginx_port):
            wait_port(port)
            stack.check_alive()
        edge_url = f"http://127.0.0.1:{edge_port}{PATH}"
        nginx_url = f"http://127.0.0.1:{nginx_port}{PATH}"
        for url in (edge_url, nginx_url):  # warm-up: uWSGI's lazy workers load the app on their first requests
            wrk(url, CONNECTIONS, "2s")
        for name, port, process, server in (("kernel edge", edge_port, edge, "kernel"), ("nginx", nginx_port, nginx, "nginx")):
            seen = verify_listener(name, port, process, server, PATH, BODY, "X-Worker")
            backend_check(name, seen)
        return alternate_rounds(stack, ROUNDS, CONNECTIONS, DURATION, (edge_url, edge), (nginx_url, nginx))
    except BaseException:
        stack.dump_logs()
        raise
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


def main():
    out = ["## uwsgi_pass edge: kernel edge vs nginx in front of the same workers\n",
           f"Command: `make bench` (bench/uwsgi/edge.py; BENCH_ROUNDS={ROUNDS} BENCH_DURATION={DURATION} "
           f"BENCH_CONNECTIONS={CONNECTIONS}): kernel `--role edge` ({THREADS} event-loop threads, `upstreams:` + "
           f"`uwsgi_pass`) and nginx (`worker_processes {THREADS}`, `upstream` + `include uwsgi_params; uwsgi_pass`, "
           f"access_log off), both connecting per request (uwsgi has no keep-alive), `wrk -t2 -c{CONNECTIONS} "
           f"-d{DURATION}` on `{PATH}`, rounds alternating which edge goes first, after a 2 s warm-up of each. "
           "CPU per request is the edge process's utime + stime over the round (nginx: master and workers) divided "
           "by the requests answered. Each edge's port was checked to be its process's, with its `Server` header "
           "and the backend's answers.\n"]
    for backend, title in (("kernel", "two kernel workers (`--role worker`, uwsgi, `return 200`), round robin"),
                           ("uwsgi", "uWSGI + Flask (`--master --lazy --workers 3`, Tests/SystemTests/uwsgi_support/app.py)")):
        rows = compare(backend)
        out.append(f"### Backend: {title}\n")
        out += edge_table(rows, cpu_note="; above 1: the kernel edge spends less per request")
    print("\n".join(out))


if __name__ == "__main__":
    main()
