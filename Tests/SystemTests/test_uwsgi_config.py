"""`uwsgi:` and `uwsgi_pass` configuration errors, as `kernel -t` reports them (file:line:column, key path)."""
import re
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
          uwsgi_next_upstream: [error, timeout, invalid_header, http_500, http_502, http_503, http_504, http_429, non_idempotent]
        - location: /no-retries
          uwsgi_pass: 127.0.0.1:6666
          uwsgi_next_upstream: "off"
""")
    assert result.returncode == 0, result.stderr


# Each error is checked as the whole line `kernel -t` prints: `[emerg] FILE:LINE:COLUMN: key.path: message`. The
# `kernel:` section that `with_core_section` puts first takes 5 lines, so the test's own text starts on line 6.
# A list of allowed keys is matched by shape: it grows with the modules.
KEY_LIST = r"\(expected one of: [a-z0-9_, ]+\)"


def assert_error_line(result, path, position, message):
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    expected = f"kernel: [emerg] {path}:{position}: "
    assert first.startswith(expected), result.stderr
    rest = first[len(expected):]
    if message.endswith(" unknown key"):
        assert re.fullmatch(re.escape(message) + " " + KEY_LIST, rest), result.stderr
    else:
        assert rest == message, result.stderr
    assert result.stderr.splitlines()[1] == f"kernel: configuration file {path} test failed"


@pytest.mark.parametrize("text, position, message", [
    ("uwsgi:\n  bogus: 1\n", "7:3", "uwsgi.bogus: unknown key"),
    ("uwsgi:\n  listen: nowhere\n", "7:11",
     'uwsgi.listen: expected an address such as 127.0.0.1:6666, [::1]:6666, 6666 or unix:/run/kernel.sock, '
     'found "nowhere"'),
    ("uwsgi:\n  listen: {address: \"unix:/tmp/x.sock\", mode: \"999\"}\n", "7:47",
     'uwsgi.listen.mode: expected an octal file mode such as "0660", found "999"'),
    ("uwsgi:\n  listen: {address: \"127.0.0.1:0\", mode: \"0660\"}\n", "7:11",
     "uwsgi.listen: mode and owner apply to unix sockets only"),
    ("uwsgi:\n  buffer_size: 1m\n", "7:16",
     "uwsgi.buffer_size: expected a size from 16 to 64k (the uwsgi header's 16-bit size field), found 1m"),
    ("uwsgi:\n  client_body_timeout: soon\n", "7:24",
     'uwsgi.client_body_timeout: expected a duration such as 500ms, 30s, 5m or 1h (at most 365d), found "soon"'),
])
def test_section_errors(tmp_path, text, position, message):
    path, result = check(tmp_path, text)
    assert_error_line(result, path, position, message)


LOCATION = """
uwsgi: {{}}
routing:
  servers:
    - locations:
        - location: /
          uwsgi_pass: {target}
{extra}"""

AT = "routing.servers[0].locations[0]."


@pytest.mark.parametrize("target, extra, position, message", [
    ("not-an-address", "", "12:23",
     AT + 'uwsgi_pass: expected host:port, unix:/path or the name of an upstream group, found "not-an-address"'),
    ("127.0.0.1:6666", "          uwsgi_param: {X: $nosuch}\n", "13:28", AT + 'uwsgi_param.X: unknown "nosuch" variable'),
    ("127.0.0.1:6666", "          uwsgi_read_timeout: 0s\n", "13:31",
     AT + 'uwsgi_read_timeout: expected a duration above zero, found "0s"'),
    ("127.0.0.1:6666", "          uwsgi_modifier1: 300\n", "13:28",
     AT + 'uwsgi_modifier1: expected an integer 0-255, found "300"'),
    ("127.0.0.1:6666", "          uwsgi_bogus: 1\n", "13:11", AT + "uwsgi_bogus: unknown key"),
    ("127.0.0.1:6666", "          uwsgi_next_upstream: [error, bogus]\n", "13:40",
     AT + 'uwsgi_next_upstream[1]: expected one of error, http_403, http_404, http_429, http_500, http_502, http_503, '
     'http_504, invalid_header, non_idempotent, off, timeout, found "bogus"'),
    ("127.0.0.1:6666", "          uwsgi_next_upstream: [error, \"off\"]\n", "13:40",
     AT + 'uwsgi_next_upstream[1]: "off" cannot be combined with other values'),
    ("no-such-host.invalid:6666", "", "12:23", AT + 'uwsgi_pass: host not found in upstream "no-such-host.invalid:6666"'),
])
def test_location_errors(tmp_path, target, extra, position, message):
    path, result = check(tmp_path, LOCATION.format(target=target, extra=extra))
    assert_error_line(result, path, position, message)


def test_uwsgi_pass_needs_the_section(tmp_path):
    path, result = check(tmp_path, """
routing:
  servers:
    - locations:
        - location: /
          uwsgi_pass: 127.0.0.1:6666
""")
    assert_error_line(result, path, "11:23", AT + "uwsgi_pass: unknown key (a location needs one handler: health, metrics, return, status)")
