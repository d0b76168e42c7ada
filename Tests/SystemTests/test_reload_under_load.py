"""`kernel -s reload` while `wrk` keeps every connection busy: no request may fail, whatever the location does.

Each test makes 20 reloads inside one wrk run (wrk is interrupted only after the last reload has been applied and
served), through a static `return`, through `uwsgi_pass` to a real uWSGI + Flask app, and through an inference
location running the demo model.
"""
import http.client
import json

import numpy as np

from inference_support import DEMO, ensure_models
from load_support import WrkRun
from uwsgi_support.peers import UWSGIApp

RELOADS = 20


def get(port, path="/", method="GET", body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def reload_under_load(kernel, wrk, config_for, check_generation):
    """Applies `config_for(1..RELOADS)` one after another while `wrk` runs; each new generation must answer."""
    wrk.wait_until_loaded()
    for number in range(1, RELOADS + 1):
        kernel.write_config(config_for(number))
        result = kernel.control("reload")
        assert result.returncode == 0, result.stderr
        kernel.wait_for_log("configuration reloaded", timeout=30, count=number)
        check_generation(number)
    requests, output = wrk.finish()
    assert requests > 0, output
    assert "Non-2xx" not in output, output
    assert "Socket errors" not in output, output
    assert "reload failed" not in kernel.log_text()
    return requests


RETURN = """
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /
          return: 200 "generation-{number}"
"""


def test_reload_under_load_through_return_loses_no_request(start_kernel):
    kernel = start_kernel(RETURN.format(number=0))
    port = kernel.port()
    wrk = WrkRun(f"http://127.0.0.1:{port}/", port)

    def check(number):
        assert get(port) == (200, f"generation-{number}".encode())

    reload_under_load(kernel, wrk, lambda number: RETURN.format(number=number), check)


UWSGI_PASS = """
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
routing:
  servers:
    - locations:
        - location: = /generation
          return: 200 "generation-{number}"
        - location: /
          uwsgi_pass: 127.0.0.1:{app_port}
          uwsgi_read_timeout: 30s
"""


def test_reload_under_load_through_uwsgi_pass_loses_no_request(start_kernel, tmp_path):
    app = UWSGIApp(str(tmp_path), workers=2)
    try:
        def config(number):
            return UWSGI_PASS.format(number=number, app_port=app.port)

        kernel = start_kernel(config(0))
        port = kernel.port()
        status, body = get(port, "/v1/parse")
        assert status == 200, body
        wrk = WrkRun(f"http://127.0.0.1:{port}/v1/parse", port, connections=8)

        def check(number):
            assert get(port, "/generation") == (200, f"generation-{number}".encode())

        reload_under_load(kernel, wrk, config, check)
    finally:
        app.stop()


INFERENCE = f"""
http:
  listen: "127.0.0.1:0"
inference:
  models:
    - name: demo
      path: {DEMO}
      max_batch_size: 32
      dynamic_batching: {{{{max_queue_delay: 2ms}}}}
      warmup: 1
routing:
  servers:
    - locations:
        - location: = /generation
          return: 200 "generation-{{number}}"
        - location: "^~ /v2"
          inference: {{{{}}}}
"""


def test_reload_under_load_through_inference_loses_no_request(start_kernel):
    ensure_models()
    kernel = start_kernel(INFERENCE.format(number=0))
    port = kernel.port()
    row = np.linspace(-1, 1, 64, dtype=np.float32).tolist()
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]})
    headers = {"Content-Type": "application/json"}
    status, answer = get(port, "/v2/models/demo/infer", "POST", body, headers)
    assert status == 200, answer
    expected = json.loads(answer)["outputs"][0]["data"]
    wrk = WrkRun(f"http://127.0.0.1:{port}/v2/models/demo/infer", port, connections=8, method="POST", body=body,
                 headers=headers)

    def check(number):
        assert get(port, "/generation") == (200, f"generation-{number}".encode())
        status, answer = get(port, "/v2/models/demo/infer", "POST", body, headers)
        assert status == 200, answer
        assert json.loads(answer)["outputs"][0]["data"] == expected

    reload_under_load(kernel, wrk, lambda number: INFERENCE.format(number=number), check)
