#!/usr/bin/env bash
# Build every tests/fuzz/fuzz_*.c as a libFuzzer target (clang, ASan+UBSan)
# and run each for SECONDS seconds on its seed corpus (tests/fuzz/corpus/NAME).
# Findings are written to tests/fuzz/findings/NAME/ and make the run fail.
#   usage: tests/fuzz/run.sh SECONDS [TARGET...]
set -u
cd "$(dirname "$0")/../.." || exit 1
secs=${1:-10}; shift || true
CC=${FUZZ_CC:-clang}
command -v "$CC" >/dev/null || { echo "fuzz: $CC not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 1; }
out=build/fuzz
mkdir -p "$out"
flags="-g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Ilib -Iformats -Iplanner $(pkg-config --cflags jansson yaml-0.1 libzstd)"
libs="$(pkg-config --libs jansson yaml-0.1 libzstd) -lm -ldl -pthread"
srcs=$(ls lib/*.c formats/*.c planner/*.c 2>/dev/null)
# library objects built once with -fsanitize=fuzzer-no-link
objdir=$out/obj; mkdir -p "$objdir"
objs=""
for s in $srcs; do
    o=$objdir/$(echo "$s" | tr / _).o
    if [ ! -e "$o" ] || [ "$s" -nt "$o" ]; then
        $CC ${flags/-fsanitize=fuzzer,/-fsanitize=fuzzer-no-link,} -c "$s" -o "$o" || exit 1
    fi
    objs="$objs $o"
done
targets=${*:-$(ls tests/fuzz/fuzz_*.c | sed 's|.*/fuzz_||; s|\.c$||')}
fail=0
for t in $targets; do
    bin=$out/fuzz_$t
    $CC $flags tests/fuzz/fuzz_$t.c $objs $libs -o "$bin" || { fail=1; continue; }
    corpus=tests/fuzz/corpus/$t; mkdir -p "$corpus"
    work=$out/corpus_$t; mkdir -p "$work"
    find=tests/fuzz/findings/$t; mkdir -p "$find"
    log=$out/fuzz_$t.log
    "$bin" -max_total_time="$secs" -rss_limit_mb=1024 -timeout=10 -max_len=65536 \
        -artifact_prefix="$find/" -print_final_stats=1 "$work" "$corpus" >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    if [ $rc -ne 0 ]; then
        echo "fuzz $t: FINDING after ${execs:-?} executions (see $log and $find/)"; fail=1
    else
        echo "fuzz $t: ${execs:-?} executions in ${secs}s, no finding"
    fi
    rmdir "$find" 2>/dev/null || true
done
exit $fail
