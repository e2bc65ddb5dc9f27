#!/usr/bin/env bash
# bmplan graph: config.json and checkpoints to graph files, atomic -o,
# formats, and usage/input errors.
. "$(dirname "$0")/lib.sh"
C=$ROOT/tests/fixtures/golden/configs
G=$ROOT/tests/fixtures/golden/graphs
ST=$ROOT/tests/fixtures/safetensors
TB=$ROOT/tests/fixtures/torchbin

expect_rc 0 "graph --help" -- "$BMPLAN" graph --help
expect_out_contains "--from-config"
expect_rc 2 "graph needs a source" -- "$BMPLAN" graph
expect_err_contains "exactly one of --from-config and --from-checkpoint"
expect_rc 2 "graph takes only one source" -- "$BMPLAN" graph --from-config "$C/gpt2.json" --from-checkpoint "$ST/sharded"
expect_rc 2 "graph: bad --format" -- "$BMPLAN" graph --from-config "$C/gpt2.json" --format xml

# config -> YAML file -> the published parameter counts
for pair in gpt2:124,439,808 llama-2-7b:6,738,415,616 mixtral-8x7b-v0.1:46,702,792,704 t5-3b:2,851,598,336; do
    m=${pair%%:*} n=${pair#*:}
    expect_rc 0 "graph --from-config $m" -- "$BMPLAN" graph --from-config "$C/$m.json" -o "$T/$m.yaml"
    expect_rc 0 "inspect the written $m graph" -- "$BMPLAN" inspect "$T/$m.yaml"
    expect_out_contains "$n"
done
# JSON by extension, and it reads back to the same YAML as the reference graph writes
expect_rc 0 "graph to .json" -- "$BMPLAN" graph --from-config "$C/gpt2.json" -o "$T/gpt2.json"
if head -c1 "$T/gpt2.json" | grep -q '{'; then ok "output is JSON"; else notok "output is not JSON"; fi
expect_rc 0 "graph --from-config --format yaml" -- "$BMPLAN" graph --from-config "$C/gpt2.json" --format yaml
cp "$T/out" "$T/a.yaml"
expect_rc 0 "inspect JSON graph" -- "$BMPLAN" inspect "$T/gpt2.json" --json
expect_out_contains '"parameters": 124439808'

# checkpoints: safetensors folder and a PyTorch .bin file
expect_rc 0 "graph --from-checkpoint folder" -- "$BMPLAN" graph --from-checkpoint "$ST/sharded"
expect_out_contains "format: bmplan-graph/1"
expect_out_contains "ModuleList"
binfile=$(ls "$TB"/*.bin 2>/dev/null | head -1)
if [ -n "$binfile" ]; then
    expect_rc 0 "graph --from-checkpoint .bin" -- "$BMPLAN" graph --from-checkpoint "$TB/module.bin"
    expect_out_contains "format: bmplan-graph/1"
fi

# errors
printf '{"model_type": "mamba"}' >"$T/config.json"
expect_rc 1 "unknown model_type" -- "$BMPLAN" graph --from-config "$T/config.json"
expect_err_contains "mamba"
one_line_err
expect_rc 1 "missing config" -- "$BMPLAN" graph --from-config "$T/none.json"
expect_err_contains "none.json"
# a failed run leaves an existing output untouched
echo keep >"$T/keep.yaml"
expect_rc 1 "failed graph keeps old output" -- "$BMPLAN" graph --from-config "$T/config.json" -o "$T/keep.yaml"
if [ "$(cat "$T/keep.yaml")" = keep ]; then ok "old output intact"; else notok "old output changed"; fi
if ls -a "$T" | grep -q '\.tmp\.'; then notok "temporary left behind"; else ok "no temporary left"; fi
finish
