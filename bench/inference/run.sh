#!/usr/bin/env bash
# Kernel vs the seed stack (nginx → uWSGI → Flask + onnxruntime) on the demo MLP and the PP-OCR classifier.
# KERNEL_BIN: the release binary (default .build/release/kernel); KernelModelBench is taken from the same directory.
# Prints the table and appends it, with the commands that made it, to docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${KERNEL_BIN:=.build/release/kernel}"
export KERNEL_BIN
if [ -z "${KERNEL_ONNXRUNTIME_LIBRARY:-}" ]; then
    KERNEL_ONNXRUNTIME_LIBRARY=$(scripts/onnxruntime-library.sh)
    export KERNEL_ONNXRUNTIME_LIBRARY
fi
python3 scripts/models/make_models.py >/dev/null
table=$(python3 bench/inference/run.py)
echo "$table"
{
    echo
    echo "$table"
    echo
    echo "Commands: \`swift build -c release && KERNEL_BIN=$KERNEL_BIN bench/inference/run.sh\`"
    echo "(BENCH_DURATION=${BENCH_DURATION:-10s}, BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-1,8,32,128}; run $(date -u +%Y-%m-%dT%H:%MZ))."
} >> docs/performance.md
