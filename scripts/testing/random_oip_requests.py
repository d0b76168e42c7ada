#!/usr/bin/env python3
"""Random Open Inference Protocol requests and the tensor bytes Python's `json` + numpy read from them.

    random_oip_requests.py --seed 7 --count 400 OUT.jsonl

Each line of OUT.jsonl is one request of one input: the model's declaration of it (`name`, `datatype`, `shape`
with -1 for every dimension), the request body (base64; JSON, or JSON followed by binary data with
`header_length` set), and the bytes the input must decode to (base64): `np.array(json.loads(body)[...]["data"],
dtype).tobytes()` for JSON data (or `expected_error`, a part of the 400's message, for FP16 and BF16,
which Triton takes as binary data only), the bytes sent for binary data, Triton's serialisation (4-byte little-endian
length, then the UTF-8 bytes) for BYTES, the exactly rounded float32 of each text for hand-written FP32 texts
near midpoints (numpy rounds those through a double). The kernel's decoder test (Tests/InferenceTests) reads the
file and
compares. Every datatype, ranks 1 to 4 (empty dimensions included), flat and nested `data`, and the number forms
Python writes (shortest round-trip floats, NaN, Infinity, -0.0, integer extremes).
"""
import argparse
import base64
import decimal
import json
import random
import struct
from fractions import Fraction

import numpy as np

NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
         "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
         "FP32": np.float32, "FP64": np.float64}
JSON_TYPES = [name for name in NUMPY if name != "FP16"] + ["BYTES"]
BINARY_TYPES = list(NUMPY) + ["BF16", "BYTES"]


def random_shape(rng):
    rank = rng.choice([1, 1, 2, 2, 3, 4])
    shape = [rng.choice([1, 1, 2, 3, 4, 5, 7]) for _ in range(rank)]
    if rng.random() < 0.05:
        shape[rng.randrange(rank)] = 0
    return shape


def random_float(rng, dtype):
    roll = rng.random()
    if roll < 0.03:
        return rng.choice([float("nan"), float("inf"), float("-inf"), -0.0, 0.0])
    if roll < 0.2:
        return float(rng.randint(-1000, 1000))
    info = np.finfo(dtype)
    magnitude = 10.0 ** rng.uniform(np.log10(float(info.tiny)) + 1, np.log10(float(info.max)) - 1) \
        if rng.random() < 0.3 else rng.uniform(0, 10)
    # The value of the element type, written as Python writes the float it is (shortest round trip of a double).
    return float(dtype(rng.choice([-1, 1]) * magnitude))


def random_string(rng):
    alphabet = ["a", "Z", "0", " ", "\"", "\\", "/", "\n", "\t", "\x00", "\x1f", "\u00e9", "\u6f22", "\U0001F600"]
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 2, 5, 17])))


def random_values(rng, datatype, count):
    if datatype == "BOOL":
        return [rng.random() < 0.5 for _ in range(count)]
    if datatype == "BYTES":
        return [random_string(rng) for _ in range(count)]
    dtype = NUMPY.get(datatype, np.float32)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return [rng.choice([int(info.min), int(info.max), 0, rng.randint(int(info.min), int(info.max))])
                for _ in range(count)]
    return [random_float(rng, dtype) for _ in range(count)]


