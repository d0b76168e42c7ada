#!/usr/bin/env python3
"""Builds the models the kernel's demo, tests and benchmarks serve, deterministically and idempotently.

- models/demo/1/model.onnx: an MLP, FP32 "input" [-1, 64] -> 256 -> ReLU -> 256 -> ReLU -> "output" [-1, 10],
  weights from numpy's seeded generator, written with onnx.helper.
- models/ppocr_cls/1/model.onnx: PP-OCR's text-direction classifier (ch_ppocr_mobile_v2.0_cls_infer.onnx),
  copied from the rapidocr-onnxruntime package; input "x" [-1, 3, 48, 192], output [-1, 2].
- models/strings/1/model.onnx: string identity, BYTES "INPUT0" [-1, -1] -> ONNX Identity -> BYTES "OUTPUT0" [-1, -1];
  batchable along dimension 0.
- models/slow/1/model.onnx: FP32 "x" [-1, 1] -> FP32 "y" [-1, 1] with y == x exactly, after a Loop of
  SLOW_STEPS MatMul+Tanh steps on a constant 256x256 matrix whose start depends on x (so ONNX Runtime cannot fold it
  away) and whose result is added to x times zero. The loop's cost does not depend on the batch: 320 to 700 ms of one
  core per run whatever the batch (calibrated with onnxruntime, 1 intra-op thread, by CPU time; on a loaded machine
  the wall time of a run is longer). Batchable: tests use it for a batch that keeps an instance busy.
- models/text/1/model.onnx: a small deterministic text model for benchmarks, BYTES "text" [-1, 1] ->
  Reshape [-1] -> StringNormalizer (lower case, locale C.UTF-8) -> Reshape [-1, 1] -> BYTES "normalized" [-1, 1],
  and LabelEncoder (ai.onnx.ml) of the normalized string over TEXT_VOCABULARY -> INT64 "label" [-1, 1] (its index
  in the vocabulary, -1 for any other string). StringNormalizer takes only [C] or [1, C], hence the reshapes; its
  locale is C.UTF-8 because glibc has it built in (en_US.UTF-8, its default, needs a locale package).

Every model is built with onnx.helper from fixed values (numpy's seeded generator for weights), so a run writes the
same bytes each time.

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


# One MatMul+Tanh step on 256x256 takes 0.16 to 0.35 ms of one core of the machines this runs on (AMD EPYC, AVX-512,
# onnxruntime 1.32, 1 intra-op thread): 2000 steps make a run of 320 to 700 ms, long enough on the fastest of them for
# the queue tests to fill a queue behind one run.
SLOW_STEPS = 2000
SLOW_WIDTH = 256

TEXT_VOCABULARY = ["kernel", "nginx", "uwsgi", "flask", "onnx", "triton", "kserve", "model",
                   "tensor", "batch", "queue", "string", "bytes", "label", "text", "hello"]


def finished(graph, opsets):
    """The model of `graph` at ir_version 8 (readable by onnxruntime >= 1.14), checked, serialised."""
    import onnx
    from onnx import helper
    model = helper.make_model(graph, producer_name="kernel-make-models",
                              opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def strings_model_bytes():
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "string_identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["batch", "width"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, ["batch", "width"])])
    return finished(graph, [("", OPSET)])


def slow_model_bytes():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    width = SLOW_WIDTH
    weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    square = [width, width]
    step = helper.make_graph(
        [helper.make_node("MatMul", ["state_in", "weight"], ["product"]),
         helper.make_node("Tanh", ["product"], ["state_out"]),  # keeps the state bounded: finite, so 0 * it is 0
         helper.make_node("Identity", ["condition_in"], ["condition_out"])],
        "step",
        [helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
         helper.make_tensor_value_info("condition_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, square)],
        [helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, square)])
    nodes = [
        # The loop's start depends on x: constant folding at session creation cannot run it once for all.
        helper.make_node("ReduceSum", ["x"], ["x_sum"], keepdims=0),
        helper.make_node("Mul", ["x_sum", "zero"], ["x_nothing"]),
        helper.make_node("Add", ["weight", "x_nothing"], ["start"]),
        helper.make_node("Loop", ["steps", "true", "start"], ["final"], body=step),
        # Its result reaches y, as zero: y == x.
        helper.make_node("ReduceSum", ["final"], ["final_sum"], keepdims=0),
        helper.make_node("Mul", ["final_sum", "zero"], ["final_nothing"]),
        helper.make_node("Add", ["x", "final_nothing"], ["y"]),
    ]
    initializers = [numpy_helper.from_array(weight, "weight"),
                    numpy_helper.from_array(np.array(0, np.float32), "zero"),
                    numpy_helper.from_array(np.array(SLOW_STEPS, np.int64), "steps"),
                    numpy_helper.from_array(np.array(True), "true")]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializers)
    return finished(graph, [("", OPSET)])


def text_model_bytes():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Reshape", ["text", "flat_shape"], ["text_flat"]),
        helper.make_node("StringNormalizer", ["text_flat"], ["normalized_flat"],
                         case_change_action="LOWER", is_case_sensitive=0, locale="C.UTF-8"),
        helper.make_node("Reshape", ["normalized_flat", "column_shape"], ["normalized"]),
        helper.make_node("LabelEncoder", ["normalized"], ["label"], domain="ai.onnx.ml",
                         keys_strings=TEXT_VOCABULARY, values_int64s=list(range(len(TEXT_VOCABULARY))),
                         default_int64=-1),
    ]
    initializers = [numpy_helper.from_array(np.array([-1], np.int64), "flat_shape"),
                    numpy_helper.from_array(np.array([-1, 1], np.int64), "column_shape")]
    graph = helper.make_graph(
        nodes, "text",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 1])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["batch", 1]),
         helper.make_tensor_value_info("normalized", TensorProto.STRING, ["batch", 1])],
        initializers)
    return finished(graph, [("", OPSET), ("ai.onnx.ml", 3)])


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
    write_if_changed(os.path.join(MODELS, "strings", "1", "model.onnx"), strings_model_bytes(), "string identity")
    write_if_changed(os.path.join(MODELS, "slow", "1", "model.onnx"), slow_model_bytes(), "slow model")
    write_if_changed(os.path.join(MODELS, "text", "1", "model.onnx"), text_model_bytes(), "text model")
    write_ocr_models()  # OCR pipeline models: see write_ocr_models


if __name__ == "__main__":
    main()
