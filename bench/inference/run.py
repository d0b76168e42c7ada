#!/usr/bin/env python3
"""The comparison this project exists for, in one run of alternating rounds: the kernel's serving path against its
own `return 200`, against ONNX Runtime alone (the in-process ceiling), and against the tutorial's nginx → uWSGI →
Flask + onnxruntime stack.

Three sections, each with its own kernel (`--role both`, one model instance with 1 intra-op thread, dynamic batching
with max_queue_delay 0) and, where it is compared, its own nginx → uWSGI (master, lazy, 3 workers) → Flask stack:

- demo: the demo MLP, FP32 [1, 64] as JSON. Kernel inference against the same kernel process's `return 200` on
  another location, and against the Flask stack. Targets: inference ≥ 0.8 × hello, ≥ 10 × the stack, p99 ≤ ½.
  The same request with binary tensors and both ceilings (below) for reference.
- ppocr_cls: the PP-OCR text-direction classifier, FP32 [1, 3, 48, 192], with binary tensors (Triton's binary
  extension: `Inference-Header-Content-Length`, `binary_data_size`, outputs with `binary_data`) and as JSON,
  against the in-process ceiling (KernelModelBench: ONNX Runtime in a tight loop, batch 1, 1 thread). Targets:
  binary ≥ 0.9 × the ceiling, JSON ≥ 0.8. The Flask stack (JSON) for reference.
- text: the BYTES model of scripts/models/make_models.py (`text` [1, 1] -> `label`, `normalized`), the same sides.

The kernel batches what queues while a run goes on, so at 32 connections it can pass the batch-1 ceiling: each
section also runs the model at the kernel's largest batch in the same tight loop ("ceiling-batch", rows/s), the
throughput no serving path can pass with one instance.

Every round runs every side of a section once, for BENCH_DURATION at each of BENCH_CONNECTIONS, the order rotating
from round to round so that no side always follows the same one; tables give each side's median and min-max over
the rounds, and each ratio taken within a round (both sides under the same load), median and min-max.

Before any measurement each side is checked to be what it claims: the port is listened on by the process started
for it (a stale process or another program holding the port aborts the bench), the kernel says it is the kernel
(`Server: kernel/...`, `/v2` metadata name "kernel") and has the model ready, nginx says it is nginx and its pid
file names the nginx started, uWSGI's socket is held by the uWSGI started (pid file too) and its app answers with
the `X-Bench-Backend` header of a worker of that uWSGI, and every side's answer to the benchmark's request is the
model's (compared with onnxruntime run here). After the warm-up uWSGI must run a master and 3 workers. Any failure
stops the bench with a message saying which side and why, with the logs.

Environment: BENCH_DURATION (10s), BENCH_ROUNDS (3), BENCH_CONNECTIONS (32; a comma list gives a row per count),
BENCH_QUICK=1 (3s and 2 rounds unless those are set: for trying it out), BENCH_MODELS (demo,ppocr_cls,text),
BENCH_SIDES (every side; e.g. `flask,ceiling` to run only those), KERNEL_BIN, KERNEL_MODEL_BENCH. Prints a
markdown section; bench/run.sh (`make bench`) writes it to docs/performance.md.
"""
import http.client
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import ROOT, KERNEL_BIN, Stack, free_port, listening_pids, process_tree, rss_kib  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
DURATION = os.environ.get("BENCH_DURATION", "3s" if QUICK else "10s")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2" if QUICK else "3"))
WARMUP = "1s" if QUICK else "3s"
CONNECTIONS = [int(c) for c in os.environ.get("BENCH_CONNECTIONS", "32").split(",")]
MODEL_BENCH = os.environ.get("KERNEL_MODEL_BENCH", os.path.join(os.path.dirname(KERNEL_BIN), "KernelModelBench"))
HERE = os.path.dirname(os.path.abspath(__file__))

# The tutorial's stack. bench/processes/run.py writes its stack from these two templates too.
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

KERNEL_YAML = """
kernel:
  pid: {dir}/kernel.pid
  error_log: {{path: {error_log}, level: notice}}
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
      client_body_buffer_size: 16m   # bodies in memory, as the nginx configuration above keeps them
      locations:
        - location: = /hello
          return: 200 "hello"
        - location: "^~ /v2"
          inference: {{}}
"""

