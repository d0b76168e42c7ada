"""`kernel.processes`: a master process that opens the listeners and supervises worker processes.

The master starts its workers with posix_spawn, they inherit the listening sockets; a worker that dies is respawned
and the master says why in nginx's words; `-s reload` replaces the workers with no failed request; `-s quit`
drains, `-s stop` is fast; `shutdown_delay` keeps serving after SIGTERM; SIGUSR2 + SIGQUIT upgrade the binary; a
worker whose master dies exits.
"""
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import child_pids
from load_support import WrkRun
from peer_support import HangingBackend

# Every answer names the worker process that gave it.
HELLO = """
kernel:
  pid: {workdir}/kernel.pid
  error_log: {{path: stderr, level: info}}
  event_loop_threads: 1
  shutdown_timeout: 10s
  processes: {processes}
{extra}
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /
          return: 200 "{text} $pid"
        - location: = /healthz
          health: ready
"""


def hello(tmp_path, processes=2, text="hello", extra=""):
    return HELLO.format(workdir=tmp_path, processes=processes, text=text, extra=extra)


def get(port, path="/", timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body.decode()


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, timeout=10, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def answering_pid(port):
    status, body = get(port)
    assert status == 200, body
    return int(body.rsplit(" ", 1)[1])


def read_pid(path):
    with open(path) as f:
        return int(f.read().strip())


def test_the_master_starts_workers_that_serve_and_the_pid_file_names_it(start_kernel, tmp_path):
    kernel = start_kernel(hello(tmp_path))
    port = kernel.port()
    assert read_pid(tmp_path / "kernel.pid") == kernel.pid
    workers = wait_for(lambda: len(child_pids(kernel.pid)) == 2 and child_pids(kernel.pid), what="two workers")
    log = kernel.log_text()
    for pid in workers:
        assert f"start worker process {pid} (pool main, worker" in log
    assert "kernel started: master process, worker pools [main: 2 (role both)]" in log
    answered = {answering_pid(port) for _ in range(40)}
    assert answered <= set(workers), (answered, workers)
    assert kernel.pid not in answered, "the master never serves a request"


def test_a_killed_worker_is_respawned_and_the_master_says_why(start_kernel, tmp_path):
    kernel = start_kernel(hello(tmp_path))
    port = kernel.port()
    victim = answering_pid(port)
    os.kill(victim, signal.SIGKILL)
    kernel.wait_for_log(f"worker process {victim} exited on signal 9")
    replacement = wait_for(lambda: [p for p in child_pids(kernel.pid) if p != victim and
                                    f"start worker process {p}" in kernel.log_text().split(f"{victim} exited")[-1]],
                           what="a respawned worker")[0]
    # The new worker serves: requests go on being answered, and it answers some of them.
    wait_for(lambda: answering_pid(port) == replacement, what=f"an answer from the new worker {replacement}")
    assert not alive(victim)
    assert len(child_pids(kernel.pid)) == 2


def test_a_worker_exits_when_its_master_dies(start_kernel, tmp_path):
    kernel = start_kernel(hello(tmp_path))
    workers = wait_for(lambda: len(child_pids(kernel.pid)) == 2 and child_pids(kernel.pid), what="two workers")
    kernel.killed = True
    os.kill(kernel.pid, signal.SIGKILL)
    kernel.wait_exit()
    wait_for(lambda: not any(alive(pid) for pid in workers), what="the workers to exit after their master")
    assert "the master process is gone (its control channel closed): exiting" in kernel.log_text()


def test_quit_lets_a_request_in_flight_finish_and_removes_the_pid_file(start_kernel, tmp_path):
    # A request held by a slow upstream: quit waits for it.
    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(8)
    backend_port = backend.getsockname()[1]
    reached = threading.Event()

    def answer_late():
        conn, _ = backend.accept()
        reached.set()
        conn.recv(65536)
        time.sleep(1)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlate")
        conn.close()

    threading.Thread(target=answer_late, daemon=True).start()
    kernel = start_kernel(hello(tmp_path) + f"""
        - location: /slow
          proxy_pass: http://127.0.0.1:{backend_port}
""")
    port = kernel.port()
    result = {}

    def slow_request():
        result["answer"] = get(port, "/slow")

    client = threading.Thread(target=slow_request)
    client.start()
    assert reached.wait(timeout=10), "the request did not reach the upstream"
    workers = child_pids(kernel.pid)
    assert kernel.control("quit").returncode == 0
    client.join(timeout=30)
    assert result["answer"] == (200, "late")
    assert kernel.wait_exit() == 0
    assert not os.path.exists(tmp_path / "kernel.pid")
    assert not any(alive(pid) for pid in workers)
    assert "graceful shutdown: the worker processes drain" in kernel.log_text()
    backend.close()


@pytest.mark.parametrize("how", ["-s stop", "SIGINT"])
def test_stop_ends_master_and_workers(start_kernel, tmp_path, how):
    kernel = start_kernel(hello(tmp_path))
    workers = wait_for(lambda: len(child_pids(kernel.pid)) == 2 and child_pids(kernel.pid), what="two workers")
    if how == "SIGINT":
        os.kill(kernel.pid, signal.SIGINT)
    else:
        assert kernel.control("stop").returncode == 0
    assert kernel.wait_exit() == 0
    assert not any(alive(pid) for pid in workers)
    log = kernel.log_text()
    assert "fast shutdown" in log
    for pid in workers:
        assert f"worker process {pid} exited with code 0" in log


def test_reload_under_load_starts_new_workers_and_loses_no_request(start_kernel, tmp_path):
    kernel = start_kernel(hello(tmp_path, text="generation-0"))
    port = kernel.port()
    wrk = WrkRun(f"http://127.0.0.1:{port}/", port, connections=8)
    wrk.wait_until_loaded()
    reloads = 20
    for number in range(1, reloads + 1):
        kernel.write_config(hello(tmp_path, text=f"generation-{number}"))
        assert kernel.control("reload").returncode == 0
        kernel.wait_for_log("configuration reloaded (generation", timeout=30, count=number)
        # The old workers may take a connection or two between SIGQUIT and closing their listener.
        wait_for(lambda: get(port)[1].startswith(f"generation-{number} "), what=f"generation {number} to answer")
    requests, output = wrk.finish()
    assert requests > 0, output
    assert "Non-2xx" not in output, output
    assert "Socket errors" not in output, output
    log = kernel.log_text()
    assert "reload failed" not in log
    assert log.count("drains: configuration reloaded") == 2 * reloads
    assert len(child_pids(kernel.pid)) >= 2


def test_a_reload_with_a_broken_configuration_keeps_the_workers(start_kernel, tmp_path):
    kernel = start_kernel(hello(tmp_path))
    port = kernel.port()
    workers = wait_for(lambda: len(child_pids(kernel.pid)) == 2 and child_pids(kernel.pid), what="two workers")
    kernel.write_config(hello(tmp_path).replace("return: 200", "retrun: 200"))
    assert kernel.control("reload").returncode == 0
    kernel.wait_for_log("reload failed, keeping the running configuration")
    assert child_pids(kernel.pid) == workers
    assert get(port)[0] == 200


def test_a_draining_worker_past_its_mercy_is_killed(start_kernel, tmp_path):
    hanging = HangingBackend()
    kernel = start_kernel(hello(tmp_path, extra="  worker_reload_mercy: 1s") + f"""
        - location: /hang
          proxy_pass: http://127.0.0.1:{hanging.port}
          proxy_read_timeout: 60s
""")
    port = kernel.port()
    threading.Thread(target=lambda: _quietly(get, port, "/hang", 60), daemon=True).start()
    wait_for(lambda: hanging.accepted == 1, what="the request to reach the hanging upstream")
    assert kernel.control("reload").returncode == 0
    kernel.wait_for_log("configuration reloaded (generation")
    found = re.search(r"worker process (\d+) did not exit within worker_reload_mercy \(1s\): killing it \(SIGKILL\)",
                      kernel.wait_for_log("did not exit within worker_reload_mercy", timeout=15))
    kernel.wait_for_log(f"worker process {found.group(1)} exited on signal 9")
    assert get(port)[0] == 200
    hanging.close()


def _quietly(function, *args):
    try:
        function(*args)
    except OSError:
        pass


def test_shutdown_delay_keeps_serving_after_sigterm_then_drains(start_kernel, tmp_path):
    kernel = start_kernel(hello(tmp_path, extra="  shutdown_delay: 2s"))
    port = kernel.port()
    workers = child_pids(kernel.pid)
    assert get(port, "/healthz")[0] == 200
    os.kill(kernel.pid, signal.SIGTERM)
    kernel.wait_for_log("serve for shutdown_delay 2s, then drain")
    kernel.wait_for_log("SIGTERM: reporting not ready, serving for shutdown_delay 2s before draining", count=2)
    # Still served during the delay, by the same workers, which report not ready (so endpoints are removed).
    assert answering_pid(port) in workers
    status, body = get(port, "/healthz")
    assert status == 503 and "stopping" in body
    assert kernel.wait_exit() == 0
    assert "graceful shutdown: draining connections" in kernel.log_text()


def test_shutdown_delay_in_a_single_process(start_kernel, tmp_path):
    kernel = start_kernel(hello(tmp_path, processes=0, extra="  shutdown_delay: 2s"))
    port = kernel.port()
    assert get(port, "/healthz")[0] == 200
    os.kill(kernel.pid, signal.SIGTERM)
    kernel.wait_for_log("SIGTERM: reporting not ready, serving for shutdown_delay 2s before draining")
    assert answering_pid(port) == kernel.pid
    status, body = get(port, "/healthz")
    assert status == 503 and "stopping" in body
    assert kernel.wait_exit() == 0
    assert "graceful shutdown: draining connections" in kernel.log_text()


def test_sigterm_without_a_delay_stays_a_fast_stop_in_a_single_process(start_kernel, tmp_path):
    kernel = start_kernel(hello(tmp_path, processes=0))
    os.kill(kernel.pid, signal.SIGTERM)
    assert kernel.wait_exit() == 0
    log = kernel.log_text()
    assert "fast shutdown" in log and "shutdown_delay" not in log


def test_binary_upgrade_under_load_loses_no_request(tmp_path, kernel_bin):
    """nginx's upgrade: replace the executable file, USR2 to the master (a new master from the new file inherits
    the sockets and starts its workers), then QUIT to the old one (pid in `<pid file>.oldbin`)."""
    binary = tmp_path / "kernel"
    shutil.copy(kernel_bin, binary)
    config = tmp_path / "kernel.yaml"
    config.write_text(hello(tmp_path))
    log_path = tmp_path / "kernel-stderr.log"
    pid_file = tmp_path / "kernel.pid"
    with open(log_path, "wb") as log:
        old = subprocess.Popen([str(binary), "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    new_master = None
    try:
        wait_for(lambda: "kernel started: master process" in log_path.read_text(), timeout=60, what="the kernel to start")
        port = int(re.search(r"listening on http 127\.0\.0\.1:(\d+)", log_path.read_text()).group(1))
        old_workers = wait_for(lambda: len(child_pids(old.pid)) == 2 and child_pids(old.pid), what="two workers")
        wrk = WrkRun(f"http://127.0.0.1:{port}/", port, connections=8)
        wrk.wait_until_loaded()
        # The file is replaced (a running executable cannot be written over, so a new copy is renamed onto it).
        shutil.copy(kernel_bin, tmp_path / "kernel.new")
        os.replace(tmp_path / "kernel.new", binary)
        os.kill(old.pid, signal.SIGUSR2)
        wait_for(lambda: os.path.exists(f"{pid_file}.oldbin") and os.path.exists(pid_file)
                 and read_pid(pid_file) != old.pid, what="the new master's pid file")
        assert read_pid(f"{pid_file}.oldbin") == old.pid
        new_master = read_pid(pid_file)
        wait_for(lambda: log_path.read_text().count("kernel started: master process") == 2, timeout=60,
                 what="the new master to start")
        new_workers = wait_for(lambda: len(child_pids(new_master)) == 2 and child_pids(new_master), what="new workers")
        os.kill(read_pid(f"{pid_file}.oldbin"), signal.SIGQUIT)
        assert old.wait(timeout=30) == 0
        assert not os.path.exists(f"{pid_file}.oldbin")
        assert not any(alive(pid) for pid in old_workers)
        # Only the new master's workers are left to answer.
        assert {answering_pid(port) for _ in range(10)} <= set(new_workers)
        requests, output = wrk.finish()
        assert requests > 0, output
        assert "Non-2xx" not in output, output
        assert "Socket errors" not in output, output
        with open(f"/proc/{new_master}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[0] == str(binary).encode()
    finally:
        if old.poll() is None:
            old.kill()
            old.wait()
        if new_master:
            os.kill(new_master, signal.SIGTERM)
            wait_for(lambda: not alive(new_master), what="the new master to stop")


# One master, two pools: an edge worker takes the HTTP listener and passes every request over uwsgi to the model
# workers' two unix sockets (two servers, so that the edge can retry on the other when a worker dies under it).
POOLS = """
kernel:
  pid: {workdir}/kernel.pid
  error_log: {{path: stderr, level: info}}
  event_loop_threads: 1
  shutdown_timeout: 10s
  processes:
    edge: {{count: 1, listen: [http]}}
    worker: {{count: 2, listen: [uwsgi]}}
http:
  listen: "127.0.0.1:0"
uwsgi:
  listen: ["unix:{workdir}/w1.sock", "unix:{workdir}/w2.sock"]
upstreams:
  models:
    servers:
      - unix:{workdir}/w1.sock max_fails=0
      - unix:{workdir}/w2.sock max_fails=0
routing:
  servers:
    - listen: "127.0.0.1:0"
      locations:
        - location: /
          uwsgi_pass: models
    - listen: ["unix:{workdir}/w1.sock", "unix:{workdir}/w2.sock"]
      locations:
        - location: /
          return: 200 "model worker $pid"
"""


def pool_pids(kernel, pool):
    """The live workers of `pool`, by the master's `start worker process` lines."""
    started = re.findall(rf"start worker process (\d+) \(pool {pool}, ", kernel.log_text())
    return [int(pid) for pid in started if alive(int(pid))]


def test_pools_an_edge_pool_passes_to_a_model_worker_pool(start_kernel, tmp_path):
    kernel = start_kernel(POOLS.format(workdir=tmp_path))
    port = kernel.port()
    log = kernel.log_text()
    assert "worker pools [edge: 1 (role edge), worker: 2 (role worker)]" in log
    edge = pool_pids(kernel, "edge")
    models = pool_pids(kernel, "worker")
    assert len(edge) == 1 and len(models) == 2
    # Each pool accepts only on its own listeners.
    assert re.search(rf"{edge[0]}#0: accepting on http ", log)
    assert not re.search(rf"{edge[0]}#0: accepting on uwsgi ", log)
    for pid in models:
        assert re.search(rf"{pid}#0: accepting on uwsgi unix:{tmp_path}/w1.sock", log)
        assert not re.search(rf"{pid}#0: accepting on http ", log)
    answered = {answering_pid(port) for _ in range(20)}
    assert answered and answered <= set(models), (answered, models)


def test_a_model_worker_killed_under_load_fails_no_request_through_the_edge(start_kernel, tmp_path):
    kernel = start_kernel(POOLS.format(workdir=tmp_path))
    port = kernel.port()
    wrk = WrkRun(f"http://127.0.0.1:{port}/", port, connections=8)
    wrk.wait_until_loaded()
    victim = pool_pids(kernel, "worker")[0]
    os.kill(victim, signal.SIGKILL)
    kernel.wait_for_log(f"worker process {victim} exited on signal 9")
    respawned = wait_for(lambda: [p for p in pool_pids(kernel, "worker") if p != victim and
                                  f"start worker process {p}" in kernel.log_text().split(f"{victim} exited")[-1]],
                         what="a respawned model worker")[0]
    wait_for(lambda: answering_pid(port) == respawned, what=f"an answer from the new worker {respawned}")
    requests, output = wrk.finish()
    assert requests > 0, output
    assert "Non-2xx" not in output, output
    assert "Socket errors" not in output, output


def test_a_worker_asking_to_be_replaced_is_replaced_under_load_with_no_failed_request(start_kernel, tmp_path):
    """SIGHUP to one worker (uWSGI's graceful reload of that worker) goes through `requestReplacement`, the path
    recycling takes: the master starts a new worker for the slot and drains the old one once the new one serves."""
    kernel = start_kernel(hello(tmp_path))
    port = kernel.port()
    wrk = WrkRun(f"http://127.0.0.1:{port}/", port, connections=8)
    wrk.wait_until_loaded()
    for round in range(3):
        old = child_pids(kernel.pid)[0]
        os.kill(old, signal.SIGHUP)
        kernel.wait_for_log(f"worker process {old} asks to be replaced (SIGHUP to worker process {old})")
        text = kernel.wait_for_log(f"worker process {old} exited with code 0", timeout=30)
        new = int(re.search(rf"worker process {old} drains: replaced by worker process (\d+)", text).group(1))
        assert alive(new) and new in child_pids(kernel.pid)
        wait_for(lambda: answering_pid(port) == new, what=f"an answer from the replacement {new}")
    requests, output = wrk.finish()
    assert requests > 0, output
    assert "Non-2xx" not in output, output
    assert "Socket errors" not in output, output
    assert len(child_pids(kernel.pid)) == 2


def test_reopen_is_passed_on_to_the_workers(start_kernel, tmp_path):
    kernel = start_kernel(hello(tmp_path))
    workers = wait_for(lambda: len(child_pids(kernel.pid)) == 2 and child_pids(kernel.pid), what="two workers")
    assert kernel.control("reopen").returncode == 0
    kernel.wait_for_log("log files reopened; asking the worker processes to reopen theirs")
    for pid in workers:
        kernel.wait_for_log(f"{pid}#0: log files reopened")


def test_lazy_false_starts_the_workers_one_after_another(start_kernel, tmp_path):
    kernel = start_kernel(hello(tmp_path, extra="  lazy: false"))
    log = kernel.log_text()
    first, second = re.findall(r"start worker process (\d+) \(pool main, worker (?:1|2)", log)
    # The second worker is started only once the first serves.
    assert log.index(f"{first}#0: worker process 1 started") < log.index(f"start worker process {second} ")


def test_a_worker_that_cannot_start_fails_the_masters_start(tmp_path, kernel_bin):
    """The check in the master passes (an access log's directory is made only when a worker opens it), the workers
    fail: the master exits 1, names the worker that failed, and leaves no pid file and no worker."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = tmp_path / "kernel.yaml"
    config.write_text(hello(tmp_path).replace("    - locations:", f"    - access_log: {blocker}/access.log\n      locations:"))
    result = subprocess.run([kernel_bin, "--config", str(config)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert re.search(r"worker process \d+ exited with code 1 before it served", result.stderr), result.stderr
    assert not os.path.exists(tmp_path / "kernel.pid")
    assert "kernel started" not in result.stderr


def test_a_reload_whose_workers_cannot_start_keeps_the_old_ones(start_kernel, tmp_path):
    kernel = start_kernel(hello(tmp_path))
    port = kernel.port()
    workers = wait_for(lambda: len(child_pids(kernel.pid)) == 2 and child_pids(kernel.pid), what="two workers")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    kernel.write_config(hello(tmp_path, text="new").replace("    - locations:", f"    - access_log: {blocker}/a.log\n      locations:"))
    assert kernel.control("reload").returncode == 0
    text = kernel.wait_for_log("reload failed, keeping the running configuration", timeout=30)
    assert re.search(r"reload failed, keeping the running configuration: worker process \d+ exited with code 1 before it served", text)
    assert child_pids(kernel.pid) == workers
    status, body = get(port)
    assert status == 200 and body.startswith("hello "), body


def test_a_worker_that_keeps_dying_is_respawned_with_a_back_off(start_kernel, tmp_path):
    kernel = start_kernel(hello(tmp_path, processes=1))
    for deaths in range(1, 4):
        victim = wait_for(lambda: child_pids(kernel.pid), what="a worker")[0]
        wait_for(lambda: f"{victim}#0: worker process 1 started" in kernel.log_text(), what="the worker to serve")
        os.kill(victim, signal.SIGKILL)
        kernel.wait_for_log(f"worker process {victim} exited on signal 9")
        wait_for(lambda: child_pids(kernel.pid) and child_pids(kernel.pid)[0] != victim, timeout=15, what="a respawn")
    log = kernel.log_text()
    assert "worker 1 of pool main exited soon after it started 2 times in a row: respawning in 0.5s" in log
    assert "worker 1 of pool main exited soon after it started 3 times in a row: respawning in 1.0s" in log


def test_check_validates_every_pool(tmp_path, kernel_bin):
    config = tmp_path / "kernel.yaml"
    config.write_text(POOLS.format(workdir=tmp_path))
    result = subprocess.run([kernel_bin, "-t", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config.write_text(POOLS.format(workdir=tmp_path).replace("listen: [uwsgi]", 'listen: ["unix:/nowhere.sock"]'))
    result = subprocess.run([kernel_bin, "-t", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert re.search(r'the worker pool\'s listen "unix:/nowhere.sock" names no listener of role worker, in \S+kernel.yaml:\d+:\d+',
                     result.stderr), result.stderr


def test_pools_with_their_own_files_model_workers_each_load_their_models(start_kernel, tmp_path):
    """A pool's `config`: the edge pool and the model pool run different files (an inference location exists only
    in the model workers' role), supervised by one master. Every model worker loads the model itself (lazy), the
    master loads none."""
    import json

    from inference_support import DEMO, ensure_models
    ensure_models()
    core = f"""kernel:
  pid: {tmp_path}/kernel.pid
  error_log: {{path: stderr, level: info}}
  event_loop_threads: 1
  shutdown_timeout: 10s
"""
    (tmp_path / "edge.yaml").write_text(core + f"""
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
upstreams:
  models:
    servers: ["unix:{tmp_path}/m1.sock max_fails=0", "unix:{tmp_path}/m2.sock max_fails=0"]
routing:
  servers:
    - locations:
        - location: /
          uwsgi_pass: models
""")
    (tmp_path / "models.yaml").write_text(core + f"""
uwsgi:
  listen: ["unix:{tmp_path}/m1.sock", "unix:{tmp_path}/m2.sock"]
inference:
  models:
    - {{name: demo, path: {DEMO}, max_batch_size: 8, warmup: 1}}
routing:
  servers:
    - client_max_body_size: 16m
      locations:
        - location: "^~ /v2"
          inference: {{}}
""")
    kernel = start_kernel(core + """  processes:
    edge: {count: 1, config: edge.yaml}
    worker: {count: 2, config: models.yaml}
""")
    port = kernel.port()
    models = pool_pids(kernel, "worker")
    log = kernel.log_text()
    assert f"--config {tmp_path}/models.yaml" in open(f"/proc/{models[0]}/cmdline").read().replace("\0", " ")
    loaded = re.findall(r"(\d+)#0: inference: model 'demo' version \d+ ready", log)
    assert sorted(int(pid) for pid in loaded) == sorted(models), log
    assert not re.search(rf"{kernel.pid}#0: inference:", log), "the master loads no model"
    row = [0.5] * 64
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v2/models/demo/infer", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = response.read()
    conn.close()
    assert response.status == 200, answer
    assert json.loads(answer)["outputs"][0]["shape"][0] == 1


def test_a_reload_changes_the_worker_count_and_the_listeners(start_kernel, tmp_path):
    kernel = start_kernel(hello(tmp_path))
    first = kernel.port()
    # A second listener (another spelling of the address is another listener, with a port of its own).
    two_listeners = hello(tmp_path, processes=3, text="again").replace(
        'listen: "127.0.0.1:0"', 'listen: ["127.0.0.1:0", "localhost:0"]')
    kernel.write_config(two_listeners)
    assert kernel.control("reload").returncode == 0
    kernel.wait_for_log("configuration reloaded (generation 2)", timeout=30)
    second = int(re.findall(r"listening on http 127\.0\.0\.1:(\d+) \(localhost:0\)", kernel.log_text())[-1])
    assert second != first
    wait_for(lambda: len(child_pids(kernel.pid)) == 3, what="three workers")
    for port in (first, second):
        wait_for(lambda: get(port)[1].startswith("again "), what=f"the new workers on {port}")
    # The first listener removed: the master closes it, the old workers drain, nobody accepts there any more.
    kernel.write_config(hello(tmp_path, processes=3, text="last").replace('listen: "127.0.0.1:0"', 'listen: "localhost:0"'))
    assert kernel.control("reload").returncode == 0
    kernel.wait_for_log("configuration reloaded (generation 3)", timeout=30)
    assert f"{kernel.pid}#0: closed listener http 127.0.0.1:0" in kernel.log_text()
    wait_for(lambda: get(second)[1].startswith("last "), what="the last generation")

    def refused():
        try:
            get(first, timeout=2)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        return False

    wait_for(refused, what=f"port {first} to refuse connections")
