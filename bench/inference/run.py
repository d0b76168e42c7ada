#!/usr/bin/env python3
"""The comparison this project exists for: `kernel --role both` against nginx → uWSGI (master, lazy, 3 workers) →
Flask + onnxruntime, same JSON request, at 1, 8, 32 and 128 connections, in one run.

For each model (the demo MLP and the PP-OCR classifier) it reports req/s, p50 and p99 from wrk, the resident memory of
all processes of each side, and the kernel's throughput as a fraction of the in-process ceiling (ONNX Runtime in a
tight loop with the same threads: KernelModelBench). Prints a markdown section; bench/run.sh (`make bench`) writes it
to docs/performance.md.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import re  # noqa: E402

from common import ROOT, KERNEL_BIN, free_port, rss_kib, wait_port  # noqa: E402

DURATION = os.environ.get("BENCH_DURATION", "10s")
CONNECTIONS = [int(c) for c in os.environ.get("BENCH_CONNECTIONS", "1,8,32,128").split(",")]
MODEL_BENCH = os.environ.get("KERNEL_MODEL_BENCH", os.path.join(os.path.dirname(KERNEL_BIN), "KernelModelBench"))
HERE = os.path.dirname(os.path.abspath(__file__))

MODELS = [
    # name, path, request shape, kernel batching
    ("demo", "models/demo/1/model.onnx", [1, 64], 32),
    ("ppocr_cls", "models/ppocr_cls/1/model.onnx", [1, 3, 48, 192], 8),
]

KERNEL_YAML = """
kernel:
  pid: {dir}/kernel.pid
  error_log: {{path: {dir}/kernel-error.log, level: notice}}
  event_loop_threads: auto
http:
  listen: "127.0.0.1:{port}"
  keepalive_requests: 1000000
inference:
  models:
    - name: {name}
      path: {path}
      instances: 1
      intra_op_threads: 1
      max_batch_size: {batch}
      dynamic_batching: {{max_queue_delay: 0ms}}
      max_queue: 4096
      warmup: 2
routing:
  servers:
    - client_max_body_size: 16m
      client_body_buffer_size: 16m   # bodies in memory, as the nginx configuration below keeps them
      locations:
        - location: "^~ /v2"
          inference: {{}}
"""

NGINX_CONF = """
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_max_body_size 16m;
    client_body_buffer_size 16m;  # keep bodies in memory, as the kernel's configuration does
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location /v2/ {{
            include /etc/nginx/uwsgi_params;
            uwsgi_pass 127.0.0.1:{uwsgi_port};
        }}
    }}
}}
"""

UWSGI_INI = """
[uwsgi]
socket = 127.0.0.1:{uwsgi_port}
chdir = {here}
wsgi-file = flask_app.py
callable = app
buffer-size = 65536
master = true
lazy = true
workers = 3
threads = 1
disable-logging = true
die-on-term = true
"""

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
"""


def wrk(url, connections, duration, threads=2, script=None):
    """Runs wrk --latency; req/s, p50, p99 and error counts. Percentiles are read from the "Latency Distribution"
    lines only (a stdev column such as "93.50%" must not be taken for the 50th percentile)."""
    command = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration}", "--latency"]
    if script:
        command += ["-s", script]
    output = subprocess.run(command + [url], capture_output=True, text=True).stdout
    def percentile(label):
        found = re.search(rf"^\s+{label}%\s+(\S+)$", output, re.M)
        return found.group(1) if found else "-"
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50": percentile("50"), "p99": percentile("99"),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "errors": errors.group(1) if errors else "",
            "output": output}


def request_body(shape, seed=1):
    import numpy as np
    array = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return json.dumps({"inputs": [{"name": "INPUT", "shape": shape, "datatype": "FP32",
                                   "data": array.ravel().tolist()}]})


def stop(process):
    if process and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ceiling(path, shape):
    output = subprocess.run([MODEL_BENCH, path, "--shape", ",".join(map(str, shape)), "--seconds", "5",
                             "--intra-op-threads", "1", "--instances", "1"],
                            capture_output=True, text=True, check=True).stdout
    return json.loads(output)["runs_per_second"]


def measure(url, script):
    wrk(url, 8, "2s", script=script)  # warm-up
    return {c: wrk(url, c, DURATION, threads=2, script=script) for c in CONNECTIONS}


