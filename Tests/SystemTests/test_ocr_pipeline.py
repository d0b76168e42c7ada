"""/v1/parse, the OCR pipeline of etc/examples/ocr.yaml, against rapidocr_onnxruntime on generated images.

The images come from scripts/ocr/make_images.py (deterministic); rapidocr's answers are cached by image content in
the temporary directory, so only a first run pays for the slow Python reference."""
import base64
import concurrent.futures
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import threading
import zlib

import pytest
import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS = os.path.join(ROOT, "models")
IMAGE_COUNT = 50
# Images whose text the kernel reads differently from rapidocr, each with the reason. Empty: every image matches.
KNOWN_DIFFERENCES = {}
# Box corners may differ by this many pixels (they are equal on every image today).
BOX_TOLERANCE = 3


def ensure_ocr_models():
    if not all(os.path.exists(os.path.join(MODELS, name, "1", "model.onnx")) for name in ("ocr_det", "ocr_cls", "ocr_rec")):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "models", "make_models.py")], check=True)


REC_ONE_ROW = "      max_batch_size: 1             # one crop per run: PP-OCRv4 recognition costs more per row in larger batches\n"


def ocr_config(rec_batching=False):
    """etc/examples/ocr.yaml on port 0 with absolute model paths, plus the Open Inference Protocol on /v2 for the
    models' statistics and a longer queue delay so that concurrent requests join batches. `rec_batching`: the
    recognition model batches requests (up to 12 rows) instead of the example's one row per run."""
    with open(os.path.join(ROOT, "etc", "examples", "ocr.yaml")) as f:
        text = f.read()
    if rec_batching:
        assert REC_ONE_ROW in text
        text = text.replace(REC_ONE_ROW, "      max_batch_size: 12\n      dynamic_batching: {max_queue_delay: 2ms}\n")
    text = re.sub(r"^kernel:\n(  .*\n)+", "", text, flags=re.M)
    text = text.replace("../../models/", MODELS + "/").replace("listen: 8100", "listen: 127.0.0.1:0")
    text = text.replace("max_queue_delay: 2ms", "max_queue_delay: 30ms")
    assert "pipeline: ocr" in text and "127.0.0.1:0" in text
    return text + """        - location: "^~ /v2"
          inference: {}
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ocr-images"))
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "ocr", "make_images.py"), out,
                    "--count", str(IMAGE_COUNT)], check=True, capture_output=True)
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    return [(entry["file"], open(os.path.join(out, entry["file"]), "rb").read()) for entry in manifest]


def rapidocr_reference(images):
    """rapidocr's lines (box, text, score) per image, cached by the image's SHA-256 in the temporary directory."""
    cache = os.path.join(tempfile.gettempdir(), "kernel-ocr-reference")
    os.makedirs(cache, exist_ok=True)
    results, engine = {}, None
    for name, data in images:
        path = os.path.join(cache, hashlib.sha256(data).hexdigest() + ".json")
        if os.path.exists(path):
            with open(path) as f:
                results[name] = json.load(f)
            continue
        if engine is None:
            from rapidocr_onnxruntime import RapidOCR
            engine = RapidOCR()
        found, _ = engine(data)
        results[name] = [{"box": [[float(x), float(y)] for x, y in box], "text": text, "score": float(score)}
                         for box, text, score in (found or [])]
        with open(path + ".tmp", "w") as f:
            json.dump(results[name], f, ensure_ascii=False)
        os.replace(path + ".tmp", path)
    return results


@pytest.fixture(scope="module")
def reference(images):
    return rapidocr_reference(images)


@pytest.fixture
def kernel(start_kernel):
    ensure_ocr_models()
    kernel = start_kernel(ocr_config())
    return kernel


def parse(kernel, data, **kwargs):
    return requests.post(kernel.url("/v1/parse"), files={"file": ("image", data)}, timeout=120, **kwargs)


def stats(kernel, model):
    response = requests.get(kernel.url(f"/v2/models/{model}/stats"), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["model_stats"][0]


def test_text_and_boxes_match_rapidocr(kernel, images, reference):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda item: parse(kernel, item[1]), images))
    exact, differences = 0, []
    for (name, _), response in zip(images, responses):
        assert response.status_code == 200, (name, response.text)
        got = response.json()["lines"]
        want = reference[name]
        texts_equal = [line["text"] for line in got] == [line["text"] for line in want]
        box_error = max((abs(a - b) for g, w in zip(got, want) for gp, wp in zip(g["box"], w["box"])
                         for a, b in zip(gp, wp)), default=0)
        if texts_equal and box_error <= BOX_TOLERANCE:
            exact += 1
            for g, w in zip(got, want):
                assert abs(g["score"] - w["score"]) < 0.02, (name, g, w)
        else:
            differences.append((name, [line["text"] for line in got], [line["text"] for line in want], box_error))
    print(f"\nOCR exact matches with rapidocr_onnxruntime: {exact}/{len(images)} "
          f"({100.0 * exact / len(images):.1f}%)")
    unexplained = [d for d in differences if d[0] not in KNOWN_DIFFERENCES]
    assert not unexplained, unexplained
    assert sum(1 for name, _ in images if reference[name]) >= IMAGE_COUNT - 2, "the images should hold text"


def test_answer_forms_and_inputs(kernel, images):
    name, data = images[0]
    response = parse(kernel, data)
    assert response.status_code == 200, response.text
    body = response.json()
    texts = [line["text"] for line in body["lines"]]
    assert texts and all(len(line["box"]) == 4 for line in body["lines"])
    for step in ("decode", "det", "rec", "lines", "total"):
        assert step in body["timings"], body["timings"]
    assert body["timings"]["det"]["model"] == "ocr_det" and body["timings"]["det"]["batch_size"] >= 1
    timing = response.headers["Server-Timing"]
    assert re.search(r"(^|, )det;dur=[0-9.]+", timing) and "total;dur=" in timing, timing
    # The same image as the raw body, and as JSON with base64.
    raw = requests.post(kernel.url("/v1/parse"), data=data, headers={"Content-Type": "image/png"}, timeout=60)
    assert [line["text"] for line in raw.json()["lines"]] == texts
    as_json = requests.post(kernel.url("/v1/parse"), json={"image": base64.b64encode(data).decode()}, timeout=60)
    assert as_json.status_code == 200, as_json.text
    assert [line["text"] for line in as_json.json()["lines"]] == texts
    only = requests.post(kernel.url("/v1/parse?text_only=1"), files={"file": ("image", data)}, timeout=60)
    assert only.status_code == 200 and only.headers["Content-Type"].startswith("text/plain")
    assert only.text == "".join(text + "\n" for text in texts)


def png(width, height, rows=None, bit_depth=8, colour_type=0):
    """A PNG of `rows` (raw scanlines with filter bytes), or all-zero rows compressed as far as zlib goes."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    if rows is None:
        compressor = zlib.compressobj(9)
        row = b"\0" * (1 + (width * bit_depth + 7) // 8)
        data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    else:
        data = zlib.compress(rows)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb():
    data = png(20000, 20000, bit_depth=1)
    assert len(data) < 64 * 1024  # 400 million pixels in a few tens of KB
    return data


def smallest(images, count):
    """The `count` images with the fewest bytes that hold text (fast to read in a debug build)."""
    return sorted((item for item in images if "_en" in item[0]), key=lambda item: len(item[1]))[:count]


def jpeg(images):
    return next(data for name, data in images if name.endswith(".jpg"))


def assert_error(response, status, fragment):
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"] == "application/json"
    assert fragment in response.json()["error"], response.json()


def test_bad_inputs_get_their_status(kernel, images, bomb):
    assert_error(parse(kernel, b"this is not an image"), 400, "not an image")
    assert_error(parse(kernel, jpeg(images)[: len(jpeg(images)) // 2]), 400, "truncated or corrupt")
    assert_error(parse(kernel, bomb), 413, "20000x20000")
    assert_error(parse(kernel, b""), 400, "empty")
    assert_error(parse(kernel, png(0, 10, rows=b"")), 400, "no pixels")
    # A line of pixels far longer than max_side_len: its height scales to nothing (rapidocr's ResizeImgError).
    assert_error(parse(kernel, png(9000, 1)), 400, "(9000x1) cannot be resized for OCR")
    # Strips of a few bytes that rapidocr's resizing would grow past 16M pixels (a 2x2000 PNG becomes a 736x690000
    # detection input, 6 GB of floats): 413 before anything that large is made, tall or wide.
    assert_error(parse(kernel, png(2, 2000)), 413, "too thin for detection")
    assert_error(parse(kernel, png(2000, 2)), 413, "too thin for OCR")
    assert_error(parse(kernel, images[0][1][:40]), 400, "truncated or corrupt")
    # The form without its file field, a broken form, bad base64, a GET.
    no_file = requests.post(kernel.url("/v1/parse"), files={"other": ("x", images[0][1])}, timeout=30)
    assert_error(no_file, 400, "no \"file\" field")
    broken = requests.post(kernel.url("/v1/parse"), data=b"--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
                           headers={"Content-Type": "multipart/form-data; boundary=x"}, timeout=30)
    assert_error(broken, 400, "not closed by its boundary")
    assert_error(requests.post(kernel.url("/v1/parse"), json={"image": "%%%"}, timeout=30), 400, "base64")
    assert_error(requests.get(kernel.url("/v1/parse"), timeout=30), 405, "use POST")
    # And the kernel still answers, having logged each refusal.
    assert parse(kernel, images[0][1]).status_code == 200
    assert "413" in kernel.log_text() or "too large" in kernel.log_text()


def test_a_good_request_succeeds_while_bombs_are_refused(kernel, images, reference, bomb):
    stop = threading.Event()
    statuses = []

    def bombard():
        with requests.Session() as session:
            while not stop.is_set():
                statuses.append(session.post(kernel.url("/v1/parse"), files={"file": ("b", bomb)}, timeout=30).status_code)

    threads = [threading.Thread(target=bombard) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for name, data in smallest(images, 2):
            response = parse(kernel, data)
            assert response.status_code == 200, response.text
            assert [line["text"] for line in response.json()["lines"]] == [line["text"] for line in reference[name]]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses and set(statuses) == {413}, statuses


def test_concurrent_requests_batch_in_detection_and_recognition(start_kernel, images):
    # Eight uploads of one image at once: their detection inputs have one shape, so they can join one batch; their
    # recognition rows have one width, so with batching on (the example runs one row at a time) they join too.
    ensure_ocr_models()
    kernel = start_kernel(ocr_config(rec_batching=True))
    name, data = smallest(images, 1)[0]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: parse(kernel, data), range(8)))
    assert all(response.status_code == 200 for response in responses)
    det = stats(kernel, "ocr_det")
    assert max(entry["batch_size"] for entry in det["batch_stats"]) > 1, det
    assert det["execution_count"] < det["inference_count"], det
    rec = stats(kernel, "ocr_rec")
    submitted = sum(response.json()["timings"]["rec"]["requests"] for response in responses)
    assert max(entry["batch_size"] for entry in rec["batch_stats"]) > 1, rec
    assert rec["execution_count"] < submitted, (rec, submitted)


def test_max_in_flight_runs_the_others_in_turn_and_a_waiting_deadline_is_a_504(start_kernel, images, reference):
    # One request at a time: six uploads at once are all answered, with rapidocr's text; one that waits behind a
    # run with 50 ms left gets its 504 at its deadline, not when the run ends (its answer comes before the run's).
    ensure_ocr_models()
    config = re.sub(r"^      max_in_flight: .*\n", "", ocr_config(), flags=re.M)
    assert "    - name: ocr\n" in config
    kernel = start_kernel(config.replace("    - name: ocr\n", "    - name: ocr\n      max_in_flight: 1\n"))
    name, data = smallest(images, 1)[0]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: parse(kernel, data), range(6)))
    assert [response.status_code for response in responses] == [200] * 6
    expected = [line["text"] for line in reference[name]]
    assert all([line["text"] for line in response.json()["lines"]] == expected for response in responses)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(parse, kernel, data)
        time.sleep(0.05)  # the first takes the one slot
        started = time.monotonic()
        late = pool.submit(parse, kernel, data, headers={"X-Kernel-Timeout-Ms": "50"}).result()
        waited = time.monotonic() - started
        assert running.result().status_code == 200
    assert_error(late, 504, "did not start before the request's deadline")
    assert waited < 5, waited


def test_max_pixels_is_configurable(start_kernel, images):
    ensure_ocr_models()
    kernel = start_kernel(ocr_config().replace("max_pixels: 89478485", "max_pixels: 10000"))
    assert_error(parse(kernel, images[0][1]), 413, "max_pixels 10000")
    small = png(50, 50, rows=b"".join(b"\0" + b"\xff" * 50 for _ in range(50)))
    response = parse(kernel, small)
    assert response.status_code == 200 and response.json()["lines"] == [], response.text


def test_the_request_deadline_carries_through_the_steps(kernel, images):
    # An edge forwards the time its client still waits; no OCR of an image fits in a millisecond, so the pipeline
    # stops at the step (or in the model queue) where the deadline passes, and answers 504.
    name, data = smallest(images, 1)[0]
    response = parse(kernel, data, headers={"X-Kernel-Timeout-Ms": "1"})
    assert_error(response, 504, "deadline")
    assert parse(kernel, data).status_code == 200
