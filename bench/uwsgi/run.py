#!/usr/bin/env python3
"""nginx -> kernel worker over uwsgi vs nginx -> uWSGI + Flask over uwsgi, the same tiny route, in the same run.

Both stacks sit behind one nginx (one server block each, `include uwsgi_params; uwsgi_pass ...`), the uWSGI side
configured as a typical deployment (master, lazy, 3 workers, buffer-size 65536). Prints a markdown section with
req/s, p50, p99 and the ratio kernel/uWSGI, and appends it to docs/performance.md.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
# The same Flask app the uwsgi interop tests run behind uWSGI.
APP_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "Tests", "SystemTests", "uwsgi_support")
from common import ROOT, KERNEL_BIN, free_port, wait_port, rss_kib, cpu_seconds  # noqa: E402

DURATION = os.environ.get("BENCH_DURATION", "10s")
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
RECORD = os.environ.get("BENCH_RECORD", "0") == "1"  # bench/run.sh records the whole run
PATH = "/v1/parse"


def wrk(url, connections, duration, threads=2):
    """Runs `wrk --latency`; req/s, p50/p99 as printed, non-2xx count and socket errors. The percentiles are read
    only from the lines that start with them (a "+/- Stdev" column such as "67.50%" must not match)."""
    command = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration}", "--latency", url]
    output = subprocess.run(command, capture_output=True, text=True).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not found:
        raise SystemExit(f"wrk failed:\n{output}")
    p50 = re.search(r"^\s*50%\s+(\S+)", output, re.M).group(1)
    p99 = re.search(r"^\s*99%\s+(\S+)", output, re.M).group(1)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {"rps": float(found.group(1)), "p50": p50, "p99": p99, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "errors": errors.group(1) if errors else ""}


def per_request(result):
    """Backend CPU microseconds per request of a wrk run."""
    seconds = float(DURATION.rstrip("s"))
    return result["cpu"] * 1e6 / max(result["rps"] * seconds, 1)


def main():
    work = tempfile.mkdtemp(prefix="kernel-bench-uwsgi-")
    ports = {"kernel_front": free_port(), "uwsgi_front": free_port(), "kernel_uwsgi": free_port(), "uwsgi_port": free_port()}
    user = "user root;" if os.geteuid() == 0 else ""
    with open(os.path.join(HERE, "nginx.conf.template")) as f:
        nginx_conf = f.read().format(dir=work, user=user, **ports)
    with open(os.path.join(HERE, "worker.yaml.template")) as f:
        worker_yaml = f.read().format(dir=work, **ports)
    conf = os.path.join(work, "nginx.conf")
    config = os.path.join(work, "worker.yaml")
    with open(conf, "w") as f:
        f.write(nginx_conf)
    with open(config, "w") as f:
        f.write(worker_yaml)
    uwsgi_command = ["uwsgi", "--socket", f"127.0.0.1:{ports['uwsgi_port']}", "--master", "--lazy", "--workers", "3",
                     "--buffer-size", "65536", "--wsgi-file", os.path.join(APP_DIR, "app.py"), "--callable", "app",
                     "--chdir", APP_DIR, "--disable-logging", "--die-on-term", "--logto", os.path.join(work, "uwsgi.log")]
    processes = []
    try:
        kernel = subprocess.Popen([KERNEL_BIN, "--role", "worker", "--config", config], stderr=subprocess.DEVNULL)
        processes.append(kernel)
        app = subprocess.Popen(uwsgi_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        processes.append(app)
        nginx = subprocess.Popen(["nginx", "-c", conf, "-p", work], stderr=open(os.path.join(work, "nginx-error.log"), "a"))
        processes.append(nginx)
        for name, port in ports.items():
            for process in processes:
                if process.poll() is not None:
                    raise SystemExit(f"{process.args[0]} exited with {process.returncode}; logs in {work}")
            wait_port(port)
        kernel_url = f"http://127.0.0.1:{ports['kernel_front']}{PATH}"
        uwsgi_url = f"http://127.0.0.1:{ports['uwsgi_front']}{PATH}"
        for url in (kernel_url, uwsgi_url):  # warm-up (uWSGI's lazy workers load the app on their first request)
            wrk(url, CONNECTIONS, "2s")
        # Both backends sit behind the same nginx, which saturates first on 2 cores; the CPU time each backend
        # spends per request shows what the backend itself costs.
        before = cpu_seconds([kernel.pid])
        k = wrk(kernel_url, CONNECTIONS, DURATION)
        k["cpu"] = cpu_seconds([kernel.pid]) - before
        before = cpu_seconds([app.pid], children=True)
        u = wrk(uwsgi_url, CONNECTIONS, DURATION)
        u["cpu"] = cpu_seconds([app.pid], children=True) - before
        kernel_rss = rss_kib([kernel.pid])
        uwsgi_rss = rss_kib([app.pid], children=True)
    except BaseException:
        for log in ("kernel.log", "uwsgi.log", "nginx-error.log"):
            path = os.path.join(work, log)
            if os.path.exists(path):
                with open(path) as f:
                    sys.stderr.write(f"--- {log}\n" + f.read()[-2000:])
        raise
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(work, ignore_errors=True)

    ratio = k["rps"] / u["rps"] if u["rps"] else float("inf")
    lines = [
        "## uwsgi: nginx -> kernel worker vs nginx -> uWSGI + Flask\n",
        f"Command: `KERNEL_BIN={os.path.relpath(KERNEL_BIN, ROOT)} bench/uwsgi/run.sh`: one nginx "
        f"(`worker_processes 1`, `include /etc/nginx/uwsgi_params; uwsgi_pass`) in front of a kernel `--role worker` "
        f"(uwsgi listener, `return 200` of the same JSON) and of `uwsgi --master --lazy --workers 3 --buffer-size 65536` "
        f"running Tests/SystemTests/uwsgi_support/app.py (`/v1/parse` answers `{{\"status\":\"ok\"}}`); "
        f"`wrk -t2 -c{CONNECTIONS} -d{DURATION} --latency {PATH}` against each, one after the other, after a 2 s warm-up.\n",
        "| stack | req/s | p50 | p99 | non-2xx | socket errors | backend CPU µs/request | backend RSS (KiB) |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
        f"| nginx -> kernel worker | {k['rps']:.0f} | {k['p50']} | {k['p99']} | {k['non2xx']} | {k['errors'] or '-'} | {per_request(k):.0f} | {kernel_rss} |",
        f"| nginx -> uWSGI + Flask | {u['rps']:.0f} | {u['p50']} | {u['p99']} | {u['non2xx']} | {u['errors'] or '-'} | {per_request(u):.0f} | {uwsgi_rss} |",
        "",
        f"Ratio kernel/uWSGI (req/s): **{ratio:.2f}**; backend CPU per request uWSGI/kernel: "
        f"**{per_request(u) / per_request(k):.1f}x**. On 2 cores the one nginx in front is the first to saturate, "
        f"so req/s understates the difference that the CPU column shows.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if RECORD:
        with open(os.path.join(ROOT, "docs", "performance.md"), "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
