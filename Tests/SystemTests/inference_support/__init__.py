"""Helpers of the inference system tests: model paths, a deliberately slow model, reference runs in Python."""
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
DEMO = os.path.join(ROOT, "models", "demo", "1", "model.onnx")
PPOCR_CLS = os.path.join(ROOT, "models", "ppocr_cls", "1", "model.onnx")


def ensure_models():
    """Builds the demo and PP-OCR models when missing (as `make test` does through scripts/setup.sh)."""
    if not (os.path.exists(DEMO) and os.path.exists(PPOCR_CLS)):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "models", "make_models.py")], check=True)


def wait_until(condition, what, timeout=30):
    """Bounded wait for a state the kernel reaches by itself (a poll, a background load)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def make_slow_model(path, width=256, layers=48):
    """A chain of MatMul+Tanh on FP32 "x" [-1, width]: about `layers * width * width` multiply-adds per row, so a
    request of a few hundred rows keeps one instance busy long enough to fill its queue."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)
    nodes, initializers, previous = [], [], "x"
    for layer in range(layers):
        weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, f"w{layer}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]))
        out = "y" if layer == layers - 1 else f"t{layer}"
        nodes.append(helper.make_node("Tanh", [f"m{layer}"], [out]))
        previous = out
    graph = helper.make_graph(nodes, "slow",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


class Reference:
    """The same model run by onnxruntime's Python API with one intra-op thread, as the kernel runs it."""

    def __init__(self, path):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    def run(self, array):
        return self.session.run([self.output], {self.input: array})[0]


def models_yaml(extra="", location='"^~ /v2"'):
    """An `inference:` section serving the demo MLP and the PP-OCR classifier, plus `extra` model entries, mounted on
    `location`."""
    return f"""
http:
  listen: "127.0.0.1:0"
inference:
  models:
    - name: demo
      path: {DEMO}
      max_batch_size: 32
      dynamic_batching: {{max_queue_delay: 5ms, preferred_batch_sizes: [16, 32]}}
      max_queue: 1024
      timeout: 30s
      warmup: 1
    - name: ppocr_cls
      path: {PPOCR_CLS}
      max_batch_size: 8
      dynamic_batching: {{max_queue_delay: 5ms}}
      warmup: 1
{extra}
routing:
  servers:
    - client_max_body_size: 16m
      locations:
        - location: {location}
          inference: {{}}
"""
