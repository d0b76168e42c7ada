"""Start-up as an operator and an attacker meet it: errors that name what failed, shipped examples from a fresh copy,
signals while models load, file-descriptor exhaustion, and configuration bombs."""
import http.client
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import textwrap
import time

import pytest

from conftest import KERNEL_BIN, ROOT, Kernel, with_core_section

HELLO = """
http:
  listen: "127.0.0.1:{port}"
routing:
  servers:
    - locations:
        - location: /
          return: 200 "{text}"
"""


def get(port, path="/", connection=None):
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read().decode()
    if connection is None:
        conn.close()
    return response.status, body


def run_kernel(args, cwd=None, timeout=30, **kwargs):
    return subprocess.run([KERNEL_BIN, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, **kwargs)


def position(text, needle):
    """`line:column` of the first `needle` in `text`, 1-based."""
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return f"{number}:{line.index(needle) + 1}"
    raise AssertionError(f"{needle!r} not in {text!r}")


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------------------------------- bind errors

@pytest.fixture
def taken_port():
    """A port held by a listening socket of the test for the whole test: the kernel cannot bind it."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield holder.getsockname()[1]
    holder.close()


def test_a_port_in_use_names_the_address_and_its_position(tmp_path, taken_port):
    text = with_core_section(HELLO.format(port=taken_port, text="x"), str(tmp_path))
    path = tmp_path / "kernel.yaml"
    path.write_text(text)
    result = run_kernel(["--config", str(path)])
    assert result.returncode == 1
    where = position(text, f'"127.0.0.1:{taken_port}')
    assert (f"[emerg] bind() to 127.0.0.1:{taken_port} failed (98: Address already in use), in {path}:{where}"
            in result.stderr), result.stderr
    assert not (tmp_path / "kernel.pid").exists(), "a start that failed leaves no pid file"


def test_a_unix_socket_that_cannot_be_bound_names_its_path(tmp_path):
    text = with_core_section(f"""
        uwsgi:
          listen:
            - address: unix:{tmp_path}/missing/k.sock
        """, str(tmp_path))
    path = tmp_path / "kernel.yaml"
    path.write_text(text)
    result = run_kernel(["--role", "worker", "--config", str(path)])
    assert result.returncode == 1
    where = position(text, "unix:")
    assert (f"[emerg] bind() to unix:{tmp_path}/missing/k.sock failed (2: No such file or directory), in {path}:{where}"
            in result.stderr), result.stderr
    # A file that is not a socket is never replaced.
    (tmp_path / "missing").mkdir()
    (tmp_path / "missing" / "k.sock").write_text("data")
    result = run_kernel(["--role", "worker", "--config", str(path)])
    assert result.returncode == 1
    assert (f"[emerg] cannot listen on unix:{tmp_path}/missing/k.sock: the path exists and is not a socket, "
            f"in {path}:{where}") in result.stderr, result.stderr
    assert (tmp_path / "missing" / "k.sock").read_text() == "data"


def test_a_reload_onto_a_port_in_use_fails_and_the_old_configuration_serves(start_kernel, taken_port):
    kernel = start_kernel(HELLO.format(port=0, text="old"))
    port = kernel.port()
    text = with_core_section(HELLO.format(port=0, text="new"), kernel.workdir)
    text = text.replace('listen: "127.0.0.1:0"', f'listen: ["127.0.0.1:0", "127.0.0.1:{taken_port}"]')
    with open(kernel.config_path, "w") as f:
        f.write(text)
    assert kernel.control("reload").returncode == 0
    log = kernel.wait_for_log("reload failed")
    where = position(text, f'"127.0.0.1:{taken_port}')
    assert (f"reload failed, keeping the running configuration: bind() to 127.0.0.1:{taken_port} failed "
            f"(98: Address already in use), in {kernel.config_path}:{where}") in log, log
    assert get(port) == (200, "old")


# ------------------------------------------------------------------------------------------ files of a fresh copy

def test_hello_example_starts_from_a_copy_without_run_directory(tmp_path):
    """etc/ copied as a fresh clone has it (no run/, no logs/): the example's pid file directory is created."""
    shutil.copytree(os.path.join(ROOT, "etc"), tmp_path / "etc")
    example = tmp_path / "etc" / "examples" / "hello.yaml"
    # Only the port changes (tests never use a fixed one); the pid path stays as shipped, relative to the file.
    example.write_text(example.read_text().replace("127.0.0.1:8080", "127.0.0.1:0"))
    assert not (tmp_path / "run").exists()
    kernel = Kernel(str(example), "both", str(tmp_path))
    try:
        pid_file = tmp_path / "run" / "kernel-hello.pid"
        assert pid_file.read_text() == f"{kernel.pid}\n"
        assert oct(os.stat(tmp_path / "run").st_mode & 0o777) == "0o755"
        assert get(kernel.port()) == (200, "hello")
        result = run_kernel(["-s", "quit", "--config", "etc/examples/hello.yaml"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert kernel.wait_exit() == 0
        assert not pid_file.exists()
    finally:
        kernel.stop()


def test_log_directories_are_created_and_an_impossible_one_is_named(tmp_path):
    text = textwrap.dedent(f"""
        kernel:
          pid: {tmp_path}/state/deep/kernel.pid
          error_log: {{path: {tmp_path}/logs/error/kernel.log, level: info}}
        """) + HELLO.format(port=0, text="x").replace(
        "    - locations:", f"    - access_log: {tmp_path}/logs/access/a.log\n      locations:")
    path = tmp_path / "kernel.yaml"
    path.write_text(text)
    process = subprocess.Popen([KERNEL_BIN, "--config", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: "kernel started" in (tmp_path / "logs/error/kernel.log").read_text()
                 if (tmp_path / "logs/error/kernel.log").exists() else False, 60, "the kernel to start")
        assert (tmp_path / "state/deep/kernel.pid").exists()
        assert (tmp_path / "logs/access/a.log").exists()
    finally:
        process.send_signal(signal.SIGQUIT)
        assert process.wait(timeout=30) == 0
    path.write_text(text.replace(f"{tmp_path}/state/deep/kernel.pid", "/proc/kernel-state/kernel.pid"))
    result = run_kernel(["--config", str(path)])
    assert result.returncode == 1
    assert ('[emerg] cannot write pid file "/proc/kernel-state/kernel.pid": '
            'mkdir() "/proc/kernel-state" failed (2: No such file or directory)') in result.stderr, result.stderr


def test_quoted_off_access_log_is_off(start_kernel):
    kernel = start_kernel(HELLO.format(port=0, text="x").replace(
        "    - locations:", '    - access_log: "off"\n      locations:'))
    assert get(kernel.port()) == (200, "x")
    assert not os.path.exists(os.path.join(kernel.workdir, "off"))


# ------------------------------------------------------------------------------------- signals while models load

@pytest.fixture(scope="module")
def slow_loading_model(tmp_path_factory):
    """A model whose warm-up (thousands of runs of 48 MatMul+Tanh layers) keeps the start busy for seconds."""
    from inference_support import make_slow_model  # onnx, installed by scripts/setup.sh
    return make_slow_model(str(tmp_path_factory.mktemp("models") / "slow.onnx"))


def start_loading(tmp_path, model):
    text = with_core_section(HELLO.format(port=0, text="x") + f"""
inference:
  models:
    - name: slow
      path: {model}
      warmup: 10000
""", str(tmp_path))
    path = tmp_path / "kernel.yaml"
    path.write_text(text)
    log = open(tmp_path / "kernel-stderr.log", "wb")
    process = subprocess.Popen([KERNEL_BIN, "--config", str(path)], stdout=log, stderr=subprocess.STDOUT)
    pid_file = tmp_path / "kernel.pid"
    wait_for(pid_file.exists, 60, "the pid file")
    return path, process, pid_file


@pytest.mark.parametrize("how", ["quit", "stop", "SIGTERM"])
def test_a_stop_while_models_load_is_handled_and_removes_the_pid_file(tmp_path, slow_loading_model, how):
    path, process, pid_file = start_loading(tmp_path, slow_loading_model)
    try:
        if how == "SIGTERM":
            process.send_signal(signal.SIGTERM)
        else:
            result = run_kernel(["-s", how, "--config", str(path)])
            assert result.returncode == 0, result.stderr
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = (tmp_path / "kernel-stderr.log").read_text()
    assert "while starting" in log, log
    assert "kernel started" not in log, "the listeners never opened"
    assert not pid_file.exists()


def test_a_reload_asked_for_while_models_load_waits_for_the_start(tmp_path, slow_loading_model):
    """SIGHUP's default action would end the process: it is trapped before the start and acted on after it."""
    path, process, pid_file = start_loading(tmp_path, slow_loading_model)
    log_path = tmp_path / "kernel-stderr.log"
    try:
        assert run_kernel(["-s", "reload", "--config", str(path)]).returncode == 0
        wait_for(lambda: "configuration reloaded" in log_path.read_text() or process.poll() is not None, 120,
                 "the reload after the start")
        assert process.poll() is None, log_path.read_text()
        log = log_path.read_text()
        assert log.index("kernel started") < log.index("configuration reloaded")
        assert run_kernel(["-s", "quit", "--config", str(path)]).returncode == 0
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not pid_file.exists()


# --------------------------------------------------------------------------------------------- file descriptors

def limit_open_files(count):
    def apply():
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))
    return apply


def test_open_file_limit_is_raised_to_the_hard_limit_and_can_be_set(tmp_path):
    soft, hard = 256, 4096
    text = with_core_section(HELLO.format(port=0, text="x"), str(tmp_path))
    path = tmp_path / "kernel.yaml"
    path.write_text(text)

    log_path = tmp_path / "kernel-stderr.log"

    def figures(process):
        limits = open(f"/proc/{process.pid}/limits").read()
        return re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).groups()

    def start(config):
        with open(log_path, "wb") as out:
            process = subprocess.Popen([KERNEL_BIN, "--config", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
        wait_for(lambda: "kernel started" in log_path.read_text() or process.poll() is not None, 60, "the start")
        assert process.poll() is None, log_path.read_text()
        return process

    def quit(process):
        process.send_signal(signal.SIGQUIT)
        assert process.wait(timeout=30) == 0

    process = start(path)
    try:
        assert figures(process) == (str(hard), str(hard))
        assert re.search(rf"\[info\] \d+#0: RLIMIT_NOFILE: {hard} open files \(was {soft}, hard limit {hard}\)",
                         log_path.read_text()), log_path.read_text()
    finally:
        quit(process)

    path.write_text(text.replace("kernel:\n", "kernel:\n  worker_rlimit_nofile: 1000\n"))
    process = start(path)
    try:
        assert figures(process) == ("1000", str(hard))
        assert f"RLIMIT_NOFILE: 1000 open files (was {soft}, hard limit {hard})" in log_path.read_text()
        # A reload applies a changed value.
        path.write_text(text.replace("kernel:\n", "kernel:\n  worker_rlimit_nofile: 2000\n"))
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in log_path.read_text(), 30, "the reload")
        assert figures(process) == ("2000", str(hard))
        assert "RLIMIT_NOFILE: 2000 open files (was 1000, hard limit 4096)" in log_path.read_text()
    finally:
        quit(process)


def test_check_rejects_a_bad_worker_rlimit_nofile(tmp_path):
    path = tmp_path / "kernel.yaml"
    text = "kernel:\n  worker_rlimit_nofile: lots\n"
    path.write_text(text)
    result = run_kernel(["-t", "--config", str(path)])
    assert result.returncode == 1
    assert (f'{path}:2:25: kernel.worker_rlimit_nofile: expected a number of files 1-2147483647, found "lots"'
            in result.stderr), result.stderr


def test_running_out_of_descriptors_backs_off_and_accepts_again(tmp_path):
    """Under `ulimit -n 256` for the kernel, 600 connections: the crit line, the open connection still served,
    and new connections accepted once others close."""
    text = with_core_section(HELLO.format(port=0, text="still here"), str(tmp_path))
    path = tmp_path / "kernel.yaml"
    path.write_text(text)
    # This process holds 600+ sockets itself.
    own_soft, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(own_soft, min(own_hard, 4096)), own_hard))
    log_path = tmp_path / "kernel-stderr.log"
    log = open(log_path, "wb")
    process = subprocess.Popen([KERNEL_BIN, "--config", str(path)], stdout=log, stderr=subprocess.STDOUT,
                               preexec_fn=limit_open_files(256))
    clients = []
    try:
        wait_for(lambda: "kernel started" in log_path.read_text() or process.poll() is not None, 60, "the start")
        port = int(re.search(r"listening on http 127\.0\.0\.1:(\d+)", log_path.read_text()).group(1))
        first = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        assert get(port, connection=first) == (200, "still here")

        for _ in range(600):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(client)
        wait_for(lambda: "accept() failed (24: Too many open files)" in log_path.read_text(), 30, "the accept failure")
        line = next(l for l in log_path.read_text().splitlines() if "accept() failed" in l)
        assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[crit\] \d+#0: accept\(\) failed \(24: Too many open files\) "
                            rf"while accepting new connection on 127\.0\.0\.1:{port}( \(\d+ more since the last report\))?",
                            line), line
        # The connection opened before is still answered while the listener backs off.
        assert get(port, connection=first) == (200, "still here")

        for client in clients[:500]:
            client.close()
        del clients[:500]
        fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        assert get(port, connection=fresh) == (200, "still here")
        fresh.close()
        first.close()
        assert process.poll() is None
    finally:
        for client in clients:
            client.close()
        process.send_signal(signal.SIGQUIT)
        assert process.wait(timeout=60) == 0
        log.close()


