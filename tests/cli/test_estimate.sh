#!/usr/bin/env bash
# bmplan estimate and bmplan fleet: byte-exact weights of the reference
# graphs and their configs (tests/fixtures/estimate/reference_sizes.json,
# made by reference_sizes.py and checked against the published parameter
# counts), accelerate estimate-memory's published bert-base-cased figures,
# hand-computed KV caches, and the planner-backed fleet answers.
. "$(dirname "$0")/lib.sh"
G="$ROOT/tests/fixtures/golden"
E="$ROOT/tests/fixtures/estimate"
REF="$E/reference_sizes.json"

# ---- accelerate-compatible mode: the published bert-base-cased figures
# MODEL is the folder holding the published config.json, named as accelerate
# is given it; bmplan builds AutoModel (BertModel with its pooler) from it
expect_rc 0 "--like-accelerate on bert-base-cased's config" -- \
    sh -c 'cd "$1" && exec "$2" estimate bert-base-cased --like-accelerate' sh "$E" "$BMPLAN"
if cmp -s "$T/out" "$E/bert-base-cased-accelerate.txt"; then ok "accelerate's table, byte for byte"
else notok "table differs: $(diff "$T/out" "$E/bert-base-cased-accelerate.txt" | head -20)"; fi
expect_out_contains "413.18 MB"
expect_out_contains "84.95 MB"
# the hand-written BertModel graph gives the same figures
for m in "$E/bert-base-cased/config.json" "$E/bert-base-cased-model.yaml"; do
    expect_rc 0 "--like-accelerate --json ($(basename "$m"))" -- \
        "$BMPLAN" estimate "$m" --like-accelerate --json --dtypes float32
    v=$(jq -r '.rows[0].total_size + "|" + .rows[0].largest_layer + "|" + .largest_layer' "$T/out")
    [ "$v" = "413.18 MB|84.95 MB|embeddings.word_embeddings" ] && ok "JSON carries the same figures" \
        || notok "JSON figures: $v"
done
# a task model is counted with its head, and bmplan says so
expect_rc 0 "--like-accelerate on a graph with an LM head" -- \
    "$BMPLAN" estimate "$G/graphs/gpt2.yaml" --like-accelerate
expect_err_contains "AutoModel"
expect_rc 2 "--like-accelerate refuses bfloat16 (accelerate has none)" -- \
    "$BMPLAN" estimate "$E/bert-base-cased-model.yaml" --like-accelerate --dtypes bfloat16

