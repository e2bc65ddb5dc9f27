#!/usr/bin/env bash
# `make bench`: every benchmark, one after the other. Benchmarks print
# figures and assert nothing. Add a line per benchmark script.
set -u
here=$(cd "$(dirname "$0")" && pwd)
status=0
bash "$here/bench_run.sh" || status=1
exit $status
