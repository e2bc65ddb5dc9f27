#!/usr/bin/env bash
# CLI tests: every tests/cli/test_*.sh is run with $BMPLAN pointing at the
# binary under test. Each script prints "ok ..." / "not ok ..." lines (via
# lib.sh) and exits non-zero on failure. Ends with "N passed, N failed".
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export BMPLAN=${BMPLAN:-build/bmplan}
case $BMPLAN in /*) ;; *) BMPLAN="$root/$BMPLAN" ;; esac
export BMPLAN ROOT="$root" SHARED="${SHARED:-$root/../shared}"
passed=0 failed=0
for t in "$here"/test_*.sh; do
    [ -e "$t" ] || continue
    out=$(bash "$t" 2>&1); rc=$?
    p=$(printf '%s\n' "$out" | grep -c '^ok ' || true)
    f=$(printf '%s\n' "$out" | grep -c '^not ok ' || true)
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    passed=$((passed + p)); failed=$((failed + f))
    if [ $rc -ne 0 ] || [ "$f" -ne 0 ]; then
        echo "FAIL $(basename "$t")"; printf '%s\n' "$out" | grep -v '^ok ' | sed 's/^/    /' | head -40
    else
        echo "PASS $(basename "$t") ($p checks)"
    fi
done
echo "cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
