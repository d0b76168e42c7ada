#!/usr/bin/env bash
# The serving path in one run of alternating rounds: kernel inference vs the same kernel's `return 200`, vs the
# in-process ceiling (KernelModelBench, binary tensors and JSON), vs nginx → uWSGI → Flask + onnxruntime; on the demo
# MLP, the PP-OCR classifier and the BYTES text model. See bench/inference/run.py for what each side is and how it
# is checked.
# KERNEL_BIN: the release binary (default .build/release/kernel); KernelModelBench is taken from the same directory.
# BENCH_DURATION (10s), BENCH_ROUNDS (3), BENCH_CONNECTIONS (32), BENCH_MODELS, BENCH_SIDES; BENCH_QUICK=1 for a
# short try (3s, 2 rounds).
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
quick=${BENCH_QUICK:-}
if [ -n "$quick" ] && [ "$quick" != 0 ]; then duration=3s rounds=2; else duration=10s rounds=3; fi
echo
echo "Commands: \`make bench\` (bench/inference/run.sh, BENCH_DURATION=${BENCH_DURATION:-$duration}, BENCH_ROUNDS=${BENCH_ROUNDS:-$rounds}, BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-32}${BENCH_MODELS:+, BENCH_MODELS=$BENCH_MODELS}${BENCH_SIDES:+, BENCH_SIDES=$BENCH_SIDES}; run $(date -u +%Y-%m-%dT%H:%MZ))."
