"""Real peers for the uwsgi interop tests: uWSGI running the Flask app, and nginx with a temporary configuration."""
import os
import re
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


UWSGI_BOUND = re.compile(r"uwsgi socket 0 bound to TCP address 127\.0\.0\.1:(\d+) \(port auto-assigned\)")


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


def http_request(port, method, path, headers=(), body=None, timeout=60):
    """One request on a new connection, headers sent as they are (a dict or (name, value) pairs, repeats kept);
    returns (response, body)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for name, value in (headers.items() if isinstance(headers, dict) else headers):
        conn.putheader(name, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    if body is not None:
        conn.send(body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def read(path):
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


class UWSGIApp:
    """`uwsgi --socket 127.0.0.1:PORT --master --workers 2 --lazy --wsgi-file app.py --callable app`."""

    def __init__(self, workdir, workers=2, extra=()):
        self.log = os.path.join(workdir, "uwsgi.log")
        # Port 0: uWSGI binds a port of the kernel's choosing and logs it, so no port is picked and released first.
        self.command = [UWSGI, "--socket", "127.0.0.1:0", "--master", "--workers", str(workers), "--lazy",
                        "--wsgi-file", APP, "--callable", "app", "--buffer-size", "65536", "--die-on-term",
                        "--need-app", "--chdir", HERE, "--logto", self.log, *extra]
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.port = int(self._wait_for_log(UWSGI_BOUND).group(1))
        wait_port(self.port, process=self.process, log=self.log)
        # `--lazy` loads the app in each worker after the socket is open: wait until a worker has it.
        self._wait_for_log(re.compile(r"WSGI app 0 \(mountpoint='[^']*'\) ready"))

    def _wait_for_log(self, pattern, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = pattern.search(read(self.log))
            if found:
                return found
            if self.process.poll() is not None:
                raise AssertionError(f"uWSGI exited with {self.process.returncode}:\n{read(self.log)}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {pattern.pattern!r} in the uWSGI log:\n{read(self.log)}")

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
        # nginx cannot listen on port 0, so the sockets are bound and listening here and handed over as nginx's
        # own binary upgrade does (`NGINX="fd;fd;"`): nginx takes an inherited socket whose address its
        # configuration names instead of binding one, and no port is ever picked and then released.
        sockets = []
        for _ in servers:
            listening = socket.socket()
            listening.bind(("127.0.0.1", 0))
            listening.listen(511)
            sockets.append(listening)
        self.ports = [listening.getsockname()[1] for listening in sockets]
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
        fds = [listening.fileno() for listening in sockets]
        env = dict(os.environ, NGINX="".join(f"{fd};" for fd in fds))
        self.process = subprocess.Popen([NGINX, "-p", workdir, "-c", conf], stdout=subprocess.DEVNULL,
                                        stderr=open(os.path.join(workdir, "nginx-stderr.log"), "wb"),
                                        env=env, pass_fds=fds)
        for listening in sockets:
            listening.close()
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
