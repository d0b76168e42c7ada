# kernel: `make run` sets up and starts the demo, `make test` runs every test, `make bench` measures.
SWIFT ?= swift
PYTHON ?= python3
CONFIG ?= etc/kernel.yaml
RELEASE_BIN := .build/release/kernel
DEBUG_BIN := .build/debug/kernel
# `make install` (PREFIX, DESTDIR as autotools and nginx take them; see scripts/install.sh for the layout).
PREFIX ?= /usr/local
DESTDIR ?=

export KERNEL_ONNXRUNTIME_LIBRARY ?= $(shell scripts/onnxruntime-library.sh 2>/dev/null)

.PHONY: run test setup build release install unit-test system-test stress bench bench-compare profile profile-inference fuzz clean

setup:
	@scripts/setup.sh

build:
	$(SWIFT) build

# The Swift runtime is linked in (--static-swift-stdlib): the binary needs only system libraries (libyaml, PCRE2,
# libstdc++, libm, libc), not the toolchain. ONNX Runtime is opened with dlopen when a model is configured.
release:
	$(SWIFT) build -c release --static-swift-stdlib

install: release
	PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) scripts/install.sh

run: setup release
	@mkdir -p run
	@$(eval KERNEL_ONNXRUNTIME_LIBRARY := $(shell scripts/onnxruntime-library.sh))
	@echo
	@echo "kernel: starting '$(RELEASE_BIN) --role both --config $(CONFIG)' on http://127.0.0.1:8080"
	@echo "  curl http://127.0.0.1:8080/"
	@echo "  curl http://127.0.0.1:8080/v2/models/demo"
	@echo "  curl -X POST http://127.0.0.1:8080/v2/models/demo/infer -H 'Content-Type: application/json' \\"
	@echo "       -d @etc/examples/demo-request.json"
	@echo "  curl -F file=@image.png http://127.0.0.1:8080/v1/parse   (OCR: text, boxes, scores)"
	@echo "  a master process and one worker process per core (kernel.processes: auto):"
	@echo "  status page   http://127.0.0.1:8080/status"
	@echo "  metrics       curl http://127.0.0.1:8080/metrics   (Prometheus text)"
	@echo "  readiness     curl http://127.0.0.1:8080/healthz"
	@echo "  stats server  uwsgitop 127.0.0.1:9191               (uWSGI's stats JSON)"
	@echo "  uwsgi         uwsgi_pass 127.0.0.1:6666;            (from a real nginx)"
	@echo "  stop with Ctrl-C, or '$(RELEASE_BIN) -s quit --config $(CONFIG)' from another shell"
	@echo
	KERNEL_ONNXRUNTIME_LIBRARY=$(KERNEL_ONNXRUNTIME_LIBRARY) exec $(RELEASE_BIN) --role both --config $(CONFIG)

test: setup
	$(SWIFT) build --build-tests
	KERNEL_ONNXRUNTIME_LIBRARY=$$(scripts/onnxruntime-library.sh) $(SWIFT) test --skip-build
	@$(MAKE) --no-print-directory system-test

system-test:
	KERNEL_BIN=$(DEBUG_BIN) KERNEL_ONNXRUNTIME_LIBRARY=$$(scripts/onnxruntime-library.sh) \
		$(PYTHON) -m pytest -q -p no:cacheprovider Tests/SystemTests

# A 5 GiB upload through uwsgi_pass (buffered to a temporary file, and streamed with uwsgi_request_buffering off)
# with the edge's resident-memory growth printed; bounded to 15 minutes. See docs/testing.md.
stress:
	$(SWIFT) build
	KERNEL_BIN=$(DEBUG_BIN) KERNEL_UPLOAD_GIB=5 timeout 900 \
		$(PYTHON) -m pytest -q -s -p no:cacheprovider Tests/SystemTests/test_request_bodies.py -k bounded_memory

bench: setup release
	KERNEL_BIN=$(RELEASE_BIN) KERNEL_ONNXRUNTIME_LIBRARY=$$(scripts/onnxruntime-library.sh) bench/run.sh

# Two kernel builds under the same load, alternating: make bench-compare BEFORE=/path/to/an/older/kernel
bench-compare: setup release
	@test -x "$(BEFORE)" || (echo "make bench-compare BEFORE=/path/to/kernel" && exit 2)
	KERNEL_ONNXRUNTIME_LIBRARY=$$(scripts/onnxruntime-library.sh) $(PYTHON) bench/compare.py $(BEFORE) $(RELEASE_BIN)

# Where the CPU of `return 200 "hello"` goes, kernel vs nginx (perf, root): see docs/performance.md.
profile: setup release
	@command -v perf >/dev/null || (apt-get update -q && apt-get install -y -q linux-perf)
	KERNEL_BIN=$(RELEASE_BIN) bench/http/profile.py

# Where the CPU of an inference goes: the demo MLP at 32 connections against the same process's `return 200` (perf,
# root): see docs/performance.md.
profile-inference: setup release
	@command -v perf >/dev/null || (apt-get update -q && apt-get install -y -q linux-perf)
	KERNEL_BIN=$(RELEASE_BIN) KERNEL_ONNXRUNTIME_LIBRARY=$$(scripts/onnxruntime-library.sh) $(PYTHON) bench/inference/profile.py

fuzz:
	Fuzz/fuzz.sh

clean:
	rm -rf .build run
