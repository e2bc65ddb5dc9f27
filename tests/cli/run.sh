#!/usr/bin/env bash
# CLI tests: every tests/cli/test_*.sh is run with $BMPLAN pointing at the
# binary under test. Each script prints "ok ..." / "not ok ..." lines (via
# lib.sh) and exits non-zero on failure. Ends with "N passed, N failed".
#
# BMPLAN_WRAPPER="valgrind --flags" runs every bmplan call under that
# command: $BMPLAN then points at a small script that execs the wrapper with
# the real binary, which tests that need the binary itself (tracing it,
# timing it) find in $BMPLAN_REAL. Names given as arguments select scripts
# ("bad" runs test_bad.sh).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export BMPLAN=${BMPLAN:-build/bmplan}
case $BMPLAN in /*) ;; *) BMPLAN="$root/$BMPLAN" ;; esac
export BMPLAN_REAL=$BMPLAN BMPLAN_WRAPPER=${BMPLAN_WRAPPER:-}
if [ -n "$BMPLAN_WRAPPER" ]; then
    wrapdir=$(mktemp -d "${TMPDIR:-/tmp}/bmplan-wrap.XXXXXX")
    trap 'rm -rf "$wrapdir"' EXIT
    # the files beside the program (the CUDA backend library) appear beside
    # the wrapper too, for tests that look there
    for f in "$(dirname "$BMPLAN")"/*; do
        case ${f##*/} in bmplan|bmrun) ;; *) ln -s "$f" "$wrapdir/${f##*/}" ;; esac
    done
    # keep the program's name (bmplan or bmrun decides the behaviour)
    for name in bmplan bmrun; do
        printf '#!/bin/sh\nexec %s "%s" "$@"\n' "$BMPLAN_WRAPPER" "$(dirname "$BMPLAN")/$name" \
            >"$wrapdir/$name"
        chmod +x "$wrapdir/$name"
    done
    BMPLAN=$wrapdir/bmplan
fi
export BMPLAN ROOT="$root" SHARED="${SHARED:-$root/../shared}"
passed=0 failed=0 known=0
if [ $# -gt 0 ]; then
    scripts=(); for n in "$@"; do scripts+=("$here/test_$n.sh"); done
else
    scripts=("$here"/test_*.sh)
fi
for t in "${scripts[@]}"; do
    [ -e "$t" ] || continue
    out=$(bash "$t" 2>&1); rc=$?
    # "not ok ... # TODO why" marks a known problem: listed, not counted
    p=$(printf '%s\n' "$out" | grep -c '^ok ' || true)
    f=$(printf '%s\n' "$out" | grep '^not ok ' | grep -vc ' # TODO ' || true)
    k=$(printf '%s\n' "$out" | grep '^not ok ' | grep -c ' # TODO ' || true)
    known=$((known + k))
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    passed=$((passed + p)); failed=$((failed + f))
    if [ $rc -ne 0 ] || [ "$f" -ne 0 ]; then
        echo "FAIL $(basename "$t")"; printf '%s\n' "$out" | grep -v '^ok ' | sed 's/^/    /' | head -40
    else
        echo "PASS $(basename "$t") ($p checks)"
        printf '%s\n' "$out" | grep -e '^skipped' -e ' # TODO ' | sed 's/^/    /'
    fi
done
if [ "$known" -gt 0 ]; then
    echo "cli: $passed passed, $failed failed, $known known problems (TODO)"
else
    echo "cli: $passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
