"""Shared fixtures of the system tests: start the real `kernel` binary with a YAML file on 127.0.0.1 port 0."""
import os
import re
import signal
import subprocess
import textwrap
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KERNEL_BIN = os.path.abspath(os.environ.get("KERNEL_BIN", os.path.join(ROOT, ".build", "debug", "kernel")))
LISTENING = re.compile(r"listening on (\w+) (\S+) \((\S+)\)")


class Kernel:
    """A running kernel process and what it printed."""

    def __init__(self, config_path, role, workdir, extra_args=(), env=None):
        self.config_path = config_path
        self.role = role
        self.workdir = workdir
        # kernel.yaml logs to kernel-stderr.log; several kernels of one test (edge.yaml, w1.yaml) to their own.
        self.log_path = os.path.join(workdir, os.path.basename(config_path).rsplit(".", 1)[0] + "-stderr.log")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [KERNEL_BIN, "--role", role, "--config", config_path, *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir, env=env or os.environ.copy())
        self.pid = self.process.pid
        try:
            self.wait_for_log("kernel started", timeout=60)
        except AssertionError:
            # A kernel that never said it started is not left running (with its worker processes) after the test.
            self._end()
            raise

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    stderr_text = log_text

    def wait_for_log(self, needle, timeout=10, count=1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.log_text()
            if text.count(needle) >= count:
                return text
            if self.process.poll() is not None:
                raise AssertionError(f"kernel exited with {self.process.returncode}:\n{text}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {needle!r} in the kernel log:\n{self.log_text()}")

    def listeners(self):
        """(protocol, bound address, configured address) in the order they were opened (latest wins)."""
        return LISTENING.findall(self.log_text())

    def address(self, protocol="http", configured=None):
        found = [bound for proto, bound, conf in self.listeners()
                 if proto == protocol and (configured is None or conf == configured)]
        if not found:
            raise AssertionError(f"no {protocol} listener in:\n{self.log_text()}")
        return found[-1]

    def port(self, protocol="http", configured=None):
        return int(self.address(protocol, configured).rsplit(":", 1)[1])

    def url(self, path="/", protocol="http"):
        return f"http://127.0.0.1:{self.port(protocol)}{path}"

    def control(self, name):
        """`kernel -s NAME --config FILE`."""
        return subprocess.run([KERNEL_BIN, "-s", name, "--config", self.config_path],
                              capture_output=True, text=True, cwd=self.workdir, timeout=30)

    def write_config(self, text):
        with open(self.config_path, "w") as f:
            f.write(with_core_section(text, self.workdir))

    def wait_exit(self, timeout=30):
        return self.process.wait(timeout=timeout)

    def stop(self):
        """Stops the kernel with SIGTERM (`-s stop`) and fails when it does not exit cleanly.

        A kernel that crashes or hangs while it stops is a defect of the test that stopped it; one that a test
        stopped itself must have exited with 0 (or been killed by the test on purpose, see `killed`).
        """
        hung = self._end()
        if hung:
            raise AssertionError(f"the kernel did not exit within 15 s of SIGTERM:\n{self.log_text()}")
        if self.process.returncode != 0 and not self.killed:
            raise AssertionError(f"the kernel exited with {self.process.returncode} while stopping:\n{self.log_text()}")

    def _end(self):
        """SIGTERM, then SIGKILL after 15 s; closes the log. Returns whether it had to be killed."""
        hung = False
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                hung = True
                self.process.kill()
                self.process.wait()
        self._log.close()
        return hung

    #: Set by a test that kills the kernel on purpose (SIGKILL, a failed start): `stop` then accepts any exit.
    killed = False


def child_pids(pid):
    """The live (not zombie) processes whose parent is `pid`, sorted: a master's worker processes."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def with_core_section(text, workdir, pid="kernel.pid"):
    """Adds a `kernel:` section (pid file in the test's directory, info-level log, 2 threads) unless present."""
    text = textwrap.dedent(text)
    if re.search(r"^kernel:", text, re.M):
        return text
    core = (f"kernel:\n  pid: {workdir}/{pid}\n  error_log: {{path: stderr, level: info}}\n"
            f"  event_loop_threads: 2\n  shutdown_timeout: 10s\n")
    return core + text


@pytest.fixture
def kernel_bin():
    assert os.path.exists(KERNEL_BIN), f"build the kernel first: {KERNEL_BIN} is missing"
    return KERNEL_BIN


@pytest.fixture
def start_kernel(tmp_path, kernel_bin):
    """start_kernel(yaml_text, role="both", extra_args=(), env=None) -> Kernel; stopped after the test."""
    started = []

    def start(yaml_text, role="both", extra_args=(), env=None, name="kernel.yaml"):
        path = os.path.join(str(tmp_path), name)
        with open(path, "w") as f:
            f.write(with_core_section(yaml_text, str(tmp_path), pid=name.rsplit(".", 1)[0] + ".pid"))
        kernel = Kernel(path, role, str(tmp_path), extra_args, env)
        started.append(kernel)
        return kernel

    yield start
    failures = []
    for kernel in started:
        try:
            kernel.stop()
        except AssertionError as error:
            failures.append(str(error))
    if failures:
        pytest.fail("\n".join(failures))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skipped test is a failed one: every peer these tests need (nginx, uWSGI, tritonclient, ONNX Runtime, wrk)
    is installed by `make test`, so a skip can only hide a missing install or a broken binary."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = call.excinfo.value if call.excinfo is not None else "skipped"
        report.longrepr = f"skipped tests count as failures: {reason}"
