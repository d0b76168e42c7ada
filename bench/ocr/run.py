#!/usr/bin/env python3
"""/v1/parse three ways, in one run: the kernel's OCR pipeline (etc/examples/ocr.yaml, one process), the tutorial's
stack (nginx → uWSGI master, lazy, 3 workers → Flask calling rapidocr_onnxruntime on the upload), and
rapidocr_onnxruntime called in a loop in one Python process (the in-process reference).

The same image (drawn by scripts/ocr/make_images.py) is posted as multipart/form-data by wrk at 1, 8 and 32
connections. Both servers run for the whole benchmark and are measured in alternating rounds (BENCH_ROUNDS, the
order reversed every round; the idle one waits), so that each round's ratio compares the two under the same
machine load. Before measuring, each side is checked to be what it claims: its port answers with its own `Server`
header and the same text, and the uWSGI master still runs. Reports images/s, p50 and p99 (medians over the rounds,
ratios within each round with their spread), the resident memory of each side's processes, and checks that both
servers read the same text as the in-process reference. Prints a markdown section; bench/run.sh (`make bench`)
writes it to docs/performance.md.
"""
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import re  # noqa: E402

from common import KERNEL_BIN, ROOT, free_port, rss_kib, wait_port  # noqa: E402

DURATION = os.environ.get("BENCH_DURATION", "15s")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = [int(c) for c in os.environ.get("BENCH_OCR_CONNECTIONS", "1,8,32").split(",")]
HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_INDEX = 15  # scripts/ocr/make_images.py's 623x296 PNG: four lines of Latin text, upright
BOUNDARY = "kernelbenchboundary"

NGINX_CONF = """
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_max_body_size 20m;
    client_body_buffer_size 20m;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location /v1/parse {{
            include /etc/nginx/uwsgi_params;
            uwsgi_pass 127.0.0.1:{uwsgi_port};
            uwsgi_read_timeout 300s;
        }}
    }}
}}
"""

# The tutorial's uWSGI (master, lazy, 3 workers), as the inference benchmark runs it; its `here` is this folder.
_spec = importlib.util.spec_from_file_location("inference_bench", os.path.join(ROOT, "bench", "inference", "run.py"))
_inference_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_inference_bench)
UWSGI_INI = _inference_bench.UWSGI_INI

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary={boundary}"
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
"""


def wrk(url, connections, duration, threads=2, script=None):
    """wrk --latency with a timeout above any OCR answer's time (its default, 2 s, would drop the slow answers a
    loaded stack gives and count them as timeouts); req/s, p50, p99 as printed, error counts."""
    command = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration}", "--latency",
               "--timeout", "120s", "-s", script, url]
    output = subprocess.run(command, capture_output=True, text=True).stdout
    def percentile(label):
        found = re.search(rf"^\s+{label}%\s+(\S+)", output, re.M)
        return found.group(1) if found else "-"
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50": percentile("50"), "p99": percentile("99"),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "errors": errors.group(1) if errors else "",
            "output": output}


def kernel_yaml(directory, port):
    with open(os.path.join(ROOT, "etc", "examples", "ocr.yaml")) as f:
        text = f.read()
    text = text.replace("pid: ../../run/kernel-ocr.pid",
                        f"pid: {directory}/kernel.pid\n  error_log: {{path: {directory}/kernel-error.log, level: notice}}"
                        "\n  event_loop_threads: auto")
    text = text.replace("../../models/", os.path.join(ROOT, "models") + "/")
    text = text.replace("listen: 8100", f'listen: "127.0.0.1:{port}"\n  keepalive_requests: 1000000')
    return text


def stop(process):
    if process and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def post_texts(url, image, server=None):
    """The texts the server at `url` reads, after checking (when `server` is given) that its answer is that
    server's."""
    import requests
    response = requests.post(url, files={"file": ("image.png", image)}, timeout=300)
    response.raise_for_status()
    if server and not response.headers.get("Server", "").startswith(server):
        raise SystemExit(f"{url} answers as {response.headers.get('Server')!r}, not {server}: its port is not its own")
    return [line["text"] for line in response.json()["lines"]]


