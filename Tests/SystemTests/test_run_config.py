"""`etc/kernel.yaml`, the configuration `make run` starts, in its production shape: a master with one worker process
per core (`processes: auto`), each loading the demo model, the metrics, the status page, readiness and the stats
server. The file is used as shipped, with only its addresses moved to free ports and its paths into the test's
directory."""
import json
import os
import re
import socket

import requests

from inference_support import ensure_models

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ensure_models()


def shipped_config(tmp_path, stats):
    with open(os.path.join(ROOT, "etc", "kernel.yaml")) as f:
        text = f.read()
    replaced = {
        "listen: 127.0.0.1:8080": "listen: 127.0.0.1:0",
        "listen: 127.0.0.1:6666": "listen: 127.0.0.1:0",
        "stats: 127.0.0.1:9191": f"stats: unix:{stats}",
        "pid: ../run/kernel.pid": f"pid: {tmp_path}/kernel.pid",
        "path: ../models/": f"path: {ROOT}/models/",
        "access_log: stdout": "access_log: off",
    }
    for old, new in replaced.items():
        assert old in text, f"etc/kernel.yaml no longer has {old!r}: update this test"
        text = text.replace(old, new)
    return text


def read_stats(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data)


def test_the_make_run_configuration_serves_in_its_production_shape(start_kernel, tmp_path):
    stats = str(tmp_path / "stats.sock")
    kernel = start_kernel(shipped_config(tmp_path, stats))
    base = kernel.url("")
    cores = os.cpu_count()

    assert requests.get(base + "/healthz", timeout=10).json() == {"ready": True}
    with open(os.path.join(ROOT, "etc", "examples", "demo-request.json")) as f:
        body = f.read()
    answer = requests.post(base + "/v2/models/demo/infer", data=body, headers={"Content-Type": "application/json"},
                           timeout=10)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [1, 10]

    metrics = requests.get(base + "/metrics", timeout=10).text
    assert re.search(rf'^kernel_workers{{pool="main",state="serving"}} {cores}$', metrics, re.M), metrics
    assert re.search(r'^kernel_model_batch_size_count{model="demo",version="1"} [1-9]', metrics, re.M), metrics

    page = requests.get(base + "/status", timeout=10)
    assert page.status_code == 200 and "<html" in page.text
    data = requests.get(base + "/status?format=json", timeout=10).json()
    assert len(data["workers"]) == cores

    document = read_stats(stats)
    assert len(document["workers"]) == cores
    assert all(worker["pid"] != kernel.pid for worker in document["workers"])
    assert sum(worker["requests"] for worker in document["workers"]) >= 4
