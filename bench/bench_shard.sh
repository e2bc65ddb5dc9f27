#!/usr/bin/env bash
# bmplan shard / offload figures on synthetic checkpoints (weights about
# N(0, 0.02)) under /tmp, removed afterwards:
#   - same-dtype re-shard of a BENCH_GB (default 4) GiB float32 checkpoint
#     against `cp` of the same bytes, in the same run (warm page cache:
#     the source is read once before timing both);
#   - float32 -> bfloat16 re-shard, GB/s of float32 input, --jobs 1 and 2;
#   - zstd offload of a bfloat16 checkpoint: size ratio per level, and the
#     rate at which bmplan's reader serves it back.
set -eu
B=${BUILD:-build}
BM=${BMPLAN:-$B/bmplan}
GB=${BENCH_GB:-4}
W=$(mktemp -d /tmp/bmplan-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
libs="$B/libbmplan.a $(pkg-config --libs jansson yaml-0.1 libzstd) -lm -pthread"
cc -O2 -std=c11 -D_GNU_SOURCE -Ilib -Iformats -Iplanner -o "$W/gen" bench/gen_checkpoint.c $libs
cc -O2 -std=c11 -D_GNU_SOURCE -Ilib -Iformats -Iplanner -o "$W/readback" bench/bench_offload_read.c $libs
now() { date +%s.%N; }
rate() { echo "$1 $2 $3" | awk '{ printf "%.2f", $1 / ($3 - $2) / 1e9 }'; }

mkdir "$W/f32"
"$W/gen" "$W/f32/model.safetensors" float32 $((GB * 1024)) 256
bytes=$(stat -c %s "$W/f32/model.safetensors")
# flush the generator's writes, then read the source once: both runs below
# start from a clean, warm cache
sync -f "$W"
cat "$W/f32/model.safetensors" >/dev/null
# best of two alternating runs each
best_cp=999999 best_bm=999999
for round in 1 2; do
    t0=$(now); cp "$W/f32/model.safetensors" "$W/cp.safetensors"; sync "$W/cp.safetensors"; t1=$(now)
    rm -f "$W/cp.safetensors"; sync -f "$W"
    t2=$(now); "$BM" shard "$W/f32" -o "$W/same" --max-shard-size 1GB -q; t3=$(now)
    rm -rf "$W/same"; sync -f "$W"
    best_cp=$(echo "$t0 $t1 $best_cp" | awk '{ d = $2 - $1; print (d < $3 ? d : $3) }')
    best_bm=$(echo "$t2 $t3 $best_bm" | awk '{ d = $2 - $1; print (d < $3 ? d : $3) }')
done
echo "same-dtype re-shard of $GB GiB: bmplan $(rate "$bytes" 0 "$best_bm") GB/s, cp $(rate "$bytes" 0 "$best_cp") GB/s," \
     "time ratio bmplan/cp $(echo "$best_bm $best_cp" | awk '{ printf "%.2f", $1 / $2 }')" \
     "(best of 2 each; both fsync their output; bmplan also hashes every byte)"
for j in 1 2; do
    t0=$(now); "$BM" shard "$W/f32" -o "$W/bf16" --dtype bfloat16 --max-shard-size 256MB --jobs $j -q; t1=$(now)
    echo "float32 -> bfloat16 re-shard, --jobs $j: $(rate "$bytes" "$t0" "$t1") GB/s of float32 input (disk writes and fsync included)"
    rm -rf "$W/bf16"; sync -f "$W"
done
rm -rf "$W/f32"

mkdir "$W/bf"
"$W/gen" "$W/bf/model.safetensors" bfloat16 1024 64
raw=$(( $(stat -c %s "$W/bf/model.safetensors") ))
"$BM" offload "$W/bf" -o "$W/plain" -q
sync -f "$W"
echo "offload read-back, plain .dat: $("$W/readback" "$W/plain")"
rm -rf "$W/plain"
for lvl in 1 3; do
    t0=$(now); "$BM" offload "$W/bf" -o "$W/z$lvl" --compress zstd:$lvl -q 2>/dev/null; t1=$(now)
    z=$(du -sb "$W/z$lvl" | cut -f1)
    echo "zstd level $lvl on bfloat16 weights: size ratio $(echo "$z $raw" | awk '{ printf "%.3f", $1 / $2 }')," \
         "writing $(rate "$raw" "$t0" "$t1") GB/s, read-back $("$W/readback" "$W/z$lvl")"
    rm -rf "$W/z$lvl"
done
