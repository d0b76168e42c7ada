"""Hostile clients of the model repository and the model queues, against `kernel --role both`: repository API bodies
that are not JSON or of the wrong shape, huge bodies, bad names, wrong methods and versions, bad priorities, a
version unloaded and reloaded while clients drive it, and a repository directory full of junk at start and while
polling. Each answer must be Triton's status with a `{"error": ...}` body (and a log line where the kernel logs),
and the process must stay alive and serving after each."""
import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import requests

from conftest import KERNEL_BIN
from inference_support import DEMO, wait_until, ensure_models, make_slow_model
from load_support import WrkRun

ensure_models()

ROW = [0.25] * 64


def copy_model(source, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copyfile(source, path + ".tmp")
    os.rename(path + ".tmp", path)  # a poll never sees half a file


def write(path, text, mode="w"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(text)


def make_repository(root):
    """`demo` versions 1 and 2 (both served) and `other` version 1, all the demo MLP."""
    repository = os.path.join(root, "repo")
    for version in ("1", "2"):
        copy_model(DEMO, os.path.join(repository, "demo", version, "model.onnx"))
    write(os.path.join(repository, "demo", "config.yaml"),
          "version_policy: {all: {}}\nmax_batch_size: 8\ndynamic_batching: {}\nwarmup: 1\n")
    copy_model(DEMO, os.path.join(repository, "other", "1", "model.onnx"))
    write(os.path.join(repository, "other", "config.yaml"), "max_batch_size: 8\ndynamic_batching: {}\n")
    return repository


def repository_yaml(control, extra=""):
    return f"""
http:
  listen: "127.0.0.1:0"
inference:
  model_repository: repo
  {control}
{extra}
routing:
  servers:
    - locations:
        - location: "^~ /v2"
          inference: {{}}
"""


def infer_body(rows=1, parameters=None):
    body = {"inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": ROW * rows}]}
    if parameters is not None:
        body["parameters"] = parameters
    return json.dumps(body)


def post(kernel, path, data=b"", headers=None):
    return requests.post(kernel.url(path), data=data, headers=headers or {}, timeout=60)


def raw_request(kernel, method, path, body=b"", headers=()):
    """One request over a plain socket, for targets and headers `requests` would rewrite: (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", kernel.port(), timeout=60)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def error_of(response, status):
    """The `error` text of a refusal, after checking its status and that its body is Triton's `{"error": ...}`."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body
    return body["error"]


def assert_serving(kernel, model="other"):
    """The process is alive, live, and still answers an inference."""
    assert kernel.process.poll() is None, kernel.log_text()
    assert requests.get(kernel.url("/v2/health/live"), timeout=10).status_code == 200
    answer = post(kernel, f"/v2/models/{model}/infer", infer_body())
    assert answer.status_code == 200, answer.text


def add_slow_model(repository, name, settings):
    """A repository model `name` whose runs of 256 rows take long (480 layers of 256x256), with `settings`; returns
    its model file's path."""
    path = os.path.join(repository, name, "1", "model.onnx")
    os.makedirs(os.path.dirname(path))
    make_slow_model(path, width=256, layers=480)
    write(os.path.join(repository, name, "config.yaml"), settings)
    return path


def index(kernel, body=b""):
    response = post(kernel, "/v2/repository/index", body)
    assert response.status_code == 200, response.text
    return response.json()


