#!/usr/bin/env bash
# Run every Check test binary given; print each suite's summary; fail if any fails.
set -u
fail=0
cd "$(dirname "$0")/.." || exit 1
for t in "$@"; do
    CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-120} "$t" || { echo "FAILED: $t" >&2; fail=1; }
done
exit $fail
