#!/usr/bin/env python3
"""Where the CPU of `return 200 "hello"` goes, for the kernel and for nginx under the same wrk load.

For each server: `perf record -e cpu-clock` while `wrk -t2 -c64` runs, the share of each library (dso), the CPU per
request and the context switches of its threads. For the kernel also, at a light load under uprobes, how many
`malloc`, `swift_retain` and `swift_release` calls one request makes. Prints a markdown section.

Needs `perf` (Debian: linux-perf) and root; the uprobe counts are skipped where uprobes are not available.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import ROOT, KERNEL_BIN, NGINX_HELLO_CONF, wait_port, cpu_count, cpu_seconds  # noqa: E402

NGINX_PORT = 8081
KERNEL_PORT = 8080
LOAD_SECONDS = 9
SAMPLE_SECONDS = 5



def run(command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def switches(pids):
    """Voluntary and involuntary context switches of every thread of `pids`."""
    voluntary = involuntary = 0
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                status = open(f"/proc/{pid}/task/{task}/status").read()
            except FileNotFoundError:
                continue
            voluntary += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
            involuntary += int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
    return voluntary, involuntary


def profile(name, port, pids, work):
    """Loads the server with wrk, samples it with perf; returns a dict of figures."""
    data = os.path.join(work, f"{name}.perf")
    load = subprocess.Popen(["wrk", "-t2", "-c64", f"-d{LOAD_SECONDS}s", f"http://127.0.0.1:{port}/"],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    cpu_before, switches_before, started = cpu_seconds(pids), switches(pids), time.time()
    run(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-g", "-o", data, "-p", ",".join(map(str, pids)),
         "--", "sleep", str(SAMPLE_SECONDS)])
    elapsed = time.time() - started
    cpu_after, switches_after = cpu_seconds(pids), switches(pids)
    output = load.communicate()[0]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    report = run(["perf", "report", "-i", data, "--no-children", "--sort", "dso", "--stdio"]).stdout
    shares = []
    for line in report.splitlines():
        match = re.match(r"^\s+([\d.]+)%\s+(\S+)\s*$", line)
        if match:
            shares.append((match.group(2), float(match.group(1))))
    symbols = run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,symbol", "--stdio", "-g", "none"]).stdout
    top = []
    for line in symbols.splitlines():
        match = re.match(r"^\s+([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(\S+)", line)
        if match and len(top) < 12:
            top.append((match.group(2), match.group(3), float(match.group(1))))
    requests = rps * elapsed
    return {
        "rps": rps,
        "cpu_us": (cpu_after - cpu_before) / requests * 1e6,
        "voluntary": (switches_after[0] - switches_before[0]) / elapsed,
        "involuntary": (switches_after[1] - switches_before[1]) / elapsed,
        "shares": shares,
        "top": top,
    }


def swift_core_library():
    swift = shutil.which("swift")
    if not swift:
        return None
    candidate = os.path.join(os.path.dirname(os.path.realpath(swift)), "..", "lib", "swift", "linux", "libswiftCore.so")
    return os.path.realpath(candidate) if os.path.exists(candidate) else None


def calls_per_request(pid, port, work):
    """malloc/swift_retain/swift_release calls per request at a light load, or None without uprobes."""
    libc = run(["sh", "-c", "ldconfig -p | awk '/libc.so.6 .*x86-64/ {print $NF; exit}'"]).stdout.strip()
    core = swift_core_library()
    if not libc or not core:
        return None
    events = []
    for library, symbol in ((libc, "malloc"), (core, "swift_retain"), (core, "swift_release")):
        added = run(["perf", "probe", "-q", "-x", library, symbol])
        listed = run(["perf", "probe", "-l"]).stdout
        event = re.search(rf"(probe_\w+:{symbol})\b", listed)
        if added.returncode != 0 and not event:
            return None
        events.append(event.group(1))
    counts_file = os.path.join(work, "counts.txt")
    counting = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(events), "-o", counts_file, "-p", str(pid),
                                 "--", "sleep", "4"])
    time.sleep(0.5)
    output = run(["wrk", "-t1", "-c8", "-d3s", f"http://127.0.0.1:{port}/"]).stdout
    counting.wait()
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    counts = {}
    for line in open(counts_file):
        fields = line.strip().split(",")
        if len(fields) > 2 and fields[0].isdigit():
            counts[fields[2].split(":")[-1]] = int(fields[0]) / requests
    for event in events:
        run(["perf", "probe", "-q", "-d", event])
    return counts


def main():
    if not shutil.which("perf"):
        raise SystemExit("perf is not installed (Debian: apt-get install linux-perf)")
    work = tempfile.mkdtemp(prefix="kernel-profile-")
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_HELLO_CONF.format(workers=cpu_count(), dir=work, port=NGINX_PORT))
    os.makedirs(os.path.join(ROOT, "run"), exist_ok=True)
    nginx = subprocess.Popen(["nginx", "-c", conf, "-p", work], stderr=subprocess.DEVNULL)
    kernel = subprocess.Popen([KERNEL_BIN, "--role", "both", "--config", os.path.join(ROOT, "etc/examples/hello.yaml")],
                              stderr=open(os.path.join(work, "kernel.log"), "w"))
    try:
        wait_port(NGINX_PORT)
        wait_port(KERNEL_PORT)
        nginx_workers = [int(p) for p in run(["pgrep", "-P", str(nginx.pid)]).stdout.split()]
        results = {
            "kernel": profile("kernel", KERNEL_PORT, [kernel.pid], work),
            "nginx": profile("nginx", NGINX_PORT, nginx_workers, work),
        }
        calls = calls_per_request(kernel.pid, KERNEL_PORT, work)
    finally:
        kernel.terminate()
        nginx.terminate()
        kernel.wait()
        nginx.wait()
        shutil.rmtree(work, ignore_errors=True)

    print("| | kernel | nginx |")
    print("|---|---:|---:|")
    print(f"| req/s under `wrk -t2 -c64` while sampled | {results['kernel']['rps']:.0f} | {results['nginx']['rps']:.0f} |")
    print(f"| CPU per request (µs) | {results['kernel']['cpu_us']:.1f} | {results['nginx']['cpu_us']:.1f} |")
    print(f"| context switches/s, voluntary | {results['kernel']['voluntary']:.0f} | {results['nginx']['voluntary']:.0f} |")
    print(f"| context switches/s, involuntary | {results['kernel']['involuntary']:.0f} | {results['nginx']['involuntary']:.0f} |")
    dsos = []
    for name in ("kernel", "nginx"):
        for dso, _ in results[name]["shares"]:
            if dso not in dsos:
                dsos.append(dso)
    for dso in dsos:
        row = []
        for name in ("kernel", "nginx"):
            share = dict(results[name]["shares"]).get(dso)
            row.append(f"{share:.1f} %" if share is not None else "-")
        if any(cell != "-" and float(cell.split()[0]) >= 0.5 for cell in row):
            print(f"| share of CPU in `{dso}` | {row[0]} | {row[1]} |")
    if calls:
        print()
        print("Calls per request at a light load (`wrk -t1 -c8`, uprobes): "
              + ", ".join(f"`{name}` {value:.0f}" for name, value in calls.items()) + ".")
    print()
    print("Hottest symbols of the kernel process (self time):")
    print()
    for dso, symbol, share in results["kernel"]["top"]:
        if symbol.startswith("$s"):
            symbol = run(["swift", "demangle", "--simplified", "--compact", symbol]).stdout.strip() or symbol
        print(f"- {share:.2f} % `{dso}` `{symbol[:110]}`")


if __name__ == "__main__":
    main()
