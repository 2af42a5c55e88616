#!/usr/bin/env bash
# Builds every libFuzzer target (tests/fuzz/fuzz_*.c) and runs each briefly on a copy of its
# seed corpus (tests/fuzz/corpus/<name>/). FUZZ_SECONDS sets the time per target (default 15).
# A crash fails the run and leaves the reproducer in build/fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-15}
make -s VARIANT=fuzz fuzzers
mkdir -p build/fuzz/artifacts
status=0
for src in tests/fuzz/fuzz_*.c; do
    name=$(basename "$src" .c)
    short=${name#fuzz_}
    work=build/fuzz/corpus-$short
    rm -rf "$work"; mkdir -p "$work"
    seeds=tests/fuzz/corpus/$short
    [ -d "$seeds" ] || { echo "fuzz: $name has no seed corpus at $seeds" >&2; status=1; continue; }
    echo "fuzz: $name for ${secs}s"
    if ! build/fuzz/"$name" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix=build/fuzz/artifacts/"$short"- -print_final_stats=1 "$work" "$seeds" \
        > build/fuzz/"$name".log 2>&1; then
        echo "fuzz: $name FAILED (log: build/fuzz/$name.log)" >&2
        tail -40 build/fuzz/"$name".log >&2
        status=1
    else
        grep -E 'stat::number_of_executed_units' build/fuzz/"$name".log | sed "s/^/fuzz: $name /" || true
    fi
done
exit $status
