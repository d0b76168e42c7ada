#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer and runs each for a bounded time (FUZZ_SECONDS, default 60).
# Findings (crash-*, leak-*, timeout-*) land in Fuzz/findings/; the corpus grows in Fuzz/corpus/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-60}
swift build -c release -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library --product UWSGIDecoderFuzz
bin=$(swift build -c release -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library --show-bin-path)
mkdir -p corpus/UWSGIDecoderFuzz findings
# Seeds: a valid nginx-shaped request and a uWSGI-shaped answer.
python3 - corpus/UWSGIDecoderFuzz <<'PY'
import struct, sys, os
out = sys.argv[1]
def packet(pairs, body=b""):
    block = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in pairs)
    return b"\x00" + struct.pack("<H", len(block)) + b"\x00" + block + body
seeds = {
    "request": packet([(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/v1/parse?x=1"), (b"CONTENT_LENGTH", b"5"),
                       (b"HTTP_HOST", b"localhost")], b"hello"),
    "response": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    "cgi": b"Status: 404 Not Found\r\nContent-Length: 0\r\n\r\n",
}
for name, data in seeds.items():
    with open(os.path.join(out, "seed-" + name), "wb") as f:
        f.write(data)
PY
"$bin/UWSGIDecoderFuzz" corpus/UWSGIDecoderFuzz -max_total_time="$seconds" -max_len=8192 -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix=findings/ -print_final_stats=1 2>&1 | tee findings/last-run.log | tail -25
