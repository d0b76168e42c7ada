"""Real peers for the uwsgi interop tests: uWSGI running the Flask app, and nginx with a temporary configuration."""
import os
import shutil
import signal
import socket
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "app.py")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
UWSGI = shutil.which("uwsgi")
UWSGI_PARAMS = "/etc/nginx/uwsgi_params"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30, process=None, log=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode}:\n{read(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}:\n{read(log)}")


def read(path):
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


class UWSGIApp:
    """`uwsgi --socket 127.0.0.1:PORT --master --workers 2 --lazy --wsgi-file app.py --callable app`."""

    def __init__(self, workdir, workers=2, extra=()):
        self.port = free_port()
        self.log = os.path.join(workdir, "uwsgi.log")
        self.command = [UWSGI, "--socket", f"127.0.0.1:{self.port}", "--master", "--workers", str(workers), "--lazy",
                        "--wsgi-file", APP, "--callable", "app", "--buffer-size", "65536", "--die-on-term",
                        "--need-app", "--chdir", HERE, "--logto", self.log, *extra]
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_port(self.port, process=self.process, log=self.log)
        # `--lazy` loads the app in each worker after the socket is open: wait until a worker answers.
        deadline = time.time() + 30
        while "WSGI app 0" not in read(self.log) and time.time() < deadline:
            time.sleep(0.05)

    def kill(self):
        """Kills the whole uWSGI process group at once (master and workers)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        # The workers share the listening socket: it is gone only once the last of them is.
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except ConnectionRefusedError:
                return
            time.sleep(0.05)
        raise AssertionError(f"uWSGI still accepts on {self.port} after SIGKILL")

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


class Nginx:
    """nginx in the foreground with everything (pid, logs, temp files) in `workdir`."""

    def __init__(self, workdir, locations, client_max_body_size="100m"):
        # One server block per entry of `locations` (a string is one server); `ports` in the same order.
        servers = [locations] if isinstance(locations, str) else list(locations)
        self.ports = [free_port() for _ in servers]
        self.port = self.ports[0]
        self.workdir = workdir
        self.error_log = os.path.join(workdir, "nginx-error.log")
        conf = os.path.join(workdir, "nginx.conf")
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "".join(f"    {kind}_temp_path {workdir}/nginx-{kind}-temp;\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        with open(conf, "w") as f:
            f.write(f"""{user}daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temp}    client_max_body_size {client_max_body_size};
{"".join(self._server(port, block) for port, block in zip(self.ports, servers))}}}
""")
        self.conf = conf
        self.process = subprocess.Popen([NGINX, "-p", workdir, "-c", conf], stdout=subprocess.DEVNULL,
                                        stderr=open(os.path.join(workdir, "nginx-stderr.log"), "wb"))
        for port in self.ports:
            wait_port(port, process=self.process, log=os.path.join(workdir, "nginx-stderr.log"))

    @staticmethod
    def _server(port, locations):
        return f"""    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
{locations}    }}
"""

    def error_log_text(self):
        return read(self.error_log)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def uwsgi_location(path, target, extra=""):
    """An nginx location passing to `target` with the stock uwsgi_params."""
    return f"""        location {path} {{
            include {UWSGI_PARAMS};
            uwsgi_pass {target};
{extra}        }}
"""
