#!/usr/bin/env bash
# `make bench`: every benchmark prints its figures; nothing here asserts.
# Each bench/bench_*.sh is run in turn with $BMPLAN and $BUILD set.
# (bench/gpu.sh is the GPU benchmark: it needs an NVIDIA GPU and is run by
# tests/gpu/device_check.sh, not here.)
set -u
cd "$(dirname "$0")/.." || exit 1
export BMPLAN=${BMPLAN:-build/bmplan} BUILD=${BUILD:-build}
status=0
for b in bench/bench_*.sh; do
    [ -e "$b" ] || continue
    echo "== $(basename "$b" .sh)"
    bash "$b" || { echo "(benchmark $b failed)"; status=1; }
done
exit $status
