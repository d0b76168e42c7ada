#!/usr/bin/env python3
"""Kernel OCR configurations against each other, in alternating rounds (the order reverses every round): images/s
of /v1/parse at --connections (wrk, the benchmark's image and body), p50/p99, resident memory, the kernel's CPU
milliseconds per answered image (its utime+stime over the run), and with --breakdown the per-step timings of the
answers (medians) at 1 and 8 concurrent clients. Ratios to the first configuration are taken within each round.

    python3 bench/ocr/compare.py base=etc/examples/ocr.yaml other=/tmp/other.yaml[@/tmp/kernel-before] \
        --rounds 3 --connections 8 --duration 20s [--breakdown]

Each configuration is a copy of etc/examples/ocr.yaml (its pid, listen and ../../models/ lines are rewritten);
KERNEL_OCR_VISION_LIBRARY or the library beside the binary is used.
"""
import importlib.util, json, os, signal, statistics, subprocess, sys, tempfile, time, threading, argparse
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
spec = importlib.util.spec_from_file_location("ocrbench", os.path.join(ROOT, "bench", "ocr", "run.py"))
ob = importlib.util.module_from_spec(spec); spec.loader.exec_module(ob)
from common import free_port, wait_port, rss_kib
ap = argparse.ArgumentParser()
ap.add_argument("variants", nargs="+", help="name=path/to/ocr.yaml[@binary]")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--connections", type=int, default=8)
ap.add_argument("--duration", default="15s")
ap.add_argument("--breakdown", action="store_true")
args = ap.parse_args()
work = tempfile.mkdtemp(prefix="ocr-ab-")
images = os.path.join(work, "images")
subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "ocr", "make_images.py"), images, "--count", "16"], check=True, capture_output=True)
name = sorted(f for f in os.listdir(images) if f.startswith("015_"))[0]
image = open(os.path.join(images, name), "rb").read()
body = os.path.join(work, "body")
open(body, "wb").write(f"--{ob.BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n".encode() + image + f"\r\n--{ob.BOUNDARY}--\r\n".encode())
script = os.path.join(work, "ocr.lua"); open(script, "w").write(ob.LUA.format(boundary=ob.BOUNDARY, body=body))
def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def breakdown(url, clients, count):
    import requests
    out = []; lock = threading.Lock()
    def worker():
        while True:
            with lock:
                if len(out) >= count: return
            r = requests.post(url, files={"file": ("image.png", image)}, timeout=300).json()
            with lock: out.append(r["timings"])
    ts = [threading.Thread(target=worker) for _ in range(clients)]
    [t.start() for t in ts]; [t.join() for t in ts]
    steps = {}
    for t in out[clients:]:
        for k, v in t.items():
            for field in ("ms", "queue_ms", "compute_ms", "batch_size"):
                if field in v: steps.setdefault((k, field), []).append(v[field])
    return {f"{k}.{f}": round(statistics.median(v), 1) for (k, f), v in steps.items()}
results = {}
for r in range(args.rounds):
    order = args.variants if r % 2 == 0 else list(reversed(args.variants))
    for v in order:
        label, spec_ = v.split("=", 1)
        path, _, binary = spec_.partition("@")
        binary = binary or os.path.join(ROOT, ".build", "release", "kernel")
        d = tempfile.mkdtemp(dir=work); port = free_port()
        text = open(path).read()
        text = text.replace("pid: ../../run/kernel-ocr.pid", f"pid: {d}/kernel.pid\n  error_log: {{path: {d}/kernel-error.log, level: notice}}\n  event_loop_threads: auto")
        text = text.replace("../../models/", os.path.join(ROOT, "models") + "/").replace("listen: 8100", f'listen: "127.0.0.1:{port}"\n  keepalive_requests: 1000000')
        cfg = os.path.join(d, "k.yaml"); open(cfg, "w").write(text)
        p = subprocess.Popen([binary, "--role", "both", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port); url = f"http://127.0.0.1:{port}/v1/parse"
            texts = ob.post_texts(url, image)
            ob.wrk(url, 2, "3s", script=script)
            load = os.getloadavg()[0]
            c0 = cpu_seconds(p.pid)
            res = ob.wrk(url, args.connections, args.duration, script=script)
            c1 = cpu_seconds(p.pid)
            n = res["rps"] * float(args.duration.rstrip("s"))
            entry = {"rps": res["rps"], "p50": res["p50"], "p99": res["p99"], "rss_mib": rss_kib([p.pid]) / 1024,
                     "cpu_ms_per_image": (c1 - c0) / max(n, 1) * 1000, "load": load, "texts_ok": len(texts) == 4,
                     "non2xx": res["non2xx"]}
            if args.breakdown and r == 0:
                entry["breakdown1"] = breakdown(url, 1, 6)
                entry["breakdown8"] = breakdown(url, 8, 32)
            results.setdefault(label, []).append(entry)
            print(label, json.dumps(entry), flush=True)
        finally:
            p.send_signal(signal.SIGTERM); p.wait(30)
labels = [v.split("=", 1)[0] for v in args.variants]
print("summary")
for l in labels:
    rs = [e["rps"] for e in results[l]]
    print(f"{l}: images/s median {statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f}) per round {[round(x, 2) for x in rs]}; "
          f"RSS median {statistics.median([e['rss_mib'] for e in results[l]]):.0f} MiB; CPU ms/image median {statistics.median([e['cpu_ms_per_image'] for e in results[l]]):.0f}")
if len(labels) > 1:
    for l in labels[1:]:
        ratios = [b["rps"] / a["rps"] for a, b in zip(results[labels[0]], results[l])]
        print(f"{l}/{labels[0]}: median {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
