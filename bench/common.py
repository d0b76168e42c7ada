"""Helpers shared by the benchmarks: wrk runs and their parsing, ports, memory."""
import os
import re
import statistics
import socket
import subprocess
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
KERNEL_BIN = os.path.abspath(os.environ.get("KERNEL_BIN", os.path.join(ROOT, ".build", "release", "kernel")))


def cpu_count():
    return os.cpu_count() or 1


def wait_port(port, host="127.0.0.1", timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {host}:{port}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _millis(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]


def wrk(url, connections, duration, threads=2, script=None):
    """Runs wrk with --latency; returns req/s, p50/p99 (as printed and in ms), errors and non-2xx counts."""
    command = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration}", "--latency"]
    if script:
        command += ["-s", script]
    output = subprocess.run(command + [url], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    # The latency distribution lines only: "     50%  678.00us" (the stdev column also ends in "%").
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {"rps": rps, "p50": p50, "p99": p99, "p50_ms": _millis(p50), "p99_ms": _millis(p99),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "errors": errors.group(1) if errors else "",
            "output": output}


def process_tree(pids, children=False):
    """The pids given and, when asked, their descendants alive now."""
    seen = []
    queue = list(pids)
    while queue:
        pid = queue.pop()
        if pid in seen:
            continue
        seen.append(pid)
        if children:
            # Each thread's children are listed under that thread: a multi-threaded parent (a kernel master
            # spawning from its event loops) has them under several tasks.
            import glob
            for listing in glob.glob(f"/proc/{pid}/task/*/children"):
                try:
                    with open(listing) as f:
                        queue += [int(c) for c in f.read().split()]
                except (FileNotFoundError, ProcessLookupError):
                    pass
    return seen


def rss_kib(pids, children=False):
    """Resident memory (KiB) of the processes, and of their children when asked."""
    total = 0
    for pid in process_tree(pids, children):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total


def memory_kib(pids):
    """(RSS, PSS) in KiB summed over the processes (/proc/PID/smaps_rollup). PSS divides each shared page between
    the processes that map it, so the PSS of a group of processes sharing pages (a master and its workers, nginx's
    workers) adds up to what the group really holds; RSS counts shared pages once per process."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return rss, pss


def cpu_seconds(pids, children=False):
    """User + system CPU time (s) used so far by the processes (and their live children when asked)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in process_tree(pids, children):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except FileNotFoundError:
            continue
    return total / ticks


# nginx with the `return 200 "hello"` route of etc/examples/hello.yaml (bench/http: run.py and profile.py).
NGINX_HELLO_CONF = """
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "hello"; }}
    }}
}}
"""


def listening_pids(port, host="127.0.0.1"):
    """The pids holding the TCP socket that listens on host:port (from /proc/net/tcp and each process's fds), so a
    benchmark can check that the port it loads is served by the process it measures."""
    import glob
    wanted = "%08X:%04X" % (int.from_bytes(socket.inet_aton(host), "little"), port)
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(fields[9])
    pids = set()
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            pids.add(int(fd.split("/")[2]))
    return sorted(pids)


class Stack:
    """The processes one comparison starts, each logging into the work directory; stopped in reverse order."""

    def __init__(self, work):
        self.work = work
        self.processes = []

    def start(self, command, log, **kwargs):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.work, log), "a"),
                                   **kwargs)
        self.processes.append(process)
        return process

    def check_alive(self):
        for process in self.processes:
            if process.poll() is not None:
                self.dump_logs()
                raise SystemExit(f"{process.args[0]} exited with {process.returncode}; logs in {self.work}")

    def dump_logs(self):
        import sys
        for name in sorted(os.listdir(self.work)):
            if name.endswith((".log", ".stderr")):
                with open(os.path.join(self.work, name), errors="replace") as f:
                    text = f.read()[-1500:]
                if text:
                    sys.stderr.write(f"--- {name}\n{text}\n")

    def stop(self):
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()


def verify_listener(name, port, process, server_prefix, path, body, backend_header, requests=6):
    """Checks that `port` is listened on by `process` (or its children) and that its answers to `path` carry its
    `Server` header and the backend's `body`; returns the `backend_header` values seen, one per request."""
    import http.client
    owners = listening_pids(port)
    tree = process_tree([process.pid], children=True)
    if not owners or not set(owners) <= set(tree):
        raise SystemExit(f"{name}: port {port} is listened on by {owners}, not by {process.pid} ({tree})")
    seen = []
    for _ in range(requests):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        answer = response.read()
        conn.close()
        if response.status != 200 or answer != body:
            raise SystemExit(f"{name}: {response.status} {answer!r}")
        server = response.getheader("Server") or ""
        if not server.startswith(server_prefix):
            raise SystemExit(f"{name}: Server {server!r}, expected {server_prefix}...")
        seen.append(response.getheader(backend_header))
    return seen


