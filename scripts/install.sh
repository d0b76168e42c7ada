#!/usr/bin/env bash
# `make install`: the release build and its files where a package puts them, under $DESTDIR$PREFIX:
#   bin/kernel                              the binary (Swift runtime linked in: no toolchain needed to run it;
#                                           debug information stripped)
#   lib/kernel/libKernelOCRVision.so        the OCR pipelines' vision library (OpenCV), which the kernel opens from
#                                           <bin>/../lib/kernel only when a configuration has pipelines
#   etc/kernel/kernel.yaml                  the configuration (kept when already there, as nginx's install does;
#   etc/kernel/kernel.yaml.default          the shipped one is always there as .default), edge.yaml, worker.yaml
#   etc/kernel/examples/                    the example configurations
#   share/kernel/models/demo/               the demo model the configuration serves (when made: scripts/setup.sh)
#   share/doc/kernel/                       README and docs/, with the Kubernetes manifests under examples/
#   lib/systemd/system/kernel.service       the systemd unit
# The repository's configurations name the pid file and the models relatively (../run, ../models); installed,
# they name RUNDIR (/run/kernel, the unit's RuntimeDirectory) and DATADIR/kernel/models. The unit's
# /usr/local paths become BINDIR, SYSCONFDIR and DATADIR.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
BINDIR=${BINDIR:-$PREFIX/bin}
SYSCONFDIR=${SYSCONFDIR:-$PREFIX/etc}
DATADIR=${DATADIR:-$PREFIX/share}
DOCDIR=${DOCDIR:-$DATADIR/doc/kernel}
SYSTEMD_UNIT_DIR=${SYSTEMD_UNIT_DIR:-$PREFIX/lib/systemd/system}
RUNDIR=${RUNDIR:-/run/kernel}
BIN=${KERNEL_RELEASE_BIN:-.build/release/kernel}
VISION_LIBRARY=${KERNEL_RELEASE_VISION_LIBRARY:-$(dirname "$BIN")/libKernelOCRVision.so}
# The kernel looks for the vision library in <its directory>/../lib/kernel (Modules/Inference/Pipeline/
# OCRVisionLibrary.swift): LIBDIR stays PREFIX/lib relative to BINDIR.
KERNEL_LIBDIR=${KERNEL_LIBDIR:-$(dirname "$BINDIR")/lib/kernel}

[ -x "$BIN" ] || { echo "install: $BIN is missing: run 'make release' first" >&2; exit 1; }
[ -f "$VISION_LIBRARY" ] || { echo "install: $VISION_LIBRARY is missing: run 'make release' first" >&2; exit 1; }

config_dir=$DESTDIR$SYSCONFDIR/kernel
# Installed configurations: repository-relative run/ and models/ paths made absolute.
installed_yaml() {
    sed -E -e "s#(\.\./)+run/#$RUNDIR/#g" -e "s#(\.\./)+models/#$DATADIR/kernel/models/#g" "$1"
}

install -d "$DESTDIR$BINDIR" "$DESTDIR$KERNEL_LIBDIR" "$config_dir/examples" "$DESTDIR$DOCDIR/examples/kubernetes" "$DESTDIR$SYSTEMD_UNIT_DIR"
install -m 0755 "$BIN" "$DESTDIR$BINDIR/kernel"
# Debug information off (35 MB instead of 55); the symbol table stays, for the backtraces of a crash.
if command -v "${STRIP:-strip}" >/dev/null 2>&1; then "${STRIP:-strip}" --strip-debug "$DESTDIR$BINDIR/kernel"; fi
install -m 0644 "$VISION_LIBRARY" "$DESTDIR$KERNEL_LIBDIR/libKernelOCRVision.so"
if command -v "${STRIP:-strip}" >/dev/null 2>&1; then
    "${STRIP:-strip}" --strip-debug "$DESTDIR$KERNEL_LIBDIR/libKernelOCRVision.so"
fi

for file in etc/kernel.yaml etc/edge.yaml etc/worker.yaml; do
    name=$(basename "$file")
    installed_yaml "$file" >"$config_dir/$name.default"
    chmod 0644 "$config_dir/$name.default"
    if [ ! -e "$config_dir/$name" ]; then cp -p "$config_dir/$name.default" "$config_dir/$name"; fi
done
for file in etc/examples/*; do
    case "$file" in
        *.yaml) installed_yaml "$file" >"$config_dir/examples/$(basename "$file")" ;;
        *) cp "$file" "$config_dir/examples/" ;;
    esac
    chmod 0644 "$config_dir/examples/$(basename "$file")"
done

if [ -f models/demo/1/model.onnx ]; then
    install -d "$DESTDIR$DATADIR/kernel/models/demo/1"
    install -m 0644 models/demo/1/model.onnx "$DESTDIR$DATADIR/kernel/models/demo/1/model.onnx"
else
    echo "install: models/demo is missing (scripts/setup.sh makes it): the configuration's demo model will not load" >&2
fi
# The OCR pipeline's models (etc/examples/ocr.yaml and /v1/parse in kernel.yaml).
for model in ocr_det ocr_cls ocr_rec; do
    if [ -f "models/$model/1/model.onnx" ]; then
        install -d "$DESTDIR$DATADIR/kernel/models/$model/1"
        install -m 0644 "models/$model/1/model.onnx" "$DESTDIR$DATADIR/kernel/models/$model/1/model.onnx"
    else
        echo "install: models/$model is missing (scripts/setup.sh makes it): the OCR pipeline will not load it" >&2
    fi
done

install -m 0644 README.md "$DESTDIR$DOCDIR/README.md"
for file in docs/*; do
    [ -f "$file" ] && install -m 0644 "$file" "$DESTDIR$DOCDIR/$(basename "$file")"
done
install -m 0644 etc/deploy/kubernetes/*.yaml "$DESTDIR$DOCDIR/examples/kubernetes/"

sed -e "s#/usr/local/bin#$BINDIR#g" -e "s#/usr/local/etc#$SYSCONFDIR#g" -e "s#/usr/local/share#$DATADIR#g" \
    etc/deploy/kernel.service >"$DESTDIR$SYSTEMD_UNIT_DIR/kernel.service"
chmod 0644 "$DESTDIR$SYSTEMD_UNIT_DIR/kernel.service"

echo "install: $DESTDIR$BINDIR/kernel, $DESTDIR$KERNEL_LIBDIR/libKernelOCRVision.so, $config_dir, $DESTDIR$DOCDIR, $DESTDIR$SYSTEMD_UNIT_DIR/kernel.service"
