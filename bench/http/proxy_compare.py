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
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from common import KERNEL_BIN, Stack, compare_builds, free_port, wait_port  # noqa: E402
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
        compare_builds(stack, edges, ROUNDS, CONNECTIONS, DURATION)
    except BaseException:
        stack.dump_logs()
        raise
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
