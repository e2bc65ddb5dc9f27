#!/usr/bin/env bash
# bench_run.sh - `bmplan run` figures (printed, never asserted):
#   1. CPU forward throughput on a ~100M-parameter Llama with random weights
#      (prompt of 128 tokens, then greedy decoding) against PyTorch CPU on
#      the same weights and threads (bench_run_torch.py);
#   2. streaming weights from a disk-offload folder: effective weight
#      bandwidth against reading the same bytes with cat from page cache,
#      prefetch on and off.
set -u
here=$(cd "$(dirname "$0")" && pwd)
BMPLAN=${BMPLAN:-build/bmplan}
PY=${PYTHON:-/usr/bin/python3}
threads=${BENCH_THREADS:-$(nproc)}
new=${BENCH_NEW_TOKENS:-32}
dir=$(mktemp -d "${TMPDIR:-/tmp}/bmplan-bench-run.XXXXXX")
trap 'rm -rf "$dir"' EXIT

if ! "$PY" -c 'import numpy' 2>/dev/null; then
    echo "bench_run: skipped (needs python3 with numpy to make the model)"; exit 0
fi
"$PY" "$here/make_random_llama.py" "$dir/llama" >/dev/null || { echo "bench_run: cannot make the model"; exit 1; }
ids=$("$PY" -c "print(','.join(str(i * 37 % 32000) for i in range(128)))")
field() { "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

echo "== bmplan run: ~100M-parameter Llama (float32), $threads threads, 128-token prompt, $new new tokens"
"$BMPLAN" run "$dir/llama" --threads "$threads" --input-ids "$ids" --generate "$new" \
    --report "$dir/r.json" >/dev/null || { echo "bench_run: bmplan run failed"; exit 1; }
our_pf=$(field "$dir/r.json" "round(128 / r['time']['forward_s'], 2)")
our_dec=$(field "$dir/r.json" "round(len(r['time']['per_token_s']) / sum(r['time']['per_token_s']), 2)")
echo "bmplan:  prefill $our_pf tok/s, decode $our_dec tok/s"
if "$PY" -c 'import torch' 2>/dev/null; then
    # PyTorch's own threads plus OpenBLAS's can oversubscribe the cores:
    # the better of the two settings is the baseline
    a=$(OPENBLAS_NUM_THREADS=1 "$PY" "$here/bench_run_torch.py" "$dir/llama" "$threads" 128 "$new")
    b=$(OPENBLAS_NUM_THREADS=$threads "$PY" "$here/bench_run_torch.py" "$dir/llama" "$threads" 128 "$new")
    read -r t_pf t_dec < <("$PY" -c "a='$a'.split(); b='$b'.split(); print(max(float(a[0]), float(b[0])), max(float(a[1]), float(b[1])))")
    tv=$("$PY" -c 'import torch; print(torch.__version__)')
    echo "PyTorch $tv: prefill $t_pf tok/s, decode $t_dec tok/s (best of OPENBLAS_NUM_THREADS=1 and $threads)"
    "$PY" -c "print('ratio bmplan/PyTorch: prefill %.2fx, decode %.2fx' % ($our_pf / $t_pf, $our_dec / $t_dec))"
else
    echo "PyTorch: skipped (python3 cannot import torch)"
fi

echo "== streaming from a disk-offload folder (all decoder layers on disk)"
if ! "$BMPLAN" help offload >/dev/null 2>&1; then
    echo "skipped: this build has no 'bmplan offload'"; exit 0
fi
cat > "$dir/map.json" <<JSON
{"model.embed_tokens": 0, "model.layers": "disk", "model.norm": 0, "lm_head": 0}
JSON
"$BMPLAN" offload "$dir/llama" --device-map "$dir/map.json" -o "$dir/off" >/dev/null 2>&1 ||
    { echo "bench_run: bmplan offload failed"; exit 1; }
cat "$dir"/off/*.dat >/dev/null   # into page cache
t0=$(date +%s.%N); cat "$dir"/off/*.dat >/dev/null; t1=$(date +%s.%N)
bytes=$(cat "$dir"/off/*.dat | wc -c)
cat_bw=$("$PY" -c "print(round($bytes / ($t1 - $t0) / 2**30, 2))")
echo "cat from page cache: $cat_bw GiB/s ($bytes bytes)"
for pf in on off; do
    extra=""; [ $pf = off ] && extra=--no-prefetch
    "$BMPLAN" run "$dir/llama" --device-map "$dir/map.json" --offload-folder "$dir/off" \
        --threads "$threads" --input-ids "$ids" --generate 8 $extra --report "$dir/d.json" >/dev/null ||
        { echo "bench_run: disk run failed"; exit 1; }
    bw=$(field "$dir/d.json" "round(r['bytes_moved']['disk_read'] / (r['time']['forward_s'] + sum(r['time']['per_token_s'])) / 2**30, 2)")
    hit=$(field "$dir/d.json" "r['prefetch']['hit_rate']")
    tok=$(field "$dir/d.json" "round(len(r['time']['per_token_s']) / sum(r['time']['per_token_s']), 2)")
    echo "prefetch $pf: effective weight bandwidth $bw GiB/s ($("$PY" -c "print(round($bw / $cat_bw, 2))")x cat), decode $tok tok/s, prefetch hit rate $hit"
done