def test_repository_bodies_that_are_not_json_or_of_the_wrong_shape(start_kernel, tmp_path):
    make_repository(str(tmp_path))
    kernel = start_kernel(repository_yaml("repository_control: explicit"))
    for path, what in (("/v2/repository/index", "registry index"),
                       ("/v2/repository/models/demo/load", "load model"),
                       ("/v2/repository/models/demo/unload", "unload model")):
        for body in (b"{not json", b"{\"ready\": tru}", b"\xff\xfe{}", b"{}}", b"[]", b"\"text\"", b"null", b"17",
                     b"{" * 10000 + b"}" * 10000):
            message = error_of(post(kernel, path, body), 400)
            assert message.startswith(f"failed to parse the request JSON buffer ({what})"), (body[:20], message)
        assert_serving(kernel)
    # Unknown keys are ignored, as Triton ignores them.
    assert index(kernel, json.dumps({"ready": True, "other": [1, 2], "parameters": {}})) == index(kernel, b'{"ready": true}')
    # Filters of the wrong type.
    for ready in ("yes", 1, None, [], {}):
        message = error_of(post(kernel, "/v2/repository/index", json.dumps({"ready": ready})), 400)
        assert message == "Invalid value for 'ready': expected a boolean"
    # `parameters` of the wrong type, and overrides (Triton's `config` and `file:`) of the wrong shape.
    for parameters in ([], "x", 3, True):
        message = error_of(post(kernel, "/v2/repository/models/demo/load", json.dumps({"parameters": parameters})), 400)
        assert message == "Unable to parse 'parameters': expected an object"
    for parameters, expected in (
            ({"config": {}}, "the 'config' parameter must be a string"),
            ({"config": 7}, "the 'config' parameter must be a string"),
            ({"config": "{"}, "the 'config' parameter is not valid JSON"),
            ({"config": "[]"}, "invalid model configuration: the model configuration must be a JSON object"),
            ({"config": "{\"name\": \"other\"}"}, "invalid model configuration: name: unexpected directory name 'demo' for model 'other', directory name must equal model name"),
            ({"config": "{\"max_batch_size\": -1}"}, "invalid model configuration: max_batch_size:"),
            ({"config": "{\"instance_group\": [{\"kind\": \"KIND_GPU\"}]}"}, "only KIND_CPU instances are served"),
            ({"config": "{\"sequence_batching\": {}}"}, "sequence_batching: not supported in a load request's config"),
            ({"file:1/model.onnx": "AAAA"}, "the 'config' parameter must be given with file parameters"),
            ({"config": "{}", "priority": "1"}, "Unrecognized load parameter 'priority'"),
            ({"config": "{}", "file:../model.onnx": "AAAA"}, "invalid file parameter 'file:../model.onnx'"),
            ({"config": "{}", "file:/1/model.onnx": "AAAA"}, "invalid file parameter 'file:/1/model.onnx'"),
            ({"config": "{}", "file:1/model.onnx": 12}, "must be the file's content in base64"),
            ({"config": "{}", "file:1/model.onnx": "not base64!"}, "is not valid base64"),
            ({"config": "{}", "file:1/model.onnx": "AAAA"}, "version 1 is at UNAVAILABLE state")):
        response = post(kernel, "/v2/repository/models/demo/load", json.dumps({"parameters": parameters}))
        message = error_of(response, 400)
        assert expected in message, (parameters, message)
        assert_serving(kernel)
    for dependents in ("yes", 1, None):
        body = json.dumps({"parameters": {"unload_dependents": dependents}})
        message = error_of(post(kernel, "/v2/repository/models/demo/unload", body), 400)
        assert message == "Unable to parse 'unload_dependents': expected a boolean"
    # Nothing above changed what serves.
    assert {"name": "demo", "version": "2", "state": "READY"} in index(kernel)
    # A body far over the location's limit is refused before it is read; one under it but huge still parses.
    huge = b'{"ready": true, "pad": "' + b"x" * (3 << 20) + b'"}'
    big = post(kernel, "/v2/repository/index", huge)
    assert big.status_code in (200, 413), big.text
    if big.status_code == 413:
        error_of(big, 413)
    assert_serving(kernel)
    assert "failed to parse the request JSON buffer" in kernel.log_text(), "refusals are logged"


