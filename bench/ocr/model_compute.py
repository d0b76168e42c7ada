#!/usr/bin/env python3
"""The in-process compute of the OCR pipeline's three models for one image, each model alone: the inputs
rapidocr_onnxruntime gives each model for the image (captured from its sessions), run by ONNX Runtime with the
kernel's session options (CPU arena, all graph optimisations, inter-op 1), at 1 and 2 intra-op threads, at batch 1
and batched. Wall and process CPU milliseconds per run (medians), with the load average.

    python3 bench/ocr/model_compute.py [IMAGE]     # default: the benchmark's image (scripts/ocr/make_images.py 015)

docs/performance.md (OCR) turns these into the images/s two cores can give.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS = {"det": "ocr_det", "cls": "ocr_cls", "rec": "ocr_rec"}
FILES = {"det": "ch_PP-OCRv4_det_infer.onnx", "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
         "rec": "ch_PP-OCRv4_rec_infer.onnx"}


def captured_inputs(image):
    """The arrays rapidocr feeds each model for `image`, by model file name."""
    from rapidocr_onnxruntime import RapidOCR
    from rapidocr_onnxruntime.utils import infer_engine
    captured = {}
    original = infer_engine.OrtInferSession.__call__

    def call(self, inputs):
        captured.setdefault(os.path.basename(self.session._model_path), []).append(
            inputs[0] if isinstance(inputs, list) else inputs)
        return original(self, inputs)
    infer_engine.OrtInferSession.__call__ = call
    found, _ = RapidOCR()(image)
    infer_engine.OrtInferSession.__call__ = original
    return captured, [text for _, text, _ in (found or [])]


def session(model, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = True
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(os.path.join(ROOT, "models", MODELS[model], "1", "model.onnx"), options,
                                providers=["CPUExecutionProvider"])


def timed(s, array, runs):
    name = s.get_inputs()[0].name
    s.run(None, {name: array})
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        s.run(None, {name: array})
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


def main():
    if len(sys.argv) > 1:
        image = open(sys.argv[1], "rb").read()
    else:
        out = tempfile.mkdtemp(prefix="kernel-ocr-compute-")
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "ocr", "make_images.py"), out, "--count", "16"],
                       check=True, capture_output=True)
        image = open(os.path.join(out, sorted(f for f in os.listdir(out) if f.startswith("015_"))[0]), "rb").read()
    captured, texts = captured_inputs(image)
    print(f"texts: {texts}; load average {os.getloadavg()[0]:.2f}")
    for model in ("det", "cls", "rec"):
        array = captured[FILES[model]][0]
        runs = 5 if model == "det" else 20
        for threads in (1, 2):
            s = session(model, threads)
            sizes = [1, 2] if model == "det" else sorted({1, array.shape[0], 2 * array.shape[0], 12})
            for rows in sizes:
                batch = np.concatenate([array] * ((rows + array.shape[0] - 1) // array.shape[0]))[:rows]
                wall, cpu = timed(s, batch, runs)
                print(f"{model} {list(batch.shape)} intra_op_threads={threads}: {wall:.1f} ms wall, {cpu:.1f} ms CPU, "
                      f"{cpu / rows:.1f} ms CPU per row", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