# ---- the 16 reference graphs: weights per dtype, parameters, largest layer
for g in $(jq -r 'keys[]' "$REF"); do
    if ! "$BMPLAN" estimate "$G/graphs/$g.yaml" --json >"$T/out" 2>"$T/err"; then
        notok "$g: estimate failed: $(head -c 300 "$T/err")"; continue
    fi
    bad=$(jq -rn --slurpfile got "$T/out" --slurpfile ref "$REF" --arg g "$g" '
        $ref[0][$g] as $r | $got[0] as $o |
        [ (if $o.parameters != $r.params then "parameters \($o.parameters) != \($r.params)" else empty end),
          ($o.dtypes[] | . as $d | $r.dtypes[$d.dtype] as $x |
             (if $d.weights_bits != $x.total_bits then "\($d.dtype) weights_bits \($d.weights_bits) != \($x.total_bits)" else empty end),
             (if $d.largest_layer.bytes * 8 < $x.largest_bits or ($d.largest_layer.bytes - 1) * 8 >= $x.largest_bits
                 then "\($d.dtype) largest \($d.largest_layer.bytes)" else empty end),
             (if $d.largest_layer.name != $x.largest_name then "\($d.dtype) largest name \($d.largest_layer.name)" else empty end),
             (if $d.largest_layer.count != $x.n_largest then "\($d.dtype) ties \($d.largest_layer.count)" else empty end))
        ] | join("; ")')
    [ -z "$bad" ] && ok "$g: weights, parameters, largest layer exact for 5 dtypes" || notok "$g: $bad"
done

# ---- the same models from their published config.json (a model folder)
for g in $(jq -r 'keys[]' "$REF"); do
    mkdir -p "$T/cfg/$g" && cp "$G/configs/$g.json" "$T/cfg/$g/config.json"
    if ! "$BMPLAN" estimate "$T/cfg/$g" --json --dtypes float32,bfloat16 >"$T/out" 2>"$T/err"; then
        notok "$g config: estimate failed: $(head -c 300 "$T/err")"; continue
    fi
    bad=$(jq -rn --slurpfile got "$T/out" --slurpfile ref "$REF" --arg g "$g" '
        $ref[0][$g] as $r | $got[0] as $o |
        [ (if $o.parameters != $r.params then "parameters \($o.parameters)" else empty end),
          ($o.dtypes[] | select(.weights_bits != $r.dtypes[.dtype].total_bits) | "\(.dtype) \(.weights_bits)")
        ] | join("; ")')
    [ -z "$bad" ] && ok "$g config.json: same bytes as the graph" || notok "$g config.json: $bad"
done

# ---- KV cache, hand-computed
kv() { # graph dtype context batch -> kv bytes of a cache in that dtype
    "$BMPLAN" estimate "$G/graphs/$1.yaml" --dtypes "$2" --kv-dtype "$2" --context "$3" --batch "$4" --json 2>"$T/err" |
        jq -r '.dtypes[0].kv_cache.bytes_per_token, .dtypes[0].kv_cache.bytes' | tr '\n' ' '
}
# Llama-2-70B: 80 layers x 8 kv heads x 128 x 2 x 2 B = 327,680 B/token; x 4096 = 1.25 GiB
[ "$(kv llama-2-70b float16 4096 1)" = "327680 1342177280 " ] && ok "Llama-2-70B KV (GQA, 8 kv heads)" \
    || notok "Llama-2-70B KV: $(kv llama-2-70b float16 4096 1)"
# Mistral-7B: 32 x 8 x 128 x 2 x 2 = 131,072 B/token; x 8192 x 2
[ "$(kv mistral-7b-v0.1 bfloat16 8192 2)" = "131072 2147483648 " ] && ok "Mistral-7B KV" \
    || notok "Mistral-7B KV: $(kv mistral-7b-v0.1 bfloat16 8192 2)"
# gpt2: 12 layers x 12 heads x 64 x 2 x 4 B = 73,728 B/token; x 1024
[ "$(kv gpt2 float32 1024 1)" = "73728 75497472 " ] && ok "gpt2 KV" || notok "gpt2 KV: $(kv gpt2 float32 1024 1)"
# falcon-7b, multi-query: 32 x 1 x 64 x 2 x 2 = 8,192 B/token; x 2048
[ "$(kv falcon-7b bfloat16 2048 1)" = "8192 16777216 " ] && ok "falcon-7b KV (multi-query)" \
    || notok "falcon-7b KV: $(kv falcon-7b bfloat16 2048 1)"
[ "$(kv bert-base-uncased float32 512 1)" = "0 0 " ] && ok "bert: no KV cache" \
    || notok "bert KV: $(kv bert-base-uncased float32 512 1)"
# without --kv-dtype: float32, as bmplan run keeps it, whatever the weights
v=$("$BMPLAN" estimate "$G/graphs/llama-2-70b.yaml" --dtypes bfloat16 --context 4096 --json |
    jq -r '.dtypes[0] | "\(.kv_cache.dtype) \(.kv_cache.rule) \(.kv_cache.bytes) \(.workspace.layer_bytes) \(.workspace.bytes) \(.workspace.estimate)"')
# 80 x 8 x 128 x 2 x 4 B x 4096; layer set 4 B x 4096 x (3 x 8192 + 2 x 28672), plus the ids
[ "$v" = "float32 bmplan run 2684354560 1342177280 1342193664 true" ] \
    && ok "default KV and workspace: bmplan run's float32 rules" || notok "run rules: $v"
expect_rc 0 "table with --context marks estimates" -- \
    "$BMPLAN" estimate "$G/graphs/llama-2-70b.yaml" --dtypes bfloat16 --context 4096 --training adam
expect_out_contains "workspace*"
expect_out_contains "* estimate"
expect_out_contains "2.50 GiB"
expect_out_contains "as bmplan run keeps it"
expect_out_contains "68,976,648,192 parameters"

# ---- usage and input errors
expect_rc 2 "unknown dtype is a usage error" -- "$BMPLAN" estimate "$G/graphs/gpt2.yaml" --dtypes float33
expect_rc 2 "--batch without --context" -- "$BMPLAN" estimate "$G/graphs/gpt2.yaml" --batch 2
expect_rc 2 "--training other than adam" -- "$BMPLAN" estimate "$G/graphs/gpt2.yaml" --training sgd
expect_rc 1 "missing model file" -- "$BMPLAN" estimate "$T/nope.yaml"
one_line_err
expect_err_contains "bmplan estimate:"
printf 'format: bmplan-graph/1\nroot: {class: X, params: {w: [2, 2]}}\narch: mamba\n' >"$T/m.yaml"
expect_rc 1 "--context on an architecture without rules" -- "$BMPLAN" estimate "$T/m.yaml" --context 8
expect_err_contains "mamba"
expect_rc 0 "-o writes the JSON file" -- "$BMPLAN" estimate "$G/graphs/gpt2.yaml" --json -o "$T/e.json"
[ "$(jq -r .format "$T/e.json")" = "bmplan-estimate/1" ] && ok "-o file is the JSON" || notok "-o file"

# ---- fleet: every answer is a planner run
L70="$G/graphs/llama-2-70b.yaml"
# Llama-2-70B bfloat16 (128.64 GiB) at 4k context, batch 1, on 80 GB GPUs: 2
for gpu in h100 a100-80gb 80GiB; do
    expect_rc 0 "fleet Llama-2-70B on $gpu" -- \
        "$BMPLAN" fleet "$L70" --gpu "$gpu" --dtype bfloat16 --context 4096 --batch 1 --json
    [ "$(jq -r '"\(.gpus) \(.fits) \(.kv_cache_bytes) \(.kv_dtype) \(.workspace_is_estimate)"' "$T/out")" = "2 true 2684354560 float32 true" ] \
        && ok "2 x $gpu hold Llama-2-70B" || notok "$gpu: $(jq -c '{gpus,fits,kv_cache_bytes}' "$T/out")"
done
# on 24 GB A10s: 7 (derivation in tests/unit/test_estimate.c)
expect_rc 0 "fleet Llama-2-70B on A10" -- "$BMPLAN" fleet "$L70" --gpu a10 --dtype bfloat16 --json
[ "$(jq -r '.gpus, ([.devices[].layers] | add)' "$T/out" | tr '\n' ' ')" = "7 80 " ] \
    && ok "7 x A10, every layer placed" || notok "A10: $(jq -c '{gpus}' "$T/out")"
# the budgets shown reproduce the map: the same weights per GPU
mm=$(jq -r .max_memory "$T/out")
case $mm in 0=*KiB,1=*KiB,*6=*KiB) ok "max_memory lists 7 GPUs in KiB" ;; *) notok "max_memory: $mm" ;; esac
jq -c .device_map "$T/out" >"$T/fleet_map.json"
expect_rc 0 "bmplan plan with the budgets fleet printed" -- \
    "$BMPLAN" plan "$L70" --dtype bfloat16 --max-memory "$mm"