# wrk sends the body file as it is: read in binary mode, so a binary tensor's bytes arrive untouched.
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
{headers}local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*all")
f:close()
"""


class Section:
    """One model: its request, the kernel's batching, the sides measured and the ratios reported.

    sides: names among "kernel-json", "kernel-binary", "hello", "ceiling", "ceiling-batch", "flask". ratios: (label, numerator,
    denominator, "rps" or "p99", target text or None, predicate on the value or None)."""

    def __init__(self, name, title, inputs, batch, sides, ratios):
        self.name, self.title, self.inputs, self.batch, self.sides, self.ratios = name, title, inputs, batch, sides, ratios
        self.path = os.path.join(ROOT, "models", name, "1", "model.onnx")


def demo_inputs():
    import numpy as np
    return [("input", "FP32", np.random.default_rng(1).random((1, 64), dtype=np.float32))]


def ppocr_inputs():
    import numpy as np
    return [("x", "FP32", np.random.default_rng(1).random((1, 3, 48, 192), dtype=np.float32))]


def text_inputs():
    import numpy as np
    return [("text", "BYTES", np.array([["Kernel"]], dtype=object))]


at_least = lambda bound: (lambda value: value >= bound)  # noqa: E731
at_most = lambda bound: (lambda value: value <= bound)  # noqa: E731

# The sides and targets of a model measured against its in-process ceiling (the classifier, the BYTES model).
CEILING_SIDES = ["kernel-binary", "kernel-json", "ceiling", "ceiling-batch", "flask"]
CEILING_RATIOS = [
    ("kernel binary / ceiling (req/s)", "kernel-binary", "ceiling", "rps", "≥ 0.9", at_least(0.9)),
    ("kernel JSON / ceiling (req/s)", "kernel-json", "ceiling", "rps", "≥ 0.8", at_least(0.8)),
    ("kernel binary / ceiling at the kernel's largest batch (rows/s)", "kernel-binary", "ceiling-batch", "rps",
     None, None),
    ("kernel JSON / Flask stack (req/s)", "kernel-json", "flask", "rps", None, None),
    ("kernel JSON p99 / Flask stack p99", "kernel-json", "flask", "p99", None, None),
]

SECTIONS = [
    Section("demo", "demo MLP, FP32 [1, 64]", demo_inputs, 32,
            ["kernel-json", "kernel-binary", "hello", "flask", "ceiling", "ceiling-batch"], [
        ("kernel JSON / kernel `return 200` (req/s)", "kernel-json", "hello", "rps", "≥ 0.8", at_least(0.8)),
        ("kernel binary tensors / kernel `return 200` (req/s)", "kernel-binary", "hello", "rps", None, None),
        ("kernel JSON / Flask stack (req/s)", "kernel-json", "flask", "rps", "≥ 10", at_least(10)),
        ("kernel JSON p99 / Flask stack p99", "kernel-json", "flask", "p99", "≤ 0.5", at_most(0.5)),
        ("kernel JSON / ceiling (req/s)", "kernel-json", "ceiling", "rps", None, None),
        ("kernel JSON / ceiling at the kernel's largest batch (rows/s)", "kernel-json", "ceiling-batch", "rps", None, None),
    ]),
    Section("ppocr_cls", "PP-OCR classifier, FP32 [1, 3, 48, 192]", ppocr_inputs, 8,
            CEILING_SIDES, CEILING_RATIOS),
    Section("text", "text model, BYTES [1, 1]", text_inputs, 32,
            CEILING_SIDES, CEILING_RATIOS),
]

SIDE_LABELS = {
    "kernel-json": "kernel, JSON",
    "kernel-binary": "kernel, binary tensors",
    "hello": "kernel `return 200` (same process)",
    "ceiling": "in-process ceiling (KernelModelBench, batch 1)",
    "ceiling-batch": "in-process ceiling at the kernel's largest batch, rows/s",
    "flask": "nginx → uWSGI → Flask, JSON",
}


class BenchError(SystemExit):
    """A side that is not what it claims, or that fails: the bench stops with this message."""


# --- requests and answers ----------------------------------------------------------------------------------------

def json_request(inputs):
    return json.dumps({"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype,
                                   "data": [str(item) for item in array.ravel()] if datatype == "BYTES"
                                   else array.ravel().tolist()}
                                  for name, datatype, array in inputs]}).encode()


def raw_tensor(datatype, array):
    """A tensor's bytes in Triton's binary form: BYTES as a 4-byte little-endian length and the UTF-8 bytes per
    element, any other type its little-endian values, row-major."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(item)) + item for item in (str(s).encode() for s in array.ravel()))
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def binary_request(inputs, outputs):
    """(body, JSON header length) of a request with every input as binary data and every output asked as binary."""
    blobs = [raw_tensor(datatype, array) for _, datatype, array in inputs]
    header = json.dumps({
        "inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype,
                    "parameters": {"binary_data_size": len(blob)}}
                   for (name, datatype, array), blob in zip(inputs, blobs)],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs]}).encode()
    return header + b"".join(blobs), len(header)


