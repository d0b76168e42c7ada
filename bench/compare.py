#!/usr/bin/env python3
"""Two kernel builds under the same load in one run: `bench/compare.py BEFORE_BIN AFTER_BIN`.

Used to check that a change does not make the kernel slower. Both binaries run side by side (each on port 0, the
port read from its own `listening on` line, so neither can be mistaken for the other) with the same configuration;
wrk loads one, then the other, alternating for BENCH_ROUNDS rounds (default 5), for each workload:

- `hello`: `return 200 "hello"`, keep-alive, 64 connections;
- `demo`: an Open Inference Protocol JSON request to the demo MLP (1379-byte body), 32 connections;
- `ppocr`: the PP-OCR classifier with a binary tensor (a 442 KiB body, past `client_body_buffer_size`), 8
  connections.

Prints, per workload, each round's req/s and the median ratio after/before with its spread (lowest and highest
round ratio). Needs the models of scripts/models/make_models.py. BENCH_AFTER_LOCATION adds keys (`;`-separated) to
the newer build's `/v2` location only, for settings the older one does not know.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, wrk  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
DURATION = os.environ.get("BENCH_DURATION", "5s")

CONFIG = """
kernel:
  pid: {work}/kernel-{name}.pid
  error_log: {{path: stderr, level: notice}}
  event_loop_threads: 1
http:
  listen: 127.0.0.1:0
inference:
  models:
    - name: demo
      path: {root}/models/demo/1/model.onnx
      max_batch_size: 32
      dynamic_batching: {{max_queue_delay: 0ms}}
    - name: ppocr_cls
      path: {root}/models/ppocr_cls/1/model.onnx
      max_batch_size: 8
      dynamic_batching: {{max_queue_delay: 0ms}}
routing:
  servers:
    - client_max_body_size: 16m
      locations:
        - location: /
          return: 200 "hello"
        - location: "^~ /v2"
          inference: {{}}
{extra}"""


class Kernel:
    def __init__(self, binary, name, work, extra=""):
        self.name = name
        config = os.path.join(work, f"{name}.yaml")
        with open(config, "w") as f:
            f.write(CONFIG.format(work=work, name=name, root=ROOT, extra=extra))
        self.log = os.path.join(work, f"{name}.log")
        self.process = subprocess.Popen([binary, "--role", "both", "--config", config],
                                        stderr=open(self.log, "w"), stdout=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            text = open(self.log).read()
            if "kernel started" in text:
                self.port = int(re.search(r"listening on http 127\.0\.0\.1:(\d+)", text).group(1))
                return
            if self.process.poll() is not None:
                raise SystemExit(f"{binary} exited:\n{text}")
            time.sleep(0.05)
        raise SystemExit(f"{binary} did not start:\n{open(self.log).read()}")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def lua_post(work, body, content_type, extra_headers=""):
    """A wrk script that POSTs `body` (read from a file: a Lua string literal of 442 KiB is no fun)."""
    handle, script = tempfile.mkstemp(suffix=".lua", dir=work)
    with os.fdopen(handle, "wb") as f:
        f.write(b'wrk.method = "POST"\n')
        f.write(b'wrk.headers["Content-Type"] = "' + content_type.encode() + b'"\n' + extra_headers.encode())
        data_path = script + ".body"
        with open(data_path, "wb") as data:
            data.write(body)
        f.write(f'local file = io.open("{data_path}", "rb")\nwrk.body = file:read("*a")\nfile:close()\n'.encode())
    return script


def workloads(work):
    demo = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                   "data": np.linspace(-1, 1, 64).astype(np.float32).tolist()}]}).encode()
    image = np.random.default_rng(1).random((1, 3, 48, 192), dtype=np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(image)}}],
                         "outputs": [{"name": "save_infer_model/scale_0.tmp_1",
                                      "parameters": {"binary_data": False}}]}).encode()
    ppocr = lua_post(work, header + image, "application/octet-stream",
                     f'wrk.headers["Inference-Header-Content-Length"] = "{len(header)}"\n')
    return [("hello", "/", 64, None),
            ("demo", "/v2/models/demo/infer", 32, lua_post(work, demo, "application/json")),
            ("ppocr", "/v2/models/ppocr_cls/infer", 8, ppocr)]


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    before_bin, after_bin = (os.path.abspath(p) for p in sys.argv[1:])
    work = tempfile.mkdtemp(prefix="kernel-compare-")
    kernels = []
    try:
        # Keys only the newer build knows, for its `/v2` location (e.g. "client_body_buffer_size: 16m").
        extra = os.environ.get("BENCH_AFTER_LOCATION", "")
        extra = "".join(f"          {line}\n" for line in extra.split(";") if line.strip())
        kernels = [Kernel(before_bin, "before", work), Kernel(after_bin, "after", work, extra)]
        before, after = kernels
        print(f"before: {before_bin}\nafter: {after_bin}\n{ROUNDS} rounds of {DURATION} per side, alternating\n")
        for name, path, connections, script in workloads(work):
            for kernel in kernels:  # warm-up, and a check that each answers 2xx
                result = wrk(f"http://127.0.0.1:{kernel.port}{path}", connections, "1s", script=script)
                if result["non2xx"] or result["errors"] or result["rps"] == 0:
                    raise SystemExit(f"{kernel.name} fails {name}:\n{result['output']}")
            ratios, rows = [], []
            for number in range(ROUNDS):
                order = kernels if number % 2 == 0 else kernels[::-1]
                got = {}
                for kernel in order:
                    got[kernel.name] = wrk(f"http://127.0.0.1:{kernel.port}{path}", connections, DURATION,
                                           script=script)
                    if got[kernel.name]["non2xx"] or got[kernel.name]["errors"]:
                        raise SystemExit(f"{kernel.name} failed requests:\n{got[kernel.name]['output']}")
                ratio = got["after"]["rps"] / got["before"]["rps"]
                ratios.append(ratio)
                rows.append(f"| {number + 1} | {got['before']['rps']:.0f} | {got['after']['rps']:.0f} | {ratio:.3f} |")
            print(f"### {name} ({connections} connections)\n")
            print("| round | before req/s | after req/s | after/before |\n|---|---:|---:|---:|")
            print("\n".join(rows))
            print(f"\nMedian after/before: **{statistics.median(ratios):.3f}** "
                  f"(rounds from {min(ratios):.3f} to {max(ratios):.3f})\n")
    finally:
        for kernel in kernels:
            kernel.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
