#!/usr/bin/env bash
# `make test-gpu`: the CUDA backend's tests (tests/gpu/test_cuda.c) on a
# machine with an NVIDIA GPU. Fails, rather than skips, when there is no
# GPU or no CUDA backend: whoever asks for GPU tests wants them run.
#   BUILD   build folder (build)
#   CK_RUN_CASE=ops|transfers|models  one group of tests only (Check)
set -u
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "test-gpu: no NVIDIA GPU here (nvidia-smi -L fails)" >&2
    exit 1
fi
lib="$PWD/$BUILD/libbmplan_cuda.so"
if [ ! -f "$lib" ]; then
    echo "test-gpu: $lib was not built (no nvcc, or CUDA=0)" >&2
    exit 1
fi
export BMPLAN_CUDA_LIB="$lib"
BMPLAN_TEST_GPUS=$(nvidia-smi -L | grep -c '^GPU')
export BMPLAN_TEST_GPUS
echo "test-gpu: $BMPLAN_TEST_GPUS GPU(s): $(nvidia-smi -L | head -1)"
CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-600} "$BUILD/tests/gpu/test_cuda"