NUMPY_TYPES = {"BOOL": "bool", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
               "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


def answered_outputs(headers, body):
    """The outputs of an inference response, JSON or binary, as numpy arrays by name."""
    import numpy as np
    header_length = headers.get("Inference-Header-Content-Length")
    header = json.loads(body[:int(header_length)] if header_length else body)
    binary = body[int(header_length):] if header_length else b""
    outputs = {}
    for output in header["outputs"]:
        shape, datatype = output["shape"], output["datatype"]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            data = output["data"]
            array = np.array(data, dtype=object if datatype == "BYTES" else NUMPY_TYPES[datatype])
        else:
            blob, binary = binary[:size], binary[size:]
            if datatype == "BYTES":
                items = []
                while blob:
                    (length,) = struct.unpack("<I", blob[:4])
                    items.append(blob[4:4 + length].decode())
                    blob = blob[4 + length:]
                array = np.array(items, dtype=object)
            else:
                array = np.frombuffer(blob, dtype=NUMPY_TYPES[datatype])
        outputs[output["name"]] = array.reshape(shape)
    if binary:
        raise ValueError(f"{len(binary)} bytes after the last binary output")
    return outputs


def reference_outputs(section):
    """What the model answers to the section's request, computed by onnxruntime here (1 thread)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(section.path, options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, {name: array for name, _, array in section.inputs()})
    return dict(zip(names, values))


def same_outputs(answered, expected):
    """Why `answered` is not `expected` (names, shapes, values: floats to 1e-4 relative, the rest exactly), or None."""
    import numpy as np
    if sorted(answered) != sorted(expected):
        return f"outputs {sorted(answered)}, the model has {sorted(expected)}"
    for name, want in expected.items():
        got = answered[name]
        if list(got.shape) != list(want.shape):
            return f"output {name!r} shape {list(got.shape)}, the model's is {list(want.shape)}"
        if want.dtype == object:
            if [str(v) for v in got.ravel()] != [str(v) for v in want.ravel()]:
                return f"output {name!r} {got.ravel()[:4]}..., the model's {want.ravel()[:4]}..."
        elif not np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-4, atol=1e-5):
            return f"output {name!r} {got.ravel()[:4]}..., the model's {want.ravel()[:4]}..."
    return None


def ask(port, method, path, body=None, headers=None, timeout=30):
    """(status, headers, body) of one request on a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


# --- measuring ---------------------------------------------------------------------------------------------------

def millis(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]


def wrk(url, connections, duration, script=None, threads=2):
    """One wrk --latency run: req/s, p50 and p99 (ms) and the failures it saw. Percentiles come from the "Latency
    Distribution" lines only (a stdev column such as "93.50%" is not the 50th percentile); wrk pads a value in seconds
    with a space (" 1.17s ")."""
    command = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration}", "--latency"]
    if script:
        command += ["-s", script]
    run = subprocess.run(command + [url], capture_output=True, text=True)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", run.stdout)
    p50 = re.search(r"^\s+50%\s+(\S+)[ \t]*$", run.stdout, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)[ \t]*$", run.stdout, re.M)
    if not rps:
        raise BenchError(f"wrk {url} failed ({run.returncode}): {run.stdout[-800:]} {run.stderr[-800:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", run.stdout)
    errors = re.search(r"Socket errors: (.*)", run.stdout)
    return {"rps": float(rps.group(1)), "p50": millis(p50.group(1)) if p50 else None,
            "p99": millis(p99.group(1)) if p99 else None,
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "errors": errors.group(1) if errors else ""}


