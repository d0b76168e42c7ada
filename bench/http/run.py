#!/usr/bin/env python3
"""`return 200 "hello"`: the kernel (etc/examples/hello.yaml) against nginx, same threads/processes, same run.

Prints a markdown section with req/s, p50, p99 and the ratio kernel/nginx for each round and the median.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import ROOT, KERNEL_BIN, NGINX_HELLO_CONF, wait_port, wrk, cpu_count, rss_kib, cpu_seconds  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
DURATION = os.environ.get("BENCH_DURATION", "10s")
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
NGINX_PORT = 8081
KERNEL_PORT = 8080



def main():
    threads = cpu_count()
    work = tempfile.mkdtemp(prefix="kernel-bench-http-")
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_HELLO_CONF.format(workers=threads, dir=work, port=NGINX_PORT))
    os.makedirs(os.path.join(ROOT, "run"), exist_ok=True)
    nginx = subprocess.Popen(["nginx", "-c", conf, "-p", work], stderr=subprocess.DEVNULL)
    kernel = subprocess.Popen([KERNEL_BIN, "--role", "both", "--config", os.path.join(ROOT, "etc/examples/hello.yaml")],
                              stderr=open(os.path.join(work, "kernel.log"), "w"))
    try:
        wait_port(NGINX_PORT)
        wait_port(KERNEL_PORT)
        wrk(f"http://127.0.0.1:{KERNEL_PORT}/", CONNECTIONS, "2s")  # warm-up
        wrk(f"http://127.0.0.1:{NGINX_PORT}/", CONNECTIONS, "2s")
        rows = []
        for round_number in range(1, ROUNDS + 1):
            before = cpu_seconds([kernel.pid])
            k = wrk(f"http://127.0.0.1:{KERNEL_PORT}/", CONNECTIONS, DURATION)
            k["cpu_us"] = (cpu_seconds([kernel.pid]) - before) * 1e6 / max(k["rps"] * seconds(DURATION), 1)
            before = cpu_seconds([nginx.pid], children=True)
            n = wrk(f"http://127.0.0.1:{NGINX_PORT}/", CONNECTIONS, DURATION)
            n["cpu_us"] = (cpu_seconds([nginx.pid], children=True) - before) * 1e6 / max(n["rps"] * seconds(DURATION), 1)
            rows.append((round_number, k, n))
        kernel_rss = rss_kib([kernel.pid])
        nginx_rss = rss_kib([nginx.pid], children=True)
    finally:
        for p in (kernel, nginx):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)

    out = []
    out.append("## HTTP: `return 200 \"hello\"`, kernel vs nginx\n")
    out.append(f"Command: `make bench` (bench/http/run.py): kernel `--role both --config etc/examples/hello.yaml` "
               f"({threads} event-loop threads) and nginx {nginx_version()} (`worker_processes {threads}`, "
               f"access_log off, same route), `wrk -t2 -c{CONNECTIONS} -d{DURATION} --latency`, keep-alive, "
               f"alternating, {ROUNDS} rounds after a 2 s warm-up each.\n")
    out.append("| round | kernel req/s | kernel p50 | kernel p99 | kernel CPU µs/req | nginx req/s | nginx p50 | nginx p99 | nginx CPU µs/req | ratio kernel/nginx |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for number, k, n in rows:
        ratio = k["rps"] / n["rps"] if n["rps"] else 0
        ratios.append(ratio)
        out.append(f"| {number} | {k['rps']:.0f} | {k['p50']} | {k['p99']} | {k['cpu_us']:.1f} | {n['rps']:.0f} | {n['p50']} | {n['p99']} | {n['cpu_us']:.1f} | {ratio:.2f} |")
    ratios.sort()
    out.append(f"\nMedian ratio kernel/nginx: **{ratios[len(ratios) // 2]:.2f}**. "
               f"Resident memory after the run: kernel {kernel_rss // 1024} MiB, nginx (master + workers) {nginx_rss // 1024} MiB.\n")
    print("\n".join(out))


def seconds(duration):
    """wrk's duration (`10s`, `2m`) in seconds."""
    return float(duration[:-1]) * (60 if duration.endswith("m") else 1)


def nginx_version():
    result = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
    return result.stderr.strip().split("/")[-1]


if __name__ == "__main__":
    main()
