"""The model server of the nginx → uWSGI → Flask stack: a Flask app running the model with onnxruntime, as uWSGI serves a Flask app.

It answers the same Open Inference Protocol JSON request as the kernel (`POST /v2/models/<name>/infer`), so both
sides get the same bytes. The model comes from the environment: FLASK_MODEL_NAME, FLASK_MODEL_PATH.
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
INPUT = session.get_inputs()[0].name
OUTPUTS = [output.name for output in session.get_outputs()]

app = Flask(__name__)


@app.route(f"/v2/models/{MODEL_NAME}/infer", methods=["POST"])
def infer():
    body = request.get_json(force=True)
    tensor = body["inputs"][0]
    array = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    results = session.run(OUTPUTS, {INPUT: array})
    return jsonify({"model_name": MODEL_NAME, "model_version": "1",
                    "outputs": [{"name": name, "datatype": "FP32", "shape": list(result.shape),
                                 "data": result.ravel().tolist()} for name, result in zip(OUTPUTS, results)]})