# ------------------------------------------------------------------------------------------ configuration bombs

def billion_laughs():
    text = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    names = "abcdefghi"
    for previous, name in zip(names, names[1:]):
        text += f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]\n"
    return text


BOMBS = {
    "aliases": (billion_laughs,
                ":7:8: the configuration expands to more than 1000000 YAML nodes (aliases included)"),
    "flow": (lambda: "[" * 100_000 + "]" * 100_000 + "\n", ":1:257: YAML collections nested deeper than 256 levels"),
    "block": (lambda: "- " * 100_000 + "x\n", ":1:513: YAML collections nested deeper than 256 levels"),
    "mappings": (lambda: "a:\n" + "".join("  " * depth + "a:\n" for depth in range(1, 300)) + "  " * 300 + "x\n",
                 ":257:513: YAML collections nested deeper than 256 levels"),
}


@pytest.mark.parametrize("kind", BOMBS)
def test_configuration_bombs_are_refused_naming_the_position(tmp_path, kind):
    make, expected = BOMBS[kind]
    path = tmp_path / f"{kind}.yaml"
    path.write_text(make())
    result = run_kernel(["-t", "--config", str(path)], timeout=10)
    assert result.returncode == 1
    assert f"[emerg] {path}{expected}" in result.stderr, result.stderr[:2000]
