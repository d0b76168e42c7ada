#!/usr/bin/env bash
# Prints the path of the ONNX Runtime shared library that the `onnxruntime` PyPI wheel installed.
set -euo pipefail
"${PYTHON:-python3}" - <<'PY'
import glob, os, onnxruntime
capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
found = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")))
if not found:
    raise SystemExit("libonnxruntime.so not found in " + capi)
print(found[-1])
PY
