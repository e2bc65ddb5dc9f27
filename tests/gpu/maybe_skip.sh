#!/usr/bin/env bash
# Called by `make test`: GPU tests run only through `make test-gpu` on a
# machine with an NVIDIA GPU; say so visibly when they are skipped. Without
# a GPU, check what can be checked: asking for the CUDA backend is a
# one-line error, not a crash (with the library built here, or without it).
BUILD=${1:-build}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "GPU present: run 'make test-gpu' for the CUDA backend tests"
    exit 0
fi
echo "skipped: no GPU (CUDA backend tests run with 'make test-gpu')"
t="$BUILD/tests/gpu/test_cuda"
[ -x "$t" ] || exit 0
if [ -f "$BUILD/libbmplan_cuda.so" ]; then
    BMPLAN_CUDA_LIB="$PWD/$BUILD/libbmplan_cuda.so" "$t" --absent || exit 1
fi
env -u BMPLAN_CUDA_LIB "$t" --absent
