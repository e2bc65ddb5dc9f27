#!/usr/bin/env bash
# --max-memory auto (plan, check, run): budgets read from this machine as
# accelerate's get_max_memory() reads them: every GPU's free memory (none
# here without a GPU: the CUDA backend says why), then "cpu" = the
# available RAM of /proc/meminfo; later --max-memory specs override keys;
# one line on stderr says what was found.
. "$(dirname "$0")/lib.sh"
F=$ROOT/tests/fixtures/runner
BMRUN="$(dirname "$BMPLAN")/bmrun"
prompt() { sed -n 's/.*"prompt": \[\([^]]*\)\].*/\1/p' "$F/$1.expected.json" | tr -d ' '; }
generated() { sed -n 's/.*"generated": \(\[[^]]*\]\).*/\1/p' "$F/$1.expected.json"; }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    ok "# SKIP a GPU is present: tests/gpu/device_check.sh checks auto there"
    finish
fi
map_is() { # the plan printed on stdout is exactly {"": DEV}
    if [ "$(jq -c . "$T/out" 2>/dev/null)" = "{\"\":$1}" ]; then ok "map is {\"\": $1}"
    else notok "map: $(head -c 200 "$T/out"), wanted {\"\": $1}"; fi
}

expect_rc 0 "plan --max-memory auto" -- "$BMPLAN" plan "$F/tiny-llama" --max-memory auto
map_is '"cpu"'
one_line_err
expect_err_contains "bmplan plan: --max-memory auto: cpu="
expect_err_contains "(no GPU: cuda backend:"
# the cpu figure is MemAvailable (GiB, as printed), within what moves
# between the two reads
said=$(sed -n 's/.*cpu=\([0-9.]*\) GiB available.*/\1/p' "$T/err")
avail=$(awk '/^MemAvailable:/ {printf "%.2f", $2 / 1048576}' /proc/meminfo)
if [ -n "$said" ] && awk -v a="$said" -v b="$avail" 'BEGIN { d = a - b; exit !(d < 0.5 && d > -0.5) }'; then
    ok "cpu budget $said GiB is MemAvailable ($avail GiB)"
else
    notok "cpu budget '$said' GiB, MemAvailable $avail GiB"
fi

# a later spec overrides auto's keys, as a dict update does
expect_rc 0 "plan --max-memory auto --max-memory cpu=0" -- \
    "$BMPLAN" plan "$F/tiny-llama" --max-memory auto --max-memory cpu=0
map_is '"disk"'
expect_rc 0 "plan auto with --strategy balanced" -- \
    "$BMPLAN" plan "$F/tiny-llama" --max-memory auto --strategy balanced
map_is '"cpu"'

# check: the map against this machine
echo '{"": "cpu"}' >"$T/map.json"
expect_rc 0 "check --max-memory auto" -- "$BMPLAN" check "$F/tiny-llama" --device-map "$T/map.json" \
    --max-memory auto
expect_err_contains "bmplan check: --max-memory auto: cpu="

# run: the planned map gives transformers' tokens; with the CPU backend
# auto reads RAM only
p=$(prompt tiny-llama)
expect_rc 0 "run --max-memory auto" -- "$BMRUN" "$F/tiny-llama" --max-memory auto --input-ids "$p" \
    --generate 10
got=$(tail -n 1 "$T/out")
if [ "$got" = "$(generated tiny-llama)" ]; then ok "run auto: tokens as transformers"
else notok "run auto: got $got, want $(generated tiny-llama)"; fi
expect_err_contains "bmplan run: --max-memory auto: cpu="
expect_err_contains "RAM only"

# auto is a whole spec, not a size
expect_rc 1 "auto inside a spec is refused" -- "$BMPLAN" plan "$F/tiny-llama" --max-memory 0=auto
one_line_err
finish
