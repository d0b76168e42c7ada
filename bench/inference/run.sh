#!/usr/bin/env bash
# Kernel vs nginx → uWSGI → Flask (nginx → uWSGI → Flask + onnxruntime) on the demo MLP and the PP-OCR classifier.
# KERNEL_BIN: the release binary (default .build/release/kernel); KernelModelBench is taken from the same directory.
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
python3 bench/inference/run.py
echo
echo "Commands: \`make bench\` (bench/inference/run.sh, BENCH_DURATION=${BENCH_DURATION:-10s}, BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-1,8,32,128}; run $(date -u +%Y-%m-%dT%H:%MZ))."