def test_model_names_versions_and_methods(start_kernel, tmp_path):
    repository = make_repository(str(tmp_path))
    # A directory the index does not list (not a model name) must not load either.
    copy_model(DEMO, os.path.join(repository, "a b", "1", "model.onnx"))
    kernel = start_kernel(repository_yaml("repository_control: explicit"))
    assert all(entry["name"] != "a b" for entry in index(kernel))
    for name in ("nope", "a%20b", "x" * 4000, "caf%C3%A9", "tab%09x", "new%0Aline"):
        # Triton: a load it cannot poll for is INTERNAL (500); an unload of what is not served is done (200).
        status, _, body = raw_request(kernel, "POST", f"/v2/repository/models/{name}/load")
        assert status == 500, (name, status, body)
        message = json.loads(body)["error"]
        assert message.startswith("failed to load '"), message
        status, _, body = raw_request(kernel, "POST", f"/v2/repository/models/{name}/unload")
        assert status == 200, (name, status, body)
    assert all(entry["name"] != "a b" for entry in index(kernel))
    assert_serving(kernel)
    # `..`, encoded slashes and NUL never reach a directory outside the repository.
    for target, statuses in (("/v2/repository/models/../load", (404,)),
                             ("/v2/repository/models/%2E%2E/load", (404,)),
                             ("/v2/repository/models/..%2F..%2Fetc/load", (400, 404)),
                             ("/v2/repository/models/demo%2F1/load", (404,)),
                             ("/v2/repository/models/de%00mo/load", (400,)),
                             ("/v2/repository/models/%/load", (400,)),
                             ("/v2/repository/other/models/demo/load", (501,)),
                             ("/v2/repository/models/demo/reload", (404,)),
                             ("/v2/repository/models//load", (404,))):
        status, _, body = raw_request(kernel, "POST", target)
        assert status in statuses, (target, status, body)
        if status != 400:  # the HTTP layer's own 400 for a bad target is nginx's, not JSON
            assert "error" in json.loads(body), (target, body)
    assert_serving(kernel)

    # Wrong methods: 405 with Allow.
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        for path in ("/v2/repository/index", "/v2/repository/models/demo/load", "/v2/repository/models/demo/unload",
                     "/v2/models/demo/infer", "/v2/models/demo/versions/1/infer"):
            status, headers, body = raw_request(kernel, method, path)
            assert status == 405, (method, path, status, body)
            assert headers.get("Allow") == "POST", (method, path, headers)
            assert "error" in json.loads(body)
    for path in ("/v2/models/demo", "/v2/models/demo/ready", "/v2/models/demo/config", "/v2/models/demo/stats",
                 "/v2/models/stats", "/v2/health/ready"):
        status, headers, body = raw_request(kernel, "POST", path)
        assert status == 405 and headers.get("Allow") == "GET, HEAD", (path, status, headers)

    # Versions: non-numeric, huge, negative, empty: 404; a leading zero is the number (Triton reads it as int64).
    for version in ("abc", "1.0", "-1", "99999999999999999999999", "9223372036854775807", "0x1", "%201", "3"):
        status, _, body = raw_request(kernel, "POST", f"/v2/models/demo/versions/{version}/infer", infer_body().encode())
        assert status == 404, (version, status, body)
        assert "is not found" in json.loads(body)["error"], body
        status, _, _ = raw_request(kernel, "GET", f"/v2/models/demo/versions/{version}/ready")
        assert status == 404, version
    assert raw_request(kernel, "POST", "/v2/models/demo/versions/infer", infer_body().encode())[0] == 404
    status, _, body = raw_request(kernel, "POST", "/v2/models/demo/versions/01/infer", infer_body().encode())
    assert status == 200 and json.loads(body)["model_version"] == "1", body
    assert_serving(kernel, "demo")


def test_load_unload_races_and_a_vanished_directory(start_kernel, tmp_path):
    repository = make_repository(str(tmp_path))
    kernel = start_kernel(repository_yaml("repository_control: explicit"))
    # Unload twice, load twice: each 200, the second changes nothing.
    for action in ("unload", "unload", "load", "load"):
        response = post(kernel, f"/v2/repository/models/demo/{action}")
        assert response.status_code == 200, (action, response.text)
    # Concurrent loads and unloads of one model: each answered, none lost, the last word holds.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        actions = ["load", "unload"] * 4
        answers = list(pool.map(lambda action: post(kernel, f"/v2/repository/models/demo/{action}"), actions))
    assert [answer.status_code for answer in answers] == [200] * 8, [answer.text for answer in answers]
    assert post(kernel, "/v2/repository/models/demo/load").status_code == 200
    assert requests.get(kernel.url("/v2/models/demo/ready"), timeout=10).status_code == 200
    # The index answers while loads run (they hold no event loop).
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        loads = [pool.submit(post, kernel, "/v2/repository/models/other/load") for _ in range(3)]
        assert {"name": "demo", "version": "1", "state": "READY"} in index(kernel)
        assert [future.result().status_code for future in loads] == [200] * 3

    # The model's directory vanishes: a load is 500 (Triton's INTERNAL, its words) and what serves keeps serving.
    shutil.rmtree(os.path.join(repository, "demo"))
    message = error_of(post(kernel, "/v2/repository/models/demo/load"), 500)
    assert message.startswith("failed to load 'demo', failed to poll from model repository"), message
    assert requests.get(kernel.url("/v2/models/demo/ready"), timeout=10).status_code == 200
    assert_serving(kernel, "demo")
    # A version directory without its model file, then a corrupt one: the load fails naming it, the loaded
    # version 1 keeps serving.
    copy_model(DEMO, os.path.join(repository, "demo", "1", "model.onnx"))
    os.makedirs(os.path.join(repository, "demo", "2"))
    message = error_of(post(kernel, "/v2/repository/models/demo/load"), 400)
    assert message.startswith("load failed for model 'demo': version 2 is at UNAVAILABLE state: "), message
    write(os.path.join(repository, "demo", "2", "model.onnx"), b"\x08\x07garbage" * 100, mode="wb")
    message = error_of(post(kernel, "/v2/repository/models/demo/load"), 400)
    assert "version 2 is at UNAVAILABLE state: " in message, message
    assert "failed to load from" in kernel.log_text()
    assert_serving(kernel, "demo")
    # Unloaded, the model's directory gone: unload still answers, load answers 500 (it cannot be polled).
    assert post(kernel, "/v2/repository/models/demo/unload").status_code == 200
    shutil.rmtree(os.path.join(repository, "demo"))
    assert post(kernel, "/v2/repository/models/demo/unload").status_code == 200
    error_of(post(kernel, "/v2/repository/models/demo/load"), 500)
    assert_serving(kernel)


