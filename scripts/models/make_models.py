#!/usr/bin/env python3
"""Builds the models the kernel's demo, tests and benchmarks serve, deterministically and idempotently.

- models/demo/1/model.onnx: an MLP, FP32 "input" [-1, 64] -> 256 -> ReLU -> 256 -> ReLU -> "output" [-1, 10],
  weights from numpy's seeded generator, written with onnx.helper.
- models/ppocr_cls/1/model.onnx: PP-OCR's text-direction classifier (ch_ppocr_mobile_v2.0_cls_infer.onnx),
  copied from the rapidocr-onnxruntime package; input "x" [-1, 3, 48, 192], output [-1, 2].

Run again, it rewrites nothing that is already up to date and prints what it made or kept.
"""
import glob
import hashlib
import os
import shutil
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS = os.path.join(ROOT, "models")
SEED = 20240601
OPSET = 17  # supported by every onnxruntime release since 1.14


def demo_model_bytes():
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    sizes = [64, 256, 256, 10]
    nodes, initializers = [], []
    previous = "input"
    for layer, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        scale = np.sqrt(2.0 / fan_in)
        weight = (rng.standard_normal((fan_in, fan_out)) * scale).astype(np.float32)
        bias = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        initializers += [numpy_helper.from_array(weight, f"w{layer}"), numpy_helper.from_array(bias, f"b{layer}")]
        matmul, added = f"matmul{layer}", f"add{layer}"
        last = layer == len(sizes) - 2
        nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [matmul]))
        nodes.append(helper.make_node("Add", [matmul, f"b{layer}"], ["output" if last else added]))
        if not last:
            nodes.append(helper.make_node("Relu", [added], [f"relu{layer}"]))
            previous = f"relu{layer}"
    graph = helper.make_graph(
        nodes, "demo_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        initializers)
    model = helper.make_model(graph, producer_name="kernel-make-models",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    onnx.checker.check_model(model)
    return model.SerializeToString()


def find_ppocr_classifier():
    import rapidocr_onnxruntime
    base = os.path.dirname(rapidocr_onnxruntime.__file__)
    found = sorted(glob.glob(os.path.join(base, "**", "ch_ppocr_mobile_v2.0_cls_infer.onnx"), recursive=True))
    if not found:
        sys.exit(f"make_models: ch_ppocr_mobile_v2.0_cls_infer.onnx not found under {base}; "
                 "install it with `pip install rapidocr-onnxruntime`")
    return found[0]


def write_if_changed(path, data, what):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        with open(path, "rb") as f:
            if f.read() == data:
                print(f"make_models: {what} up to date: {os.path.relpath(path, ROOT)}")
                return
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        f.write(data)
    os.replace(temporary, path)
    digest = hashlib.sha256(data).hexdigest()[:16]
    print(f"make_models: wrote {what}: {os.path.relpath(path, ROOT)} ({len(data)} bytes, sha256 {digest}...)")


# ---- OCR pipeline models (etc/examples/ocr.yaml, docs/ocr.md) ----------------------------------------------------
def write_ocr_models():
    """The three PP-OCR models rapidocr_onnxruntime ships, as models/ocr_det, models/ocr_cls and models/ocr_rec:
    PP-OCRv4 detection and recognition (its character list is in the model's metadata) and the mobile v2 direction
    classifier. Copied, not converted, so the kernel's /v1/parse and rapidocr run the same files."""
    import rapidocr_onnxruntime
    base = os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models")
    for name, file in (("ocr_det", "ch_PP-OCRv4_det_infer.onnx"), ("ocr_cls", "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
                       ("ocr_rec", "ch_PP-OCRv4_rec_infer.onnx")):
        source = os.path.join(base, file)
        if not os.path.exists(source):
            sys.exit(f"make_models: {file} not found under {base}; install it with `pip install rapidocr-onnxruntime`")
        with open(source, "rb") as f:
            write_if_changed(os.path.join(MODELS, name, "1", "model.onnx"), f.read(), f"PP-OCR {name} (from {source})")
# ---- end of the OCR pipeline models ------------------------------------------------------------------------------


def main():
    write_if_changed(os.path.join(MODELS, "demo", "1", "model.onnx"), demo_model_bytes(), "demo MLP")
    source = find_ppocr_classifier()
    with open(source, "rb") as f:
        write_if_changed(os.path.join(MODELS, "ppocr_cls", "1", "model.onnx"), f.read(),
                         f"PP-OCR classifier (from {source})")
    write_ocr_models()  # OCR pipeline models: see write_ocr_models


if __name__ == "__main__":
    main()
