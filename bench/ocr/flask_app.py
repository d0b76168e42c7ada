"""The tutorial's OCR app: Flask behind uWSGI, reading the uploaded image with rapidocr_onnxruntime.

`POST /v1/parse` with a multipart `file` field, as the kernel's /v1/parse takes it; answers the lines as JSON
(box, text, score), the shape of the kernel's answer without its timings."""
from flask import Flask, jsonify, request
from rapidocr_onnxruntime import RapidOCR

engine = RapidOCR()
app = Flask(__name__)


@app.route("/v1/parse", methods=["POST"])
def parse():
    upload = request.files.get("file")
    if upload is None:
        return jsonify({"error": "the form has no \"file\" field"}), 400
    found, _ = engine(upload.read())
    return jsonify({"lines": [{"box": [[float(x), float(y)] for x, y in box], "text": text, "score": float(score)}
                              for box, text, score in (found or [])]})