def parse_seconds(text):
    """wrk's latency text (`850.12ms`, `1.20s`, `900us`) in seconds; None for anything else."""
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text or "")
    if not found:
        return None
    return float(found.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[found.group(2)]


def format_seconds(value):
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def in_process(image, seconds):
    """rapidocr_onnxruntime in this process: calls per second, p50, p99 and the process's resident memory."""
    from rapidocr_onnxruntime import RapidOCR
    engine = RapidOCR()
    found, _ = engine(image)
    texts = [text for _, text, _ in (found or [])]
    latencies, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        began = time.perf_counter()
        engine(image)
        latencies.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return {"rps": len(latencies) / elapsed, "p50_ms": statistics.median(latencies) * 1000, "p99_ms": p99 * 1000,
            "rss": rss_kib([os.getpid()]), "texts": texts}


def main():
    work = tempfile.mkdtemp(prefix="kernel-bench-ocr-")
    images = os.path.join(work, "images")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "ocr", "make_images.py"), images, "--count",
                    str(IMAGE_INDEX + 1)], check=True, capture_output=True)
    name = sorted(f for f in os.listdir(images) if f.startswith(f"{IMAGE_INDEX:03d}_"))[0]
    with open(os.path.join(images, name), "rb") as f:
        image = f.read()
    body_path = os.path.join(work, "body")
    with open(body_path, "wb") as f:
        f.write(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: image/png\r\n\r\n".encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode())
    script = os.path.join(work, "ocr.lua")
    with open(script, "w") as f:
        f.write(LUA.format(boundary=BOUNDARY, body=body_path))
    from PIL import Image
    width, height = Image.open(os.path.join(images, name)).size

    # Both servers run for the whole benchmark: the kernel, and nginx → uWSGI (master, lazy, 3 workers) → Flask +
    # rapidocr_onnxruntime.
    kernel_dir = os.path.join(work, "kernel")
    os.makedirs(kernel_dir)
    kernel_port = free_port()
    config = os.path.join(kernel_dir, "kernel.yaml")
    with open(config, "w") as f:
        f.write(kernel_yaml(kernel_dir, kernel_port))
    stack_dir = os.path.join(work, "flask")
    os.makedirs(stack_dir)
    nginx_port, uwsgi_port = free_port(), free_port()
    ini = os.path.join(stack_dir, "uwsgi.ini")
    with open(ini, "w") as f:
        f.write(UWSGI_INI.format(uwsgi_port=uwsgi_port, here=HERE))
    conf = os.path.join(stack_dir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(workers=os.cpu_count() or 1, dir=stack_dir, port=nginx_port, uwsgi_port=uwsgi_port))
    kernel = uwsgi = nginx = None
    try:
        kernel = subprocess.Popen([KERNEL_BIN, "--role", "both", "--config", config],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        uwsgi = subprocess.Popen([shutil.which("uwsgi") or "uwsgi", "--ini", ini], stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(stack_dir, "uwsgi.log"), "w"))
        nginx = subprocess.Popen(["nginx", "-c", conf, "-p", stack_dir], stderr=subprocess.DEVNULL)
        wait_port(kernel_port)
        wait_port(uwsgi_port)
        wait_port(nginx_port)
        kernel_url = f"http://127.0.0.1:{kernel_port}/v1/parse"
        stack_url = f"http://127.0.0.1:{nginx_port}/v1/parse"
        kernel_texts = post_texts(kernel_url, image, "kernel/")
        deadline = time.time() + 120
        while True:
            try:
                stack_texts = post_texts(stack_url, image, "nginx/")
                break
            except SystemExit:
                raise
            except Exception:
                if time.time() > deadline:
                    raise SystemExit(f"the nginx → uWSGI → Flask stack does not answer {stack_url}; see {stack_dir}/uwsgi.log")
                time.sleep(1)
        sides = {"kernel": kernel_url, "stack": stack_url}
        for url in sides.values():
            wrk(url, 2, "3s", script=script)  # warm-up (lazy workers load their models on a first request)
        results = {side: {c: [] for c in CONNECTIONS} for side in sides}
        for round_index in range(ROUNDS):
            order = ["kernel", "stack"] if round_index % 2 == 0 else ["stack", "kernel"]
            for c in CONNECTIONS:
                for side in order:
                    if uwsgi.poll() is not None or kernel.poll() is not None:
                        raise SystemExit("a server exited during the benchmark")
                    results[side][c].append(wrk(sides[side], c, DURATION, threads=2, script=script))
        kernel_rss = rss_kib([kernel.pid])
        stack_rss = rss_kib([nginx.pid, uwsgi.pid], children=True)
    finally:
        stop(kernel)
        stop(nginx)
        stop(uwsgi)

    reference = in_process(image, float(DURATION.rstrip("s")))
    same = kernel_texts == reference["texts"] == stack_texts
    lines = [f"### /v1/parse: OCR of a {width}x{height} PNG ({len(image)} bytes, {len(reference['texts'])} lines)", "",
             "Kernel: `etc/examples/ocr.yaml` in one process (the pipeline, its three models batched across "
             "requests). Flask stack: nginx → uWSGI (master, lazy, 3 workers) → Flask calling rapidocr_onnxruntime "
             "(`bench/ocr/flask_app.py`). In-process: rapidocr_onnxruntime called in a loop in one Python process "
             f"({reference['rps']:.2f} images/s, p50 {reference['p50_ms']:.0f} ms, p99 {reference['p99_ms']:.0f} ms, "
             f"{reference['rss'] / 1024:.0f} MiB).", "",
             f"Resident memory: kernel {kernel_rss / 1024:.0f} MiB, Flask stack (nginx + uWSGI master and 3 workers) "
             f"{stack_rss / 1024:.0f} MiB. Same text on all three: {'yes' if same else 'NO'} "
             f"({json.dumps(kernel_texts, ensure_ascii=False)}).", "",
             f"Medians over {ROUNDS} alternating rounds of `wrk -t2 -c{{connections}} -d{DURATION}` per side (the order "
             "reversed every round); ratios are taken within each round, with their lowest and highest.", "",
             "| connections | kernel images/s | p50 | p99 | Flask stack images/s | p50 | p99 | kernel/Flask stack (min-max) | kernel/in-process |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def median_text(runs, key):
        values = [run[key] for run in runs]
        parsed = [parse_seconds(value) for value in values]
        if None in parsed:
            return values[len(values) // 2]
        return format_seconds(statistics.median(parsed))
    for c in CONNECTIONS:
        k, s = results["kernel"][c], results["stack"][c]
        ratios = [a["rps"] / max(b["rps"], 1e-9) for a, b in zip(k, s)]
        flags = ""
        if any(run["non2xx"] or run["errors"] for run in k):
            flags += " (kernel: non-2xx or socket errors in a round)"
        if any(run["non2xx"] or run["errors"] for run in s):
            flags += " (Flask stack: non-2xx or socket errors in a round)"
        kernel_rps = statistics.median(run["rps"] for run in k)
        lines.append(f"| {c} | {kernel_rps:.2f} | {median_text(k, 'p50')} | {median_text(k, 'p99')} | "
                     f"{statistics.median(run['rps'] for run in s):.2f} | {median_text(s, 'p50')} | {median_text(s, 'p99')} | "
                     f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}-{max(ratios):.2f}) | "
                     f"{kernel_rps / reference['rps']:.1f}×{flags} |")
    per_round = ["", "Per round (images/s, kernel / Flask stack):", ""]
    for c in CONNECTIONS:
        pairs = ", ".join(f"{a['rps']:.2f}/{b['rps']:.2f}" for a, b in zip(results["kernel"][c], results["stack"][c]))
        per_round.append(f"- {c} connections: {pairs}")
    lines += per_round
    print("\n".join(lines))
    if not same:
        print(f"\nTexts differ: kernel {kernel_texts}, Flask stack {stack_texts}, in-process {reference['texts']}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
