#!/usr/bin/env bash
# bmplan plan: options, usage errors, output (stdout, -o FILE), the log and
# the report, accelerate's failures as exit 1 with a message; golden cases
# through the real program (all of them run in process in test_planner_golden).
. "$(dirname "$0")/lib.sh"
GOLD=$ROOT/tests/fixtures/golden
G=$GOLD/graphs

expect_rc 0 "plan --help" -- "$BMPLAN" plan --help
expect_out_contains "--max-memory SPEC"
expect_out_contains "--compat MODE"
expect_rc 0 "bmplan --help lists plan" -- "$BMPLAN" --help
expect_out_contains "compute a device map (accelerate's infer_auto_device_map)"
expect_rc 2 "plan: missing --max-memory" -- "$BMPLAN" plan "$G/gpt2.yaml"
expect_err_contains "missing --max-memory"
expect_rc 2 "plan: missing MODEL" -- "$BMPLAN" plan --max-memory 0=1GB
expect_rc 2 "plan: bad --compat" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory 0=1GB --compat 0.30
expect_rc 2 "plan: bad --strategy" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory 0=1GB --strategy fast
expect_rc 2 "plan: bad --special-dtype" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory 0=1GB --special-dtype x
expect_rc 1 "plan: bad budget" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory 0=10G
expect_err_contains "bmplan plan: budget for 0: size '10G' is not in a valid format"
one_line_err
expect_rc 1 "plan: unknown device" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory cuda:0=1GB
expect_err_contains "device 'cuda:0' is not recognized"
expect_rc 1 "plan: missing graph file" -- "$BMPLAN" plan "$T/nope.yaml" --max-memory 0=1GB

# spec §7.2's shape on a real model: GPT-2 (497.8 MB in float32) on a small GPU
expect_rc 0 "plan gpt2 everything on GPU 0" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory 0=1GiB
if [ "$(tr -d ' \n' <"$T/out")" = '{"":0}' ]; then ok "whole model on GPU 0"; else notok "map: $(cat "$T/out")"; fi
expect_rc 0 "plan gpt2 disk only" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory ''
if [ "$(tr -d ' \n' <"$T/out")" = '{"":"disk"}' ]; then ok "no budget: all on disk"; else notok "map: $(cat "$T/out")"; fi

# -o FILE: the map goes to the file, nothing on stdout
expect_rc 0 "plan -o FILE" -- "$BMPLAN" plan "$G/llama-2-7b.yaml" --max-memory 0=4GiB,cpu=8GiB -o "$T/map.json"
if [ -s "$T/map.json" ] && [ ! -s "$T/out" ] && grep -q '"model.embed_tokens": 0' "$T/map.json"; then
    ok "map written to the file"
else
    notok "-o: $(head -c 200 "$T/map.json" 2>&1)"
fi
ls "$T"/.map.json.tmp* >/dev/null 2>&1 && notok "temporary file left behind" || ok "no temporary left"

# the map is valid for bmplan check, against the same budgets
expect_rc 0 "check the planned map" -- "$BMPLAN" check "$G/llama-2-7b.yaml" --device-map "$T/map.json" --max-memory 0=4GiB,cpu=8GiB
expect_out_contains "valid"

# --verbose: accelerate's log on stderr; --report: the per-device table
expect_rc 0 "plan --verbose" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory 0=200MiB,cpu=1GiB --verbose --compat 0.27
expect_err_contains "Treating module transformer."
expect_err_contains "Splitting transformer."
expect_rc 0 "plan --report" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory 0=200MiB,cpu=1GiB --report
expect_err_contains "kept free"
expect_err_contains "unlimited"

# --no-split '' means no class is kept whole; the graph's list is the default
expect_rc 0 "plan default no-split" -- "$BMPLAN" plan "$G/llama-2-7b.yaml" --max-memory 0=3GiB,cpu=30GiB --no-clean
if grep -qE '"model\.layers\.[0-9]+\.' "$T/out"; then notok "a decoder layer was split: $(head -c 300 "$T/out")"; else ok "decoder layers kept whole"; fi
expect_rc 0 "plan --no-split ''" -- "$BMPLAN" plan "$G/llama-2-7b.yaml" --max-memory 0=3GiB,cpu=30GiB --no-clean --no-split ''
if grep -qE '"model\.layers\.[0-9]+\.' "$T/out"; then ok "layers split"; else notok "$(head -c 300 "$T/out")"; fi

