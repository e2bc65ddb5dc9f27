#!/usr/bin/env bash
# bmplan run / bmrun: outputs against transformers' (tests/fixtures/runner/
# *.expected.json, made by tests/reference/make_runner_fixtures.py), output
# formats, reports, and one-line errors on bad input.
. "$(dirname "$0")/lib.sh"
F="$ROOT/tests/fixtures/runner"
BMRUN="$(dirname "$BMPLAN")/bmrun"

# the prompt and generation transformers recorded, as "1,2,3" and "[1, 2, 3]"
prompt() { sed -n 's/.*"prompt": \[\([^]]*\)\].*/\1/p' "$F/$1.expected.json" | tr -d ' '; }
generated() { sed -n 's/.*"generated": \(\[[^]]*\]\).*/\1/p' "$F/$1.expected.json"; }
# max |a - b| over the numbers of two files (first N numbers of the reference)
maxdiff() {
    awk '
        FNR == 1 { f++ }
        { gsub(/[^-0-9.eE+]+/, " ") ; for (i = 1; i <= NF; i++) v[f, ++n[f]] = $i }
        END { m = 0; for (i = 1; i <= n[1]; i++) { d = v[1, i] - v[2, i]; if (d < 0) d = -d; if (d > m) m = d }
              if (n[1] != n[2]) m = 1e9; printf "%.9g\n", m }' "$1" "$2"
}
below() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }

for m in tiny-llama tiny-gpt2; do
    p=$(prompt $m)
    # greedy generation equals transformers' generate()
    expect_rc 0 "$m: generate" -- "$BMRUN" "$F/$m" --input-ids "$p" --generate 10
    got=$(tail -n 1 "$T/out")
    if [ "$got" = "$(generated $m)" ]; then ok "$m: tokens as transformers"; else notok "$m: got $got, want $(generated $m)"; fi
    # last-position logits within 1e-4
    expect_rc 0 "$m: logits" -- "$BMPLAN" run "$F/$m" --input-ids "$p" --threads 1
    sed -n 's/.*"logits_last": \(\[[^]]*\]\).*/\1/p' "$F/$m.expected.json" >"$T/want"
    d=$(maxdiff "$T/out" "$T/want")
    if below "$d" 1e-4; then ok "$m: logits within 1e-4 ($d)"; else notok "$m: logits differ by $d"; fi
done

p=$(prompt tiny-llama)
# bits do not depend on the thread count
"$BMPLAN" run "$F/tiny-llama" --input-ids "$p" --threads 1 >"$T/t1"
"$BMPLAN" run "$F/tiny-llama" --input-ids "$p" --threads 3 >"$T/t3"
if cmp -s "$T/t1" "$T/t3"; then ok "same output with 1 and 3 threads"; else notok "output depends on threads"; fi

# --all-logits: one row per prompt position
expect_rc 0 "all logits" -- "$BMPLAN" run "$F/tiny-llama" --input-ids "$p" --all-logits
rows=$(grep -o '\], \[' "$T/out" | wc -l)
if [ "$rows" -eq 11 ]; then ok "12 rows of logits"; else notok "$((rows + 1)) rows"; fi

# .npy output: NumPy's header, float32 vector of 256
expect_rc 0 "npy output" -- "$BMPLAN" run "$F/tiny-llama" --input-ids "$p" -o "$T/l.npy"
magic=$(head -c 6 "$T/l.npy" | tail -c 5)
size=$(wc -c <"$T/l.npy")
if [ "$magic" = "NUMPY" ] && [ "$size" -eq $((128 + 256 * 4)) ] && grep -q "'shape': (256,)" "$T/l.npy"; then
    ok "npy header and size"; else notok "npy: magic '$magic' size $size"; fi

# --input-file takes a JSON list
echo "[$p]" >"$T/ids.json"
expect_rc 0 "input file" -- "$BMPLAN" run "$F/tiny-llama" --input-file "$T/ids.json" --generate 10
if [ "$(tail -n 1 "$T/out")" = "$(generated tiny-llama)" ]; then ok "input file gives the same tokens"; else notok "input file: $(tail -n 1 "$T/out")"; fi

# the report: a device per GPU id and the host, times, prefetch counts
expect_rc 0 "report" -- "$BMPLAN" run "$F/tiny-llama" --input-ids "$p" --generate 3 --report "$T/r.json"
for k in '"devices"' '"0"' '"cpu"' '"peak_bytes"' '"disk_read"' '"forward_s"' '"per_token_s"' '"hit_rate"'; do
    grep -q -- "$k" "$T/r.json" && ok "report has $k" || notok "report lacks $k"
done

# bf16 compute of an fp32 checkpoint runs and stays close to fp32
expect_rc 0 "dtype bfloat16" -- "$BMPLAN" run "$F/tiny-gpt2-bf16" --input-ids "$(prompt tiny-gpt2-bf16)"
sed -n 's/.*"logits_last": \(\[[^]]*\]\).*/\1/p' "$F/tiny-gpt2-bf16.expected.json" >"$T/want"
d=$(maxdiff "$T/out" "$T/want")
if below "$d" 2e-2; then ok "bf16 logits within 2e-2 ($d)"; else notok "bf16 logits differ by $d"; fi

# bad input: one line, exit 1, before any computation
expect_rc 1 "token id out of range" -- "$BMPLAN" run "$F/tiny-llama" --input-ids 1,999
one_line_err; expect_err_contains "out of range"
expect_rc 1 "missing model" -- "$BMPLAN" run "$T/nope" --input-ids 1
one_line_err
expect_rc 1 "bad ids" -- "$BMPLAN" run "$F/tiny-llama" --input-ids 1,x
one_line_err
expect_rc 2 "no prompt" -- "$BMPLAN" run "$F/tiny-llama"
expect_rc 2 "bad dtype" -- "$BMPLAN" run "$F/tiny-llama" --input-ids 1 --dtype int8
expect_rc 1 "cuda without the library" -- env BMPLAN_CUDA_LIB="$T/none.so" "$BMPLAN" run "$F/tiny-llama" --input-ids 1 --backend cuda
one_line_err; expect_err_contains "cuda backend"
# a config that does not match the checkpoint's shapes
mkdir -p "$T/bad" && cp "$F/tiny-llama/model.safetensors" "$T/bad/" &&
    sed 's/"intermediate_size": 172/"intermediate_size": 100/' "$F/tiny-llama/config.json" >"$T/bad/config.json"
expect_rc 1 "shape mismatch" -- "$BMPLAN" run "$T/bad" --input-ids 1
one_line_err
# an architecture the runner does not implement (a graph file + checkpoint)
cat >"$T/opt.json" <<'EOF'
{"format": "bmplan-graph/1", "arch": "opt", "config": {}, "dtype": "float32",
 "root": {"class": "OPTForCausalLM", "params": {"w": [2]}}}
EOF
h='{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}   '   # 56 bytes: a multiple of 8
printf "\\x$(printf %02x ${#h})\\x00\\x00\\x00\\x00\\x00\\x00\\x00%s\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00" "$h" >"$T/opt.safetensors"
expect_rc 1 "unsupported architecture" -- "$BMPLAN" run "$T/opt.json" --checkpoint "$T/opt.safetensors" --input-ids 1
one_line_err; expect_err_contains "unsupported architecture 'opt'"
finish