def duration_seconds(duration):
    """wrk's duration (`10s`, `2m`) in seconds."""
    return float(duration[:-1]) * (60 if duration.endswith("m") else 1)


def measure_round(url, pids, children, connections, duration):
    """One wrk run, with `cpu_us`: the CPU the processes (and their children when asked) used per request."""
    before = cpu_seconds(pids, children=children)
    result = wrk(url, connections, duration)
    used = cpu_seconds(pids, children=children) - before
    result["cpu_us"] = used * 1e6 / max(result["rps"] * duration_seconds(duration), 1)
    return result


NGINX_HTTP_PREAMBLE = """
worker_processes {threads};
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
daemon off;
{user}
events {{ worker_connections 4096; }}
"""
"""The top of an nginx.conf for a benchmark peer: `{threads}` workers, everything under `{dir}`, `{user}` the
`user root;` line when run as root (see `nginx_user_line`)."""

NGINX_HTTP_TEMP_PATHS = """    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
"""
"""The first lines of its `http` block: no access log, temporary files under `{dir}`."""


def nginx_user_line():
    """nginx refuses to run its workers as root unless told to."""
    return "user root;" if os.geteuid() == 0 else ""


def alternate_rounds(stack, rounds, connections, duration, kernel, nginx):
    """`rounds` pairs of wrk runs, kernel edge and nginx, alternating which goes first so that neither always meets
    a backend just warmed by the other. `kernel` and `nginx` are (url, process); nginx's CPU counts its workers.
    Returns a list of (kernel result, nginx result)."""
    rows = []
    for number in range(rounds):
        pair = [("kernel", kernel[0], [kernel[1].pid], False), ("nginx", nginx[0], [nginx[1].pid], True)]
        if number % 2:
            pair.reverse()
        results = {name: measure_round(url, pids, children, connections, duration) for name, url, pids, children in pair}
        stack.check_alive()
        rows.append((results["kernel"], results["nginx"]))
    return rows


def edge_table(rows, cpu_note=""):
    """The markdown rows of an edge comparison and its medians with their spread."""
    out = ["| round | kernel edge req/s | p99 | CPU µs/req | nginx req/s | p99 | CPU µs/req | req/s kernel/nginx | CPU/req nginx/kernel |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for number, (k, n) in enumerate(rows, 1):
        errors = "".join(f" ({who}: {r['non2xx']} non-2xx, {r['errors']})" for who, r in (("kernel", k), ("nginx", n))
                         if r["non2xx"] or r["errors"])
        out.append(f"| {number} | {k['rps']:.0f} | {k['p99']} | {k['cpu_us']:.1f} | {n['rps']:.0f} | {n['p99']} | "
                   f"{n['cpu_us']:.1f} | {k['rps'] / n['rps']:.2f} | {n['cpu_us'] / k['cpu_us']:.2f}{errors} |")
    rps = [k["rps"] / n["rps"] for k, n in rows if n["rps"]]
    cpu = [n["cpu_us"] / k["cpu_us"] for k, n in rows if k["cpu_us"]]
    out.append(f"\nMedian req/s kernel/nginx **{statistics.median(rps):.2f}** ({min(rps):.2f} to {max(rps):.2f}); "
               f"median CPU per request nginx/kernel **{statistics.median(cpu):.2f}** ({min(cpu):.2f} to {max(cpu):.2f}"
               f"{cpu_note}).\n")
    return out


def compare_builds(stack, edges, rounds, connections, duration):
    """Rounds alternating which of two processes goes first: `edges` maps "before" and "after" to (url, process).
    Warms each up, prints each round's req/s and CPU µs per request, then the medians of after/before for req/s and
    of before/after for CPU per request (above 1: the newer build is faster, spends less) with their lowest and
    highest rounds. Any non-2xx answer or socket error stops it."""
    import statistics
    stack.check_alive()
    for url, _ in edges.values():
        wrk(url, connections, "2s")
    rows = []
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print("| round | before req/s | before CPU µs/req | after req/s | after CPU µs/req |")
    print("|---|---:|---:|---:|---:|")
    for number in range(rounds):
        order = ["before", "after"] if number % 2 == 0 else ["after", "before"]
        results = {name: measure_round(edges[name][0], [edges[name][1].pid], False, connections, duration)
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
