"""The Flask app behind uWSGI in the interop tests and the uwsgi benchmark (`uwsgi --wsgi-file app.py --callable app`)."""
import hashlib
import json

from flask import Flask, Response, request

app = Flask(__name__)

# WSGI environ keys that describe the request as the uwsgi peer sent it.
ENVIRON_KEYS = ["REQUEST_METHOD", "REQUEST_URI", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL", "CONTENT_TYPE",
                "CONTENT_LENGTH", "REMOTE_ADDR", "REMOTE_PORT", "SERVER_NAME", "SERVER_PORT", "REQUEST_SCHEME",
                "HTTPS", "SCRIPT_NAME", "DOCUMENT_ROOT", "wsgi.url_scheme"]


@app.route("/parse", methods=["GET", "POST"])
@app.route("/v1/parse", methods=["GET", "POST"])
def parse():
    """The benchmark's tiny route: a fixed JSON answer."""
    return Response('{"status":"ok"}', mimetype="application/json")


@app.route("/status/<int:code>", methods=["GET", "POST"])
@app.route("/app/status/<int:code>", methods=["GET", "POST"])
def status(code):
    return Response(f"status {code} from the app", status=code, mimetype="text/plain")


@app.route("/interim")
@app.route("/app/interim")
def interim():
    """100 Continue and 103 Early Hints ahead of the final answer: `uwsgi.send` writes raw bytes to the connection
    before uWSGI writes the response's own status line."""
    import uwsgi  # only inside uWSGI
    uwsgi.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    uwsgi.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
    return Response("the final answer", status=201, mimetype="text/plain")


@app.route("/stream")
@app.route("/app/stream")
def stream():
    """A generator: uWSGI sends it without Content-Length, delimited by the end of the connection."""
    count = int(request.args.get("parts", "1000"))
    return Response((f"part {i}\n" for i in range(count)), mimetype="text/plain")


@app.route("/big-stream")
@app.route("/app/big-stream")
def big_stream():
    """`mib` MiB as a generator of 64 KiB blocks (no Content-Length): what a slow client must not hold a worker for."""
    blocks = int(request.args.get("mib", "20")) * 16
    block = b"k" * 65536
    return Response((block for _ in range(blocks)), mimetype="application/octet-stream")


@app.route("/raw", methods=["POST", "PUT"])
@app.route("/app/raw", methods=["POST", "PUT"])
def raw():
    """Echoes the body bytes."""
    return Response(request.get_data(), mimetype="application/octet-stream")


@app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
@app.route("/<path:path>", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def describe(path):
    """Describes the request as the app saw it: environ, headers (as hex of their bytes), body digest."""
    body = request.get_data()
    environ = {key: str(request.environ.get(key)) for key in ENVIRON_KEYS if key in request.environ}
    headers = {key[5:]: value.encode("latin-1").hex() for key, value in request.environ.items() if key.startswith("HTTP_")}
    answer = {"environ": environ, "headers": headers, "body_length": len(body),
              "body_sha256": hashlib.sha256(body).hexdigest(), "path": request.path, "args": request.args.to_dict(flat=False)}
    response = Response(json.dumps(answer), mimetype="application/json")
    response.headers["X-App"] = "flask"
    response.headers["X-Reply-Latin1"] = "caf\u00e9"
    return response
