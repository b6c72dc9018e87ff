#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Installs cargo-fuzz when it is missing, writes the seed corpora with the
# crates' own encoders (fuzz/corpus/<target>/), builds all targets with
# AddressSanitizer on the stable toolchain (RUSTC_BOOTSTRAP=1 allows the -Z
# flags cargo-fuzz passes), and runs each one for SECONDS_PER_TARGET
# (default 20) with a per-input timeout. Exits non-zero when any target
# reports a crash, a panic, a timeout, a leak or running out of memory; the
# input that did it is in fuzz/artifacts/<target>/.
#
# Environment: FUZZ_TIMEOUT (seconds per input, default 10), FUZZ_RSS_MB
# (memory limit, default 2048), FUZZ_JOBS (targets run at once, default 1),
# FUZZ_SANITIZER (address or none; default address).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-20}
shift || true
timeout_s=${FUZZ_TIMEOUT:-10}
rss_mb=${FUZZ_RSS_MB:-2048}
jobs=${FUZZ_JOBS:-1}
sanitizer=${FUZZ_SANITIZER:-address}
all_targets=(frame wal_segment manifest sstable raft_log snapshot_archive raft_message command)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi

export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
start=$(date +%s)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version '^0.13'
fi

# Recovery fsyncs; on a tmpfs that costs nothing. Every run gets its own
# scratch directory, removed at the end.
scratch_root=/tmp
if [ -d /dev/shm ] && [ -w /dev/shm ]; then scratch_root=/dev/shm; fi
scratch=$(mktemp -d "$scratch_root/flashkv-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

cargo run --quiet --locked -p flashkv-fuzz-support --bin seeds -- corpus
if ! cargo fuzz build --sanitizer "$sanitizer" >"$scratch/build.log" 2>&1; then
    cat "$scratch/build.log" >&2
    echo "fuzz: build failed" >&2
    exit 1
fi
echo "fuzz: built in $(( $(date +%s) - start ))s"

run_one() {
    local t=$1 log="$scratch/$1.log"
    mkdir -p "artifacts/$t"
    # -error_exitcode and -timeout_exitcode make every finding a failure;
    # -detect_leaks reports leaks (ASan's LeakSanitizer).
    if TMPDIR="$scratch" cargo fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout="$timeout_s" -rss_limit_mb="$rss_mb" \
        -max_len=65536 -print_final_stats=1 -error_exitcode=77 -timeout_exitcode=78 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
        local execs
        execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
        echo "fuzz: $t ok, $execs executions in ${seconds}s"
        return 0
    fi
    echo "fuzz: $t FAILED (log below; input in fuzz/artifacts/$t/)" >&2
    tail -n 60 "$log" >&2
    return 1
}

failed=0
running=0
pids=()
# At most $jobs targets at once; the oldest is waited for first.
for t in "${targets[@]}"; do
    run_one "$t" &
    pids+=($!)
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait "${pids[0]}" || failed=1
        pids=("${pids[@]:1}")
        running=$((running - 1))
    fi
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done

echo "fuzz: done in $(( $(date +%s) - start ))s"
exit "$failed"
