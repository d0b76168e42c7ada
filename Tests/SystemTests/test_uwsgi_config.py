"""`uwsgi:` and `uwsgi_pass` configuration errors, as `kernel -t` reports them (file:line:column, key path)."""
import subprocess

import pytest

from conftest import KERNEL_BIN, with_core_section


def check(tmp_path, text):
    path = tmp_path / "uwsgi.yaml"
    path.write_text(with_core_section(text, str(tmp_path)))
    result = subprocess.run([KERNEL_BIN, "-t", "-c", str(path)], capture_output=True, text=True, timeout=60)
    return path, result


def test_valid_worker_and_edge_sections(tmp_path):
    _, result = check(tmp_path, """
uwsgi:
  listen: ["127.0.0.1:0", {address: "unix:/tmp/k.sock", mode: "0660", owner: "root:root", backlog: 128}]
  buffer_size: 64k
  client_body_timeout: 10s
  send_timeout: 1m
routing:
  servers:
    - locations:
        - location: /by-name
          uwsgi_pass: localhost:6666
        - location: /v1/parse
          uwsgi_pass: unix:/tmp/app.sock
          uwsgi_param: {SCRIPT_NAME: /v1, HTTP_HOST: $host, X_REAL: "$remote_addr:$remote_port", HTTPS: {value: $https, if_not_empty: true}}
          uwsgi_connect_timeout: 5s
          uwsgi_read_timeout: 30s
          uwsgi_send_timeout: 30s
          uwsgi_pass_request_headers: false
          uwsgi_buffer_size: 8k
          uwsgi_modifier1: 0
""")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("text, needle", [
    ("uwsgi:\n  bogus: 1\n", "uwsgi.bogus: unknown key"),
    ("uwsgi:\n  listen: nowhere\n", "uwsgi.listen: expected an address such as 127.0.0.1:6666"),
    ("uwsgi:\n  listen: {address: \"unix:/tmp/x.sock\", mode: \"999\"}\n",
     "uwsgi.listen.mode: expected an octal file mode"),
    ("uwsgi:\n  listen: {address: \"127.0.0.1:0\", mode: \"0660\"}\n", "mode and owner apply to unix sockets only"),
    ("uwsgi:\n  buffer_size: 1m\n", "uwsgi.buffer_size: expected a size from 16 to 64k"),
    ("uwsgi:\n  client_body_timeout: soon\n", "uwsgi.client_body_timeout: expected a duration"),
])
def test_section_errors(tmp_path, text, needle):
    path, result = check(tmp_path, text)
    assert result.returncode == 1
    assert f"{path}:" in result.stderr and needle in result.stderr, result.stderr


LOCATION = """
uwsgi: {{}}
routing:
  servers:
    - locations:
        - location: /
          uwsgi_pass: {target}
{extra}"""


@pytest.mark.parametrize("target, extra, needle", [
    ("not-an-address", "", "uwsgi_pass: expected host:port, unix:/path or the name of an upstream group"),
    ("127.0.0.1:6666", "          uwsgi_param: {X: $nosuch}\n", 'uwsgi_param.X: unknown "nosuch" variable'),
    ("127.0.0.1:6666", "          uwsgi_read_timeout: 0s\n", "uwsgi_read_timeout: expected a duration above zero"),
    ("127.0.0.1:6666", "          uwsgi_modifier1: 300\n", "uwsgi_modifier1: expected an integer 0-255"),
    ("127.0.0.1:6666", "          uwsgi_bogus: 1\n", "uwsgi_bogus: unknown key"),
    ("no-such-host.invalid:6666", "", 'uwsgi_pass: host not found in upstream "no-such-host.invalid:6666"'),
])
def test_location_errors(tmp_path, target, extra, needle):
    path, result = check(tmp_path, LOCATION.format(target=target, extra=extra))
    assert result.returncode == 1
    assert needle in result.stderr, result.stderr


def test_uwsgi_pass_needs_the_section(tmp_path):
    _, result = check(tmp_path, """
routing:
  servers:
    - locations:
        - location: /
          uwsgi_pass: 127.0.0.1:6666
""")
    assert result.returncode == 1
