#!/usr/bin/env bash
# Planner speed: builds bench/bench_plan.c against the library and runs it.
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PKGS="jansson yaml-0.1 libzstd"
${CC:-gcc} -O2 -std=c11 -D_GNU_SOURCE -Ilib -Iformats -Iplanner $(pkg-config --cflags $PKGS) \
    -o "$BUILD/bench_plan" bench/bench_plan.c "$BUILD/libbmplan.a" \
    $(pkg-config --libs $PKGS) $(pkg-config --libs openblas 2>/dev/null) -pthread -ldl -lm
"$BUILD/bench_plan" "${BMPLAN:-$BUILD/bmplan}"
