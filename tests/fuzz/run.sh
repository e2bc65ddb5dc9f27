#!/usr/bin/env bash
# Build every tests/fuzz/fuzz_NAME.c as a libFuzzer target (clang, ASan +
# UBSan) and run each in turn on its seed corpus tests/fuzz/corpus/NAME.
#
#   usage: tests/fuzz/run.sh SECONDS [NAME...]     (default: every target)
#   env:   FUZZ_RUNS=N     stop each target after N executions instead of
#                          after SECONDS (SECONDS then only caps the time;
#                          0 = no cap)
#          FUZZ_CC=clang   the compiler
#          FUZZ_JOBS=2     parallel compiles of the library objects
#          FUZZ_SCRATCH=D  where targets run (default /dev/shm, else build/fuzz)
#
# Per target, optional files beside the source: NAME.dict (a libFuzzer
# dictionary) and NAME.options (extra libFuzzer flags, one line).
# Every seed and every earlier finding kept in the corpus is replayed first.
# A crash, leak, timeout (10 s per input) or memory blow-up (1 GiB) is a
# finding: the input is written to tests/fuzz/findings/NAME/ and the run
# fails. Turn each finding into a corpus file and a unit test
# (tests/unit/test_regressions.c). Counts go to build/fuzz/summary.tsv.
set -u
cd "$(dirname "$0")/../.." || exit 1
root=$PWD
secs=${1:-10}; shift || true
runs=${FUZZ_RUNS:-}
CC=${FUZZ_CC:-clang}
jobs=${FUZZ_JOBS:-2}
command -v "$CC" >/dev/null || {
    echo "fuzz: $CC not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 1; }
out=build/fuzz
objdir=$out/obj
mkdir -p "$objdir"
pkgs="jansson yaml-0.1 libzstd"
pkg-config --exists openblas 2>/dev/null && pkgs="$pkgs openblas"
base="-g -O1 -std=c11 -D_GNU_SOURCE -fno-omit-frame-pointer -fno-sanitize-recover=undefined \
-Ilib -Iformats -Iplanner $(pkg-config --cflags $pkgs)"
libs="$(pkg-config --libs $pkgs) -lm -ldl -pthread"

# The library, built once with fuzzer-no-link coverage; an object is rebuilt
# when its source or any header is newer than it.
newest_header=$(ls -t lib/*.h formats/*.h planner/*.h 2>/dev/null | head -1)
objs="" pending=0 buildfail=0
for s in $(ls lib/*.c formats/*.c planner/*.c 2>/dev/null); do
    o=$objdir/$(echo "$s" | tr / _).o
    objs="$objs $o"
    if [ ! -e "$o" ] || [ "$s" -nt "$o" ] || [ "$newest_header" -nt "$o" ]; then
        rm -f "$o"
        $CC $base -fsanitize=fuzzer-no-link,address,undefined -c "$s" -o "$o" || buildfail=1 &
        pending=$((pending + 1))
        if [ "$pending" -ge "$jobs" ]; then wait -n; pending=$((pending - 1)); fi
    fi
done
wait
# wait -n loses exit codes of finished jobs; check every object instead
for o in $objs; do [ -s "$o" ] || buildfail=1; done
[ "$buildfail" -eq 0 ] || { echo "fuzz: building the library failed" >&2; exit 1; }

scratch_base=${FUZZ_SCRATCH:-}
if [ -z "$scratch_base" ]; then
    scratch_base=$root/$out
    [ -d /dev/shm ] && [ -w /dev/shm ] && scratch_base=/dev/shm
fi
targets=${*:-$(ls tests/fuzz/fuzz_*.c | sed 's|.*/fuzz_||; s|\.c$||')}
summary=$out/summary.tsv
printf 'target\texecutions\tseconds\tresult\n' >"$summary"
fail=0
for t in $targets; do
    src=tests/fuzz/fuzz_$t.c
    [ -e "$src" ] || { echo "fuzz $t: no $src" >&2; fail=1; continue; }
    bin=$out/fuzz_$t
    if ! $CC $base -fsanitize=fuzzer,address,undefined "$src" $objs $libs -o "$bin"; then
        echo "fuzz $t: BUILD FAILED"; printf '%s\t0\t0\tbuild failed\n' "$t" >>"$summary"
        fail=1; continue
    fi
    corpus=$root/tests/fuzz/corpus/$t; mkdir -p "$corpus"
    work=$root/$out/corpus_$t; mkdir -p "$work"
    find=$root/tests/fuzz/findings/$t; mkdir -p "$find"
    log=$root/$out/fuzz_$t.log
    # each target runs in a scratch folder of its own: whatever it writes
    # (targets that read folders build them there) stays in it
    # (in memory when /dev/shm is there: targets that write files run
    # several times faster)
    scratch=$scratch_base/bmplan-fuzz-$t.$$; rm -rf "$scratch"; mkdir -p "$scratch"
    extra=""
    [ -e "tests/fuzz/$t.dict" ] && extra="$extra -dict=$root/tests/fuzz/$t.dict"
    [ -e "tests/fuzz/$t.options" ] && extra="$extra $(head -1 "tests/fuzz/$t.options")"
    if [ -n "$runs" ]; then limit="-runs=$runs -max_total_time=$secs"; else limit="-max_total_time=$secs"; fi
    start=$(date +%s)
    # shellcheck disable=SC2086
    (cd "$scratch" && exec "$root/$bin" $limit -rss_limit_mb=1024 -malloc_limit_mb=1024 \
        -timeout=10 -max_len=65536 -artifact_prefix="$find/" -print_final_stats=1 $extra \
        "$work" "$corpus") >"$log" 2>&1
    rc=$?
    rm -rf "$scratch"
    took=$(( $(date +%s) - start ))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    if [ $rc -ne 0 ]; then
        echo "fuzz $t: FINDING after ${execs:-?} executions (see ${log#$root/} and ${find#$root/}/)"
        grep -m3 -E 'ERROR:|runtime error|SUMMARY' "$log" | sed 's/^/    /'
        printf '%s\t%s\t%s\tfinding\n' "$t" "${execs:-0}" "$took" >>"$summary"
        fail=1
    else
        echo "fuzz $t: ${execs:-?} executions in ${took}s, no finding"
        printf '%s\t%s\t%s\tok\n' "$t" "${execs:-0}" "$took" >>"$summary"
    fi
    rmdir "$find" 2>/dev/null || true
done
exit $fail
