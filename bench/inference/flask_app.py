"""The model server of the nginx → uWSGI → Flask stack: a Flask app running the model with onnxruntime, as uWSGI serves a Flask app.

It answers the same Open Inference Protocol JSON request as the kernel (`POST /v2/models/<name>/infer`), so both
sides get the same bytes: numeric tensors become numpy arrays of their datatype, BYTES tensors numpy object arrays
of `str` (what onnxruntime takes for an ONNX string tensor), and every output of the model is answered. The model
comes from the environment: FLASK_MODEL_NAME, FLASK_MODEL_PATH.

Every answer carries `X-Bench-Backend: flask-onnxruntime pid=<worker pid>`, so the benchmark can check that what
answers behind nginx is this app in one of its own uWSGI's workers, not whatever else holds the port.
"""
import os

import numpy as np
import onnxruntime as ort
from flask import Flask, jsonify, request

MODEL_NAME = os.environ["FLASK_MODEL_NAME"]
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["FLASK_MODEL_PATH"], options, providers=["CPUExecutionProvider"])
OUTPUTS = [output.name for output in session.get_outputs()]
BACKEND = f"flask-onnxruntime pid={os.getpid()}"

# The protocol's datatypes as numpy dtypes (BYTES: Python strings in an object array).
NUMPY_TYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
               "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
               "FP32": np.float32, "FP64": np.float64, "BYTES": object}
DATATYPES = {np.dtype(numpy): name for name, numpy in NUMPY_TYPES.items() if numpy is not object}

app = Flask(__name__)


def to_array(tensor):
    if tensor["datatype"] == "BYTES":
        return np.array(tensor["data"], dtype=object).reshape(tensor["shape"])
    return np.asarray(tensor["data"], dtype=NUMPY_TYPES[tensor["datatype"]]).reshape(tensor["shape"])


def to_json(name, result):
    if result.dtype == object:  # an ONNX string tensor comes back as an object array of str
        return {"name": name, "datatype": "BYTES", "shape": list(result.shape),
                "data": [str(item) for item in result.ravel()]}
    return {"name": name, "datatype": DATATYPES[result.dtype], "shape": list(result.shape),
            "data": result.ravel().tolist()}


@app.route(f"/v2/models/{MODEL_NAME}/infer", methods=["POST"])
def infer():
    body = request.get_json(force=True)
    feeds = {tensor["name"]: to_array(tensor) for tensor in body["inputs"]}
    results = session.run(OUTPUTS, feeds)
    response = jsonify({"model_name": MODEL_NAME, "model_version": "1",
                        "outputs": [to_json(name, result) for name, result in zip(OUTPUTS, results)]})
    response.headers["X-Bench-Backend"] = BACKEND
    return response
