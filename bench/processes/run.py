#!/usr/bin/env python3
"""The kernel as a deployment: its resident memory against the tutorial's stack, the time from start to the first
answered request, and throughput by `processes:` setting.

1. Memory: `kernel --role both` with the demo model (all its processes: a master and its workers when `processes:`
   makes them) against nginx (one worker per core) + a uWSGI master with 3 lazy workers, each loading the demo
   model in the Flask app of bench/inference (onnxruntime in Python). Each side is checked to answer the same
   inference request correctly, then loaded for a few seconds, then measured: RSS and PSS (/proc/PID/smaps_rollup,
   which shares pages fairly between processes) summed over every process of the side.
2. Start-up: from starting `kernel` (fork + exec) to the first answered request, polled every 2 ms: `return 200` on
   a configuration without models, and an inference of the demo model (loaded and warmed, `warmup: 2`). Several
   runs; median and spread. The uWSGI stack's time to its first answered inference, the same way, for reference.
3. Throughput with each `processes:` setting of BENCH_PROCESSES (default `0,auto`): hello and the demo model, one
   kernel per setting, rounds alternating which setting goes first. A binary that does not know the key (it has
   only the single process) runs `0` alone, without the key.

Prints a markdown section (bench/run.sh collects it into docs/performance.md).
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
import http.client

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from common import ROOT, KERNEL_BIN, Stack, free_port, memory_kib, process_tree, wait_port, wrk  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
DURATION = os.environ.get("BENCH_DURATION", "10s")
STARTUP_RUNS = int(os.environ.get("BENCH_STARTUP_RUNS", "7"))
# Set in main: BENCH_PROCESSES, or `0,auto` when the binary knows the key and `0` when it does not.
SETTINGS = []
MODEL = os.path.join(ROOT, "models", "demo", "1", "model.onnx")
REQUEST = os.path.join(ROOT, "etc", "examples", "demo-request.json")
INFER = "/v2/models/demo/infer"

# The nginx → uWSGI → Flask stack of the inference benchmark: its Flask app, uWSGI ini and nginx configuration.
_spec = importlib.util.spec_from_file_location("inference_bench", os.path.join(ROOT, "bench", "inference", "run.py"))
inference_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inference_bench)

KERNEL_YAML = """
kernel:
{processes}  pid: {dir}/kernel.pid
  error_log: {{path: {dir}/kernel-error.log, level: notice}}
  event_loop_threads: auto
http:
  listen: "127.0.0.1:{port}"
  keepalive_requests: 1000000
{inference}routing:
  servers:
    - client_max_body_size: 16m
      client_body_buffer_size: 16m
      locations:
        - location: = /hello
          return: 200 "hello"
{inference_location}"""

INFERENCE = """inference:
  models:
    - name: demo
      path: {model}
      instances: 1
      intra_op_threads: 1
      max_batch_size: 32
      dynamic_batching: {{}}
      max_queue: 4096
      warmup: 2
"""

INFERENCE_LOCATION = """        - location: "^~ /v2"
          inference: {}
"""

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
"""


def supports_processes_key(work):
    """Whether this binary's `kernel -t` accepts `kernel.processes`."""
    path = os.path.join(work, "probe.yaml")
    with open(path, "w") as f:
        f.write(kernel_yaml(work, free_port(), "0", model=False, force_key=True))
    return subprocess.run([KERNEL_BIN, "-t", "--config", path], capture_output=True).returncode == 0


SUPPORTS_PROCESSES = None


def kernel_yaml(directory, port, processes, model, force_key=False):
    key = force_key or SUPPORTS_PROCESSES
    return KERNEL_YAML.format(
        processes=f"  processes: {processes}\n" if key else "", dir=directory, port=port,
        inference=INFERENCE.format(model=MODEL) if model else "",
        inference_location=INFERENCE_LOCATION if model else "")


def start_kernel(stack, work, name, processes, model):
    directory = os.path.join(work, name)
    os.makedirs(directory, exist_ok=True)
    port = free_port()
    config = os.path.join(directory, "kernel.yaml")
    with open(config, "w") as f:
        f.write(kernel_yaml(directory, port, processes, model))
    process = stack.start([KERNEL_BIN, "--role", "both", "--config", config], f"{name}.stderr")
    return process, port


def ask(port, method, path, body=None, timeout=10):
    """(status, body) of one request on a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def expected_output():
    """The demo model's answer to etc/examples/demo-request.json, computed by onnxruntime here."""
    import numpy as np
    import onnxruntime as ort
    with open(REQUEST) as f:
        tensor = json.load(f)["inputs"][0]
    session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    array = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    return session.run(None, {session.get_inputs()[0].name: array})[0].ravel().tolist()


