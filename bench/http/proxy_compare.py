#!/usr/bin/env python3
"""Two builds of the kernel edge against each other over HTTP `proxy_pass` (keepalive pool), in front of the same
kernel worker, in the same run, rounds alternating which goes first: what a change to the `proxy_pass` path is
worth.

    BEFORE=/path/to/old/kernel python3 bench/http/proxy_compare.py

The newer build is KERNEL_BIN (default .build/release/kernel); the backend runs the newer build too. The edges and
the backend are configured as bench/http/proxy.py configures them. Each round runs `wrk -c$BENCH_CONNECTIONS
-d$BENCH_DURATION` against one edge and then the other and reads each edge's CPU (utime + stime from /proc) over its
run. Prints each round, then the medians of after/before for req/s and of before/after for CPU per request (above 1:
the newer build is faster, spends less) with their lowest and highest rounds.
"""
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from common import KERNEL_BIN, Stack, free_port, wait_port, wrk, measure_round  # noqa: E402
import proxy  # noqa: E402

BEFORE = os.environ.get("BEFORE")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "10"))
DURATION = os.environ.get("BENCH_DURATION", "3s")
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))


def main():
    if not BEFORE:
        raise SystemExit("BEFORE=/path/to/kernel (the build to compare against) is required")
    work = tempfile.mkdtemp(prefix="kernel-bench-proxy-compare-")
    stack = Stack(work)
    try:
        backend_port = free_port()
        backend_config = os.path.join(work, "backend.yaml")
        with open(backend_config, "w") as f:
            f.write(proxy.BACKEND_YAML.format(dir=work, port=backend_port))
        stack.start([KERNEL_BIN, "--role", "worker", "--config", backend_config], "backend.stderr")
        wait_port(backend_port)
        edges = {}
        for name, binary in (("before", BEFORE), ("after", KERNEL_BIN)):
            directory = os.path.join(work, name)
            os.makedirs(directory)
            port = free_port()
            config = os.path.join(directory, "edge.yaml")
            with open(config, "w") as f:
                f.write(proxy.EDGE_YAML.format(dir=directory, threads=proxy.THREADS, port=port, backend=backend_port,
                                               keepalive=proxy.KEEPALIVE))
            process = stack.start([binary, "--role", "edge", "--config", config], f"edge-{name}.stderr")
            wait_port(port)
            edges[name] = (f"http://127.0.0.1:{port}{proxy.PATH}", process)
        stack.check_alive()
        for url, _ in edges.values():
            wrk(url, CONNECTIONS, "2s")
        rows = []
        print(f"load average at start: {os.getloadavg()[0]:.2f}")
        print("| round | before req/s | before CPU µs/req | after req/s | after CPU µs/req |")
        print("|---|---:|---:|---:|---:|")
        for number in range(ROUNDS):
            order = ["before", "after"] if number % 2 == 0 else ["after", "before"]
            results = {name: measure_round(edges[name][0], [edges[name][1].pid], False, CONNECTIONS, DURATION)
                       for name in order}
            stack.check_alive()
            b, a = results["before"], results["after"]
            for who, r in (("before", b), ("after", a)):
                if r["non2xx"] or r["errors"]:
                    raise SystemExit(f"{who}: {r['non2xx']} non-2xx, {r['errors']}")
            rows.append((b, a))
            print(f"| {number + 1} | {b['rps']:.0f} | {b['cpu_us']:.1f} | {a['rps']:.0f} | {a['cpu_us']:.1f} |", flush=True)
        rps = [a["rps"] / b["rps"] for b, a in rows]
        cpu = [b["cpu_us"] / a["cpu_us"] for b, a in rows]
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
        print(f"median CPU µs/req before {statistics.median(b['cpu_us'] for b, _ in rows):.1f}, "
              f"after {statistics.median(a['cpu_us'] for _, a in rows):.1f}")
        print(f"req/s after/before: median {statistics.median(rps):.3f} ({min(rps):.3f} to {max(rps):.3f})")
        print(f"CPU/req before/after: median {statistics.median(cpu):.3f} ({min(cpu):.3f} to {max(cpu):.3f})")
    except BaseException:
        stack.dump_logs()
        raise
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
