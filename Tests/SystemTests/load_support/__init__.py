"""Load from `wrk` for the system tests, with readiness read from the kernel's sockets rather than slept for."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time


def established_connections(port):
    """Established TCP connections whose local port is `port` (both directions of loopback count once each)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local_port = int(fields[1].rsplit(":", 1)[1], 16)
                    if local_port == port and fields[3] == "01":
                        count += 1
        except FileNotFoundError:
            continue
    return count


class WrkRun:
    """`wrk` against `url` for as long as the test needs: started with a long duration, it is interrupted (SIGINT,
    after which wrk prints its summary) once the test's work under load is done, so that work falls inside the run
    whatever it costs."""

    def __init__(self, url, port, connections=16, threads=2, method="GET", body=None, headers=None):
        if shutil.which("wrk") is None:
            raise AssertionError("wrk is not installed (scripts/setup.sh installs it)")
        self.connections = connections
        self.port = port
        command = ["wrk", f"-t{threads}", f"-c{connections}", "-d120s", "--timeout", "30s", url]
        self._script = None
        if method != "GET" or body is not None or headers:
            lines = [f'wrk.method = "{method}"']
            if body is not None:
                lines.append("wrk.body = " + lua_string(body))
            for name, value in (headers or {}).items():
                lines.append(f"wrk.headers[{lua_string(name)}] = {lua_string(value)}")
            handle, self._script = tempfile.mkstemp(suffix=".lua")
            with os.fdopen(handle, "w") as f:
                f.write("\n".join(lines) + "\n")
            command[1:1] = ["-s", self._script]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output = None

    def wait_until_loaded(self, timeout=30):
        """Returns once every wrk connection is established with the server."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"wrk exited early:\n{self.process.stdout.read()}")
            if established_connections(self.port) >= self.connections:
                return
            time.sleep(0.02)
        raise AssertionError(f"wrk did not open its {self.connections} connections to port {self.port}")

    def finish(self):
        """Interrupts wrk and returns (requests, summary text)."""
        if self.process.poll() is not None:
            raise AssertionError("wrk ended before the work under load was done: raise its duration")
        self.process.send_signal(signal.SIGINT)
        self.output, _ = self.process.communicate(timeout=60)
        if self._script:
            os.unlink(self._script)
        found = re.search(r"(\d+) requests in", self.output)
        assert found, self.output
        return int(found.group(1)), self.output


def lua_string(value):
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return '"' + "".join(c if c.isalnum() or c in " {}[]:,.-_/+=" else f"\\{ord(c)}" for c in value) + '"'
