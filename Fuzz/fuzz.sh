#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer and runs each for a bounded time, one after the other.
#
#   FUZZ_SECONDS   seconds per target (default 60)
#   FUZZ_RUNS      stop a target after this many executions instead (e.g. 10000000), when set
#   FUZZ_TARGETS   the targets to run (default: all five)
#   FUZZ_SANITIZE  the -sanitize= list (default fuzzer; fuzzer,address adds AddressSanitizer, in .build-asan/)
#
# Seeds come from the test vectors (make_seeds.py); the corpus grows in Fuzz/corpus/<target>/ and findings
# (crash-*, leak-*, timeout-*, oom-*) land in Fuzz/findings/<target>/, with each run's log beside them.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-"HTTPRequestFuzz HTTPResponseFuzz InferenceCodecFuzz ConfigLoaderFuzz UWSGIDecoderFuzz"}
sanitize=${FUZZ_SANITIZE:-fuzzer}
scratch=.build
[ "$sanitize" = fuzzer ] || scratch=.build-asan
# -enable-testing: the targets reach the internal parsers through `@testable import`.
flags=(-c release --scratch-path "$scratch" -Xswiftc "-sanitize=$sanitize" -Xswiftc -parse-as-library -Xswiftc -enable-testing)
swift build "${flags[@]}"
bin=$(swift build "${flags[@]}" --show-bin-path)
python3 make_seeds.py

# Swift's backtracer would take the trap before libFuzzer, which then writes no crash-* file.
export SWIFT_BACKTRACE=enable=no
summary=()
for target in $targets; do
    mkdir -p "corpus/$target" "findings/$target"
    bound=(-max_total_time="$seconds")
    [ -n "${FUZZ_RUNS:-}" ] && bound=(-runs="$FUZZ_RUNS")
    echo "== $target (${bound[*]})"
    log="findings/$target/last-run.log"
    status=0
    "$bin/$target" "corpus/$target" "${bound[@]}" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="findings/$target/" -print_final_stats=1 >"$log" 2>&1 || status=$?
    tail -12 "$log"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+' || true)
    case $status in
        0) result="no finding" ;;
        72) result="interrupted" ;;  # libFuzzer's -interrupted_exitcode
        *) result="FINDING (exit $status), see $log" ;;
    esac
    summary+=("$target: ${execs:-?} execs, ${rate:-?} exec/s, ${last:-no stats}, $result")
done
echo "== summary"
printf '%s\n' "${summary[@]}"
for line in "${summary[@]}"; do
    case $line in *FINDING*) exit 1 ;; esac
done