def verify_inference(name, port, expected, requests=6):
    """Each side's answers are the model's: same outputs as onnxruntime computes here, to 1e-4."""
    with open(REQUEST, "rb") as f:
        body = f.read()
    for _ in range(requests):
        status, answer = ask(port, "POST", INFER, body)
        if status != 200:
            raise SystemExit(f"{name}: {status} {answer[:200]!r}")
        data = json.loads(answer)["outputs"][0]["data"]
        if len(data) != len(expected) or max(abs(a - b) for a, b in zip(data, expected)) > 1e-4:
            raise SystemExit(f"{name}: outputs {data[:4]}... differ from the model's {expected[:4]}...")


def lua_script(work):
    path = os.path.join(work, "infer.lua")
    with open(path, "w") as f:
        f.write(LUA.format(body=REQUEST))
    return path


# --- 1. memory ---------------------------------------------------------------------------------------------------

def measure_memory(work, expected, script):
    rows = []
    for setting in SETTINGS:
        stack = Stack(work)
        try:
            kernel, port = start_kernel(stack, work, f"memory-kernel-{setting}", setting, model=True)
            wait_port(port)
            stack.check_alive()
            verify_inference("kernel", port, expected)
            wrk(f"http://127.0.0.1:{port}{INFER}", 8, "3s", script=script)
            pids = process_tree([kernel.pid], children=True)
            rss, pss = memory_kib(pids)
            rows.append((f"kernel `--role both`, `processes: {setting}`", len(pids), rss, pss))
        finally:
            stack.stop()

    stack = Stack(work)
    directory = os.path.join(work, "memory-stack")
    os.makedirs(directory)
    try:
        nginx_port, uwsgi_port, ini, conf, environment = write_tutorial_stack(directory)
        uwsgi = stack.start([shutil.which("uwsgi") or "uwsgi", "--ini", ini], "uwsgi.stderr", env=environment,
                            start_new_session=True)
        nginx = stack.start(["nginx", "-c", conf, "-p", directory], "nginx.stderr")
        wait_port(uwsgi_port)
        wait_port(nginx_port)
        wait_inference(nginx_port, stack)
        verify_inference("nginx → uWSGI → Flask", nginx_port, expected)
        wrk(f"http://127.0.0.1:{nginx_port}{INFER}", 8, "3s", script=script)
        nginx_pids = process_tree([nginx.pid], children=True)
        uwsgi_pids = process_tree([uwsgi.pid], children=True)
        if len(uwsgi_pids) != 4:
            raise SystemExit(f"uWSGI should run a master and 3 workers, found {uwsgi_pids}")
        rss, pss = memory_kib(nginx_pids + uwsgi_pids)
        n_rss, n_pss = memory_kib(nginx_pids)
        rows.append(("nginx + uWSGI (master, 3 lazy workers) + Flask + onnxruntime", len(nginx_pids) + len(uwsgi_pids),
                     rss, pss))
        rows.append(("  of which nginx (master + workers)", len(nginx_pids), n_rss, n_pss))
    finally:
        stack.stop()
    return rows


def wait_inference(port, stack, timeout=60):
    """The lazy uWSGI workers import Flask and onnxruntime and load the model before they answer."""
    with open(REQUEST, "rb") as f:
        body = f.read()
    deadline = time.time() + timeout
    while time.time() < deadline:
        stack.check_alive()
        try:
            if ask(port, "POST", INFER, body)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"no answer on 127.0.0.1:{port}{INFER} within {timeout}s")


# --- 2. start-up -------------------------------------------------------------------------------------------------

def first_answer(port, method, path, body, deadline):
    """Polls every 2 ms until a request is answered 200; the time it was."""
    while time.monotonic() < deadline:
        try:
            if ask(port, method, path, body, timeout=5)[0] == 200:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.002)
    raise SystemExit(f"no answer on 127.0.0.1:{port}{path}")


def kernel_startup(work, setting, model, run):
    stack = Stack(work)
    try:
        name = f"startup-{setting}-{'model' if model else 'hello'}-{run}"
        directory = os.path.join(work, name)
        os.makedirs(directory)
        port = free_port()
        config = os.path.join(directory, "kernel.yaml")
        with open(config, "w") as f:
            f.write(kernel_yaml(directory, port, setting, model))
        body = open(REQUEST, "rb").read() if model else None
        started = time.monotonic()
        stack.start([KERNEL_BIN, "--role", "both", "--config", config], f"{name}.stderr")
        answered = first_answer(port, "POST" if model else "GET", INFER if model else "/hello", body, started + 120)
        return (answered - started) * 1000
    finally:
        stack.stop()



