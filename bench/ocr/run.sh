#!/usr/bin/env bash
# /v1/parse: the kernel's OCR pipeline vs nginx → uWSGI (master, lazy, 3 workers) → Flask + rapidocr_onnxruntime,
# and vs rapidocr_onnxruntime in one Python process. KERNEL_BIN: the release binary (default .build/release/kernel).
# Prints a markdown section with the commands that made it (bench/run.sh writes docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${KERNEL_BIN:=.build/release/kernel}"
export KERNEL_BIN
if [ -z "${KERNEL_ONNXRUNTIME_LIBRARY:-}" ]; then
    KERNEL_ONNXRUNTIME_LIBRARY=$(scripts/onnxruntime-library.sh)
    export KERNEL_ONNXRUNTIME_LIBRARY
fi
python3 scripts/models/make_models.py >/dev/null
python3 bench/ocr/run.py
echo
echo "Commands: \`make bench\` (bench/ocr/run.sh, BENCH_DURATION=${BENCH_DURATION:-15s}, BENCH_OCR_CONNECTIONS=${BENCH_OCR_CONNECTIONS:-1,8,32}; run $(date -u +%Y-%m-%dT%H:%MZ))."
