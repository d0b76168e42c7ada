#!/usr/bin/env bash
# `make bench`: every benchmark in one run; the results replace docs/performance.md's measured sections.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KERNEL_BIN:=.build/release/kernel}"
export KERNEL_BIN
out=$(mktemp)
{
    echo "# Performance"
    echo
    echo "Measured by \`make bench\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
    echo "kernel $($KERNEL_BIN --version) release build. Every comparison runs both sides in the same run, one after the"
    echo "other, so ratios are what to read: absolute figures move with the machine's other load."
    echo
    python3 bench/http/run.py
    # The edge in front of workers: uwsgi_pass (kernel workers, uWSGI + Flask) and proxy_pass with keepalive.
    python3 bench/uwsgi/edge.py
    python3 bench/http/proxy.py
    # The deployment: memory against nginx + uWSGI + Flask, time to the first answer, throughput by `processes:`.
    python3 bench/processes/run.py
    for extra in bench/uwsgi/run.sh bench/inference/run.sh bench/ocr/run.sh; do
        if [ -x "$extra" ]; then "$extra"; echo; fi
    done
    if [ -f docs/performance-notes.md ]; then cat docs/performance-notes.md; fi
} | tee "$out"
mv "$out" docs/performance.md
