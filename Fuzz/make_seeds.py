#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets from the test vectors: Fuzz/corpus/<target>/seed-*.

The string literals of the XCTest files (plain "...", raw #"..."# and multi-line \"\"\") and the byte strings of
the hostile-input system tests are read and sorted by what they hold: HTTP requests, uwsgi answers, inference
requests, YAML configurations; the shipped configurations (etc/) are YAML seeds too. Literals with interpolation
are skipped. Each seed gets the control bytes its target reads first (see the targets' comments), once fed whole
and once in small reads.
"""
import ast
import hashlib
import os
import re
import struct
import sys

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
TESTS = os.path.join(ROOT, "Tests")

ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\0", "\\": "\\", '"': '"', "'": "'"}


def unescape(body):
    """The value of a Swift string literal's body (non-raw), or None when it interpolates."""
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        n = body[i + 1] if i + 1 < len(body) else ""
        if n == "(":
            return None
        if n == "u" and body[i + 2:i + 3] == "{":
            end = body.index("}", i)
            out.append(chr(int(body[i + 3:end], 16)))
            i = end + 1
            continue
        if n == "\n":  # a line continuation in a multi-line literal
            i += 2
            continue
        out.append(ESCAPES.get(n, n))
        i += 2
    return "".join(out)


def swift_literals(text):
    """Every string literal of a Swift file."""
    literals = []
    pattern = re.compile(r'(#*)("""|")')
    i = 0
    while True:
        m = pattern.search(text, i)
        if not m:
            return literals
        hashes, quote = m.group(1), m.group(2)
        start = m.end()
        close = quote + hashes
        end = text.find(close, start)
        if end < 0:
            return literals
        body = text[start:end]
        i = end + len(close)
        if quote == '"""':
            lines = body.split("\n")[1:]  # the opening line ends at the delimiter
            indent = len(lines[-1]) if lines and not lines[-1].strip() else 0
            body = "\n".join(line[indent:] for line in lines[:-1])
        if hashes:
            if "\\" + hashes + "(" in body:
                continue
            value = body
            for key, char in ESCAPES.items():
                value = value.replace("\\" + hashes + key, char)
        else:
            value = unescape(body)
            if value is None:
                continue
        literals.append(value.encode("utf-8"))


def python_bytes(text):
    """Every bytes literal (b"...") of a Python file."""
    found = []
    for m in re.finditer(r'\bb("(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\')', text):
        try:
            found.append(ast.literal_eval("b" + m.group(1)))
        except (ValueError, SyntaxError):
            pass
    return found


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def files(folder, suffix):
    for base, _, names in os.walk(folder):
        for name in sorted(names):
            if name.endswith(suffix):
                yield os.path.join(base, name)


def uwsgi_packet(pairs, body=b""):
    block = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in pairs)
    return b"\x00" + struct.pack("<H", len(block)) + b"\x00" + block + body


def main():
    swift = [lit for path in files(TESTS, ".swift") for lit in swift_literals(read(path))]
    python = [lit for path in files(os.path.join(TESTS, "SystemTests"), ".py") for lit in python_bytes(read(path))]
    methods = re.compile(rb"^(GET|POST|PUT|HEAD|DELETE|OPTIONS|PATCH|CONNECT|TRACE) ")
    http = [lit for lit in swift + python if methods.match(lit)]
    # Requests that need a body to follow: give the test's chunked body again as its own seed too.
    answers = [lit for lit in swift if lit.startswith(b"HTTP/1.") or lit.startswith(b"Status:")]
    inference = [lit for lit in swift if b'"inputs"' in lit]
    yaml = [lit for lit in swift if re.search(rb"^[a-z_]+:( |\n)", lit, re.M) and b"\n" in lit and b'"inputs"' not in lit]
    for path in sorted(files(os.path.join(ROOT, "etc"), ".yaml")):
        with open(path, "rb") as f:
            yaml.append(f.read())
    yaml += [b"include: server.yaml\n", b"include: [server.yaml]\nkernel:\n  error_log: stderr\n",
             b"include: '*.yaml'\n", b"a: &x [1, 2]\nb: *x\n"]
    uwsgi = answers + [
        uwsgi_packet([(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/v1/parse?x=1"), (b"CONTENT_LENGTH", b"5"),
                      (b"HTTP_HOST", b"localhost")], b"hello"),
        uwsgi_packet([(b"REQUEST_METHOD", b"GET"), (b"PATH_INFO", b"/")]),
    ]
    demo_row = struct.pack("<64f", *[i / 8 for i in range(64)])
    binary = [
        (b'{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","parameters":{"binary_data_size":256}}],'
         b'"parameters":{"binary_data_output":true}}', demo_row),
    ]

    written = {}
    def put(target, data):
        folder = os.path.join(FUZZ, "corpus", target)
        os.makedirs(folder, exist_ok=True)
        name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        written[target] = written.get(target, 0) + 1

    for lit in http:
        put("HTTPRequestFuzz", b"\x07\x00" + lit)
        put("HTTPRequestFuzz", b"\x03\x5a" + lit)
    for lit in answers:
        put("HTTPResponseFuzz", b"\x07\x00\x00" + lit)
        put("HTTPResponseFuzz", b"\x02\x33\x02" + lit)
    for lit in uwsgi:
        put("UWSGIDecoderFuzz", b"\x07\x00\x00" + lit)
        put("UWSGIDecoderFuzz", b"\x02\x33\x00" + lit)
    # Model 0 is demo, 1 ppocr_cls, 2 the codec tests' model; then one per element type.
    for lit in inference:
        for model in (0, 1, 2):
            put("InferenceCodecFuzz", bytes([model, 0, 0]) + lit)
    for json, tail in binary:
        length = len(json)
        put("InferenceCodecFuzz", bytes([0, 1 | ((length % 4) << 6), length // 4]) + json + tail)
    for lit in yaml:
        if b"/" not in lit and b"\\" not in lit:
            put("ConfigLoaderFuzz", lit)
    for target in sorted(written):
        print(f"make_seeds: {written[target]} seeds for {target}")
    missing = {"HTTPRequestFuzz", "HTTPResponseFuzz", "UWSGIDecoderFuzz", "InferenceCodecFuzz", "ConfigLoaderFuzz"} - set(written)
    if missing:
        sys.exit(f"make_seeds: no seeds for {sorted(missing)}")


if __name__ == "__main__":
    main()
