#!/usr/bin/env bash
# nginx -> kernel worker (uwsgi) vs nginx -> uWSGI + Flask, same run; prints a markdown section (bench/run.sh writes it to docs/performance.md).
# The kernel binary comes from KERNEL_BIN (a release build: `swift build -c release`).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${KERNEL_BIN:=.build/release/kernel}"
export KERNEL_BIN
exec python3 bench/uwsgi/run.py
