"""The status page (Modules/Status) in headless Chromium: it loads with no console error, redraws itself every
second, and the numbers it shows are those of its JSON endpoint after real traffic (requests, an upstream group
with a dead peer, a model)."""
import concurrent.futures
import http.client
import json
import time
from decimal import ROUND_HALF_UP, Decimal

import pytest

from browser_support import Browser
from inference_support import DEMO, ensure_models
from peer_support import closed_port

ensure_models()

WORKER = """
uwsgi:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: /
          return: 200 "from the worker"
"""

EDGE = """
http:
  listen: "127.0.0.1:0"
uwsgi: {{}}
upstreams:
  app:
    servers:
      - 127.0.0.1:{live}
      - 127.0.0.1:{dead} max_fails=1 fail_timeout=60s
inference:
  models:
    - name: demo
      path: {demo}
      max_batch_size: 8
      dynamic_batching: {{max_queue_delay: 5ms}}
routing:
  servers:
    - locations:
        - location: = /status
          status: {{}}
        - location: /hello
          return: 200 "hello"
        - location: /app/
          uwsgi_pass: app
          uwsgi_next_upstream: [error, timeout]
        - location: ^~ /v2
          inference: {{}}
"""

DASH = "\u2013"


# The page's number formats (`fmt` in Modules/Status/StatusPage.swift), for the values of the JSON.
def fixed(value, digits):
    """JavaScript's toFixed: the exact binary value rounded half up."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def count(value):
    return DASH if value is None else str(int(Decimal(value).quantize(Decimal(1), rounding=ROUND_HALF_UP)))


def rate(value):
    return DASH if value is None else fixed(value, 1)


def seconds(value):
    if value is None:
        return DASH
    return fixed(value * 1000, 1) + " ms" if value < 1 else fixed(value, 2) + " s"


def request(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    response = conn.getresponse()
    data = response.read()
    headers = {k.lower(): v for k, v in response.getheaders()}
    conn.close()
    return response.status, headers, data


def status_json(port):
    status, headers, body = request(port, "GET", "/status?format=json")
    assert status == 200 and headers["content-type"] == "application/json", body
    return json.loads(body)


# What the page shows, read from its DOM: the tiles by id, the tables by row key and column.
READ_PAGE = """(() => {
  const table = id => Object.fromEntries([...document.querySelectorAll(`#${id} tbody tr[data-key]`)].map(tr =>
    [tr.dataset.key, Object.fromEntries([...tr.querySelectorAll("td[data-col]")].map(td => [td.dataset.col, td.textContent]))]));
  const value = id => document.getElementById(id).textContent;
  return {sequence: document.body.dataset.sequence || null, live: value("live"),
          requests_total: value("requests-total"), requests_per_second: value("requests-per-second"),
          p50: value("latency-p50"), p90: value("latency-p90"), p99: value("latency-p99"),
          charts: document.querySelectorAll(".chart svg path.series").length,
          workers: table("workers"), upstreams: table("upstreams"), models: table("models")};
})()"""


def expected_page(data):
    """What the page must show for the JSON document `data`."""
    summary = data["summary"]
    return {
        "sequence": str(data["sequence"]),
        "requests_total": count(summary["requests_total"]),
        "requests_per_second": rate(summary["requests_per_second"]),
        "p50": seconds(summary["latency_seconds"]["p50"]),
        "p90": seconds(summary["latency_seconds"]["p90"]),
        "p99": seconds(summary["latency_seconds"]["p99"]),
        "workers": {str(w["pid"]): {"pid": str(w["pid"]), "state": w["state"], "requests": count(w["requests"]),
                                    "respawns": str(w["respawns"])} for w in data["workers"]},
        "upstreams": {f"{u['upstream']} {u['peer']}": {"state": u["state"], "failures": count(u["failures"])}
                      for u in data["upstreams"]},
        "models": {m["model"]: {"queue_depth": count(m["queue_depth"]),
                                "requests_per_second": rate(m["requests_per_second"]),
                                "batch_mean": DASH if m["batch_size"]["mean"] is None else fixed(m["batch_size"]["mean"], 1),
                                "compute_p50": seconds(m["compute_latency_seconds"]["p50"]),
                                "compute_p99": seconds(m["compute_latency_seconds"]["p99"]),
                                "failures": count(m["failures"])} for m in data["models"]},
    }


def shown(page):
    """The page's values, restricted to the columns `expected_page` names."""
    keep = {"workers": ("pid", "state", "requests", "respawns"), "upstreams": ("state", "failures"),
            "models": ("queue_depth", "requests_per_second", "batch_mean", "compute_p50", "compute_p99", "failures")}
    result = {k: page[k] for k in ("sequence", "requests_total", "requests_per_second", "p50", "p90", "p99")}
    for table, columns in keep.items():
        result[table] = {key: {c: row.get(c) for c in columns} for key, row in page[table].items()}
    return result


