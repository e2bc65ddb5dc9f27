#!/usr/bin/env bash
# The CLI tests once more, every bmplan call under valgrind memcheck: an
# invalid read or write, a use of uninitialised memory, or a definite or
# indirect leak in any call fails the run (exit status 99 of that call, and
# its log under $BUILD/valgrind/ is kept and printed).
#   usage: BUILD=build bash tests/cli/valgrind.sh [SCRIPT...]
set -u
cd "$(dirname "$0")/../.." || exit 1
build=${BUILD:-build}
command -v valgrind >/dev/null || { echo "valgrind: not installed (apt-get install valgrind)" >&2; exit 1; }
if grep -qa __asan_init "$build/bmplan" 2>/dev/null; then
    echo "valgrind: $build/bmplan is built with ASan; use the plain build" >&2; exit 1
fi
logs=$PWD/$build/valgrind
rm -rf "$logs"; mkdir -p "$logs"
export BMPLAN_WRAPPER="valgrind -q --error-exitcode=99 --leak-check=full \
--show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
--track-origins=yes --suppressions=$PWD/tests/cli/valgrind.supp --log-file=$logs/%p.log"
# valgrind is 20-50 times slower: give the hostile-input checks room
export BAD_TIMEOUT=${BAD_TIMEOUT:-300} BAD_MAX_RSS_KB=${BAD_MAX_RSS_KB:-4194304}
BMPLAN=$build/bmplan BUILD=$build bash tests/cli/run.sh "$@"
rc=$?
find "$logs" -name '*.log' -empty -delete
bad=$(find "$logs" -name '*.log' | wc -l)
if [ "$bad" -ne 0 ]; then
    echo "valgrind: $bad runs reported errors:"
    for f in $(find "$logs" -name '*.log' | head -5); do sed 's/^/    /' "$f" | head -30; done
    rc=1
else
    echo "valgrind: no errors, no leaks"
fi
exit $rc
