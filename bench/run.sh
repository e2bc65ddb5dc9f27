#!/usr/bin/env bash
# `make bench`: every benchmark prints its figures; nothing here asserts.
# Each bench/bench_*.sh is run in turn with $BMPLAN and $BUILD set.
set -u
cd "$(dirname "$0")/.." || exit 1
export BMPLAN=${BMPLAN:-build/bmplan} BUILD=${BUILD:-build}
for b in bench/bench_*.sh; do
    [ -e "$b" ] || continue
    echo "== $(basename "$b" .sh)"
    bash "$b" || echo "(benchmark $b failed)"
done