# accelerate's failures in the compat modes: exit 1, one line, what it raises
expect_rc 1 "0.27 rejects 0GB" -- "$BMPLAN" plan "$G/llama-2-7b.yaml" --max-memory 0=0GB,cpu=50GiB --compat 0.27
expect_err_contains "ValueError"
one_line_err
expect_rc 0 "latest accepts 0GB" -- "$BMPLAN" plan "$G/llama-2-7b.yaml" --max-memory 0=0GB,cpu=50GiB --compat latest
expect_rc 1 "0.27 substring tie lookup" -- "$BMPLAN" plan "$G/quirks/substring-tie.yaml" --max-memory 0=300KB,cpu=10MB --compat 0.27 --no-split Block
expect_err_contains "IndexError"
expect_err_contains "--compat bmplan"
one_line_err
if grep -q '"error_type": "IndexError"' "$T/out"; then ok "error object on stdout"; else notok "stdout: $(cat "$T/out")"; fi
expect_rc 0 "bmplan handles the same input" -- "$BMPLAN" plan "$G/quirks/substring-tie.yaml" --max-memory 0=300KB,cpu=10MB --no-split Block
expect_rc 1 "balanced with a disk budget" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory 0=1GB,1=1GB,disk=9GB --strategy balanced --compat latest
expect_err_contains "RuntimeError"
expect_rc 0 "bmplan balances around a disk budget" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory 0=1GB,1=1GB,disk=9GB --strategy balanced
expect_rc 1 "compat dtype names are torch's" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory 0=1GB --dtype fp16 --compat 0.27
expect_err_contains "AttributeError"
expect_rc 0 "torch.float16 is accepted" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory 0=1GB --dtype torch.float16 --compat 0.27
expect_rc 0 "bmplan takes dtype aliases" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory 0=1GB --dtype fp16
expect_rc 1 "unknown dtype" -- "$BMPLAN" plan "$G/gpt2.yaml" --max-memory 0=1GB --dtype float33
expect_err_contains "unknown dtype 'float33'"

# golden cases through the program and the corpus' own comparison script
if command -v python3 >/dev/null 2>&1; then
    for id in gpt2--gpu-cpu-disk llama-2-70b--balanced-4-offload t5-3b--fp16-special-dtypes mixtral-8x7b-v0.1--gpu-cpu quirk-substring-tie-lm--gpu-cpu-50 quirk-tie-splittable--balanced-3 \
              quirk-split-drops-buffers--gpu-cpu-15 quirk-bool-fractions--no-clean rand-1038--gpu-cpu-disk \
              llama-2-7b--zero-GB-string quirk-top-buffer--no-split-none t5-3b--low0-no-gpu0; do
        case_file=$GOLD/cases/$id.json
        [ -e "$case_file" ] || continue
        for mode in 0.27 latest; do
            args=$(python3 - "$case_file" "$T/mm.json" <<'EOF'
import json, shlex, sys
c = json.load(open(sys.argv[1]))
json.dump(c["max_memory"], open(sys.argv[2], "w"))
a = [c["graph"], "--max-memory", "@" + sys.argv[2], "--no-split", ",".join(c["no_split"])]
if c["dtype"]: a += ["--dtype", c["dtype"]]
for k, v in (c["special_dtypes"] or {}).items(): a += ["--special-dtype", k + "=" + v]
if not c["clean"]: a += ["--no-clean"]
if c["balanced"]: a += ["--strategy", c["balanced"]]
print(" ".join(shlex.quote(x) for x in a))
EOF
)
            (cd "$GOLD" && eval "\"$BMPLAN\" plan $args --compat $mode" >"$T/actual.json" 2>"$T/err")
            version=$([ $mode = 0.27 ] && echo 0.27.2 || echo latest)
            if python3 "$GOLD/check_case.py" "$case_file" "$T/actual.json" --version $version --strict-order >"$T/verdict"; then
                ok "$id ($mode)"
            else
                notok "$id ($mode): $(cat "$T/verdict")"
            fi
        done
    done
fi
finish
