#!/usr/bin/env bash
# Installs what the kernel, its tests and its benchmarks need, skipping what is already there:
# Debian packages (libyaml, PCRE2, nginx, wrk, systemd), Python packages from PyPI (ONNX Runtime and the test peers),
# and the demo and test models.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# tmux: the stats test reads uwsgitop's screen through it; chromium: the status page test; systemd:
# `systemd-analyze verify` checks the unit in etc/deploy (tests only; nothing here runs under systemd).
# OpenCV (only core, imgproc, imgcodecs) and Clipper: the OCR pipeline's vision shim (Sources/COCRVision);
# fonts-noto-cjk and fonts-dejavu: the OCR test images (scripts/ocr/make_images.py).
# zlib1g-dev: gzip and deflate bodies of the inference protocol (Sources/CZlib).
for package in libyaml-dev libpcre2-dev zlib1g-dev nginx-light wrk tmux chromium systemd \
    libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev libpolyclipping-dev fonts-noto-cjk fonts-dejavu; do
    dpkg -s "$package" >/dev/null 2>&1 || need_apt+=("$package")
done
if ((${#need_apt[@]})); then
    echo "setup: apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# nginx-light's package starts a system nginx on port 80; the kernel's tests start their own.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
# promtool (`promtool check metrics`) checks the kernel's /metrics; it comes with Debian's prometheus package, whose
# own server (and, recommended, node exporter) the tests do not need.
if ! command -v promtool >/dev/null 2>&1; then
    echo "setup: apt-get install prometheus (for promtool)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
fi

PYTHON=${PYTHON:-python3}
need_pip=()
check() { "$PYTHON" -c "import $1" >/dev/null 2>&1 || need_pip+=("$2"); }
check onnxruntime onnxruntime
check onnx onnx
check numpy numpy
check tritonclient.http "tritonclient[http]"
check flask flask
check pytest pytest
check requests requests
# A DNS server on loopback for the upstream `resolve` tests, with records changed while they run.
check dnslib dnslib
check rapidocr_onnxruntime rapidocr-onnxruntime
# Pillow draws the OCR test images (scripts/ocr/make_images.py).
check PIL pillow
# A WebSocket echo server and client for the proxy_pass Upgrade tunnel test.
check websockets.sync.client websockets
# The Kubernetes schemas, offline, for the manifests in etc/deploy/kubernetes.
check kubernetes_validate kubernetes-validate
check yaml pyyaml
command -v uwsgi >/dev/null 2>&1 || need_pip+=(uwsgi)
# uwsgitop, the uWSGI stats reader the stats server is checked with (a script, no module to import).
"$PYTHON" -c "import importlib.metadata as m; m.distribution('uwsgitop')" >/dev/null 2>&1 || need_pip+=(uwsgitop)
if ((${#need_pip[@]})); then
    echo "setup: pip install ${need_pip[*]}"
    "$PYTHON" -m pip install -q --disable-pip-version-check "${need_pip[@]}"
fi

"$PYTHON" scripts/models/make_models.py
