"""A Triton-style model repository served by `kernel --role both`: versions and their routing, the repository
extension (index, load, unload) while `wrk` drives another model, a broken new version, polling, warm-up before
readiness, and ONNX Runtime's memory and thread-pool options."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import requests

import tritonclient.http as tritonclient_http

from conftest import KERNEL_BIN
from inference_support import DEMO, wait_until, Reference, ensure_models, make_slow_model
from load_support import WrkRun

ensure_models()


def make_scaled_sum_model(path, scale):
    """FP32 "input" [-1, 64] -> "output" [-1, 10], each output `scale` times the row's sum: the demo MLP's signature
    with answers that say which version gave them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    weight = numpy_helper.from_array(np.full((64, 10), scale, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["output"])], "scaled_sum",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path + ".tmp")
    os.rename(path + ".tmp", path)  # a poll never sees half a file
    return path


def copy_model(source, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copyfile(source, path + ".tmp")
    os.rename(path + ".tmp", path)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def make_repository(root, demo_settings="version_policy: {all: {}}\n"):
    """`demo` versions 1 (the demo MLP) and 2 (scaled sum x2), and `other` version 1 (the demo MLP)."""
    repository = os.path.join(root, "repo")
    copy_model(DEMO, os.path.join(repository, "demo", "1", "model.onnx"))
    make_scaled_sum_model(os.path.join(repository, "demo", "2", "model.onnx"), 2.0)
    write(os.path.join(repository, "demo", "config.yaml"),
          demo_settings + "max_batch_size: 8\ndynamic_batching: {}\nwarmup: 1\n"
          "cpu_mem_arena: false\nmemory_pattern: false\ngraph_optimization_level: disable_all\n")
    copy_model(DEMO, os.path.join(repository, "other", "1", "model.onnx"))
    write(os.path.join(repository, "other", "config.yaml"),
          "max_batch_size: 8\ndynamic_batching: {}\narena_extend_strategy: same_as_requested\n")
    return repository


def repository_yaml(inference_extra, models="", locations=""):
    return f"""
http:
  listen: "127.0.0.1:0"
inference:
  model_repository: repo
{inference_extra}
{models}
routing:
  servers:
    - locations:
        - location: "^~ /v2"
          inference: {{}}
{locations}"""


def rows(count, seed=3):
    return np.random.default_rng(seed).standard_normal((count, 64)).astype(np.float32)


def infer(kernel, path, array):
    body = {"inputs": [{"name": "input", "shape": list(array.shape), "datatype": "FP32",
                        "data": array.flatten().tolist()}]}
    return requests.post(kernel.url(f"/v2/models/{path}/infer"), data=json.dumps(body), timeout=30)


def output_of(response):
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def is_scaled_sum(result, array, scale):
    return np.allclose(result, np.repeat(array.sum(axis=1, keepdims=True) * scale, 10, axis=1), rtol=1e-4, atol=1e-3)


def post(kernel, path, body=None):
    return requests.post(kernel.url(path), data=json.dumps(body) if body is not None else b"", timeout=60)


def index(kernel, body=None):
    response = post(kernel, "/v2/repository/index", body)
    assert response.status_code == 200, response.text
    return response.json()


def test_versions_routing_metadata_index_and_memory_options(start_kernel, tmp_path):
    make_repository(str(tmp_path))
    models = f"""  models:
    - name: plain
      path: {DEMO}
    - name: quiet
      path: {DEMO}
      intra_op_threads: 2
      thread_spinning: false
"""
    kernel = start_kernel(repository_yaml("  repository_control: explicit", models))
    array = rows(3)
    reference = Reference(DEMO).run(array)

    # Without a version: the highest ready one (2, the scaled sum); each version by its path.
    assert is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 2.0)
    assert is_scaled_sum(output_of(infer(kernel, "demo/versions/2", array)), array, 2.0)
    # Version 1 runs with the arena, memory patterns and graph optimisations off, `other` on the environment's
    # same_as_requested arena: both give the reference's answers.
    assert np.allclose(output_of(infer(kernel, "demo/versions/1", array)), reference, rtol=1e-5, atol=1e-6)
    assert np.allclose(output_of(infer(kernel, "other", array)), reference, rtol=1e-5, atol=1e-6)
    assert np.array_equal(output_of(infer(kernel, "plain", array)), reference)
    # Two intra-op threads whose pool sleeps after each parallel section instead of spinning.
    assert np.allclose(output_of(infer(kernel, "quiet", array)), reference, rtol=1e-5, atol=1e-6)
    response = infer(kernel, "demo/versions/1", array)
    assert response.json()["model_version"] == "1"

    metadata = requests.get(kernel.url("/v2/models/demo"), timeout=10).json()
    assert metadata["versions"] == ["1", "2"]
    assert requests.get(kernel.url("/v2/models/demo/versions/1/ready"), timeout=10).status_code == 200
    assert requests.get(kernel.url("/v2/models/demo/versions/3/ready"), timeout=10).status_code == 404
    missing = infer(kernel, "demo/versions/3", array)
    assert missing.status_code == 404
    assert missing.json()["error"] == "Request for unknown model: 'demo' version 3 is not found"
    config = requests.get(kernel.url("/v2/models/demo/versions/1/config"), timeout=10).json()
    assert config["max_batch_size"] == 8
    # `warmup: 1` at every batch size the batcher forms, as Triton's warm-up samples.
    assert [(w["batch_size"], w["count"]) for w in config["model_warmup"]] == [(size, 1) for size in range(1, 9)]
    assert config["model_warmup"][0]["inputs"] == {"input": {"data_type": "TYPE_FP32", "dims": [64], "zero_data": True}}
    stats = requests.get(kernel.url("/v2/models/demo/versions/1/stats"), timeout=10).json()["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("demo", "1")]
    assert stats[0]["inference_count"] == 6
    every = requests.get(kernel.url("/v2/models/demo/stats"), timeout=10).json()["model_stats"]
    assert [(s["name"], s["version"]) for s in every] == [("demo", "1"), ("demo", "2")]

    listed = index(kernel)
    assert {"name": "demo", "version": "1", "state": "READY"} in listed
    assert {"name": "demo", "version": "2", "state": "READY"} in listed
    assert {"name": "other", "version": "1", "state": "READY"} in listed
    assert {"name": "plain", "version": "1", "state": "READY"} in listed
    assert index(kernel, {"ready": True}) == listed
    bad = post(kernel, "/v2/repository/index", {"ready": "yes"})
    assert bad.status_code == 400 and bad.json()["error"] == "Invalid value for 'ready': expected a boolean"
    assert requests.get(kernel.url("/v2/repository/index"), timeout=10).status_code == 405
    assert "model_repository" in requests.get(kernel.url("/v2"), timeout=10).json()["extensions"]

    # tritonclient's repository calls.
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    try:
        assert {"name": "demo", "version": "2", "state": "READY"} in client.get_model_repository_index()
        client.unload_model("plain")
        assert not client.is_model_ready("plain")
        client.load_model("plain")
        assert client.is_model_ready("plain")
    finally:
        client.close()


def test_load_and_unload_while_wrk_drives_another_model(start_kernel, tmp_path):
    make_repository(str(tmp_path))
    kernel = start_kernel(repository_yaml("  repository_control: explicit"))
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]})
    wrk = WrkRun(kernel.url("/v2/models/other/infer"), kernel.port(), connections=8, method="POST", body=body,
                 headers={"Content-Type": "application/json"})
    wrk.wait_until_loaded()
    array = rows(2)
    for _ in range(2):
        response = post(kernel, "/v2/repository/models/demo/unload")
        assert response.status_code == 200, response.text
        assert requests.get(kernel.url("/v2/models/demo/ready"), timeout=10).status_code == 404
        gone = infer(kernel, "demo", array)
        assert gone.status_code == 404 and "has no available versions (version 2 is not at ready state: unloaded)" in gone.json()["error"], gone.text
        listed = index(kernel)
        assert {"name": "demo", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"} in listed
        assert all(entry["name"] != "demo" for entry in index(kernel, {"ready": True}))
        # An unloaded model does not make the server unready: it was taken out on purpose.
        assert requests.get(kernel.url("/v2/health/ready"), timeout=10).status_code == 200
        response = post(kernel, "/v2/repository/models/demo/load")
        assert response.status_code == 200, response.text
        assert is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 2.0)
    requests_done, output = wrk.finish()
    assert requests_done > 0
    assert "Non-2xx" not in output, output
    assert "Socket errors" not in output, output
    # Triton's words and statuses: a load it cannot poll for is INTERNAL (500); an unload of what is not served
    # is done (200, so that unload-then-load scripts can repeat it); statistics of it are 400.
    unknown = post(kernel, "/v2/repository/models/nope/load")
    assert unknown.status_code == 500
    assert unknown.json()["error"].startswith("failed to load 'nope', failed to poll from model repository")
    assert post(kernel, "/v2/repository/models/nope/unload").status_code == 200
    stats = requests.get(kernel.url("/v2/models/nope/stats"), timeout=10)
    assert stats.status_code == 400 and stats.json() == {"error": "requested model 'nope' is not available"}, stats.text
    stats = requests.get(kernel.url("/v2/models/other/versions/9/stats"), timeout=10)
    assert stats.status_code == 400, stats.text
    assert stats.json() == {"error": "requested model version is not available for model 'other'"}, stats.text
    # A model added to the directory after the start is listed by name, and loads on request.
    make_scaled_sum_model(os.path.join(str(tmp_path), "repo", "late", "1", "model.onnx"), 4.0)
    assert {"name": "late"} in index(kernel)
    assert requests.get(kernel.url("/v2/models/late/ready"), timeout=10).status_code == 404
    assert post(kernel, "/v2/repository/models/late/load").status_code == 200
    assert is_scaled_sum(output_of(infer(kernel, "late", array)), array, 4.0)


