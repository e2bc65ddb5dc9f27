#!/usr/bin/env bash
# bmplan check: coverage, unknown and nested keys, tied parameters on one
# device, budgets; exit 1 with the list of problems.
. "$(dirname "$0")/lib.sh"
G=$ROOT/tests/fixtures/golden/graphs

expect_rc 0 "check --help" -- "$BMPLAN" check --help
expect_out_contains "--device-map FILE"
expect_rc 2 "check: missing --device-map" -- "$BMPLAN" check "$G/gpt2.yaml"
expect_rc 2 "check: missing MODEL" -- "$BMPLAN" check --device-map x.json

# GPT-2: 124,439,808 float32 parameters (lm_head.weight is transformer.wte's)
# plus 12 x (1024 x 1024 bool + one float32) attention buffers:
# 497,759,232 + 1,572,912 = 499,332,144 bytes = 476.20 MiB
echo '{"": 0}' >"$T/all0.json"
expect_rc 0 "whole model on GPU 0" -- "$BMPLAN" check "$G/gpt2.yaml" --device-map "$T/all0.json" --max-memory 0=1GB
expect_out_contains "476.20 MiB"
expect_out_contains "valid"
expect_rc 1 "over budget" -- "$BMPLAN" check "$G/gpt2.yaml" --device-map "$T/all0.json" --max-memory 0=499332143
expect_err_contains "device 0 receives 476.20 MiB, over its budget"
expect_rc 0 "exactly the budget" -- "$BMPLAN" check "$G/gpt2.yaml" --device-map "$T/all0.json" --max-memory 0=499332144
expect_rc 1 "a device without a budget" -- "$BMPLAN" check "$G/gpt2.yaml" --device-map "$T/all0.json" --max-memory 1=1GB
expect_err_contains "device 0 receives tensors but has no budget"

echo '{"transformer": 0, "lm_head": "cpu"}' >"$T/tied.json"
expect_rc 1 "tied parameters on two devices" -- "$BMPLAN" check "$G/gpt2.yaml" --device-map "$T/tied.json"
expect_err_contains "tied parameters are on different devices: lm_head.weight -> cpu transformer.wte.weight -> 0"
expect_err_contains "1 problem"

cat >"$T/holes.json" <<'EOF'
{"transformer.h": 0, "transformer.h.3.mlp": 1, "transformer.h.12": 0, "lm_head": "disk"}
EOF
expect_rc 1 "missing, unknown and nested keys" -- "$BMPLAN" check "$G/gpt2.yaml" --device-map "$T/holes.json"
expect_err_contains "parameter 'transformer.wte.weight' has no device"
expect_err_contains "parameter 'transformer.ln_f.bias' has no device"
expect_err_contains "key 'transformer.h.12' is not a module, parameter or buffer of the model"
expect_err_contains "key 'transformer.h.3.mlp' is inside key 'transformer.h'"
if grep -q "attn.bias' has no device" "$T/err"; then notok "non-persistent buffers need no device"; else ok "non-persistent buffers need no device"; fi

echo '{"": "gpu0"}' >"$T/bad.json"
expect_rc 1 "bad device value" -- "$BMPLAN" check "$G/gpt2.yaml" --device-map "$T/bad.json"
expect_err_contains "bad.json"
one_line_err
printf '{"a": 0' >"$T/trunc.json"
expect_rc 1 "truncated JSON" -- "$BMPLAN" check "$G/gpt2.yaml" --device-map "$T/trunc.json"
one_line_err

# accelerate 0.27 drops a split module's own buffers: its map fails the check;
# bmplan's map for the same request passes
Q=$G/quirks/split-drops-buffers.yaml
expect_rc 0 "plan 0.27" -- "$BMPLAN" plan "$Q" --max-memory 0=1575340,cpu=10501800 --no-split Block --compat 0.27 -o "$T/m027.json"
expect_rc 1 "0.27's map misses enc.freq" -- "$BMPLAN" check "$Q" --device-map "$T/m027.json"
expect_err_contains "buffer 'enc.freq' has no device"
expect_rc 0 "plan bmplan" -- "$BMPLAN" plan "$Q" --max-memory 0=1575340,cpu=10501800 --no-split Block -o "$T/mbm.json"
expect_rc 0 "bmplan's map is valid" -- "$BMPLAN" check "$Q" --device-map "$T/mbm.json" --max-memory 0=1575340,cpu=10501800
finish
