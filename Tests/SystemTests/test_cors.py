"""add_header and cors: on the real binary (Modules/CORS): the tutorial's add_header lines, and a cors: block that
answers preflights at the edge."""
import http.client

CONFIG = """
http:
  listen: "127.0.0.1:0"
cors:
  policies:
    app:
      allow_origins: ["https://app.example.com", "https://*.example.org"]
      allow_methods: [GET, POST]
      allow_headers: [Authorization, Content-Type]
      allow_credentials: true
      max_age: 10m
routing:
  servers:
    - add_header:
        # The tutorial's lines, as nginx writes them.
        - "Access-Control-Allow-Origin *"
        - "Access-Control-Allow-Headers Authorization,Origin,X-Requested-With,Content-Type,Accept"
        - "Access-Control-Allow-Methods POST,GET,PATCH,PUT,DELETE"
        - "X-Served-By kernel always"
      locations:
        - location: /
          return: 200 "plain"
        - location: /missing
          return: 404 "missing"
        - location: /api/
          cors: app
          return: 200 "api"
"""


def request(port, method, path, headers=()):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path, headers=dict(headers))
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def test_add_header_lines_of_the_tutorial(start_kernel):
    kernel = start_kernel(CONFIG, role="edge")
    status, headers, body = request(kernel.port(), "GET", "/")
    assert (status, body) == (200, b"plain")
    assert headers["access-control-allow-origin"] == "*"
    assert headers["access-control-allow-methods"] == "POST,GET,PATCH,PUT,DELETE"
    assert headers["x-served-by"] == "kernel"
    status, headers, _ = request(kernel.port(), "GET", "/missing")
    assert status == 404
    assert "access-control-allow-origin" not in headers, "nginx adds only to 2xx/3xx without always"
    assert headers["x-served-by"] == "kernel"


def test_cors_block_echoes_allowed_origins_and_answers_preflights(start_kernel):
    kernel = start_kernel(CONFIG, role="edge")
    port = kernel.port()
    status, headers, body = request(port, "GET", "/api/x", [("Origin", "https://a.example.org")])
    assert (status, body) == (200, b"api")
    assert headers["access-control-allow-origin"] == "https://a.example.org"
    assert headers["access-control-allow-credentials"] == "true"
    assert headers["vary"] == "Origin"
    assert "access-control-allow-methods" not in headers, "the location's cors replaces the server's add_header"

    status, headers, body = request(port, "OPTIONS", "/api/x", [
        ("Origin", "https://app.example.com"), ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "content-type")])
    assert (status, body) == (204, b"")
    assert headers["access-control-allow-origin"] == "https://app.example.com"
    assert headers["access-control-allow-methods"] == "GET, POST"
    assert headers["access-control-allow-headers"] == "Authorization, Content-Type"
    assert headers["access-control-max-age"] == "600"

    status, headers, _ = request(port, "GET", "/api/x", [("Origin", "https://evil.test")])
    assert status == 200 and "access-control-allow-origin" not in headers
    status, headers, _ = request(port, "OPTIONS", "/api/x", [
        ("Origin", "https://evil.test"), ("Access-Control-Request-Method", "POST")])
    assert status == 204 and "access-control-allow-origin" not in headers
    assert "CORS preflight refused" in kernel.log_text()


def test_star_with_credentials_is_a_warning_at_t(kernel_bin, tmp_path):
    import subprocess
    path = tmp_path / "k.yaml"
    path.write_text(CONFIG.replace('allow_origins: ["https://app.example.com", "https://*.example.org"]',
                                   'allow_origins: "*"'))
    result = subprocess.run([kernel_bin, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result
    assert "[warn]" in result.stderr and 'allow_origins "*" with allow_credentials' in result.stderr, result.stderr


LIMITED = """
http:
  listen: "127.0.0.1:0"
cors:
  policies:
    app:
      allow_origins: ["https://app.example.com"]
      allow_methods: [POST]
routing:
  servers:
    - client_max_body_size: 1k
      add_header:
        - "X-Always kernel always"
        - "X-Only-Success kernel"
      locations:
        - location: /upload
          cors: app
          return: 200 "stored"
"""


def test_a_413_made_by_the_listener_carries_the_locations_header_filters(start_kernel):
    """A browser reads a refusal's status only when it carries the CORS headers: the 413 that the listener answers
    before reading the body passes the location's `cors` and `add_header ... always`, as nginx's own error pages
    pass its header filters (and `add_header` without `always` stays off a 413, as in nginx)."""
    kernel = start_kernel(LIMITED, role="edge")
    conn = http.client.HTTPConnection("127.0.0.1", kernel.port(), timeout=5)
    conn.putrequest("POST", "/upload")
    conn.putheader("Origin", "https://app.example.com")
    conn.putheader("Content-Length", "4096")
    conn.endheaders()  # the body is never sent: the answer comes from the head alone
    response = conn.getresponse()
    headers = {k.lower(): v for k, v in response.getheaders()}
    response.read()
    conn.close()
    assert response.status == 413
    assert headers.get("access-control-allow-origin") == "https://app.example.com", headers
    assert headers.get("x-always") == "kernel", headers
    assert "x-only-success" not in headers, headers
    status, headers, body = request(kernel.port(), "POST", "/upload", [("Origin", "https://app.example.com")])
    assert (status, body) == (200, b"stored")
    assert headers["x-only-success"] == "kernel"