def write_tutorial_stack(directory):
    """The tutorial's stack in `directory`: a uWSGI ini (master, 3 lazy workers, the Flask app with the demo model)
    and an nginx.conf that `uwsgi_pass`es to it, on free ports. Returns the ports, both files and uWSGI's
    environment."""
    nginx_port, uwsgi_port = free_port(), free_port()
    ini = os.path.join(directory, "uwsgi.ini")
    with open(ini, "w") as f:
        f.write(inference_bench.UWSGI_INI.format(uwsgi_port=uwsgi_port, here=os.path.join(ROOT, "bench", "inference")))
    conf = os.path.join(directory, "nginx.conf")
    with open(conf, "w") as f:
        f.write(inference_bench.NGINX_CONF.format(workers=os.cpu_count() or 1, dir=directory, port=nginx_port,
                                                  uwsgi_port=uwsgi_port))
    environment = dict(os.environ, FLASK_MODEL_NAME="demo", FLASK_MODEL_PATH=MODEL)
    return nginx_port, uwsgi_port, ini, conf, environment

def stack_startup(work, run):
    stack = Stack(work)
    directory = os.path.join(work, f"startup-stack-{run}")
    os.makedirs(directory)
    try:
        nginx_port, uwsgi_port, ini, conf, environment = write_tutorial_stack(directory)
        started = time.monotonic()
        stack.start(["nginx", "-c", conf, "-p", directory], "nginx.stderr")
        stack.start([shutil.which("uwsgi") or "uwsgi", "--ini", ini], "uwsgi.stderr", env=environment,
                    start_new_session=True)
        answered = first_answer(nginx_port, "POST", INFER, open(REQUEST, "rb").read(), started + 120)
        return (answered - started) * 1000
    finally:
        stack.stop()


def spread_ratio(values):
    return f"**{statistics.median(values):.2f}** ({min(values):.2f} to {max(values):.2f})"


def spread(values):
    return f"**{statistics.median(values):.0f}** ({min(values):.0f} to {max(values):.0f})"


# --- 3. throughput by processes: -------------------------------------------------------------------------------

def measure_throughput(work, expected, script):
    stack = Stack(work)
    results = {setting: {"hello": [], "model": []} for setting in SETTINGS}
    try:
        kernels = {}
        for setting in SETTINGS:
            process, port = start_kernel(stack, work, f"throughput-{setting}", setting, model=True)
            kernels[setting] = (process, port)
        for setting, (process, port) in kernels.items():
            wait_port(port)
            stack.check_alive()
            verify_inference(f"processes: {setting}", port, expected)
            if ask(port, "GET", "/hello") != (200, b"hello"):
                raise SystemExit(f"processes: {setting}: /hello does not answer hello")
            wrk(f"http://127.0.0.1:{port}/hello", 64, "2s")
            wrk(f"http://127.0.0.1:{port}{INFER}", 32, "2s", script=script)
        for number in range(ROUNDS):
            order = SETTINGS if number % 2 == 0 else list(reversed(SETTINGS))
            for setting in order:
                port = kernels[setting][1]
                results[setting]["hello"].append(wrk(f"http://127.0.0.1:{port}/hello", 64, DURATION))
                results[setting]["model"].append(wrk(f"http://127.0.0.1:{port}{INFER}", 32, DURATION, script=script))
                stack.check_alive()
        processes = {setting: len(process_tree([kernels[setting][0].pid], children=True)) for setting in SETTINGS}
    finally:
        stack.stop()
    return results, processes


