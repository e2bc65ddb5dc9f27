#!/usr/bin/env bash
# `bmplan run --backend cuda` where there is no GPU driver: one line on
# stderr, exit status 1, and no crash, whether the CUDA backend library was
# built (found next to the executable, or named by BMPLAN_CUDA_LIB) or not.
# With a GPU the CUDA backend is tested by `make test-gpu` instead.
. "$(dirname "$0")/lib.sh"
F=$ROOT/tests/fixtures/runner
B=$(dirname "$BMPLAN")
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    ok "# SKIP a GPU is present (make test-gpu)"
    finish
fi
if ! "$BMPLAN" help run >/dev/null 2>&1; then
    ok "# SKIP this build has no 'bmplan run'"
    finish
fi
run_cuda() { expect_rc 1 "$1" -- env "${@:2}" "$BMPLAN" run "$F/tiny-llama" --input-ids 1,2 --backend cuda; }
if [ -f "$B/libbmplan_cuda.so" ]; then
    # the library loads; the CUDA runtime finds no driver or device
    run_cuda "cuda backend next to the executable, no driver" -u BMPLAN_CUDA_LIB
    one_line_err; expect_err_contains "bmplan run: cuda backend: no usable CUDA driver or device"
    run_cuda "cuda backend named by BMPLAN_CUDA_LIB, no driver" BMPLAN_CUDA_LIB="$B/libbmplan_cuda.so"
    one_line_err; expect_err_contains "cuda backend: no usable CUDA driver or device"
else
    run_cuda "no cuda backend built" -u BMPLAN_CUDA_LIB
    one_line_err; expect_err_contains "cuda backend: libbmplan_cuda.so not found"
fi
run_cuda "a library that is not there" BMPLAN_CUDA_LIB="$T/none.so"
one_line_err; expect_err_contains "cuda backend: cannot load"
# not a backend library: no entry point
echo "not a library" >"$T/fake.so"
run_cuda "a file that is not a library" BMPLAN_CUDA_LIB="$T/fake.so"
one_line_err; expect_err_contains "cuda backend"
finish