def test_an_unload_finishes_the_requests_it_has_queued(start_kernel, tmp_path):
    repository = os.path.join(str(tmp_path), "repo")
    os.makedirs(os.path.join(repository, "slow", "1"), exist_ok=True)
    # Long enough per request of 256 rows (1500 layers: about a second here) that the queue-depth gauge is seen
    # with requests waiting before the first has run; with 480 layers a run could end between two readings.
    make_slow_model(os.path.join(repository, "slow", "1", "model.onnx"), width=256, layers=1500)
    write(os.path.join(repository, "slow", "config.yaml"), "max_batch_size: 512\n")
    kernel = start_kernel(repository_yaml("  repository_control: explicit",
                                          locations="        - location: = /metrics\n          metrics: {}\n"))
    body = json.dumps({"inputs": [{"name": "x", "shape": [256, 256], "datatype": "FP32", "data": [0.1] * (256 * 256)}]})

    def queued():
        found = re.search(r'^kernel_model_queue_depth\{model="slow",version="1"\} (\d+)', requests.get(kernel.url("/metrics"),
                          timeout=10).text, re.M)
        return int(found.group(1)) if found else 0

    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(requests.post, kernel.url("/v2/models/slow/infer"), data=body, timeout=120)
                   for _ in range(4)]
        # Every request has reached the model, and at least two are queued or running (the model's queue-depth
        # gauge says so) when the unload comes.
        def reached():
            depth = queued()
            return depth >= 2 and depth + sum(future.done() for future in pending) >= 4
        wait_until(reached, "the requests in the model's queue", timeout=60)
        unloaded = post(kernel, "/v2/repository/models/slow/unload")
        assert unloaded.status_code == 200, unloaded.text
        # Every request the model had queued or running when the unload came got its answer (none was dropped).
        answers = [future.result() for future in pending]
    assert [answer.status_code for answer in answers] == [200] * 4, [answer.text for answer in answers]
    assert requests.get(kernel.url("/v2/models/slow/ready"), timeout=10).status_code == 404


