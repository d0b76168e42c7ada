#!/usr/bin/env python3
"""CPU per request of the kernel's uwsgi listener alone: no nginx in front, a fixed number of requests.

Starts `KERNEL_BIN --role worker` with bench/uwsgi/worker.yaml.template, then CLIENTS processes each open a
connection per request (as nginx's uwsgi_pass does), send the packet nginx sends for `GET /v1/parse` and read the
answer to EOF. Prints the kernel's CPU time per request. With `--perf FILE`, `perf record -g` samples the kernel
process during the measured requests (for `perf report -i FILE`).

    KERNEL_BIN=.build/release/kernel python3 bench/uwsgi/direct.py [--requests 20000] [--clients 8] [--perf FILE]
"""
import argparse
import multiprocessing
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from common import KERNEL_BIN, free_port, wait_port, cpu_seconds  # noqa: E402

# What nginx's `include uwsgi_params` sends for `GET /v1/parse` from wrk.
VARIABLES = [
    ("QUERY_STRING", ""), ("REQUEST_METHOD", "GET"), ("CONTENT_TYPE", ""), ("CONTENT_LENGTH", ""),
    ("REQUEST_URI", "/v1/parse"), ("PATH_INFO", "/v1/parse"), ("DOCUMENT_ROOT", "/usr/share/nginx/html"),
    ("SERVER_PROTOCOL", "HTTP/1.1"), ("REQUEST_SCHEME", "http"), ("HTTPS", ""), ("REMOTE_ADDR", "127.0.0.1"),
    ("REMOTE_PORT", "40000"), ("SERVER_PORT", "8080"), ("SERVER_NAME", ""), ("HTTP_HOST", "127.0.0.1:8080"),
]


def packet():
    block = b"".join(struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode()
                     for k, v in VARIABLES)
    return struct.pack("<BHB", 0, len(block), 0) + block


def client(port, count):
    data = packet()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(data)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        if not answer.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"unexpected answer: {answer[:200]!r}")


def run_clients(port, requests, clients):
    workers = [multiprocessing.Process(target=client, args=(port, requests // clients)) for _ in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise SystemExit("a client failed")
    return requests // clients * clients


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--perf", help="record a perf profile of the kernel into this file")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="kernel-bench-uwsgi-direct-")
    port = free_port()
    with open(os.path.join(HERE, "worker.yaml.template")) as f:
        config = f.read().format(dir=work, kernel_uwsgi=port)
    path = os.path.join(work, "worker.yaml")
    with open(path, "w") as f:
        f.write(config)
    kernel = subprocess.Popen([KERNEL_BIN, "--role", "worker", "--config", path], stderr=subprocess.DEVNULL)
    perf = None
    try:
        wait_port(port)
        run_clients(port, 2000, args.clients)  # warm-up
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-g", "-F", "2000", "-o", args.perf, "-p", str(kernel.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        before = cpu_seconds([kernel.pid])
        started = time.time()
        done = run_clients(port, args.requests, args.clients)
        elapsed = time.time() - started
        used = cpu_seconds([kernel.pid]) - before
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        print(f"{done} requests, {args.clients} clients, {elapsed:.2f} s: {done / elapsed:.0f} req/s, "
              f"kernel CPU {used * 1e6 / done:.0f} µs/request")
    finally:
        kernel.terminate()
        kernel.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
