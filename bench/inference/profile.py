#!/usr/bin/env python3
"""Where the CPU of an inference goes: the demo MLP at 32 connections against the same process's `return 200`.

One `kernel --role both` serves the demo MLP (one instance, one intra-op thread, dynamic batching without delay, as
`make bench` runs it) on `^~ /v2` and `return 200 "hello"` on `/hello`. In alternating rounds, `wrk -c32` drives
the hello location, then the model with a JSON request of one row, then the model with the same row as Triton's
binary tensor extension; each round's inference req/s over its hello req/s is the ratio reported (median and the
spread over the rounds). Then `perf record -e cpu-clock` samples the process under the JSON load and under the
binary load: the CPU per inference, the share of each library, and the hottest symbols.

    KERNEL_BIN=.build/release/kernel bench/inference/profile.py [--rounds 5] [--duration 5s] [--no-perf]

`make profile-inference` runs it on the release build. Needs `wrk`, and `perf` (Debian: linux-perf) for the
samples. Prints a markdown section for docs/performance.md.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import ROOT, KERNEL_BIN, cpu_seconds, free_port, wait_port, wrk  # noqa: E402

DEMO = os.path.join(ROOT, "models", "demo", "1", "model.onnx")

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
    - name: demo
      path: {model}
      instances: 1
      intra_op_threads: 1
      max_batch_size: 32
      dynamic_batching: {{max_queue_delay: 0ms}}
      max_queue: 4096
      warmup: 2
routing:
  servers:
    - client_max_body_size: 16m
      client_body_buffer_size: 16m
      locations:
        - location: "^~ /v2"
          inference: {{}}
        - location: /hello
          return: 200 "hello"
"""

# wrk posts the body of a file, with the header the binary extension needs when there is one.
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
{extra}
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
"""


def request_bodies(work):
    """The demo's one-row request as JSON and as binary data; paths of their wrk scripts."""
    import numpy as np
    row = np.random.default_rng(1).random((1, 64), dtype=np.float32)
    scripts = {}
    text = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.ravel().tolist()}]})
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": row.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    for name, body, content_type, extra in (
            ("json", text.encode(), "application/json", ""),
            ("binary", header + row.tobytes(), "application/octet-stream",
             f'wrk.headers["Inference-Header-Content-Length"] = "{len(header)}"')):
        body_path = os.path.join(work, f"{name}.body")
        with open(body_path, "wb") as f:
            f.write(body)
        script = os.path.join(work, f"{name}.lua")
        with open(script, "w") as f:
            f.write(LUA.format(content_type=content_type, extra=extra, body=body_path))
        scripts[name] = script
    return scripts


