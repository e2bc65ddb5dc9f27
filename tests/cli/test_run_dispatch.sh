#!/usr/bin/env bash
# bmplan run with device maps: two virtual GPUs, GPU + cpu offload, GPU +
# cpu + disk offload (folders written by bmplan offload, with zstd and by
# reference, and by bmplan shard --device-map), all on the host, cpu_offload
# onto GPU 0, maps planned from --max-memory (peaks within the budgets, from
# --report), and one-line errors for bad maps and offload folders. Expected
# tokens and logits come from transformers (tests/fixtures/runner).
. "$(dirname "$0")/lib.sh"
F="$ROOT/tests/fixtures/runner"

prompt() { sed -n 's/.*"prompt": \[\([^]]*\)\].*/\1/p' "$F/$1.expected.json" | tr -d ' '; }
generated() { sed -n 's/.*"generated": \(\[[^]]*\]\).*/\1/p' "$F/$1.expected.json"; }
maxdiff() {
    awk 'FNR == 1 { f++ }
         { gsub(/[^-0-9.eE+]+/, " "); for (i = 1; i <= NF; i++) v[f, ++n[f]] = $i }
         END { m = 0; for (i = 1; i <= n[1]; i++) { d = v[1, i] - v[2, i]; if (d < 0) d = -d; if (d > m) m = d }
               if (n[1] != n[2]) m = 1e9; printf "%.9g\n", m }' "$1" "$2"
}
below() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
# run MODEL ARGS...: tokens must be transformers', logits within 1e-4
check_run() {
    local m=$1 what=$2; shift 2
    expect_rc 0 "$what: run" -- "$BMPLAN" run "$@" --input-ids "$(prompt $m)" --generate 10 -o "$T/logits.json"
    if [ "$(tail -n 1 "$T/out")" = "$(generated $m)" ]; then ok "$what: tokens as transformers"
    else notok "$what: tokens $(tail -n 1 "$T/out")"; fi
    sed -n 's/.*"logits_last": \(\[[^]]*\]\).*/\1/p' "$F/$m.expected.json" >"$T/want"
    local d; d=$(maxdiff "$T/logits.json" "$T/want")
    if below "$d" 1e-4; then ok "$what: logits within 1e-4"; else notok "$what: logits differ by $d"; fi
}
# every GPU's peak in a --report is at most its budget
peaks_within() {
    awk '/"budget": [0-9]/ { gsub(/[^0-9]/, "", $2); b = $2 }
         /"budget": null/ { b = -1 }
         /"peak_bytes"/ { gsub(/[^0-9]/, "", $2); if (b >= 0 && $2 + 0 > b + 0) bad = 1; n++ }
         END { exit !(n > 0 && !bad) }' "$1"
}