def test_priorities_that_are_no_priority_level(start_kernel, tmp_path):
    make_repository(str(tmp_path))
    write(os.path.join(str(tmp_path), "repo", "other", "config.yaml"),
          "max_batch_size: 8\ndynamic_batching: {priority_levels: 2, default_priority_level: 2}\n")
    kernel = start_kernel(repository_yaml("repository_control: explicit"))
    url = "/v2/models/other/infer"
    # (Spaces around a header value are not part of it, as HTTP has it.)
    for value in ("-1", "1.5", "abc", "", "+1", "0x1", "1e3", "1 2"):
        status, _, body = raw_request(kernel, "POST", url, infer_body().encode(), [("X-Kernel-Priority", value)])
        assert status == 400, (value, status, body)
        assert "X-Kernel-Priority" in json.loads(body)["error"]
    # A level above the model's levels (however large) runs at the default level, as Triton takes it.
    for value in ("0", "1", "2", "3", "99999999999999999999999999"):
        status, _, body = raw_request(kernel, "POST", url, infer_body().encode(), [("X-Kernel-Priority", value)])
        assert status == 200, (value, status, body)
    # The header twice with different levels is ambiguous: refused, not read as the first.
    status, _, body = raw_request(kernel, "POST", url, infer_body().encode(),
                                  [("X-Kernel-Priority", "2"), ("X-Kernel-Priority", "1")])
    assert status == 400, (status, body)
    assert "X-Kernel-Priority" in json.loads(body)["error"]
    status, _, _ = raw_request(kernel, "POST", url, infer_body().encode(),
                               [("X-Kernel-Priority", "1"), ("X-Kernel-Priority", "1")])
    assert status == 200
    for priority, wanted in ((-1, "invalid value for 'priority', expected value >= 0."),
                             (1.5, "invalid value type for 'priority' parameter, expected an unsigned integer"),
                             ("1", "invalid value type for 'priority' parameter, expected an unsigned integer"),
                             (True, "invalid value type for 'priority' parameter, expected an unsigned integer"),
                             (None, "invalid value type for 'priority' parameter, expected an unsigned integer"),
                             (1e30, "invalid value type for 'priority' parameter, expected an unsigned integer"),
                             (2 ** 70, "invalid value type for 'priority' parameter, expected an unsigned integer")):
        response = post(kernel, url, infer_body(parameters={"priority": priority}))
        assert error_of(response, 400) == wanted, (priority, response.text)
    for priority in (0, 1, 2, 3, 2 ** 63):
        response = post(kernel, url, infer_body(parameters={"priority": priority}))
        assert response.status_code == 200, (priority, response.text)
    assert_serving(kernel)


