#!/usr/bin/env bash
# bmplan shard: outputs byte for byte against huggingface_hub + safetensors
# + accelerate references (tests/fixtures/shard/make_fixtures.py), --jobs
# determinism, atomic output (--force, locks, stale temporaries, a full
# disk via ulimit -f), untouched inputs, progress only on a terminal.
. "$(dirname "$0")/lib.sh"
F=$ROOT/tests/fixtures/shard
E=$F/expect
before=$(cd "$F/tiny" && sha256sum * | sha256sum)

same_tree() { # same_tree GOT WANT WHAT [diff options]
    local got=$1 want=$2 what=$3; shift 3
    if diff -r "$@" "$got" "$want" >"$T/diff" 2>&1; then ok "$what"; else notok "$what: $(head -c 300 "$T/diff")"; fi
}

expect_rc 0 "shard at 600 bytes" -- "$BMPLAN" shard "$F/tiny" -o "$T/a" --max-shard-size 600
same_tree "$T/a" "$E/shard-600" "4 shards, index and other files as the hub/safetensors/transformers write them"
expect_err_contains "11 tensors in 4 shards"

expect_rc 0 "--jobs 4" -- "$BMPLAN" shard "$F/tiny" -o "$T/a4" --max-shard-size 600 --jobs 4 --quiet
same_tree "$T/a4" "$T/a" "--jobs 4 writes the same bytes as --jobs 1"
if [ ! -s "$T/err" ]; then ok "--quiet prints nothing"; else notok "--quiet printed: $(cat "$T/err")"; fi

expect_rc 0 "bfloat16 with --keep-in-fp32" -- "$BMPLAN" shard "$F/tiny" -o "$T/b" --max-shard-size 600 \
    --dtype bfloat16 --keep-in-fp32 model.layers.1
same_tree "$T/b" "$E/shard-bf16-keep" "bf16 conversion (torch's bits), model.layers.1 kept, model.layers.10 not, ints kept, torch_dtype updated"

expect_rc 0 "float16 into one file" -- "$BMPLAN" shard "$F/tiny" -o "$T/c" --dtype float16
same_tree "$T/c" "$E/shard-f16-single" "a single model.safetensors with its digest in __metadata__, no index"
expect_err_contains "warning: tensor 'model.big': 1 finite values are too large for float16 and became infinity"

expect_rc 0 "device map with an offload folder" -- "$BMPLAN" shard "$F/tiny" -o "$T/d" --max-shard-size 600 \
    --device-map "$F/devmap.json" --offload-folder "$T/doff"
same_tree "$T/d" "$E/shard-devmap" "shards hold the tensors not mapped to disk"
same_tree "$T/doff" "$E/shard-devmap-offload" "disk-mapped tensors in accelerate's offload format" -x bmplan.json
expect_err_contains "3 tensors offloaded"
expect_rc 0 "the same with --jobs 3" -- "$BMPLAN" shard "$F/tiny" -o "$T/d3" --max-shard-size 600 \
    --device-map "$F/devmap.json" --offload-folder "$T/doff3" --jobs 3 -q
same_tree "$T/d3" "$T/d" "shards: same bytes for any --jobs"
same_tree "$T/doff3" "$T/doff" "offload folder: same bytes for any --jobs (bmplan.json included)"

expect_rc 0 "MODEL given as a file" -- "$BMPLAN" shard "$F/tiny/model.safetensors" -o "$T/file" --max-shard-size 1GiB -q
if [ "$(ls "$T/file")" = "model.safetensors" ]; then ok "from a file: no other files copied"; else notok "from a file: $(ls "$T/file")"; fi