L="$F/tiny-llama" G="$F/tiny-gpt2"
cat >"$T/two.json" <<'EOF'
{"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 0, "model.layers.2": 1, "model.layers.3": 1, "model.norm": 1, "lm_head": 1}
EOF
check_run tiny-llama "two GPUs" "$L" --device-map "$T/two.json"
check_run tiny-llama "GPU + cpu (example map)" "$L" --device-map "$ROOT/examples/tiny-llama/device_map.json"
echo '{"": "cpu"}' >"$T/cpu.json"
check_run tiny-llama "all on the host" "$L" --device-map "$T/cpu.json"
check_run tiny-llama "cpu_offload onto GPU 0" "$L" --device-map "$T/cpu.json" --main-device 0

cat >"$T/disk.json" <<'EOF'
{"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.layers.2": "disk", "model.layers.3": "cpu", "model.norm": "disk", "lm_head": "disk"}
EOF
expect_rc 0 "offload folder" -- "$BMPLAN" offload "$L" --device-map "$T/disk.json" -o "$T/off" --quiet
check_run tiny-llama "GPU + cpu + disk" "$L" --device-map "$T/disk.json" --offload-folder "$T/off"
check_run tiny-llama "disk without prefetch" "$L" --device-map "$T/disk.json" --offload-folder "$T/off" --no-prefetch
expect_rc 0 "zstd offload folder" -- "$BMPLAN" offload "$L" --device-map "$T/disk.json" -o "$T/offz" --compress zstd --quiet
check_run tiny-llama "zstd offload" "$L" --device-map "$T/disk.json" --offload-folder "$T/offz"
expect_rc 0 "by-reference offload folder" -- "$BMPLAN" offload "$L" --device-map "$T/disk.json" -o "$T/offr" --by-reference --quiet
check_run tiny-llama "by-reference offload" "$L" --device-map "$T/disk.json" --offload-folder "$T/offr"
expect_rc 0 "shard with a device map" -- "$BMPLAN" shard "$L" -o "$T/sh" --device-map "$T/disk.json" --offload-folder "$T/shoff" --quiet
check_run tiny-llama "shard --device-map folders" "$T/sh" --device-map "$T/disk.json" --offload-folder "$T/shoff"
# disk reads are counted in the report
"$BMPLAN" run "$L" --device-map "$T/disk.json" --offload-folder "$T/off" --input-ids 1,2 --report "$T/r.json" >/dev/null
if grep -q '"disk_read": [1-9]' "$T/r.json"; then ok "disk reads reported"; else notok "no disk reads in the report"; fi

# GPT-2: the tied head on disk reads the embedding's bytes from the folder
cat >"$T/gdisk.json" <<'EOF'
{"transformer.wte": 0, "transformer.wpe": 0, "transformer.h.0": 0, "transformer.h.1": "cpu", "transformer.h.2": "disk", "transformer.h.3": "disk", "transformer.ln_f": "disk", "lm_head": "disk"}
EOF
expect_rc 0 "gpt2 offload folder" -- "$BMPLAN" offload "$G" --device-map "$T/gdisk.json" -o "$T/goff" --quiet
check_run tiny-gpt2 "gpt2 GPU + cpu + disk" "$G" --device-map "$T/gdisk.json" --offload-folder "$T/goff"

# maps planned from budgets: the run fits and every peak is within budget
for mm in 0=600KiB,1=600KiB,cpu=1GiB 0=450KiB,1=300KiB,cpu=1GiB; do
    check_run tiny-llama "planned for $mm" "$L" --max-memory "$mm" --report "$T/rb.json"
    if peaks_within "$T/rb.json"; then ok "peaks within $mm"; else notok "a peak exceeds $mm: $(grep -E 'budget|peak' "$T/rb.json" | tr -d '\n ')"; fi
done
# a budget given with a map is enforced: too small is an error, not an overrun
expect_rc 1 "budget too small for the map" -- "$BMPLAN" run "$L" --device-map "$T/two.json" --max-memory 0=100KiB,1=1MiB --input-ids 1,2
one_line_err; expect_err_contains "vgpu:0: out of memory"

# bad maps and folders: one line, exit 1, nothing computed
expect_rc 1 "disk map without a folder" -- "$BMPLAN" run "$L" --device-map "$T/disk.json" --input-ids 1
one_line_err; expect_err_contains "offload folder"
echo '{"model": 0}' >"$T/partial.json"
expect_rc 1 "map not covering the model" -- "$BMPLAN" run "$L" --device-map "$T/partial.json" --input-ids 1
one_line_err; expect_err_contains "lm_head.weight"
echo '{"": 0, "model.layers.7": 1}' >"$T/unknown.json"
expect_rc 1 "map naming a missing module" -- "$BMPLAN" run "$L" --device-map "$T/unknown.json" --input-ids 1
one_line_err; expect_err_contains "model.layers.7"
cp -r "$T/off" "$T/off_missing" && rm "$T/off_missing/lm_head.weight.dat"
expect_rc 1 "offload file missing" -- "$BMPLAN" run "$L" --device-map "$T/disk.json" --offload-folder "$T/off_missing" --input-ids 1
one_line_err; expect_err_contains "lm_head.weight"
cat >"$T/disk2.json" <<'EOF'
{"model.embed_tokens": "disk", "model.layers": 0, "model.norm": 0, "lm_head": 0}
EOF
expect_rc 1 "tensor absent from the folder" -- "$BMPLAN" run "$L" --device-map "$T/disk2.json" --offload-folder "$T/off" --input-ids 1
one_line_err; expect_err_contains "model.embed_tokens.weight"
finish