def run(command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def sample(pid, url, script, work, name, seconds=5):
    """perf samples of the process while wrk -c32 drives `url`: req/s, CPU per request, library shares, top symbols."""
    data = os.path.join(work, f"{name}.perf")
    load = subprocess.Popen(["wrk", "-t2", "-c32", f"-d{seconds + 4}s", "-s", script, url],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    cpu_before, started = cpu_seconds([pid]), time.time()
    run(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-g", "-o", data, "-p", str(pid), "--", "sleep", str(seconds)])
    elapsed = time.time() - started
    cpu_after = cpu_seconds([pid])
    output = load.communicate()[0]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    report = run(["perf", "report", "-i", data, "--no-children", "--sort", "dso", "--stdio"]).stdout
    shares = [(m.group(2), float(m.group(1))) for m in
              (re.match(r"^\s+([\d.]+)%\s+(\S+)\s*$", line) for line in report.splitlines()) if m]
    symbols = run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,symbol", "--stdio", "-g", "none"]).stdout
    top = []
    for line in symbols.splitlines():
        match = re.match(r"^\s+([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(\S+)", line)
        if match and len(top) < 15:
            symbol = match.group(3)
            if symbol.startswith("$s"):
                symbol = run(["swift", "demangle", "--simplified", "--compact", symbol]).stdout.strip() or symbol
            top.append((match.group(2), symbol, float(match.group(1))))
    return {"rps": rps, "cpu_us": (cpu_after - cpu_before) / (rps * elapsed) * 1e6, "shares": shares, "top": top}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--no-perf", action="store_true", help="the alternating rounds only")
    arguments = parser.parse_args()
    sampling = not arguments.no_perf
    if sampling and not shutil.which("perf"):
        raise SystemExit("perf is not installed (Debian: apt-get install linux-perf), or run with --no-perf")
    work = tempfile.mkdtemp(prefix="kernel-inference-profile-")
    port = free_port()
    config = os.path.join(work, "kernel.yaml")
    with open(config, "w") as f:
        f.write(KERNEL_YAML.format(dir=work, port=port, model=DEMO))
    scripts = request_bodies(work)
    kernel = subprocess.Popen([KERNEL_BIN, "--role", "both", "--config", config],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    infer = f"{base}/v2/models/demo/infer"
    rounds = []
    samples = {}
    try:
        wait_port(port)
        for _ in range(30):  # readiness follows the warm-up
            if run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{base}/v2/health/ready"]).stdout == "200":
                break
            time.sleep(0.2)
        for name, script in scripts.items():  # each answers 200, or the figures mean nothing
            checked = wrk(infer, 1, "1s", threads=1, script=script)
            if checked["non2xx"] or checked["errors"]:
                raise SystemExit(f"the {name} request fails: {checked['output']}")
        wrk(f"{base}/hello", 32, "2s")  # warm-up
        for _ in range(arguments.rounds):
            hello = wrk(f"{base}/hello", 32, arguments.duration)
            json_run = wrk(infer, 32, arguments.duration, script=scripts["json"])
            binary_run = wrk(infer, 32, arguments.duration, script=scripts["binary"])
            rounds.append({"hello": hello, "json": json_run, "binary": binary_run})
        if sampling:
            for name, script in scripts.items():
                samples[name] = sample(kernel.pid, infer, script, work, name)
    finally:
        kernel.terminate()
        kernel.wait()
        shutil.rmtree(work, ignore_errors=True)

    def spread(values, digits=0):
        return (f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})")

    print(f"`{os.path.relpath(KERNEL_BIN, ROOT) if KERNEL_BIN.startswith(ROOT) else KERNEL_BIN}`, "
          f"{arguments.rounds} alternating rounds of `wrk -t2 -c32 -d{arguments.duration}`: median (min–max).")
    print()
    print("| | req/s | p99 | ratio to hello (same round) |")
    print("|---|---:|---:|---:|")
    hello_rps = [r["hello"]["rps"] for r in rounds]
    print(f"| `return 200` hello | {spread(hello_rps)} | {statistics.median(r['hello']['p99_ms'] for r in rounds):.2f} ms | 1 |")
    for name in ("json", "binary"):
        rps = [r[name]["rps"] for r in rounds]
        ratios = [r[name]["rps"] / r["hello"]["rps"] for r in rounds]
        p99 = statistics.median(r[name]["p99_ms"] for r in rounds)
        print(f"| demo MLP, {name} request | {spread(rps)} | {p99:.2f} ms | {spread(ratios, 2)} |")
    bad = sum(r[n]["non2xx"] for r in rounds for n in ("json", "binary"))
    print()
    print(f"Non-2xx inference answers: {bad}.")
    for name, result in samples.items():
        print()
        print(f"**{name} requests** under `wrk -t2 -c32` while sampled: {result['rps']:.0f} req/s, "
              f"{result['cpu_us']:.1f} µs of CPU per inference.")
        print()
        print("| library | share of CPU |")
        print("|---|---:|")
        for dso, share in result["shares"]:
            if share >= 0.5:
                print(f"| `{dso}` | {share:.1f} % |")
        print()
        print("Hottest symbols (self time):")
        print()
        for dso, symbol, share in result["top"]:
            print(f"- {share:.2f} % `{dso}` `{symbol[:110]}`")


if __name__ == "__main__":
    main()