def serialise_strings(values):
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def nest(values, shape):
    """`values` (row-major) as nested lists of `shape`."""
    if len(shape) <= 1:
        return list(values)
    step = len(values) // shape[0] if shape[0] else 0
    return [nest(values[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def nearest_float32(text):
    """The float32 nearest to the decimal `text` (ties to even), exactly: numpy's own conversion goes through a
    double and may round twice."""
    exact = Fraction(text)
    guess = np.float32(float(exact))
    candidates = [np.nextafter(guess, np.float32("-inf")), guess, np.nextafter(guess, np.float32("inf"))]
    def key(candidate):
        return (abs(Fraction(float(candidate)) - exact), int(np.array(candidate).view(np.uint32)) & 1)
    return min(candidates, key=key)


def hard_float_texts(rng, count):
    """Decimal texts of 9 to 19 significant digits at or next to the midpoint between two neighbouring float32s: where
    a conversion that rounds twice, or too loosely, goes wrong."""
    texts = []
    for _ in range(count):
        value = np.float32(rng.choice([-1, 1]) * 10.0 ** rng.uniform(-30, 30))
        neighbour = np.nextafter(value, np.float32("inf"))
        midpoint = (Fraction(float(value)) + Fraction(float(neighbour))) / 2
        digits = rng.choice([9, 12, 15, 16, 17, 18, 19])
        with decimal.localcontext() as context:
            context.prec = digits
            context.rounding = rng.choice([decimal.ROUND_HALF_EVEN, decimal.ROUND_UP, decimal.ROUND_DOWN])
            text = str(+(decimal.Decimal(midpoint.numerator) / decimal.Decimal(midpoint.denominator)))
        texts.append(text.replace("E", "e"))
    return texts


def case(rng):
    if rng.random() < 0.05:
        # FP32 texts as written by hand or by other writers, not Python's shortest round trip of a float32: the
        # expected bytes are the exactly rounded float32 of each text.
        texts = hard_float_texts(rng, 16)
        text = '{"inputs": [{"name": "x", "shape": [16], "datatype": "FP32", "data": [' + ", ".join(texts) + "]}]}"
        expected = np.array([nearest_float32(t) for t in texts], dtype=np.float32).tobytes()
        return {"spec": {"name": "x", "datatype": "FP32", "shape": [-1]}, "body": base64.b64encode(text.encode()).decode(),
                "header_length": None, "expected": base64.b64encode(expected).decode()}
    binary = rng.random() < 0.3
    datatype = rng.choice(BINARY_TYPES if binary else JSON_TYPES)
    shape = random_shape(rng)
    count = int(np.prod(shape))
    values = random_values(rng, datatype, count)
    spec = {"name": "x", "datatype": datatype, "shape": [-1] * len(shape)}
    item = {"name": "x", "shape": shape, "datatype": datatype}
    if binary:
        if datatype == "BYTES":
            data = serialise_strings(values)
        elif datatype == "BF16":
            data = (np.array(values, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            data = np.array(values, dtype=NUMPY[datatype]).tobytes()
        item["parameters"] = {"binary_data_size": len(data)}
        header = json.dumps({"inputs": [item]}).encode()
        return {"spec": spec, "body": base64.b64encode(header + data).decode(), "header_length": len(header),
                "expected": base64.b64encode(data).decode()}
    if rng.random() < 0.03:
        half = rng.choice(["FP16", "BF16"])
        text = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": half, "data": [1.5]}]})
        return {"spec": {"name": "x", "datatype": half, "shape": [-1]}, "body": base64.b64encode(text.encode()).decode(),
                "header_length": None, "expected_error": f"receiving {half} data via JSON is not supported"}
    nested = rng.random() < 0.5
    item["data"] = nest(values, shape) if nested else values
    # Members in any order: `data` before `datatype` and `shape` must decode the same.
    if rng.random() < 0.2:
        item = {"data": item["data"], "name": "x", "datatype": datatype, "shape": shape}
    text = json.dumps({"inputs": [item]}, indent=rng.choice([None, 1]))
    data = json.loads(text)["inputs"][0]["data"]
    if datatype == "BYTES":
        flat = np.array(data, dtype=np.object_).reshape(-1).tolist() if count else []
        expected = serialise_strings(flat)
    else:
        expected = np.array(data, dtype=NUMPY[datatype]).reshape(-1).tobytes()
    return {"spec": spec, "body": base64.b64encode(text.encode()).decode(), "header_length": None,
            "expected": base64.b64encode(expected).decode()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("out")
    arguments = parser.parse_args()
    rng = random.Random(arguments.seed)
    with open(arguments.out, "w") as f:
        for _ in range(arguments.count):
            f.write(json.dumps(case(rng)) + "\n")


if __name__ == "__main__":
    main()
