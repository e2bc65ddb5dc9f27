#!/usr/bin/env bash
# Conversion kernels (lib/convert.c): GB/s of input per core, SIMD and scalar.
set -eu
B=${BUILD:-build}
cc -O2 -std=c11 -D_GNU_SOURCE -Ilib -Iformats -Iplanner -o "$B/bench_convert" bench/bench_convert.c \
    "$B/libbmplan.a" $(pkg-config --libs jansson yaml-0.1 libzstd) -lm -pthread
"$B/bench_convert" "${BENCH_CONVERT_MIB:-256}"
cc -O2 -std=c11 -D_GNU_SOURCE -Ilib -Iformats -Iplanner -o "$B/bench_zstd_planes" bench/bench_zstd_planes.c \
    "$B/libbmplan.a" $(pkg-config --libs jansson yaml-0.1 libzstd) -lm -pthread
"$B/bench_zstd_planes"
