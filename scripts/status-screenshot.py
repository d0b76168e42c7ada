#!/usr/bin/env python3
"""Makes docs/status-page.png: a kernel edge (an upstream group with a live kernel worker and a dead peer, the demo
model) under a minute of uneven traffic, its status page open in headless Chromium the whole time and shot at the
end (the DevTools protocol's Page.captureScreenshot, with the tests' browser driver).

Usage: scripts/status-screenshot.py [OUTPUT.png]   (KERNEL_BIN, KERNEL_ONNXRUNTIME_LIBRARY as for the tests)
"""
import base64
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
KERNEL_BIN = os.environ.get("KERNEL_BIN", os.path.join(ROOT, ".build", "debug", "kernel"))
DEMO = os.path.join(ROOT, "models", "demo", "1", "model.onnx")
sys.path.insert(0, os.path.join(ROOT, "Tests", "SystemTests"))
from browser_support import Browser  # noqa: E402

OUTPUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs", "status-page.png")
SECONDS = 60

CORE = """kernel:
  pid: {dir}/{name}.pid
  error_log: {{path: {dir}/{name}.log, level: notice}}
  event_loop_threads: 2
"""
WORKER = """uwsgi:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /
          return: 200 "from the worker"
"""
EDGE = """http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
status:
  history: 1m
upstreams:
  app:
    servers:
      - 127.0.0.1:{live}
      - 127.0.0.1:{dead} max_fails=1 fail_timeout=60s
inference:
  models:
    - name: demo
      path: {demo}
      max_batch_size: 16
      dynamic_batching: {{max_queue_delay: 5ms}}
routing:
  servers:
    - locations:
        - location: = /status
          status: {{}}
        - location: = /metrics
          metrics: {{}}
        - location: /hello
          return: 200 "hello"
        - location: /app/
          uwsgi_pass: app
          uwsgi_next_upstream: [error, timeout]
        - location: ^~ /v2
          inference: {{}}
"""


def start(directory, name, role, text):
    path = os.path.join(directory, name + ".yaml")
    with open(path, "w") as f:
        f.write(CORE.format(dir=directory, name=name) + text)
    process = subprocess.Popen([KERNEL_BIN, "--role", role, "--config", path], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    log = os.path.join(directory, name + ".log")
    deadline = time.time() + 60
    while time.time() < deadline:
        text = open(log).read() if os.path.exists(log) else ""
        found = re.findall(r"listening on \w+ 127\.0\.0\.1:(\d+)", text)
        if "kernel started" in text and found:
            return process, int(found[-1])
        if process.poll() is not None:
            sys.exit(f"{name} exited: {text}")
        time.sleep(0.05)
    sys.exit(f"{name} did not start")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def traffic(port, stop):
    """Requests at a rate that swells and falls, with some through the group and some inferences."""
    body = json.dumps({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32",
                                   "data": [0.25] * 128}]}).encode()
    began = time.time()
    count = 0
    while not stop.is_set():
        elapsed = time.time() - began
        rate = 30 + 25 * math.sin(elapsed / 9)
        count += 1
        try:
            if count % 7 == 0:
                urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/demo/infer", body,
                                                              {"Content-Type": "application/json"}), timeout=10).read()
            elif count % 3 == 0:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/app/x", timeout=10).read()
            else:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=10).read()
        except OSError:
            pass
        time.sleep(1 / rate)


def main():
    with tempfile.TemporaryDirectory(prefix="kernel-status-") as directory:
        worker, worker_port = start(directory, "worker", "worker", WORKER)
        edge, port = start(directory, "edge", "both", EDGE.format(live=worker_port, dead=free_port(), demo=DEMO))
        stop = threading.Event()
        threads = [threading.Thread(target=traffic, args=(port, stop)) for _ in range(2)]
        # The browser starts before the traffic, so its own start-up is not in the picture's latency.
        browser = Browser()
        try:
            browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=1060, deviceScaleFactor=1, mobile=False)
            browser.open(f"http://127.0.0.1:{port}/status")
            for thread in threads:
                thread.start()
            time.sleep(SECONDS)
            browser.evaluate("update()")
            shot = browser.call("Page.captureScreenshot", format="png")
            with open(OUTPUT, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            if browser.errors:
                sys.exit(f"the page reported errors: {browser.errors}")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            browser.close()
            for process in (edge, worker):
                process.terminate()
                process.wait(timeout=30)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
