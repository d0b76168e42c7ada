"""Deadlines that travel: a kernel edge (`uwsgi_pass` or `proxy_pass` with `request_timeout` and
`request_timeout_header`) in front of a kernel worker serving a deliberately slow model on one instance, which batches (a request waits up to
`max_queue_delay` for others). The edge answers 504 at the request's
deadline and forwards the time left (`X-Kernel-Timeout-Ms`, as `HTTP_X_KERNEL_TIMEOUT_MS` over uwsgi), so the worker drops the queued request instead of
running it for a client that has given up."""
import numpy as np
import pytest
import requests
import tritonclient.http as tritonclient_http
from tritonclient.utils import InferenceServerException

from inference_support import make_slow_model

WORKER = """
uwsgi:
  listen: "127.0.0.1:0"
http:
  listen: "127.0.0.1:0"
inference:
  models:
    - name: slow
      path: {path}
      instances: 1
      max_batch_size: 8
      dynamic_batching: {{max_queue_delay: 2s}}
routing:
  servers:
    - client_max_body_size: 64m
      locations:
        - location: "^~ /v2"
          inference: {{}}
"""

EDGE = """
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
routing:
  servers:
    - client_max_body_size: 64m
      locations:
        - location: /v2/
          {directive}: {target}
          request_timeout: 60s
          request_timeout_header: {{name: X-Request-Timeout, max: 60s}}
"""


def infer(edge, rows, headers=None):
    """One binary-tensor inference through the edge; (status, message)."""
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{edge.port()}", network_timeout=300)
    array = np.random.default_rng(rows).standard_normal((rows, 256)).astype(np.float32)
    tensor = tritonclient_http.InferInput("x", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=True)
    try:
        client.infer("slow", [tensor], headers=headers)
        return 200, ""
    except InferenceServerException as error:
        return int(error.status()), error.message()
    finally:
        client.close()


@pytest.mark.parametrize("directive", ["uwsgi_pass", "proxy_pass"])
def test_a_forwarded_deadline_makes_the_worker_drop_the_queued_request(start_kernel, tmp_path, directive):
    worker = start_kernel(WORKER.format(path=make_slow_model(str(tmp_path / "slow.onnx"))), role="worker", name="worker.yaml")
    if directive == "uwsgi_pass":
        target = f"127.0.0.1:{worker.port('uwsgi')}"
    else:
        target = f"http://127.0.0.1:{worker.port('http')}"
    edge = start_kernel(EDGE.format(directive=directive, target=target), role="edge", name="edge.yaml")
    # The first request of a batch waits up to max_queue_delay (2 s) for others: a client allowing 300 ms has given
    # up long before, and the worker, told so by the edge, drops it instead of running it.
    status, message = infer(edge, 1, headers={"X-Request-Timeout": "300ms"})
    assert status == 504, message
    edge_log = edge.log_text()
    # The edge forwards the time left rounded down (`X-Kernel-Timeout-Ms`), so the worker's deadline can come up to
    # a millisecond before the edge's: then the worker's own 504 is the answer, passed on by the edge.
    assert ("upstream timed out (request deadline reached) while waiting for upstream" in edge_log
            or "its deadline passed" in message), (message, edge_log)
    # The worker's timer at the forwarded deadline and the edge closing the connection at its own race: either drops
    # the request ("its deadline passed" or "the client closed the connection"), and it never runs.
    worker.wait_for_log("inference request for model 'slow' dropped from the queue")
    # Without a limit of its own the request waits for its batch and runs; the peer was not blamed for the
    # client's limit (the next request is served through it).
    assert infer(edge, 1) == (200, "")
    stats = requests.get(edge.url("/v2/models/slow/stats"), timeout=30).json()["model_stats"][0]
    assert stats["execution_count"] == 1, stats  # the dropped request never reached ONNX Runtime
    assert stats["timeouts"] + stats["cancellations"] == 1, stats
