#!/usr/bin/env bash
# Called by `make test`: GPU tests run only through `make test-gpu` on a
# machine with an NVIDIA GPU; say so visibly when they are skipped.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "GPU present: run 'make test-gpu' for the CUDA backend tests"
else
    echo "skipped: no GPU (CUDA backend tests run with 'make test-gpu')"
fi