def bench_model(name, relative_path, shape, batch, work):
    import onnxruntime as ort
    path = os.path.join(ROOT, relative_path)
    input_name = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_inputs()[0].name
    body_path = os.path.join(work, f"{name}.json")
    with open(body_path, "w") as f:
        f.write(request_body(shape).replace('"INPUT"', json.dumps(input_name)))
    script = os.path.join(work, f"{name}.lua")
    with open(script, "w") as f:
        f.write(LUA.format(body=body_path))
    url_path = f"/v2/models/{name}/infer"

    # The kernel.
    kernel_dir = os.path.join(work, f"kernel-{name}")
    os.makedirs(kernel_dir)
    kernel_port = free_port()
    config = os.path.join(kernel_dir, "kernel.yaml")
    with open(config, "w") as f:
        f.write(KERNEL_YAML.format(dir=kernel_dir, port=kernel_port, name=name, path=path, batch=batch))
    kernel = subprocess.Popen([KERNEL_BIN, "--role", "both", "--config", config],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(kernel_port)
        kernel_results = measure(f"http://127.0.0.1:{kernel_port}{url_path}", script)
        kernel_rss = rss_kib([kernel.pid])
    finally:
        stop(kernel)

    # The nginx → uWSGI → Flask stack: nginx → uWSGI (master, lazy, 3 workers) → Flask + onnxruntime.
    stack_dir = os.path.join(work, f"flask-{name}")
    os.makedirs(stack_dir)
    nginx_port, uwsgi_port = free_port(), free_port()
    ini = os.path.join(stack_dir, "uwsgi.ini")
    with open(ini, "w") as f:
        f.write(UWSGI_INI.format(uwsgi_port=uwsgi_port, here=HERE))
    conf = os.path.join(stack_dir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(workers=os.cpu_count() or 1, dir=stack_dir, port=nginx_port, uwsgi_port=uwsgi_port))
    environment = dict(os.environ, FLASK_MODEL_NAME=name, FLASK_MODEL_PATH=path)
    uwsgi = subprocess.Popen([shutil.which("uwsgi") or "uwsgi", "--ini", ini], env=environment,
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(stack_dir, "uwsgi.log"), "w"))
    nginx = subprocess.Popen(["nginx", "-c", conf, "-p", stack_dir], stderr=subprocess.DEVNULL)
    try:
        wait_port(uwsgi_port)
        wait_port(nginx_port)
        stack_url = f"http://127.0.0.1:{nginx_port}{url_path}"
        deadline = time.time() + 60  # lazy workers import onnxruntime on their first request
        while subprocess.run(["curl", "-sf", "-o", "/dev/null", "-X", "POST", "--data-binary", f"@{body_path}",
                              "-H", "Content-Type: application/json", stack_url]).returncode != 0:
            if time.time() > deadline:
                raise SystemExit(f"the nginx → uWSGI → Flask stack does not answer {stack_url}; see {stack_dir}/uwsgi.log")
            time.sleep(0.5)
        stack_results = measure(stack_url, script)
        stack_rss = rss_kib([nginx.pid, uwsgi.pid], children=True)
    finally:
        stop(nginx)
        stop(uwsgi)

    return {"kernel": kernel_results, "stack": stack_results, "kernel_rss": kernel_rss, "stack_rss": stack_rss,
            "ceiling": ceiling(path, shape), "shape": shape, "body_bytes": os.path.getsize(body_path)}


def section(name, shape, result):
    lines = [f"### {name}: input {shape}, JSON body {result['body_bytes']} bytes", "",
             f"In-process ceiling (ONNX Runtime in a tight loop, batch {shape[0]}, 1 thread): "
             f"{result['ceiling']:.0f} runs/s. Resident memory: kernel {result['kernel_rss'] / 1024:.0f} MiB, "
             f"Flask stack (nginx + uWSGI master and 3 workers) {result['stack_rss'] / 1024:.0f} MiB.", "",
             "| connections | kernel req/s | p50 | p99 | Flask stack req/s | p50 | p99 | kernel/Flask stack | kernel/ceiling |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in CONNECTIONS:
        k, s = result["kernel"][c], result["stack"][c]
        flags = ""
        if k["non2xx"] or k["errors"]:
            flags += f" (kernel: {k['non2xx']} non-2xx {k['errors']})"
        if s["non2xx"] or s["errors"]:
            flags += f" (Flask stack: {s['non2xx']} non-2xx {s['errors']})"
        lines.append(f"| {c} | {k['rps']:.0f} | {k['p50']} | {k['p99']} | {s['rps']:.0f} | {s['p50']} | {s['p99']} | "
                     f"{k['rps'] / max(s['rps'], 1e-9):.1f}× | {k['rps'] / result['ceiling']:.2f}{flags} |")
    return "\n".join(lines)


def main():
    for tool in ("wrk", "nginx", "uwsgi", "curl"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"bench/inference: {tool} is missing (scripts/setup.sh installs it)")
    for binary in (KERNEL_BIN, MODEL_BENCH):
        if not os.path.exists(binary):
            raise SystemExit(f"bench/inference: {binary} is missing: swift build -c release")
    work = tempfile.mkdtemp(prefix="kernel-bench-inference-")
    out = ["## Inference: kernel vs nginx → uWSGI → Flask + onnxruntime", "",
           f"wrk, 2 threads, {DURATION} per point, same JSON request (Open Inference Protocol) on both sides. The kernel runs "
           "`--role both` with one model instance (1 intra-op thread) and dynamic batching with max_queue_delay 0 (a run takes whatever queued while the previous one ran); the "
           "Flask stack runs nginx (one worker per core) → uWSGI (master, lazy, 3 workers, 1 thread) → Flask with an "
           "onnxruntime session per worker (1 intra-op thread).", ""]
    try:
        for name, path, shape, batch in MODELS:
            out.append(section(name, shape, bench_model(name, path, shape, batch, work)))
            out.append("")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(out))


if __name__ == "__main__":
    main()