def test_a_version_unloaded_and_reloaded_under_load_answers_only_documented_statuses(start_kernel, tmp_path):
    repository = make_repository(str(tmp_path))
    kernel = start_kernel(repository_yaml("repository_control: explicit"))
    statuses = {}
    failures = []
    stop = threading.Event()
    lock = threading.Lock()

    def drive(path):
        session = requests.Session()
        body = infer_body()
        while not stop.is_set():
            try:
                response = session.post(kernel.url(path), data=body, timeout=30)
            except requests.RequestException as error:  # a reset or a closed connection is a defect
                with lock:
                    failures.append(f"{path}: {error!r}")
                session = requests.Session()
                continue
            with lock:
                statuses.setdefault(path, {}).setdefault(response.status_code, set()).add(
                    response.json().get("error", "") if response.status_code != 200 else "")

    paths = ["/v2/models/demo/infer", "/v2/models/demo/versions/1/infer", "/v2/models/demo/versions/2/infer"] * 2
    threads = [threading.Thread(target=drive, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    # And wrk on the version that is unloaded and replaced: many connections, no socket error.
    wrk = WrkRun(kernel.url("/v2/models/demo/versions/1/infer"), kernel.port(), connections=8, method="POST",
                 body=infer_body(), headers={"Content-Type": "application/json"})
    wrk.wait_until_loaded(timeout=30)
    try:
        for round in range(8):
            assert post(kernel, "/v2/repository/models/demo/unload").status_code == 200
            assert post(kernel, "/v2/repository/models/demo/load").status_code == 200
            # A changed file: the load replaces version 1's sessions while requests reach them.
            copy_model(DEMO, os.path.join(repository, "demo", "1", "model.onnx"))
            os.utime(os.path.join(repository, "demo", "1", "model.onnx"), (1000 + round, 1000 + round))
            assert post(kernel, "/v2/repository/models/demo/load").status_code == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        done, output = wrk.finish()
    assert done > 0
    assert "Socket errors" not in output, output
    assert not failures, failures[:5]
    for path, seen in statuses.items():
        assert 200 in seen, (path, seen)
        # Only the documented answers: 200, or while the model is unloaded Triton's 404 "has no available
        # versions" (no version named) and 503 "not at ready state" (version named). Never a 500.
        named = "/versions/" in path
        assert set(seen) <= ({200, 503} if named else {200, 404}), (path, seen)
        for message in seen.get(503 if named else 404, ()):
            assert ("is not at ready state" if named else "has no available versions") in message, message
    assert "is being unloaded" not in kernel.log_text()
    assert_serving(kernel, "demo")


def make_junk(repository):
    """Files where directories should be, symlink loops, version directories without or with a corrupt model file,
    non-numeric version directories, a model file that is a directory."""
    write(os.path.join(repository, "stray.txt"), "not a model")
    write(os.path.join(repository, "filever", "1"), "a file where a version directory should be")
    os.symlink("loop", os.path.join(repository, "loop"))
    os.makedirs(os.path.join(repository, "selfref", "1"))
    os.symlink(os.path.join(repository, "selfref"), os.path.join(repository, "selfref", "2"))
    os.symlink("3", os.path.join(repository, "selfref", "3"))
    os.makedirs(os.path.join(repository, "empty", "1"))
    write(os.path.join(repository, "corrupt", "1", "model.onnx"), b"\x00\x01not protobuf" * 50, mode="wb")
    for name in ("latest", "1a", "-1", "01x", "99999999999999999999999"):
        os.makedirs(os.path.join(repository, "words", name))
    copy_model(DEMO, os.path.join(repository, "words", "latest", "model.onnx"))
    copy_model(DEMO, os.path.join(repository, "modeldir", "1", "model.onnx", "inner"))


def check_junk_states(kernel):
    listed = index(kernel)
    names = {entry["name"] for entry in listed}
    assert "stray.txt" not in names and "loop" not in names
    states = {(entry["name"], entry.get("version")): entry for entry in listed}
    for name in ("empty", "corrupt", "modeldir"):
        entry = states.get((name, "1"))
        assert entry and entry["state"] == "UNAVAILABLE" and entry["reason"], (name, listed)
    assert states[("other", "1")]["state"] == "READY"
    for entry in listed:
        if entry["name"] == "words":
            assert entry.get("version") is None, entry  # no numbered version: nothing to load
    return listed


def test_a_repository_with_junk_at_start_and_while_polling(start_kernel, tmp_path):
    repository = make_repository(str(tmp_path))
    make_junk(repository)
    kernel = start_kernel(repository_yaml("repository_control: poll\n  repository_poll: 200ms"))
    check_junk_states(kernel)
    log = kernel.log_text()
    assert "inference: model 'corrupt' failed to load from" in log
    assert "inference: model 'empty' failed to load from" in log
    assert "inference: model 'words' has no version to load" in log
    assert_serving(kernel)

    # The same junk appearing while polling, plus a settings file that turns bad: logged, nothing that serves
    # stops, and the kernel keeps polling (a later good change is picked up).
    junk = os.path.join(str(tmp_path), "late")
    os.makedirs(junk)
    make_junk(junk)
    for name in os.listdir(junk):
        os.rename(os.path.join(junk, name), os.path.join(repository, "late_" + name))
    write(os.path.join(repository, "other", "config.yaml"), "max_batch_size: 8\ndynamic_batching: {\n")
    # A settings file nested a million deep: an error at its place, never a stack overflow of the poll.
    write(os.path.join(repository, "late_deep", "config.pbtxt"), "parameters: " + "[" * 1000000)
    copy_model(DEMO, os.path.join(repository, "late_deep", "1", "model.onnx"))
    os.makedirs(os.path.join(repository, "late_dirsettings", "config.yaml"))
    copy_model(DEMO, os.path.join(repository, "late_dirsettings", "1", "model.onnx"))
    kernel.wait_for_log("inference: model 'late_corrupt' failed to load from", timeout=30)
    kernel.wait_for_log("inference: model 'other':", timeout=30)
    line = next(line for line in kernel.log_text().splitlines() if "inference: model 'other':" in line)
    assert os.path.join(repository, "other", "config.yaml") + ":" in line and "what serves keeps serving" in line, line
    time.sleep(0.5)  # a few more polls with the same errors
    assert kernel.log_text().count("inference: model 'other':") == 1, "a standing error is logged once"
    assert kernel.log_text().count("inference: model 'late_corrupt' failed to load from") == 1, "not retried"
    kernel.wait_for_log("inference: model 'late_dirsettings':", timeout=30)
    kernel.wait_for_log("config.pbtxt:1:113: messages and lists nested deeper than 100 levels", timeout=30)
    unreadable = requests.get(kernel.url("/v2/models/late_dirsettings/ready"), timeout=10)
    assert "has no available versions" in error_of(unreadable, 404)
    assert_serving(kernel)
    # A symlink loop replacing a served model's version directory, then a good file again.
    shutil.rmtree(os.path.join(repository, "demo", "2"))
    os.symlink(os.path.join(repository, "demo", "2"), os.path.join(repository, "demo", "2"))
    write(os.path.join(repository, "other", "config.yaml"), "max_batch_size: 8\ndynamic_batching: {}\n")
    copy_model(DEMO, os.path.join(repository, "added", "1", "model.onnx"))
    wait_until(lambda: requests.get(kernel.url("/v2/models/added/ready"), timeout=10).status_code == 200,
               "the poll after the errors to load a new model")
    wait_until(lambda: requests.get(kernel.url("/v2/models/demo/versions/2/ready"), timeout=10).status_code != 200,
               "the looped version to leave")
    assert requests.get(kernel.url("/v2/models/demo/versions/1/ready"), timeout=10).status_code == 200
    assert_serving(kernel, "demo")
    assert_serving(kernel, "added")
    # The whole directory goes away (an unmounted volume), then comes back: logged once, nothing unloads.
    os.rename(repository, repository + ".away")
    kernel.wait_for_log("inference: polling the model repository: ", timeout=30)
    time.sleep(0.5)  # a few more polls of the missing directory
    assert kernel.log_text().count("inference: polling the model repository: ") == 1
    assert_serving(kernel, "demo")
    assert index(kernel)
    os.rename(repository + ".away", repository)
    kernel.wait_for_log("can be read again", timeout=30)
    assert_serving(kernel, "added")


def test_settings_errors_at_start_name_their_file_line_and_column(tmp_path):
    repository = make_repository(str(tmp_path))
    cases = [("config.yaml", "max_batch_size: 8\ndynamic_batching: {max_queue_delay: fast}\n", ":2:"),
             ("config.yaml", "max_batch_size: 8\n  bad indent: [\n", ":2:"),
             ("config.yaml", "max_batch_size: 8\nunknown_key: 1\n", ":2:1"),
             ("config.pbtxt", "name: \"other\"\nmax_batch_size: eight\n", ":2:"),
             ("config.yaml/", None, ": cannot read file"),
             ("config.pbtxt", "parameters: " + "[" * 1000000, ":1:113: messages and lists nested deeper than 100"),
             ("config.yaml", "max_batch_size: " + "[" * 1000000, ":1:")]
    for file, text, place in cases:
        shutil.rmtree(os.path.join(repository, "other"))
        copy_model(DEMO, os.path.join(repository, "other", "1", "model.onnx"))
        path = os.path.join(repository, "other", file.rstrip("/"))
        if text is None:
            os.makedirs(path)  # a settings file that is a directory
        else:
            write(path, text)
        config = os.path.join(str(tmp_path), "kernel.yaml")
        write(config, repository_yaml("repository_control: explicit"))
        result = subprocess.run([KERNEL_BIN, "--role", "both", "-t", "--config", config], capture_output=True,
                                text=True, cwd=str(tmp_path), timeout=60)
        assert result.returncode != 0, (file, text, result.stdout, result.stderr)
        output = result.stdout + result.stderr
        assert path + place in output, (file, text, output)


def test_concurrent_loads_hold_up_no_request_to_another_model(start_kernel, tmp_path):
    repository = make_repository(str(tmp_path))
    # Its warm-up (eight runs of 256 rows) makes each of its loads last seconds.
    heavy = add_slow_model(repository, "heavy", "max_batch_size: 256\nwarmup: 8\nwarmup_batch_sizes: [256]\n")
    kernel = start_kernel(repository_yaml("repository_control: explicit"))
    # Padded past client_body_buffer_size (16k): its body is spooled to a file and read back.
    body = infer_body() + " " * (20 << 10)
    assert len(body) > 16 << 10
    assert post(kernel, "/v2/models/other/infer", body).status_code == 200
    os.utime(heavy, (2000, 2000))
    warmed = kernel.log_text().count("inference: model 'heavy' version 1: warming up")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        loads = [pool.submit(post, kernel, "/v2/repository/models/heavy/load") for _ in range(3)]
        kernel.wait_for_log("inference: model 'heavy' version 1: warming up", timeout=60, count=warmed + 1)
        # While the first load warms up and the others wait for it, requests to other models are answered.
        answer = post(kernel, "/v2/models/other/infer", body)
        assert answer.status_code == 200, answer.text
        assert not all(load.done() for load in loads), "the inference waited for the loads"
        assert index(kernel)
        assert not all(load.done() for load in loads), "the index waited for the loads"
        assert [load.result().status_code for load in loads] == [200] * 3
    assert requests.get(kernel.url("/v2/models/heavy/ready"), timeout=10).status_code == 200
    assert_serving(kernel)


def test_a_client_that_leaves_while_its_batch_runs_breaks_nothing(start_kernel, tmp_path):
    repository = make_repository(str(tmp_path))
    add_slow_model(repository, "slow", "max_batch_size: 256\n")
    kernel = start_kernel(repository_yaml("repository_control: explicit").replace(
        "          inference: {}\n", "          inference: {}\n        - location: = /metrics\n          metrics: {}\n"))
    body = json.dumps({"inputs": [{"name": "x", "shape": [256, 256], "datatype": "FP32",
                                   "data": [0.1] * (256 * 256)}]}).encode()

    def depth():
        for line in requests.get(kernel.url("/metrics"), timeout=10).text.splitlines():
            if line.startswith('kernel_model_queue_depth{model="slow",version="1"} '):
                return int(float(line.split()[1]))
        return 0

    def slow_stats():
        return requests.get(kernel.url("/v2/models/slow/stats"), timeout=10).json()["model_stats"][0]

    for _ in range(3):
        leaving = socket.create_connection(("127.0.0.1", kernel.port()))
        leaving.sendall(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        # Alone on an idle instance, the request runs as soon as it is queued: the depth gauge says it is in.
        wait_until(lambda: depth() == 1, "the request to start running")
        leaving.close()
        # Its run completes and is counted; its answer goes nowhere; the model and the process carry on.
        wait_until(lambda: depth() == 0, "the run to end")
        assert slow_stats()["cancellations"] == 0, "a running request is not cancelled"
    wait_until(lambda: slow_stats()["execution_count"] == 3, "the three runs to be counted")
    assert slow_stats()["inference_stats"]["success"]["count"] == 3
    assert "client prematurely closed connection" in kernel.log_text()
    answer = post(kernel, "/v2/models/slow/infer", body)
    assert answer.status_code == 200, answer.text
    assert_serving(kernel)


def test_a_stop_during_a_long_warm_up_does_not_wait_for_all_of_it(start_kernel, tmp_path):
    repository = make_repository(str(tmp_path))
    # Minutes of warm-up: a thousand runs of 256 rows.
    add_slow_model(repository, "heavy", "max_batch_size: 256\nwarmup: 1000\nwarmup_batch_sizes: [256]\n")
    kernel = start_kernel(repository_yaml("repository_control: explicit\n  load_before_listen: false"))
    kernel.wait_for_log("inference: model 'heavy' version 1: warming up", timeout=60)
    assert requests.get(kernel.url("/v2/health/ready"), timeout=10).status_code == 400
    # SIGTERM: the warm-up stops at its next run and the kernel exits (the fixture's stop allows 15 s).
    kernel.stop()
    assert "inference: model 'heavy' version 1: warm-up interrupted, the kernel is stopping" in kernel.log_text()


def test_load_file_parameters_with_odd_paths_repeated_members_and_a_large_file(start_kernel, tmp_path):
    """`file:` parameters as a hostile client writes them: paths with empty, `.`, `..`, NUL or over-long names, a file
    where another one needs a directory, a repeated member, two directories of one version number, a non-ASCII
    name, and tens of MB of base64. Each is a 400 or a load, never a 500 or a crash; the files' directory is
    removed after each, and `other` serves throughout."""
    import base64
    make_repository(str(tmp_path))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    location = """
routing:
  servers:
    - locations:
        - location: "^~ /v2"
          client_max_body_size: 64m
          inference: {}
"""
    kernel = start_kernel(repository_yaml("repository_control: explicit").split("routing:")[0] + location,
                          env=dict(os.environ, TMPDIR=str(scratch)))
    with open(DEMO, "rb") as f:
        model = base64.b64encode(f.read()).decode()
    config = json.dumps({"max_batch_size": 8})

    def load(parameters_text):
        return post(kernel, "/v2/repository/models/uploaded/load", '{"parameters": {' + parameters_text + '}}')

    def assert_cleaned():
        left = [name for name in os.listdir(scratch) if name.startswith("kernel-model-load-")]
        assert not left, left

    # Paths as Triton resolves them: empty and `.` names dropped, `..` inside the directory followed.
    for path in ("1//model.onnx", "1/./model.onnx", "2/../1/model.onnx", "./1/model.onnx"):
        loaded = load(f'"config": {json.dumps(config)}, "file:{path}": "{model}"')
        assert loaded.status_code == 200, (path, loaded.text)
        assert_serving(kernel, "uploaded")
        assert_cleaned()
    for path, expected in (("1/../../model.onnx", "invalid file parameter"), ("1/..", "invalid file parameter"),
                           ("1/a\\u0000b", "invalid file parameter"), ("//", "invalid file parameter"),
                           ("1/" + "x" * 300, "File name too long")):
        message = error_of(load(f'"config": {json.dumps(config)}, "file:{path}": "{model}"'), 400)
        assert expected in message, (path, message)
        assert_cleaned()
        assert_serving(kernel)
    # A file where another file needs its directory, either way round.
    for first, second in (("1", "1/model.onnx"), ("1/model.onnx", "1")):
        message = error_of(load(f'"config": {json.dumps(config)}, "file:{first}": "{model}", "file:{second}": "{model}"'), 400)
        assert f"invalid file parameter 'file:{second}'" in message, message
        assert_cleaned()
        assert_serving(kernel)
    # A repeated member: the first is the one read (as a lookup of the key finds it).
    loaded = load(f'"config": {json.dumps(config)}, "file:1/model.onnx": "{model}", "file:1/model.onnx": "AAAA"')
    assert loaded.status_code == 200, loaded.text
    assert_serving(kernel, "uploaded")
    assert_cleaned()
    # Two version directories of one number (`1` and `01`) are one version, as Triton counts them.
    all_versions = json.dumps({"max_batch_size": 8, "version_policy": {"all": {}}})
    loaded = load(f'"config": {json.dumps(all_versions)}, "file:1/model.onnx": "{model}", "file:01/model.onnx": "{model}"')
    assert loaded.status_code == 200, loaded.text
    assert [entry for entry in index(kernel) if entry["name"] == "uploaded"] == \
        [{"name": "uploaded", "version": "1", "state": "READY"}]
    assert_serving(kernel, "uploaded")
    assert_cleaned()
    # A non-ASCII name beside the model, a file of tens of MB, and nested directories in and beside the version.
    large = base64.b64encode(os.urandom(30 * 1024 * 1024)).decode()
    loaded = load(f'"config": {json.dumps(config)}, "file:1/model.onnx": "{model}", "file:1/données é.bin": "{large}", '
                  f'"file:1/sub/deeper/extra.bin": "AAAA", "file:notes/readme.txt": "AAAA"')
    assert loaded.status_code == 200, loaded.text
    assert_serving(kernel, "uploaded")
    assert_cleaned()
    assert kernel.process.poll() is None