def test_a_broken_new_version_keeps_the_old_one_serving(start_kernel, tmp_path):
    repository = os.path.join(str(tmp_path), "repo")
    make_scaled_sum_model(os.path.join(repository, "demo", "1", "model.onnx"), 1.0)
    kernel = start_kernel(repository_yaml("  repository_control: explicit"))
    array = rows(2)
    assert is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 1.0)

    write(os.path.join(repository, "demo", "2", "model.onnx"), "this is not an onnx model")
    response = post(kernel, "/v2/repository/models/demo/load")
    assert response.status_code == 400
    message = response.json()["error"]
    assert message.startswith("load failed for model 'demo': version 2 is at UNAVAILABLE state: "), message
    assert "Load model from" in message and "failed" in message  # ONNX Runtime's own words
    assert re.search(r"model 'demo' failed to load from .*demo/2/model.onnx \(version 2\): Load model from ", kernel.log_text())
    assert is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 1.0)
    assert requests.get(kernel.url("/v2/models/demo/versions/1/ready"), timeout=10).status_code == 200
    listed = index(kernel)
    assert {"name": "demo", "version": "1", "state": "READY"} in listed
    broken = [entry for entry in listed if entry.get("version") == "2"]
    assert broken[0]["state"] == "UNAVAILABLE" and "Load model from" in broken[0]["reason"]

    # A changed file of a serving version that fails to load leaves the loaded sessions serving too.
    write(os.path.join(repository, "demo", "1", "model.onnx"), "broken as well")
    shutil.rmtree(os.path.join(repository, "demo", "2"))
    response = post(kernel, "/v2/repository/models/demo/load")
    assert response.status_code == 400
    assert is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 1.0)
    assert "the loaded version 1 keeps serving" in kernel.log_text()


def test_polling_picks_up_added_changed_and_removed_versions(start_kernel, tmp_path):
    repository = os.path.join(str(tmp_path), "repo")
    make_scaled_sum_model(os.path.join(repository, "demo", "1", "model.onnx"), 1.0)
    kernel = start_kernel(repository_yaml("  repository_poll: 1s"))
    array = rows(2)
    assert is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 1.0)
    refused = post(kernel, "/v2/repository/models/demo/load")
    assert refused.status_code == 503
    assert refused.json()["error"] == "explicit model load / unload is not allowed if polling is enabled"

    def versions():
        response = requests.get(kernel.url("/v2/models/demo"), timeout=10)
        return response.json().get("versions") if response.status_code == 200 else None

    # Added: version 2 replaces 1 (version_policy latest 1).
    make_scaled_sum_model(os.path.join(repository, "demo", "2", "model.onnx"), 2.0)
    wait_until(lambda: versions() == ["2"], "version 2 to replace version 1")
    assert is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 2.0)
    # Changed: the same version with a new file.
    make_scaled_sum_model(os.path.join(repository, "demo", "2", "model.onnx"), 3.0)
    wait_until(lambda: is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 3.0), "version 2 to reload")
    # A new model appears; a removed version brings the policy back to version 1.
    make_scaled_sum_model(os.path.join(repository, "late", "1", "model.onnx"), 5.0)
    wait_until(lambda: requests.get(kernel.url("/v2/models/late/ready"), timeout=10).status_code == 200, "model 'late'")
    shutil.rmtree(os.path.join(repository, "demo", "2"))
    wait_until(lambda: versions() == ["1"], "version 1 to serve again")
    assert is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 1.0)
    # A removed model is unloaded.
    shutil.rmtree(os.path.join(repository, "late"))
    wait_until(lambda: requests.get(kernel.url("/v2/models/late/ready"), timeout=10).status_code == 404, "'late' to go")
    assert "model 'late' is no longer in the repository" in kernel.log_text()


def test_warmup_runs_before_readiness(start_kernel, tmp_path):
    repository = os.path.join(str(tmp_path), "repo")
    os.makedirs(os.path.join(repository, "slow", "1"), exist_ok=True)
    make_slow_model(os.path.join(repository, "slow", "1", "model.onnx"), width=256, layers=480)
    # Every batch size 1..16, twice each: seconds of warm-up, during which the model must not be ready.
    write(os.path.join(repository, "slow", "config.yaml"), "max_batch_size: 16\nwarmup: 2\n")
    kernel = start_kernel(repository_yaml("  load_before_listen: false",
                                          locations="        - location: = /healthz\n          health: ready\n"))
    kernel.wait_for_log("warming up 1 instance(s), 2 run(s) at batch size(s) [1, 2, 3", timeout=60)
    assert requests.get(kernel.url("/v2/health/ready"), timeout=10).status_code == 400
    assert requests.get(kernel.url("/v2/models/slow/ready"), timeout=10).status_code == 404
    assert requests.get(kernel.url("/healthz"), timeout=10).status_code == 503
    assert requests.get(kernel.url("/v2/health/live"), timeout=10).status_code == 200
    kernel.wait_for_log("model 'slow' version 1 ready", timeout=120)
    assert requests.get(kernel.url("/v2/health/ready"), timeout=10).status_code == 200
    assert requests.get(kernel.url("/v2/models/slow/ready"), timeout=10).status_code == 200
    assert requests.get(kernel.url("/healthz"), timeout=10).status_code == 200
    text = kernel.log_text()
    assert text.index("warming up") < text.index("model 'slow' version 1 ready")