@pytest.fixture
def browser():
    browser = Browser()
    yield browser
    browser.close()


@pytest.fixture
def edge(start_kernel):
    worker = start_kernel(WORKER, role="worker", name="worker.yaml")
    return start_kernel(EDGE.format(live=worker.port("uwsgi"), dead=closed_port(), demo=DEMO), role="both",
                        name="edge.yaml")


def make_traffic(port):
    """20 hellos, 10 requests through the upstream group (one reaches the dead peer and is passed on), 12 inferences."""
    for _ in range(20):
        assert request(port, "GET", "/hello")[0] == 200
    for _ in range(10):
        assert request(port, "GET", "/app/x")[0] == 200
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]})
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: request(port, "POST", "/v2/models/demo/infer", body)[0], range(12)))
    assert statuses == [200] * 12
    return 42


def test_page_is_one_self_contained_document(edge):
    status, headers, body = request(edge.port(), "GET", "/status")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert b"<script src" not in body and b"https://" not in body and b"<link rel=\"stylesheet\"" not in body
    assert request(edge.port(), "POST", "/status", b"{}")[0] == 405
    assert request(edge.port(), "GET", "/status?format=xml")[0] == 400


def test_page_shows_the_numbers_of_its_json_endpoint(edge, browser):
    port = edge.port()
    browser.open(f"http://127.0.0.1:{port}/status")
    # The page draws itself from the JSON once loaded, then again every second.
    first = int(browser.wait_for("document.body.dataset.sequence"))
    browser.wait_for(f"Number(document.body.dataset.sequence) > {first}")

    made = make_traffic(port)
    # The sampler reads the processes once a second: wait until it has seen the traffic.
    deadline = time.time() + 15
    while True:
        data = status_json(port)
        models = {m["model"]: m for m in data["models"]}
        if data["summary"]["requests_total"] >= made and "demo" in models and models["demo"]["requests_per_second"] > 0:
            break
        assert time.time() < deadline, f"the status JSON never showed the traffic: {data}"
        time.sleep(0.2)

    assert data["summary"]["requests_per_second"] > 0
    assert data["summary"]["latency_seconds"]["p50"] is not None
    assert [w["state"] for w in data["workers"]] == ["serving"]
    assert data["workers"][0]["pid"] == edge.pid and data["workers"][0]["requests"] >= made
    peers = {u["peer"]: u for u in data["upstreams"]}
    assert len(peers) == 2 and sorted(u["state"] for u in peers.values()) == ["down", "up"], data["upstreams"]
    assert sum(u["failures"] for u in peers.values()) >= 1
    assert models["demo"]["batch_size"]["mean"] >= 1
    assert models["demo"]["compute_latency_seconds"]["p50"] is not None
    assert any(v is not None and v > 0 for v in data["series"]["requests_per_second"])

    # Let the page fetch and draw now, then read the JSON at once: both are of the same reading unless the
    # sampler ticked in between, which a second try avoids.
    for _ in range(5):
        page = browser.evaluate(f"update().then(() => {READ_PAGE})")
        data = status_json(port)
        if page["sequence"] == str(data["sequence"]):
            break
    else:
        pytest.fail("the page and the JSON never showed the same reading")
    assert shown(page) == expected_page(data)
    assert page["live"].startswith("live")
    assert page["charts"] == 4, "one requests/s line and three latency lines"

    # It keeps redrawing by itself, and nothing it did was an error in the browser.
    sequence = int(page["sequence"])
    browser.wait_for(f"Number(document.body.dataset.sequence) > {sequence}")
    assert browser.errors == []


PLAIN = """
http:
  listen: "127.0.0.1:0"
routing:
  servers:
    - locations:
        - location: = /status
          status: {}
        - location: = /metrics
          metrics: {}
        - location: /hello
          return: 200 "hello"
"""


def test_history_goes_on_across_a_reload(start_kernel):
    kernel = start_kernel(PLAIN)
    port = kernel.port()
    deadline = time.time() + 15
    while True:
        assert request(port, "GET", "/hello")[0] == 200
        before = status_json(port)
        if len(before["series"]["time"]) >= 3:
            break
        assert time.time() < deadline, f"no history after 15 s: {before}"
        time.sleep(0.1)
    assert kernel.control("reload").returncode == 0
    kernel.wait_for_log("configuration reloaded", timeout=20)
    # The new configuration's sampler counts its readings from 1 again; its history begins with the old one's.
    deadline = time.time() + 15
    while True:
        after = status_json(port)
        if after["sequence"] < before["sequence"]:
            break
        assert time.time() < deadline, f"the reloaded configuration never answered: {after}"
        time.sleep(0.1)
    assert set(before["series"]["time"]) <= set(after["series"]["time"]), (before["series"], after["series"])
    assert after["summary"]["requests_total"] >= before["summary"]["requests_total"], "counters outlive reloads"