def duration_seconds(duration):
    return float(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def run_ceiling(section, seconds, batch=1):
    """KernelModelBench on the section's model and input shape: runs/s at batch 1, rows/s at a larger batch."""
    shape = ",".join(str(n) for n in (batch,) + section.inputs()[0][2].shape[1:])
    run = subprocess.run([MODEL_BENCH, section.path, "--shape", shape, "--seconds", str(seconds),
                          "--intra-op-threads", "1", "--instances", "1"], capture_output=True, text=True)
    if run.returncode != 0:
        raise BenchError(f"{section.name}: the in-process ceiling ({MODEL_BENCH}) failed ({run.returncode}): "
                         f"{run.stderr.strip()[-800:]}")
    answer = json.loads(run.stdout)
    if os.path.realpath(answer.get("model", "")) != os.path.realpath(section.path) or answer["runs_per_second"] <= 0:
        raise BenchError(f"{section.name}: KernelModelBench answered {run.stdout.strip()}")
    return {"rps": answer["rows_per_second"], "p50": None, "p99": None, "non2xx": 0, "errors": ""}


# --- the sides ---------------------------------------------------------------------------------------------------

def show_logs(work):
    """The end of every log under the work directory, on stderr: what a side said before it failed."""
    for directory, _, names in sorted(os.walk(work)):
        for name in sorted(names):
            if name.endswith((".log", ".stderr")):
                with open(os.path.join(directory, name), errors="replace") as f:
                    text = f.read()[-1500:]
                if text.strip():
                    sys.stderr.write(f"--- {os.path.relpath(os.path.join(directory, name), work)}\n{text}\n")


def wait_listening(stack, name, port, process, timeout=120):
    """Waits until `port` is listened on, then checks that the listener is `process` or one of its children."""
    deadline = time.time() + timeout
    while True:
        if process.poll() is not None:
            show_logs(stack.work)
            raise BenchError(f"{name} exited with {process.returncode} before listening on port {port}; "
                             f"its logs are above (from {stack.work})")
        owners = listening_pids(port)
        if owners:
            tree = process_tree([process.pid], children=True)
            if not set(owners) <= set(tree):
                raise BenchError(f"{name}: port {port} is listened on by pids {owners}, not by the {name} started "
                                 f"(pid {process.pid}, its processes {tree}): another program holds the port")
            return
        if time.time() > deadline:
            show_logs(stack.work)
            raise BenchError(f"{name} (pid {process.pid}) does not listen on port {port} after {timeout}s")
        time.sleep(0.1)


def check_pid_file(name, path, process):
    try:
        with open(path) as f:
            written = int(f.read().strip())
    except (OSError, ValueError) as error:
        raise BenchError(f"{name}: no pid in {path} ({error})")
    if written != process.pid:
        raise BenchError(f"{name}: {path} names pid {written}, the {name} started is {process.pid}")


def start_kernel(stack, section, work):
    directory = os.path.join(work, f"kernel-{section.name}")
    os.makedirs(directory)
    port = free_port()
    config = os.path.join(directory, "kernel.yaml")
    with open(config, "w") as f:
        f.write(KERNEL_YAML.format(dir=directory, port=port, name=section.name, path=section.path, batch=section.batch,
                                   error_log=os.path.join(work, f"kernel-{section.name}-error.log")))
    process = stack.start([KERNEL_BIN, "--role", "both", "--config", config], f"kernel-{section.name}.stderr")
    wait_listening(stack, f"kernel ({section.name})", port, process)
    check_pid_file("kernel", os.path.join(directory, "kernel.pid"), process)
    status, headers, body = ask(port, "GET", "/v2")
    if status != 200 or not headers.get("Server", "").startswith("kernel") or json.loads(body).get("name") != "kernel":
        raise BenchError(f"kernel ({section.name}): GET /v2 answered {status} Server {headers.get('Server')!r} {body[:200]!r}")
    deadline = time.time() + 120
    while ask(port, "GET", f"/v2/models/{section.name}/ready")[0] != 200:
        status, _, body = ask(port, "GET", f"/v2/models/{section.name}")
        # A model that failed to load says why in its metadata error, as Triton's "... is not at ready state: why".
        failed = status != 200 and b"is not at ready state:" in body
        if failed or time.time() > deadline or process.poll() is not None:
            show_logs(stack.work)
            raise BenchError(f"kernel ({section.name}): the model {section.path} did not load and get ready "
                             f"({status} {body[:300].decode(errors='replace')}); the kernel's logs are above")
        time.sleep(0.2)
    status, headers, body = ask(port, "GET", "/hello")
    if status != 200 or body != b"hello" or not headers.get("Server", "").startswith("kernel"):
        raise BenchError(f"kernel ({section.name}): GET /hello answered {status} {headers.get('Server')!r} {body[:100]!r}")
    return process, port


def start_flask_stack(stack, section, work):
    """uWSGI (master, lazy, 3 workers) with the Flask app, then nginx uwsgi_pass-ing to it; both checked."""
    directory = os.path.join(work, f"flask-{section.name}")
    os.makedirs(directory)
    nginx_port, uwsgi_port = free_port(), free_port()
    ini = os.path.join(directory, "uwsgi.ini")
    with open(ini, "w") as f:
        f.write(UWSGI_INI.format(uwsgi_port=uwsgi_port, here=HERE))
    conf = os.path.join(directory, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(workers=os.cpu_count() or 1, dir=directory, port=nginx_port, uwsgi_port=uwsgi_port))
    environment = dict(os.environ, FLASK_MODEL_NAME=section.name, FLASK_MODEL_PATH=section.path)
    uwsgi_pid_file = os.path.join(directory, "uwsgi.pid")
    uwsgi = stack.start([shutil.which("uwsgi") or "uwsgi", "--ini", ini, "--pidfile", uwsgi_pid_file],
                        f"uwsgi-{section.name}.log", env=environment)
    wait_listening(stack, "uWSGI", uwsgi_port, uwsgi)
    check_pid_file("uWSGI", uwsgi_pid_file, uwsgi)
    nginx = stack.start(["nginx", "-c", conf, "-p", directory], f"nginx-{section.name}.stderr")
    wait_listening(stack, "nginx", nginx_port, nginx)
    check_pid_file("nginx", os.path.join(directory, "nginx.pid"), nginx)
    return nginx, uwsgi, nginx_port, uwsgi_port


def check_kernel_answer(headers):
    if not headers.get("Server", "").startswith("kernel"):
        raise BenchError(f"kernel: an inference answered with Server {headers.get('Server')!r}")


def check_flask_answer(name, headers, uwsgi):
    server, backend = headers.get("Server", ""), headers.get("X-Bench-Backend", "")
    if not server.startswith("nginx"):
        raise BenchError(f"{name}: Server {server!r}: not nginx")
    found = re.fullmatch(r"flask-onnxruntime pid=(\d+)", backend)
    tree = process_tree([uwsgi.pid], children=True)
    if not found or int(found.group(1)) not in tree:
        raise BenchError(f"{name}: X-Bench-Backend {backend!r} is not a worker of the uWSGI started ({tree})")


def check_inference(name, port, path, body, headers, expected, answered_by=None, attempts=1):
    """The side's answer to the bench's request is the model's; `answered_by` checks the response headers."""
    for attempt in range(attempts):
        status, response_headers, answer = ask(port, "POST", path, body, headers)
        if status == 200:
            break
        if attempt + 1 == attempts:
            raise BenchError(f"{name}: POST {path} answered {status} {answer[:300]!r}")
        time.sleep(0.5)  # lazy uWSGI workers load the app on their first request
    if answered_by:
        answered_by(response_headers)
    try:
        why = same_outputs(answered_outputs(response_headers, answer), expected)
    except (ValueError, KeyError, TypeError) as error:
        why = f"unreadable answer ({error}): {answer[:200]!r}"
    if why:
        raise BenchError(f"{name}: {why}")


# --- one section -------------------------------------------------------------------------------------------------

def wanted(side):
    chosen = os.environ.get("BENCH_SIDES")
    return not chosen or side in chosen.split(",")


def bench_section(section, work):
    import onnxruntime as ort
    if not os.path.exists(section.path):
        raise BenchError(f"{section.path} is missing: python3 scripts/models/make_models.py")
    sides = [side for side in section.sides if wanted(side)]
    inputs = section.inputs()
    outputs = [output.name for output in ort.InferenceSession(section.path, providers=["CPUExecutionProvider"]).get_outputs()]
    expected = reference_outputs(section)
    infer_path = f"/v2/models/{section.name}/infer"

    bodies = {"json": (json_request(inputs), {"Content-Type": "application/json"})}
    binary, header_length = binary_request(inputs, outputs)
    bodies["binary"] = (binary, {"Content-Type": "application/octet-stream",
                                 "Inference-Header-Content-Length": str(header_length)})
    scripts = {}
    for kind, (body, headers) in bodies.items():
        body_path = os.path.join(work, f"{section.name}-{kind}.body")
        with open(body_path, "wb") as f:
            f.write(body)
        scripts[kind] = os.path.join(work, f"{section.name}-{kind}.lua")
        extra = "".join(f'wrk.headers["{name}"] = "{value}"\n' for name, value in headers.items() if name != "Content-Type")
        with open(scripts[kind], "w") as f:
            f.write(LUA.format(content_type=headers["Content-Type"], headers=extra, body=body_path))

    stack = Stack(work)
    try:
        targets = {}  # side -> (url, script) for wrk
        kernel = nginx = uwsgi = None
        if any(side.startswith("kernel") or side == "hello" for side in sides):
            kernel, port = start_kernel(stack, section, work)
            for kind in ("json", "binary"):
                if f"kernel-{kind}" in sides:
                    body, headers = bodies[kind]
                    check_inference(f"kernel, {kind} ({section.name})", port, infer_path, body, headers, expected,
                                    answered_by=check_kernel_answer)
                    targets[f"kernel-{kind}"] = (f"http://127.0.0.1:{port}{infer_path}", scripts[kind])
            if "hello" in sides:
                targets["hello"] = (f"http://127.0.0.1:{port}/hello", None)
        if "flask" in sides:
            nginx, uwsgi, nginx_port, _ = start_flask_stack(stack, section, work)
            body, headers = bodies["json"]
            check_inference(f"nginx → uWSGI → Flask ({section.name})", nginx_port, infer_path, body, headers,
                            expected, answered_by=lambda h: check_flask_answer("nginx → uWSGI → Flask", h, uwsgi),
                            attempts=120)
            targets["flask"] = (f"http://127.0.0.1:{nginx_port}{infer_path}", scripts["json"])
        if "ceiling" in sides or "ceiling-batch" in sides:
            run_ceiling(section, 0.2)  # it runs, on this model

        for side, (url, script) in targets.items():  # warm-up: connections, lazy workers, batch sizes
            wrk(url, max(CONNECTIONS), WARMUP, script=script)
        stack.check_alive()
        if uwsgi is not None:
            workers = process_tree([uwsgi.pid], children=True)
            if len(workers) != 4:
                raise BenchError(f"uWSGI ({section.name}) should run a master and 3 workers, found {workers}")
            check_inference(f"nginx → uWSGI → Flask ({section.name})", nginx_port, infer_path, *bodies["json"],
                            expected, answered_by=lambda h: check_flask_answer("nginx → uWSGI → Flask", h, uwsgi))

        results = {c: {side: [] for side in sides} for c in CONNECTIONS}
        for connections in CONNECTIONS:
            for number in range(ROUNDS):
                order = sides[number % len(sides):] + sides[:number % len(sides)]
                for side in order:
                    if side.startswith("ceiling"):
                        batch = section.batch if side == "ceiling-batch" else 1
                        results[connections][side].append(run_ceiling(section, duration_seconds(DURATION), batch))
                    else:
                        url, script = targets[side]
                        results[connections][side].append(wrk(url, connections, DURATION, script=script))
                    stack.check_alive()
        memory = {}
        if kernel is not None:
            memory["kernel"] = rss_kib([kernel.pid], children=True)
        if nginx is not None:
            memory["Flask stack (nginx + uWSGI master and 3 workers)"] = rss_kib([nginx.pid, uwsgi.pid], children=True)
    finally:
        stack.stop()
    return {"sides": sides, "results": results, "memory": memory, "request_bytes": {k: len(v[0]) for k, v in bodies.items()}}


# --- tables ------------------------------------------------------------------------------------------------------

def spread(values, digits=0, unit=""):
    return f"{min(values):.{digits}f}{unit}–{max(values):.{digits}f}{unit}"


def section_markdown(section, outcome):
    sides, results = outcome["sides"], outcome["results"]
    sizes = outcome["request_bytes"]
    lines = [f"### {section.title}", "",
             f"Request bodies: JSON {sizes['json']} bytes, binary {sizes['binary']} bytes."
             + (" Resident memory after the rounds: " + ", ".join(f"{who} {kib / 1024:.0f} MiB" for who, kib in
                                                                 outcome["memory"].items()) + "." if outcome["memory"] else ""),
             "",
             "| connections | side | req/s median | min–max | per round | p50 median | p99 median | p99 min–max |",
             "|---:|---|---:|---:|---|---:|---:|---:|"]
    for connections in CONNECTIONS:
        for side in sides:
            runs = results[connections][side]
            rps = [r["rps"] for r in runs]
            failures = "".join(f" ({r['non2xx']} non-2xx, {r['errors'] or 'no socket errors'})"
                               for r in runs if r["non2xx"] or r["errors"])
            p50 = [r["p50"] for r in runs if r["p50"] is not None]
            p99 = [r["p99"] for r in runs if r["p99"] is not None]
            if not p99:  # the ceiling has no latency distribution
                latency = "| – | – | – |"
            else:
                latency = f"| {statistics.median(p50):.2f} ms | {statistics.median(p99):.2f} ms | {spread(p99, 2, ' ms')} |"
            lines.append(f"| {connections} | {SIDE_LABELS[side]}{failures} | {statistics.median(rps):.0f} | {spread(rps)} | "
                         f"{', '.join(f'{v:.0f}' for v in rps)} {latency}")
    ratio_lines = []
    for connections in CONNECTIONS:
        for label, numerator, denominator, metric, target, met in section.ratios:
            if numerator not in sides or denominator not in sides:
                continue
            values = [a[metric] / b[metric] for a, b in zip(results[connections][numerator], results[connections][denominator])
                      if a[metric] is not None and b[metric]]
            if not values:
                continue
            median = statistics.median(values)
            verdict = "–" if met is None else ("yes" if met(median) else "**no**")
            ratio_lines.append(f"| {connections} | {label} | {target or '–'} | **{median:.2f}** | {spread(values, 2)} | {verdict} |")
    if ratio_lines:
        lines += ["", "| connections | ratio (within each round) | target | median | min–max | met |",
                  "|---:|---|---:|---:|---:|---|"] + ratio_lines
    return "\n".join(lines)


def main():
    for tool in ("wrk", "nginx", "uwsgi"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise BenchError(f"bench/inference: {tool} is missing (scripts/setup.sh installs it)")
    chosen = os.environ.get("BENCH_MODELS")
    sections = [s for s in SECTIONS if not chosen or s.name in chosen.split(",")]
    needs_kernel = any(wanted(side) for s in sections for side in s.sides if side.startswith("kernel") or side == "hello")
    needs_ceiling = any(wanted(side) for s in sections for side in s.sides if side.startswith("ceiling"))
    for binary, needed in ((KERNEL_BIN, needs_kernel), (MODEL_BENCH, needs_ceiling)):
        if needed and not os.path.exists(binary):
            raise BenchError(f"bench/inference: {binary} is missing: swift build -c release")
    work = tempfile.mkdtemp(prefix="kernel-bench-inference-")
    out = ["## Inference: the serving path against `return 200`, the in-process ceiling and nginx → uWSGI → Flask", "",
           f"{ROUNDS} rounds; in each, every side of a model runs once for {DURATION} (wrk, 2 threads) at "
           f"{', '.join(map(str, CONNECTIONS))} connections, in an order that rotates from round to round. Medians "
           "and min–max over the rounds; ratios are taken within each round. The kernel runs `--role both` with one "
           "model instance (1 intra-op thread) and dynamic batching with max_queue_delay 0 (a run takes whatever "
           "queued while the previous one ran), `return 200 \"hello\"` on `= /hello` of the same process. The Flask "
           "stack is the tutorial's: nginx (one worker per core) → uWSGI (master, lazy, 3 workers, 1 thread) → "
           "Flask with an onnxruntime session per worker (1 intra-op thread). The ceiling is KernelModelBench: ONNX "
           "Runtime on the same input in a tight loop, batch 1, 1 thread, no HTTP (and at the kernel's largest batch: "
           "the most rows/s one instance can give). Each side is checked to be what "
           "it claims (its port's listener, `Server`, pid files, the Flask worker's `X-Bench-Backend`, the model's "
           "answer) before it is measured.", ""]
    try:
        for section in sections:
            out.append(section_markdown(section, bench_section(section, work)))
            out.append("")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(out))


if __name__ == "__main__":
    main()