jq -c . "$T/out" >"$T/plan_map.json"
cmp -s "$T/fleet_map.json" "$T/plan_map.json" && ok "bmplan plan gives fleet's map, key order too" \
    || notok "maps differ: $(diff "$T/fleet_map.json" "$T/plan_map.json" | head -5)"
# fixed count: fits, longest context, largest batch
expect_rc 0 "fleet with a fixed count" -- "$BMPLAN" fleet "$L70" --gpu h100:2 --dtype bfloat16 --json
[ "$(jq -r '"\(.fits) \(.max_context)"' "$T/out")" = "true 4096" ] && ok "2 x H100: the model's 4096 positions" \
    || notok "fixed: $(jq -c '{fits,max_context,max_batch}' "$T/out")"
[ "$(jq -r '.max_batch >= 1' "$T/out")" = true ] && ok "a batch fits" || notok "max_batch"
# too few GPUs: what is offloaded and streams per token
expect_rc 0 "fleet offload report" -- "$BMPLAN" fleet "$L70" --gpu a10:4 --dtype bfloat16 --cpu 32GiB --json
[ "$(jq -r '"\(.fits) \(.max_context) \(.offload.stream_bytes_per_token == .offload.cpu_bytes + .offload.disk_bytes) \(.offload.disk_bytes > 0)"' "$T/out")" = "false 0 true true" ] \
    && ok "4 x A10 + 32 GiB CPU: offloads, some to disk" || notok "offload: $(jq -c .offload "$T/out")"
expect_rc 0 "fleet table for people" -- "$BMPLAN" fleet "$L70" --gpu a10:4 --dtype bfloat16
expect_out_contains "streamed to GPU 0 for every token"
expect_out_contains "* estimate"
expect_out_contains "bmplan plan"
expect_rc 0 "--list-gpus" -- "$BMPLAN" fleet --list-gpus
expect_out_contains "h200"
expect_rc 2 "--gpu is required" -- "$BMPLAN" fleet "$L70"
expect_rc 2 "unknown GPU type" -- "$BMPLAN" fleet "$L70" --gpu v100
expect_err_contains "unknown GPU type"
expect_rc 2 "--cpu needs a count" -- "$BMPLAN" fleet "$L70" --gpu h100 --cpu 64GiB
expect_rc 1 "a GPU too small for one layer" -- "$BMPLAN" fleet "$L70" --gpu 4GiB
one_line_err

finish
