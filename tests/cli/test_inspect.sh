#!/usr/bin/env bash
# bmplan inspect and the top-level program: help, version, usage errors,
# tables and JSON for graph files and checkpoints.
. "$(dirname "$0")/lib.sh"
G=$ROOT/tests/fixtures/golden/graphs
ST=$ROOT/tests/fixtures/safetensors

expect_rc 0 "bmplan --help" -- "$BMPLAN" --help
expect_out_contains "inspect"
expect_rc 0 "bmplan --version" -- "$BMPLAN" --version
expect_out_contains "bmplan 0."
expect_rc 2 "no command is a usage error" -- "$BMPLAN"
expect_rc 2 "unknown command" -- "$BMPLAN" frobnicate
expect_err_contains "unknown command 'frobnicate'"
expect_rc 2 "unknown global option" -- "$BMPLAN" --frob
expect_rc 0 "help inspect" -- "$BMPLAN" help inspect
expect_out_contains "--depth N"
expect_rc 0 "inspect --help" -- "$BMPLAN" inspect --help
expect_out_contains "--json"
expect_rc 2 "inspect: unknown option" -- "$BMPLAN" inspect --bogus "$G/gpt2.yaml"
expect_err_contains "unknown option '--bogus'"
expect_rc 2 "inspect: missing PATH" -- "$BMPLAN" inspect
expect_rc 2 "inspect: --depth needs an integer" -- "$BMPLAN" inspect "$G/gpt2.yaml" --depth x

# published parameter count (openai-community/gpt2: 124,439,808)
expect_rc 0 "inspect gpt2 table" -- "$BMPLAN" inspect "$G/gpt2.yaml"
expect_out_contains "124,439,808"
expect_out_contains "GPT2Block"
expect_rc 0 "inspect gpt2 json" -- "$BMPLAN" inspect "$G/gpt2.yaml" --json
if python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["parameters"]==124439808; assert d["largest_layer"]["names"]==["transformer.wte"]; assert d["modules"][0]["name"]==""' "$T/out" 2>/dev/null; then
    ok "gpt2 json: parameters and largest layer"
else
    notok "gpt2 json content: $(head -c 300 "$T/out")"
fi
# Llama-2-70B: 68,976,648,192 parameters; its largest layer is a decoder layer
expect_rc 0 "inspect llama-2-70b" -- "$BMPLAN" inspect "$ROOT/examples/llama-2-70b/graph.yaml"
expect_out_contains "68,976,648,192"
expect_out_contains "largest layer: model.layers.0 (LlamaDecoderLayer)"

# a Hugging Face config.json given as MODEL (by name or by content)
expect_rc 0 "inspect a config file" -- "$BMPLAN" inspect "$ROOT/tests/fixtures/golden/configs/llama-2-7b.json"
expect_out_contains "6,738,415,616"

# a checkpoint alone: the tree follows the tensor names
expect_rc 0 "inspect a safetensors file" -- "$BMPLAN" inspect "$ST/dtypes.safetensors" --json
expect_out_contains '"checkpoint"'
expect_rc 0 "inspect a sharded folder" -- "$BMPLAN" inspect "$ST/sharded"
expect_out_contains "checkpoint:"

# errors: one line naming the file, exit 1
expect_rc 1 "inspect a missing file" -- "$BMPLAN" inspect "$T/nope.yaml"
expect_err_contains "nope.yaml"
one_line_err
printf 'format: bmplan-graph/1\nroot:\n  class: M\n  modles: {}\n' >"$T/typo.yaml"
expect_rc 1 "inspect a graph with a typo" -- "$BMPLAN" inspect "$T/typo.yaml"
expect_err_contains "typo.yaml:4"
expect_err_contains "modles"
one_line_err
printf 'not a safetensors file' >"$T/bad.safetensors"
expect_rc 1 "inspect a corrupt safetensors file" -- "$BMPLAN" inspect "$T/bad.safetensors"
expect_err_contains "bad.safetensors"
one_line_err
finish