def test_a_name_in_models_and_the_repository_is_a_config_error(tmp_path):
    make_repository(str(tmp_path))
    config = os.path.join(str(tmp_path), "kernel.yaml")
    write(config, repository_yaml("", f"  models:\n    - name: other\n      path: {DEMO}\n"))
    result = subprocess.run([KERNEL_BIN, "-t", "--config", config], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    expected = f"{config}:8:13: inference.models[0].name: model \"other\" is declared here and in model_repository"
    assert expected in result.stderr + result.stdout, result.stderr + result.stdout
    # A per-model file's error names its own file, line and column.
    write(config, repository_yaml(""))
    write(os.path.join(str(tmp_path), "repo", "other", "config.yaml"), "max_batch_size: 8\nbatching: 3\n")
    result = subprocess.run([KERNEL_BIN, "-t", "--config", config], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert f"{tmp_path}/repo/other/config.yaml:2:1: batching: unknown key" in result.stderr + result.stdout


def two_workers(tmp_path):
    """The `kernel:` block of a master with two worker processes."""
    return f"""
kernel:
  pid: {tmp_path}/kernel.pid
  error_log: {{path: stderr, level: info}}
  event_loop_threads: 1
  shutdown_timeout: 10s
  processes: 2
"""


def test_every_worker_process_polls_its_own_repository_state(start_kernel, tmp_path):
    repository = os.path.join(str(tmp_path), "repo")
    make_scaled_sum_model(os.path.join(repository, "demo", "1", "model.onnx"), 1.0)
    kernel = start_kernel(two_workers(tmp_path) + repository_yaml("  repository_poll: 1s"))
    kernel.wait_for_log("model 'demo' version 1 ready", count=2, timeout=60)
    make_scaled_sum_model(os.path.join(repository, "demo", "2", "model.onnx"), 2.0)
    # Each worker finds the new version by itself and retires version 1 once version 2 serves.
    kernel.wait_for_log("model 'demo' version 1 unloaded", count=2, timeout=60)
    array = rows(2)
    for _ in range(20):  # a new connection each time: both workers answer some of them
        assert is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 2.0)


def test_a_configurations_inputs_and_outputs_are_checked_against_the_model(start_kernel, tmp_path):
    """Triton's `input`/`output` entries (a load request's config, a config.pbtxt, `inputs:` in config.yaml) must
    name the model's tensors with their data types and dimensions; a load that declares others fails and leaves the
    model as it was."""
    make_repository(str(tmp_path))
    write(os.path.join(str(tmp_path), "repo", "other", "config.pbtxt"), """
max_batch_size: 8
input [ { name: "input" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "output", data_type: TYPE_FP32, dims: [ 10 ] } ]
""")
    os.remove(os.path.join(str(tmp_path), "repo", "other", "config.yaml"))
    kernel = start_kernel(repository_yaml("  repository_control: explicit"))
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    assert client.is_model_ready("other")

    def load(config):
        return post(kernel, "/v2/repository/models/demo/load", {"parameters": {"config": json.dumps(config)}})

    good = {"max_batch_size": 8, "input": [{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": ["64"]}],
            "output": [{"name": "output", "data_type": "TYPE_FP32", "dims": [10], "label_filename": ""}]}
    assert load(good).status_code == 200
    assert client.get_model_config("demo")["max_batch_size"] == 8
    # What GET .../config answers declares the model's own tensors: it loads back.
    assert load(client.get_model_config("demo")).status_code == 200
    for bad, message in [
        ({"input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [63]}]},
         "the model expects 2 dimensions (shape [-1,64]) but the model configuration specifies 2 dimensions"),
        ({"input": [{"name": "input", "data_type": "TYPE_FP64", "dims": [64]}]},
         "unexpected datatype TYPE_FP64 for input 'input', model provides TYPE_FP32"),
        ({"output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}]},
         "unexpected inference output 'probabilities', allowed outputs are: output"),
        ({"input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [64], "reshape": {"shape": [8, 8]}}]},
         "the model expects 2 dimensions (shape [-1,64]) but the model configuration specifies 3 dimensions"),
    ]:
        refused = load(dict(bad, max_batch_size=8))
        assert refused.status_code == 400 and message in refused.json()["error"], (bad, refused.text)
    # The model as it was, still serving.
    assert client.is_model_ready("demo") and client.get_model_config("demo")["max_batch_size"] == 8


def worker_answers(kernel, model, array, connections=24):
    """Each of `connections` new connections asks `/pid` then infers on `model`: {worker pid: [statuses]}."""
    import http.client
    seen = {}
    body = json.dumps({"inputs": [{"name": "input", "shape": list(array.shape), "datatype": "FP32",
                                   "data": array.flatten().tolist()}]})
    for _ in range(connections):
        connection = http.client.HTTPConnection("127.0.0.1", kernel.port("http"), timeout=30)
        connection.request("GET", "/pid")
        pid = int(connection.getresponse().read())
        connection.request("POST", f"/v2/models/{model}/infer", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        connection.close()
        seen.setdefault(pid, []).append(response.status)
    return seen


def test_a_load_or_unload_reaches_every_worker_process_and_a_respawned_worker_replays_it(start_kernel, tmp_path):
    """With `kernel.processes`, the repository extension acts on every worker process, whichever one takes the
    request, and a worker started later (here respawned after SIGKILL) loads what its siblings loaded before it
    serves."""
    import signal
    make_repository(str(tmp_path))
    kernel = start_kernel(two_workers(tmp_path) + repository_yaml("  repository_control: explicit\n  startup_models: []", locations="""        - location: = /pid
          return: 200 "$pid"
"""))
    kernel.wait_for_log("kernel started: master process", timeout=60)
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    array = rows(2)
    assert infer(kernel, "other", array).status_code == 404, "not loaded at start (startup_models: [])"

    client.load_model("other")
    client.load_model("demo", config=json.dumps({"max_batch_size": 4, "version_policy": {"specific": {"versions": [2]}}}))
    seen = worker_answers(kernel, "other", array)
    assert len(seen) == 2 and all(status == 200 for statuses in seen.values() for status in statuses), seen
    # The statistics are the server's, summed over both workers, whichever answers.
    for _ in range(4):
        [stats] = client.get_inference_statistics("other")["model_stats"]
        assert stats["inference_count"] == 24 * 2 and stats["inference_stats"]["success"]["count"] == 24, stats
    for _ in range(6):  # a new connection each time: both workers answer some
        assert client.get_model_config("demo")["max_batch_size"] == 4
        assert is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 2.0)

    client.unload_model("other")
    seen = worker_answers(kernel, "other", array)
    # Unloaded in every worker: Triton's 404 "has no available versions" from each.
    assert len(seen) == 2 and all(status == 404 for statuses in seen.values() for status in statuses), seen

    # A load that fails everywhere names the failure of the worker that took it, and changes nothing.
    refused = post(kernel, "/v2/repository/models/demo/load", {"parameters": {"config": json.dumps({"max_batch_size": "x"})}})
    assert refused.status_code == 400 and "max_batch_size" in refused.json()["error"], refused.text
    assert "worker process" not in refused.json()["error"], refused.text

    client.load_model("other")
    workers = sorted(worker_answers(kernel, "other", array))
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    kernel.wait_for_log(f"worker process {victim} exited on signal 9")
    # other: unload then load (the unload reset what came before it); demo: the load, then the refused one.
    kernel.wait_for_log("replayed 4 command(s) shared before it started", timeout=60)
    seen = worker_answers(kernel, "other", array, connections=30)
    assert victim not in seen and len(seen) == 2, (seen, victim)
    assert all(status == 200 for statuses in seen.values() for status in statuses), seen
    for _ in range(8):
        assert client.get_model_config("demo")["max_batch_size"] == 4
        assert is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 2.0)


def test_a_triton_repository_with_config_pbtxt_serves_as_it_is(start_kernel, tmp_path):
    repository = os.path.join(str(tmp_path), "repo")
    copy_model(DEMO, os.path.join(repository, "demo", "1", "model.onnx"))
    write(os.path.join(repository, "demo", "config.pbtxt"), """
name: "demo"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "input", data_type: TYPE_FP32, dims: [ 64 ] } ]
output [ { name: "output", data_type: TYPE_FP32, dims: [ 10 ] } ]
instance_group [ { count: 2, kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 500 }
""")
    kernel = start_kernel(repository_yaml(""))
    config = requests.get(kernel.url("/v2/models/demo/config"), timeout=10).json()
    assert config["max_batch_size"] == 8
    group = config["instance_group"]
    assert [(g["name"], g["kind"], g["count"]) for g in group] == [("demo", "KIND_CPU", 2)], group
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500, "Triton's microseconds, kept"
    # What Triton's normalisation fills in and its JSON always carries.
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["dynamic_batching"]["preferred_batch_size"] == [8]
    assert config["default_model_filename"] == "model.onnx"
    # The ONNX Runtime backend's parameters as the sessions run (the kernel's default of one thread each, the
    # arena and memory patterns on), and its graph level (0: all).
    assert config["parameters"] == {"intra_op_thread_count": {"string_value": "1"},
                                    "inter_op_thread_count": {"string_value": "1"},
                                    "enable_mem_arena": {"string_value": "1"},
                                    "enable_mem_pattern": {"string_value": "1"}}
    assert config["optimization"]["graph"] == {"level": 0}
    assert config["optimization"]["input_pinned_memory"] == {"enable": True}
    assert config["input"][0]["format"] == "FORMAT_NONE" and config["output"][0]["label_filename"] == ""
    array = rows(4)
    assert np.array_equal(output_of(infer(kernel, "demo", array)), Reference(DEMO).run(array))


def test_a_triton_quickstart_configuration_with_reshape_labels_parameters_and_graph_level(start_kernel, tmp_path):
    """The fields Triton's own quickstart model (densenet_onnx) uses, on the demo MLP: `format`, `reshape` of
    inputs and outputs (requests and answers carry `dims`, the model its own shapes), an output's `label_filename`
    (classification answers `value:index:label`), the ONNX Runtime backend's `parameters` and `optimization { graph
    { level } }`; and the same with batching, where the batch dimension stays in front."""
    repository = os.path.join(str(tmp_path), "repo")
    copy_model(DEMO, os.path.join(repository, "dense", "1", "model.onnx"))
    write(os.path.join(repository, "dense", "labels.txt"), "".join(f"label {i}\n" for i in range(9)))
    write(os.path.join(repository, "dense", "config.pbtxt"), """
name: "dense"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "input", data_type: TYPE_FP32, format: FORMAT_NONE, dims: [ 8, 8 ], reshape { shape: [ 1, 64 ] } } ]
output [ { name: "output", data_type: TYPE_FP32, dims: [ 10 ], reshape { shape: [ 1, 10 ] }, label_filename: "labels.txt" } ]
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
parameters { key: "enable_mem_pattern" value: { string_value: "0" } }
parameters { key: "some_other_backend_key" value: { string_value: "x" } }
optimization { graph { level: 1 } execution_accelerators { cpu_execution_accelerator: [] } }
""")
    copy_model(DEMO, os.path.join(repository, "batched", "1", "model.onnx"))
    write(os.path.join(repository, "batched", "config.pbtxt"), """
max_batch_size: 4
input [ { name: "input", data_type: TYPE_FP32, dims: [ 8, 8 ], reshape: { shape: [ 64 ] } } ]
output [ { name: "output", data_type: TYPE_FP32, dims: [ 2, 5 ], reshape: { shape: [ 10 ] } } ]
dynamic_batching { }
""")
    kernel = start_kernel(repository_yaml(""))
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    metadata = client.get_model_metadata("dense")
    assert metadata["inputs"][0]["shape"] == [8, 8] and metadata["outputs"][0]["shape"] == [10], metadata
    reference = Reference(DEMO)
    array = rows(1).reshape(8, 8)
    result = output_of(infer(kernel, "dense", array))
    assert result.shape == (10,)
    assert np.allclose(result, reference.run(array.reshape(1, 64)).reshape(10), rtol=1e-5, atol=1e-6)
    assert infer(kernel, "dense", rows(1)).status_code == 400, "the model's own shape is not what is served"

    # Classification with the labels: the label file has 9 lines, so index 9 has none (Triton adds none).
    inputs = [tritonclient_http.InferInput("input", [8, 8], "FP32")]
    inputs[0].set_data_from_numpy(array)
    answer = client.infer("dense", inputs, outputs=[tritonclient_http.InferRequestedOutput("output", class_count=10)])
    classes = [item.decode() for item in answer.as_numpy("output").flatten()]
    order = np.argsort(-result, kind="stable")
    for text, index in zip(classes, order):
        value, position, *label = text.split(":")
        assert int(position) == index and abs(float(value) - result[index]) < 1e-5, (text, index)
        assert label == ([f"label {index}"] if index < 9 else []), text

    config = client.get_model_config("dense")
    assert config["input"][0]["reshape"] == {"shape": [1, 64]} and config["input"][0]["dims"] == [8, 8]
    assert config["output"][0]["label_filename"] == "labels.txt"
    assert config["optimization"]["graph"] == {"level": 1}
    assert config["parameters"]["intra_op_thread_count"] == {"string_value": "1"}
    assert config["parameters"]["enable_mem_pattern"] == {"string_value": "0"}

    # Batched: [3, 8, 8] in, the model gets [3, 64], its [3, 10] answers as [3, 2, 5].
    batch = rows(3)
    result = output_of(infer(kernel, "batched", batch.reshape(3, 8, 8)))
    assert result.shape == (3, 2, 5)
    assert np.allclose(result.reshape(3, 10), reference.run(batch), rtol=1e-5, atol=1e-6)
    assert infer(kernel, "batched", rows(5).reshape(5, 8, 8)).status_code == 400, "above max_batch_size 4"


def test_a_model_without_settings_batches_as_tritons_auto_completion_fills_it_in(start_kernel, tmp_path):
    """Triton's ONNX Runtime backend gives a model whose configuration has no max_batch_size, and whose inputs and
    outputs all have a free first dimension, max_batch_size 4 and a dynamic batcher; a model with a fixed first
    dimension, or settings that give max_batch_size (0 too), is left as it is."""
    repository = os.path.join(str(tmp_path), "repo")
    copy_model(DEMO, os.path.join(repository, "bare", "1", "model.onnx"))
    copy_model(DEMO, os.path.join(repository, "unbatched", "1", "model.onnx"))
    write(os.path.join(repository, "unbatched", "config.pbtxt"), "max_batch_size: 0\n")
    # A batcher without max_batch_size, as Triton accepts it: the auto-completion gives it its batch size.
    copy_model(DEMO, os.path.join(repository, "batcher", "1", "model.onnx"))
    write(os.path.join(repository, "batcher", "config.pbtxt"), "dynamic_batching { max_queue_delay_microseconds: 2000 }\n")
    kernel = start_kernel(repository_yaml(""))
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    config = client.get_model_config("bare")
    assert config["max_batch_size"] == 4 and "dynamic_batching" in config, config
    assert config["input"][0]["dims"] == [64]
    assert "autofilled max_batch_size to 4 for model 'bare'" in kernel.log_text()
    reference = Reference(DEMO)
    array = rows(4)
    assert np.allclose(output_of(infer(kernel, "bare", array)), reference.run(array), rtol=1e-5, atol=1e-6)
    refused = infer(kernel, "bare", rows(5))
    assert refused.status_code == 400 and "batch-size must be <= 4" in refused.text, refused.text
    assert client.get_model_config("unbatched")["max_batch_size"] == 0
    batcher = client.get_model_config("batcher")
    assert batcher["max_batch_size"] == 4 and batcher["dynamic_batching"]["max_queue_delay_microseconds"] == 2000, batcher
    assert output_of(infer(kernel, "unbatched", rows(5))).shape == (5, 10)


def test_a_load_request_gives_the_settings_or_the_files_instead_of_the_repository(start_kernel, tmp_path):
    """Triton's load overrides: `config` (the model configuration JSON, as tritonclient's `load_model(config=...)`
    sends it) replaces the model's settings file, `file:` parameters replace its directory (and can load a model the
    repository does not have). A load without them goes back to the repository's files."""
    import base64
    make_repository(str(tmp_path))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    kernel = start_kernel(repository_yaml("  repository_control: explicit"),
                          env=dict(os.environ, TMPDIR=str(scratch)))
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    assert client.get_model_config("demo")["max_batch_size"] == 8
    array = rows(2)

    # New settings: a smaller batch, two instances, a queue delay (a 64-bit integer as protobuf's JSON writes it),
    # and only version 2.
    client.load_model("demo", config=json.dumps({
        "name": "demo", "backend": "onnxruntime", "max_batch_size": 4,
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
        "dynamic_batching": {"preferred_batch_size": [2, 4], "max_queue_delay_microseconds": "2000"},
        "version_policy": {"specific": {"versions": [2]}}}))
    config = client.get_model_config("demo")
    assert config["max_batch_size"] == 4
    assert [(g["kind"], g["count"]) for g in config["instance_group"]] == [("KIND_CPU", 2)]
    assert config["version_policy"] == {"specific": {"versions": [2]}}
    assert config["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert not client.is_model_ready("demo", "1") and client.is_model_ready("demo", "2")
    assert is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 2.0)
    assert infer(kernel, "demo", rows(5)).status_code == 400, "5 rows are above the new max_batch_size"

    # What `GET .../config` answers loads back as it is.
    config["max_batch_size"] = 2
    config["dynamic_batching"]["preferred_batch_size"] = [2]
    client.load_model("demo", config=json.dumps(config))
    assert client.get_model_config("demo")["max_batch_size"] == 2

    # A configuration that does not load leaves the model as it was.
    refused = post(kernel, "/v2/repository/models/demo/load", {"parameters": {"config": json.dumps({"max_batch_size": "x"})}})
    assert refused.status_code == 400 and "max_batch_size" in refused.json()["error"], refused.text
    assert client.get_model_config("demo")["max_batch_size"] == 2

    # Without overrides, the repository's settings and versions again.
    client.load_model("demo")
    assert client.get_model_config("demo")["max_batch_size"] == 8
    assert client.is_model_ready("demo", "1") and client.is_model_ready("demo", "2")

    # Files: a model the repository does not have, from the request alone.
    model_path = make_scaled_sum_model(str(tmp_path / "upload" / "model.onnx"), 3.0)
    with open(model_path, "rb") as f:
        encoded = base64.b64encode(f.read()).decode()
    loaded = post(kernel, "/v2/repository/models/uploaded/load", {"parameters": {
        "config": json.dumps({"max_batch_size": 8, "dynamic_batching": {}}), "file:1/model.onnx": encoded}})
    assert loaded.status_code == 200, loaded.text
    assert client.is_model_ready("uploaded")
    assert is_scaled_sum(output_of(infer(kernel, "uploaded", array)), array, 3.0)
    assert {"name": "uploaded", "version": "1", "state": "READY"} in index(kernel)
    assert not [name for name in os.listdir(scratch) if name.startswith("kernel-model-load-")], \
        "the files' directory is removed once the model is loaded"
    # Files for a model of the repository replace its directory; the next plain load goes back to it.
    loaded = post(kernel, "/v2/repository/models/demo/load", {"parameters": {
        "config": "{}", "file:7/model.onnx": encoded}})
    assert loaded.status_code == 200, loaded.text
    assert client.is_model_ready("demo", "7") and not client.is_model_ready("demo", "2")
    assert is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 3.0)
    client.load_model("demo")
    assert client.is_model_ready("demo", "2") and not client.is_model_ready("demo", "7")
    assert is_scaled_sum(output_of(infer(kernel, "demo", array)), array, 2.0)
    assert "inference: model 'uploaded' version 1 ready" in kernel.log_text()


def test_startup_models_choose_what_explicit_mode_loads_at_start(start_kernel, tmp_path):
    """Triton's `--model-control-mode=explicit --load-model=other`: only `other` loads at start; `demo` is in the
    index by name, does not hold readiness back, and loads when asked. A model that is not loaded at start is not
    read at start either (as Triton reads only what it loads): its broken settings are the error of its load."""
    repository = make_repository(str(tmp_path))
    copy_model(DEMO, os.path.join(repository, "broken", "1", "model.onnx"))
    write(os.path.join(repository, "broken", "config.pbtxt"), "max_batch_size: 4\nbogus_field: 1\n")
    kernel = start_kernel(repository_yaml("  repository_control: explicit\n  startup_models: [other]"))
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    assert client.is_server_ready()
    assert client.is_model_ready("other") and not client.is_model_ready("demo")
    assert {"name": "demo"} in index(kernel)
    unknown = infer(kernel, "demo", rows(1))
    assert unknown.json() == {"error": "Request for unknown model: 'demo' is not found"}, unknown.text
    client.load_model("demo")
    assert client.is_model_ready("demo", "1") and client.is_model_ready("demo", "2")
    array = rows(2)
    assert is_scaled_sum(output_of(infer(kernel, "demo/versions/2", array)), array, 2.0)
    assert "inference: model 'demo' version 2 ready" in kernel.log_text()
    assert {"name": "broken"} in index(kernel)
    refused = post(kernel, "/v2/repository/models/broken/load")
    assert refused.status_code == 500, refused.text
    assert "broken/config.pbtxt:2:1: bogus_field: not supported in config.pbtxt" in refused.json()["error"], refused.text
    assert client.is_model_ready("other"), "what serves keeps serving"


def test_every_models_config_loads_back_unchanged_and_loads_run_beside_traffic(start_kernel, tmp_path):
    """`GET .../config` loaded back with `load_model(config=...)` gives the same configuration for each shape of
    model (BYTES, no batching, batching without and with a dynamic batcher), and so does a configuration as a
    Triton server writes it; overrides of one model and of two at once while `wrk` drives another model fail no
    request; `unload` after an override load and a plain load after it; the files' directory is always removed."""
    import base64
    import threading
    models = os.path.dirname(os.path.dirname(os.path.dirname(DEMO)))
    strings_model = os.path.join(models, "strings", "1", "model.onnx")
    text_model = os.path.join(models, "text", "1", "model.onnx")
    repository = make_repository(str(tmp_path))
    copy_model(DEMO, os.path.join(repository, "plain", "1", "model.onnx"))
    copy_model(DEMO, os.path.join(repository, "batched", "1", "model.onnx"))
    write(os.path.join(repository, "batched", "config.yaml"), "max_batch_size: 4\ninstances: 2\n")
    copy_model(DEMO, os.path.join(repository, "queued", "1", "model.onnx"))
    write(os.path.join(repository, "queued", "config.yaml"),
          "max_batch_size: 8\ndynamic_batching: {preferred_batch_sizes: [4, 8], max_queue_delay: 3ms}\n"
          "max_queue: 16\ntimeout: 5s\n")
    copy_model(strings_model, os.path.join(repository, "strings", "1", "model.onnx"))
    write(os.path.join(repository, "strings", "config.yaml"), "max_batch_size: 8\ndynamic_batching: {}\n")
    copy_model(text_model, os.path.join(repository, "text", "1", "model.onnx"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    kernel = start_kernel(repository_yaml("  repository_control: explicit"), env=dict(os.environ, TMPDIR=str(scratch)))
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")

    def assert_cleaned():
        left = [name for name in os.listdir(scratch) if name.startswith("kernel-model-load-")]
        assert not left, left

    for name in ("demo", "other", "plain", "batched", "queued", "strings", "text"):
        config = client.get_model_config(name)
        client.load_model(name, config=json.dumps(config))
        assert client.get_model_config(name) == config, name
        assert client.is_model_ready(name)
    assert_cleaned()

    # A Triton server's own answer for the demo MLP, with every field it writes at its default.
    triton = {"name": "queued", "platform": "onnxruntime_onnx", "backend": "onnxruntime", "runtime": "",
              "version_policy": {"latest": {"num_versions": 1}}, "max_batch_size": 4,
              "input": [{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [64],
                         "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False}],
              "output": [{"name": "output", "data_type": "TYPE_FP32", "dims": [10], "label_filename": "",
                          "is_shape_tensor": False}],
              "batch_input": [], "batch_output": [],
              "optimization": {"priority": "PRIORITY_DEFAULT", "input_pinned_memory": {"enable": True},
                               "output_pinned_memory": {"enable": True}, "gather_kernel_buffer_threshold": 0,
                               "eager_batching": False},
              "dynamic_batching": {"preferred_batch_size": [4], "max_queue_delay_microseconds": 0,
                                   "preserve_ordering": False, "priority_levels": 0, "default_priority_level": 0,
                                   "priority_queue_policy": {}},
              "instance_group": [{"name": "queued", "kind": "KIND_CPU", "count": 2, "gpus": [],
                                  "secondary_devices": [], "profile": [], "passive": False, "host_policy": ""}],
              "default_model_filename": "model.onnx", "cc_model_filenames": {}, "metric_tags": {},
              "parameters": {}, "model_warmup": []}
    client.load_model("queued", config=json.dumps(triton))
    config = client.get_model_config("queued")
    assert config["max_batch_size"] == 4 and config["instance_group"][0]["count"] == 2
    assert config["dynamic_batching"]["preferred_batch_size"] == [4]

    # Overrides while wrk drives `other`: the same model twice at once, and two models at once.
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]})
    wrk = WrkRun(kernel.url("/v2/models/other/infer"), kernel.port(), connections=8, method="POST", body=body,
                 headers={"Content-Type": "application/json"})
    wrk.wait_until_loaded()
    with open(DEMO, "rb") as f:
        encoded = base64.b64encode(f.read()).decode()
    results = []

    def load(name, batch):
        response = post(kernel, f"/v2/repository/models/{name}/load", {"parameters": {
            "config": json.dumps({"max_batch_size": batch, "dynamic_batching": {}}), "file:1/model.onnx": encoded}})
        results.append((name, response.status_code, response.text))

    for names in (("demo", "demo"), ("demo", "uploaded"), ("other", "plain")):
        threads = [threading.Thread(target=load, args=(name, 2 + index)) for index, name in enumerate(names)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert [status for _, status, _ in results] == [200] * 6, results
    requests_done, output = wrk.finish()
    assert requests_done > 0
    assert "Non-2xx" not in output, output
    assert "Socket errors" not in output, output
    assert_cleaned()
    listed = index(kernel)
    assert {"name": "uploaded", "version": "1", "state": "READY"} in listed
    assert {"name": "demo", "version": "1", "state": "READY"} in listed
    assert {"name": "demo", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"} in listed, \
        "the files have version 1 alone: version 2 is retired"

    # Unload after an override load, then a plain load goes back to the repository's directory and settings.
    client.unload_model("demo")
    assert {"name": "demo", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index(kernel)
    assert requests.get(kernel.url("/v2/health/ready"), timeout=10).status_code == 200
    client.load_model("demo")
    assert client.get_model_config("demo")["max_batch_size"] == 8
    assert client.is_model_ready("demo", "2")
    client.unload_model("uploaded")
    assert {"name": "uploaded", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index(kernel)
    assert not client.is_model_ready("uploaded")
    # A failed override load leaves its directory removed too.
    failed = post(kernel, "/v2/repository/models/demo/load", {"parameters": {
        "config": json.dumps({"max_batch_size": 8}), "file:1/model.onnx": base64.b64encode(b"not onnx").decode()}})
    assert failed.status_code == 400 and "version 1 is at UNAVAILABLE state" in failed.json()["error"], failed.text
    assert_cleaned()
    assert client.is_model_ready("demo", "2")
    # tritonclient's own `files=`, as a Triton user sends them.
    with open(DEMO, "rb") as f:
        client.load_model("sent", config=json.dumps({"max_batch_size": 8}), files={"file:1/model.onnx": f.read()})
    assert client.is_model_ready("sent", "1")
    assert_cleaned()


def test_startup_models_empty_starts_ready_with_no_model_as_triton_explicit_mode_does(start_kernel, tmp_path):
    """`startup_models: []` (Triton's explicit mode without `--load-model`): the server is ready with no model
    loaded, the index lists the repository's models by name, an unload of a model never loaded succeeds (as in
    Triton), and a load brings the model in."""
    make_repository(str(tmp_path))
    kernel = start_kernel(repository_yaml("  repository_control: explicit\n  startup_models: []"))
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{kernel.port('http')}")
    assert requests.get(kernel.url("/v2/health/ready"), timeout=10).status_code == 200
    assert client.is_server_ready() and not client.is_model_ready("demo") and not client.is_model_ready("other")
    assert index(kernel) == [{"name": "demo"}, {"name": "other"}]
    assert index(kernel, {"ready": True}) == []
    assert post(kernel, "/v2/repository/models/other/unload").status_code == 200
    assert index(kernel) == [{"name": "demo"}, {"name": "other"}]
    client.load_model("other")
    assert client.is_model_ready("other") and not client.is_model_ready("demo")
    assert requests.get(kernel.url("/v2/health/ready"), timeout=10).status_code == 200