def main():
    global SUPPORTS_PROCESSES
    for tool in ("wrk", "nginx", "uwsgi"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"bench/processes: {tool} is missing (scripts/setup.sh installs it)")
    work = tempfile.mkdtemp(prefix="kernel-bench-processes-")
    load_before = os.getloadavg()
    try:
        SUPPORTS_PROCESSES = supports_processes_key(work)
        default = "0,auto" if SUPPORTS_PROCESSES else "0"
        SETTINGS[:] = [s.strip() for s in os.environ.get("BENCH_PROCESSES", default).split(",") if s.strip()]
        if not SUPPORTS_PROCESSES and SETTINGS != ["0"]:
            raise SystemExit(f"bench/processes: {KERNEL_BIN} has no `processes:` key; BENCH_PROCESSES=0 only")
        expected = expected_output()
        script = lua_script(work)
        memory = measure_memory(work, expected, script)
        startup = {"stack": []}
        for run in range(STARTUP_RUNS):
            for setting in SETTINGS:
                startup.setdefault((setting, "hello"), []).append(kernel_startup(work, setting, False, run))
                startup.setdefault((setting, "model"), []).append(kernel_startup(work, setting, True, run))
            startup["stack"].append(stack_startup(work, run))
        throughput, process_counts = measure_throughput(work, expected, script)
    except BaseException:
        Stack(work).dump_logs()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    key_note = "" if SUPPORTS_PROCESSES else (" This binary has no `processes:` key: `0` is its only process, run "
                                              "without the key.")
    out = ["## Processes: memory, start-up, throughput by `processes:`\n",
           f"Command: `make bench` (bench/processes/run.py; BENCH_PROCESSES={','.join(SETTINGS)} BENCH_ROUNDS={ROUNDS} "
           f"BENCH_DURATION={DURATION} BENCH_STARTUP_RUNS={STARTUP_RUNS}). Load average (1 min) {load_before[0]:.1f} "
           f"before, {load_after[0]:.1f} after: other work shared the {os.cpu_count()} cores, so read medians, "
           f"spreads and ratios.{key_note}\n",
           "### Resident memory of the whole deployment, demo model loaded\n",
           "Each side answered the demo request with the model's outputs (checked against onnxruntime), then took "
           "3 s of `wrk -c8` inference before being measured; sums over all its processes.\n",
           "| deployment | processes | RSS MiB | PSS MiB |", "|---|---:|---:|---:|"]
    for name, count, rss, pss in memory:
        out.append(f"| {name} | {count} | {rss / 1024:.0f} | {pss / 1024:.0f} |")
    stack_pss = memory[len(SETTINGS)][3]
    out.append("\n" + "; ".join(f"{name.split(', ')[-1]}: **{pss / stack_pss:.2f}×** the tutorial stack's PSS"
                                  for name, _, _, pss in memory[:len(SETTINGS)]) + ".\n")
    out += ["### Time from start to the first answered request\n",
            f"From fork + exec to the first 200, polled every 2 ms; {STARTUP_RUNS} runs each, median (min to max), ms.\n",
            "| what | ms |", "|---|---:|"]
    for setting in SETTINGS:
        out += [f"| kernel `processes: {setting}`, `return 200 \"hello\"` (no model) | {spread(startup[(setting, 'hello')])} |",
                f"| kernel `processes: {setting}`, demo model inference (loaded, warmed: `warmup: 2`) | "
                f"{spread(startup[(setting, 'model')])} |"]
    out += [f"| nginx + uWSGI (3 lazy workers) + Flask, demo model inference | {spread(startup['stack'])} |", ""]
    out += ["### Throughput by `processes:`\n",
            f"One kernel per setting, started together, rounds alternating which goes first: `wrk -t2 -c64 -d{DURATION}` "
            f"on `= /hello` (`return 200`), `wrk -t2 -c32 -d{DURATION}` POSTing the demo request. "
            + ", ".join(f"`processes: {s}` ran {process_counts[s]} process(es)" for s in SETTINGS) + ".\n",
            "| processes | round | hello req/s | p99 | model req/s | p99 |", "|---|---:|---:|---:|---:|---:|"]
    for setting in SETTINGS:
        for number, (hello, model) in enumerate(zip(throughput[setting]["hello"], throughput[setting]["model"]), 1):
            flags = "".join(f" ({what}: {r['non2xx']} non-2xx, {r['errors']})" for what, r in (("hello", hello), ("model", model))
                            if r["non2xx"] or r["errors"])
            out.append(f"| {setting} | {number} | {hello['rps']:.0f} | {hello['p99']} | {model['rps']:.0f} | {model['p99']}{flags} |")
    out.append("")
    for setting in SETTINGS:
        out.append(f"- `processes: {setting}`: hello {spread([r['rps'] for r in throughput[setting]['hello']])} req/s, "
                   f"model {spread([r['rps'] for r in throughput[setting]['model']])} req/s (median, min to max).")
    if "0" in SETTINGS and len(SETTINGS) > 1:
        for setting in SETTINGS:
            if setting == "0":
                continue
            ratios = {what: [r["rps"] / b["rps"] for r, b in zip(throughput[setting][what], throughput["0"][what])]
                      for what in ("hello", "model")}
            out.append(f"- `processes: {setting}` / `processes: 0`, per round: hello "
                       f"{spread_ratio(ratios['hello'])}, model {spread_ratio(ratios['model'])}.")
    print("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
