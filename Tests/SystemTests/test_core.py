"""The kernel binary as an operator uses it: --check, -s reload|reopen|quit|stop, signals, listeners on reload."""
import http.client
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import KERNEL_BIN, with_core_section

HELLO = """
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /
          return: 200 "{text}"
"""


def get(port, path="/", host="127.0.0.1"):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body


def check(tmp_path, text, name="check.yaml"):
    path = tmp_path / name
    path.write_text(with_core_section(text, str(tmp_path)))
    result = subprocess.run([KERNEL_BIN, "-t", "-c", str(path)], capture_output=True, text=True, timeout=60)
    return path, result


def test_version(kernel_bin):
    result = subprocess.run([kernel_bin, "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert re.fullmatch(r"\d+\.\d+\.\d+\n", result.stdout)


def test_check_accepts_a_valid_file(tmp_path):
    path, result = check(tmp_path, HELLO.format(text="hello"))
    assert result.returncode == 0, result.stderr
    assert f"the configuration file {path} syntax is ok" in result.stderr
    assert f"configuration file {path} test is successful" in result.stderr


def test_check_rejects_http_and_uwsgi_on_one_address_naming_both_places(tmp_path):
    text = HELLO.replace('  listen: "127.0.0.1:0"', '  listen: "127.0.0.1:18799"') + 'uwsgi:\n  listen: "127.0.0.1:18799"\n'
    path, result = check(tmp_path, text.format(text="x"))
    assert result.returncode == 1, result.stderr
    lines = with_core_section(text.format(text="x"), str(tmp_path)).splitlines()
    http_line = next(i for i, l in enumerate(lines, 1) if "18799" in l)
    uwsgi_line = next(i for i, l in enumerate(lines, 1) if "18799" in l and i > http_line)
    assert (f'{path}:{uwsgi_line}:11: uwsgi listen address "127.0.0.1:18799" is also the http listener\'s at '
            f'{path}:{http_line}:11') in result.stderr, result.stderr


def test_check_rejects_an_invalid_file_naming_line_and_column(tmp_path):
    text = HELLO.format(text="hello").replace('return: 200 "hello"', 'return: abc')
    path, result = check(tmp_path, text)
    assert result.returncode == 1
    lines = with_core_section(text, str(tmp_path)).splitlines()
    line = next(i for i, l in enumerate(lines, 1) if "return: abc" in l)
    column = lines[line - 1].index("abc") + 1
    assert (f'{path}:{line}:{column}: routing.servers[0].locations[0].return: '
            f'expected a status code 100-599, found "abc"') in result.stderr
    assert f"configuration file {path} test failed" in result.stderr


def test_check_rejects_an_unknown_key(tmp_path):
    path, result = check(tmp_path, HELLO.format(text="x") + "  bogus: 1\n")
    assert result.returncode == 1
    assert f"{path}:" in result.stderr and "routing.bogus: unknown key" in result.stderr


def test_startup_with_an_invalid_file_exits_non_zero(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(with_core_section("http:\n  listen: [\n", str(tmp_path)))
    result = subprocess.run([KERNEL_BIN, "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"[emerg] {path}:" in result.stdout + result.stderr


def test_invalid_reload_keeps_the_running_configuration(start_kernel):
    kernel = start_kernel(HELLO.format(text="old"))
    port = kernel.port()
    kernel.write_config(HELLO.format(text="new").replace('return: 200 "new"', "return: 99"))
    assert kernel.control("reload").returncode == 0
    text = kernel.wait_for_log("reload failed", timeout=20)
    assert re.search(r"reload failed, keeping the running configuration: \S+kernel\.yaml:\d+:\d+: "
                     r"routing\.servers\[0\]\.locations\[0\]\.return", text), text
    assert get(port) == (200, "old")


def test_sighup_sent_directly_reloads(start_kernel):
    kernel = start_kernel(HELLO.format(text="before"))
    kernel.write_config(HELLO.format(text="after"))
    os.kill(kernel.pid, signal.SIGHUP)
    kernel.wait_for_log("configuration reloaded", timeout=20)
    assert get(kernel.port()) == (200, "after")


def test_reload_opens_added_and_closes_removed_listeners(start_kernel):
    kernel = start_kernel(HELLO.format(text="one"))
    first = kernel.port()
    two = HELLO.format(text="two").replace('listen: "127.0.0.1:0"', 'listen: ["127.0.0.1:0", "[::1]:0"]')
    kernel.write_config(two)
    kernel.control("reload")
    kernel.wait_for_log("configuration reloaded", timeout=20)
    v6 = kernel.port(configured="[::1]:0")
    assert get(first) == (200, "two"), "an unchanged listener keeps its socket"
    assert get(v6, host="::1") == (200, "two")
    kernel.write_config(HELLO.format(text="three"))
    kernel.control("reload")
    kernel.wait_for_log("configuration reloaded", timeout=20, count=2)
    assert get(first) == (200, "three")
    with pytest.raises(OSError):
        socket.create_connection(("::1", v6), timeout=2).close()


def test_quit_lets_an_in_flight_request_finish(start_kernel):
    kernel = start_kernel(HELLO.format(text="done"))
    port = kernel.port()
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    # Part of a head: the request is in flight (a `return` answers as soon as its head ends).
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.3)
    assert kernel.control("quit").returncode == 0
    kernel.wait_for_log("graceful shutdown", timeout=10)
    # The listener is closed for new connections...
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.05)
        except OSError:
            break
    else:
        pytest.fail("the listener still accepts after quit")
    # ...while the request in flight completes.
    client.sendall(b"X-Last: 1\r\n\r\n")
    response = b""
    while True:
        chunk = client.recv(4096)
        if not chunk:
            break
        response += chunk
    assert response.startswith(b"HTTP/1.1 200 OK\r\n"), response
    assert response.endswith(b"done")
    assert kernel.wait_exit(timeout=20) == 0
    assert not os.path.exists(os.path.join(kernel.workdir, "kernel.pid"))


def test_stop_exits_at_once_with_connections_open(start_kernel, tmp_path):
    # A graceful stop would wait up to shutdown_timeout (an hour here) for the open request; `stop` does not wait.
    core = (f"kernel:\n  pid: {tmp_path}/kernel.pid\n  error_log: {{path: stderr, level: info}}\n"
            f"  shutdown_timeout: 1h\n")
    kernel = start_kernel(core + HELLO.format(text="x"))
    idle = socket.create_connection(("127.0.0.1", kernel.port()), timeout=10)
    # A request under way: its head has begun (a graceful stop waits for it to end).
    idle.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.3)
    assert kernel.control("stop").returncode == 0
    assert kernel.wait_exit(timeout=30) == 0
    try:
        assert idle.recv(4096) == b"", "the open connection is closed"
    except ConnectionResetError:
        pass
    assert not os.path.exists(tmp_path / "kernel.pid")
    idle.close()


def test_reopen_moves_the_access_log_to_a_new_file(start_kernel, tmp_path):
    log = tmp_path / "access.log"
    text = HELLO.format(text="x").replace("    - locations:", f"    - access_log: {log}\n      locations:")
    kernel = start_kernel(text)
    port = kernel.port()
    get(port, "/first")
    rotated = tmp_path / "access.log.1"
    os.rename(log, rotated)
    assert kernel.control("reopen").returncode == 0
    kernel.wait_for_log("log files reopened", timeout=10)
    get(port, "/second")
    assert '"GET /first HTTP/1.1" 200 1' in rotated.read_text()
    line = log.read_text()
    assert re.fullmatch(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
                        r'"GET /second HTTP/1\.1" 200 1 "-" "-"\n', line), line


def test_signal_without_a_running_kernel_reports_the_pid_file(tmp_path):
    path, _ = check(tmp_path, HELLO.format(text="x"))
    result = subprocess.run([KERNEL_BIN, "-s", "reload", "-c", str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert f'open() "{tmp_path}/kernel.pid" failed' in result.stderr


@pytest.mark.parametrize("name", ["etc/kernel.yaml", "etc/worker.yaml", "etc/edge.yaml", "etc/examples/hello.yaml",
                                  "etc/examples/nginx-server-block.yaml", "etc/examples/uwsgi-ini.yaml",
                                  "etc/examples/seed-ip-hash-uwsgi.yaml", "etc/examples/seed-proxy-cors.yaml",
                                  "etc/examples/seed-round-robin.yaml", "etc/examples/seed-weighted.yaml"])
def test_shipped_configurations_pass_check(name):
    from conftest import ROOT
    role = {"etc/worker.yaml": "worker", "etc/edge.yaml": "edge", "etc/examples/nginx-server-block.yaml": "edge",
            "etc/examples/uwsgi-ini.yaml": "worker"}.get(name, "edge" if "/seed-" in name else "both")
    result = subprocess.run([KERNEL_BIN, "-t", "--role", role, "-c", os.path.join(ROOT, name)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def uwsgi_get(path_on_disk, uri):
    """One GET over uwsgi on a unix socket; returns the raw response."""
    import struct
    pairs = [(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", uri.encode()), (b"SERVER_PROTOCOL", b"HTTP/1.1"),
             (b"HTTP_HOST", b"localhost")]
    block = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in pairs)
    client = socket.socket(socket.AF_UNIX)
    client.settimeout(10)
    client.connect(path_on_disk)
    client.sendall(b"\x00" + struct.pack("<H", len(block)) + b"\x00" + block)
    response = b""
    while True:
        chunk = client.recv(4096)
        if not chunk:
            break
        response += chunk
    client.close()
    return response


def test_reload_moving_a_unix_socket_to_another_protocol_keeps_the_socket(start_kernel, tmp_path):
    path = tmp_path / "k.sock"
    kernel = start_kernel(HELLO.format(text="over-http").replace('listen: "127.0.0.1:0"', f'listen: "unix:{path}"'))
    assert path.exists()
    moved = HELLO.format(text="over-uwsgi").replace('http:\n  listen: "127.0.0.1:0"', f'uwsgi:\n  listen: "unix:{path}"')
    kernel.write_config(moved)
    kernel.control("reload")
    kernel.wait_for_log("configuration reloaded", timeout=20)
    assert path.exists(), "retiring the http listener must not unlink the socket the uwsgi listener now holds"
    response = uwsgi_get(str(path), "/")
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(b"over-uwsgi"), response


def test_a_proxying_prefix_location_redirects_its_unslashed_path(start_kernel):
    # `uwsgi_pass` declares that it proxies: `/api` gets nginx's 301 to `/api/` without an upstream being asked
    # (nothing listens on the address); a `return` location ending in `/` does not redirect.
    kernel = start_kernel("""
http:
  listen: "127.0.0.1:0"
uwsgi: {}
routing:
  servers:
    - locations:
        - location: /api/
          uwsgi_pass: unix:/nonexistent/kernel-test.sock
        - location: /docs/
          return: 200 "docs"
""", role="edge")
    conn = http.client.HTTPConnection("127.0.0.1", kernel.port("http"), timeout=10)
    conn.request("GET", "/api?x=1")
    response = conn.getresponse()
    response.read()
    assert response.status == 301
    # Absolute, as nginx sends it (`absolute_redirect on`): the host asked for and the port connected to.
    assert response.getheader("Location") == f"http://127.0.0.1:{kernel.port('http')}/api/?x=1"
    conn.close()
    assert get(kernel.port("http"), "/docs")[0] == 404
