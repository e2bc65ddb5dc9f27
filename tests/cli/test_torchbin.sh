#!/usr/bin/env bash
# PyTorch .bin checkpoints on the command line: files written by PyTorch are
# inspected like any checkpoint; every hostile file of
# tests/fixtures/torchbin/expected_errors.tsv is refused with a one-line
# "bmplan inspect: FILE: ..." message and exit status 1.
. "$(dirname "$0")/lib.sh"
F=$ROOT/tests/fixtures/torchbin

expect_rc 0 "inspect a torch.save state dict" -- "$BMPLAN" inspect "$F/module.bin"
expect_out_contains "10 tensors"
expect_rc 0 "inspect a sharded .bin folder" -- "$BMPLAN" inspect "$F/sharded"
expect_out_contains "pytorch_model-00002-of-00002.bin"
expect_rc 0 "inspect a .bin index" -- "$BMPLAN" inspect "$F/sharded/pytorch_model.bin.index.json" --json
if python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); c=d["checkpoint"]; assert c["tensors"]==10, c; assert d["dtypes"]["int64"]["tensors"]==1' "$T/out" 2>/dev/null; then
    ok "sharded .bin json: 10 tensors, one int64"
else
    notok "sharded .bin json: $(head -c 300 "$T/out")"
fi
expect_rc 0 "inspect float8 and uint tensors (torch >= 2.1 records)" -- "$BMPLAN" inspect "$F/v3_dtypes.bin" --json
expect_out_contains "float8_e4m3fn"

expect_rc 1 "legacy format" -- "$BMPLAN" inspect "$F/legacy.bin"
expect_err_contains "legacy torch format not supported"
one_line_err

while IFS=$'\t' read -r file words; do
    case $file in '#'*|'') continue ;; esac
    expect_rc 1 "refuses $file" -- "$BMPLAN" inspect "$F/$file"
    if grep -qiF -- "$words" "$T/err" && grep -qF -- "bmplan inspect: $F/$file: " "$T/err"; then
        ok "$file: message names the file and says '$words'"
    else
        notok "$file: message lacks '$words': $(head -c 300 "$T/err")"
    fi
    one_line_err
done < "$F/expected_errors.tsv"
finish