# existing output, --force, locks, stale temporaries
expect_rc 1 "an existing OUTDIR is refused" -- "$BMPLAN" shard "$F/tiny" -o "$T/a" --max-shard-size 1GB
expect_err_contains "already exists (use --force to replace it)"
one_line_err
same_tree "$T/a" "$E/shard-600" "the refused OUTDIR is untouched"
mkdir "$T/.a.tmp-4194303" && echo junk >"$T/.a.tmp-4194303/x"
expect_rc 0 "--force replaces it" -- "$BMPLAN" shard "$F/tiny" -o "$T/a" --max-shard-size 1GB --force -q
if [ -f "$T/a/model.safetensors" ] && [ ! -e "$T/a/model-00001-of-00004.safetensors" ]; then ok "replaced whole"; else notok "replace: $(ls "$T/a")"; fi
if [ ! -e "$T/.a.tmp-4194303" ]; then ok "a killed run's temporary was cleaned"; else notok "stale temporary left"; fi
flock "$T/.locked.bmplan-lock" sleep 5 &
lockpid=$!
sleep 0.5
expect_rc 1 "a second run into the same output fails" -- "$BMPLAN" shard "$F/tiny" -o "$T/locked" -q
expect_err_contains "another bmplan run is writing it"
kill "$lockpid" 2>/dev/null; wait "$lockpid" 2>/dev/null
if [ ! -e "$T/locked" ]; then ok "nothing written while locked"; else notok "output written while locked"; fi

# a full disk: one line, exit 1, nothing left
( ulimit -f 1; exec "$BMPLAN" shard "$F/tiny" -o "$T/full" -q ) >"$T/out" 2>"$T/err"
rc=$?
if [ "$rc" -eq 1 ]; then ok "file size limit: exit 1"; else notok "file size limit: exit $rc"; fi
one_line_err
expect_err_contains "File too large"
left=$(ls -A "$T" | grep -c -e '^full' -e '^\.full' || true)
if [ "$left" -eq 0 ]; then ok "no partial output or temporary"; else notok "left: $(ls -A "$T")"; fi

# the output may not replace the input
expect_rc 1 "OUTDIR over the input is refused" -- "$BMPLAN" shard "$F/tiny" -o "$F/tiny" --force -q
expect_err_contains "would replace the input"

# usage errors
expect_rc 2 "missing -o" -- "$BMPLAN" shard "$F/tiny"
expect_rc 2 "bad --dtype" -- "$BMPLAN" shard "$F/tiny" -o "$T/x" --dtype int8
expect_rc 2 "--keep-in-fp32 needs --dtype" -- "$BMPLAN" shard "$F/tiny" -o "$T/x" --keep-in-fp32 a
expect_rc 2 "bad size" -- "$BMPLAN" shard "$F/tiny" -o "$T/x" --max-shard-size 10XB
expect_rc 2 "--device-map alone" -- "$BMPLAN" shard "$F/tiny" -o "$T/x" --device-map "$F/devmap.json"
expect_rc 1 "a map leaving a tensor without device" -- "$BMPLAN" shard "$F/tiny" -o "$T/x" \
    --device-map <(echo '{"model": 0}') --offload-folder "$T/xo"
expect_err_contains "lm_head.weight doesn't have any device set."
if [ ! -e "$T/x" ] && [ ! -e "$T/xo" ]; then ok "nothing written on error"; else notok "output left on error"; fi

# progress: on a terminal only, never with --quiet
script -qec "'$BMPLAN' shard '$F/tiny' -o '$T/p1'" /dev/null >"$T/tty" 2>&1
if grep -q "ETA" "$T/tty"; then ok "progress bar on a terminal"; else notok "no progress on a terminal: $(head -c 200 "$T/tty")"; fi
script -qec "'$BMPLAN' shard '$F/tiny' -o '$T/p2' --quiet" /dev/null >"$T/tty" 2>&1
if ! grep -q "ETA" "$T/tty"; then ok "--quiet: no progress bar"; else notok "--quiet showed progress"; fi
expect_rc 0 "not a terminal" -- "$BMPLAN" shard "$F/tiny" -o "$T/p3"
if ! grep -q "ETA" "$T/err"; then ok "no progress bar when stderr is not a terminal"; else notok "progress without a terminal"; fi

after=$(cd "$F/tiny" && sha256sum * | sha256sum)
if [ "$before" = "$after" ] && [ "$(ls -A "$F/tiny" | wc -l)" -eq 4 ]; then ok "the input folder is unchanged"; else notok "input changed"; fi
finish
