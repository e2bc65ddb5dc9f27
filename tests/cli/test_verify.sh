#!/usr/bin/env bash
# bmplan verify: good folders pass; each kind of damage is found, named,
# and makes it exit 1, with every problem listed.
. "$(dirname "$0")/lib.sh"
F=$ROOT/tests/fixtures/shard

"$BMPLAN" shard "$F/tiny" -o "$T/m" --max-shard-size 600 -q
"$BMPLAN" shard "$F/tiny" -o "$T/one" -q
"$BMPLAN" offload "$F/tiny" -o "$T/o" -q
expect_rc 0 "a sharded folder" -- "$BMPLAN" verify "$T/m"
expect_out_contains "11 tensors in 4 files, 4 digests verified"
expect_rc 0 "a single file" -- "$BMPLAN" verify "$T/one/model.safetensors"
expect_out_contains "1 digest verified"
expect_rc 0 "a checkpoint bmplan did not write" -- "$BMPLAN" verify "$F/tiny"
expect_out_contains "without a recorded digest"

# flip one byte inside a shard's data: same size, different digest
cp -r "$T/m" "$T/m2"
f=$T/m2/model-00002-of-00004.safetensors
printf '\x55' | dd of="$f" bs=1 seek=$(( $(stat -c %s "$f") - 3 )) conv=notrunc 2>/dev/null
expect_rc 1 "a changed byte" -- "$BMPLAN" verify "$T/m2"
expect_err_contains "model-00002-of-00004.safetensors: content digest"
expect_err_contains "1 problem"

cp "$T/one/model.safetensors" "$T/single.safetensors"
printf '\xaa' | dd of="$T/single.safetensors" bs=1 seek=$(( $(stat -c %s "$T/single.safetensors") - 1 )) conv=notrunc 2>/dev/null
expect_rc 1 "a changed byte in a single file" -- "$BMPLAN" verify "$T/single.safetensors"
expect_err_contains "__metadata__.bmplan_digest records"

cp -r "$T/m" "$T/m3"
rm "$T/m3/model-00003-of-00004.safetensors"
expect_rc 1 "a missing shard" -- "$BMPLAN" verify "$T/m3"
expect_err_contains "model-00003-of-00004.safetensors"

cp -r "$T/m" "$T/m4"
sed -i 's/"total_size": 1871/"total_size": 1872/' "$T/m4/model.safetensors.index.json"
expect_rc 1 "a wrong total_size" -- "$BMPLAN" verify "$T/m4"
expect_err_contains "metadata.total_size is not 1871"

# offload folders: a changed .dat, a truncated one, a hostile entry; all listed
cp -r "$T/o" "$T/o2"
printf '\x7f' | dd of="$T/o2/model.layers.0.w.dat" bs=1 seek=5 conv=notrunc 2>/dev/null
truncate -s 10 "$T/o2/lm_head.weight.dat"
sed -i 's/^{$/{\n  "..\/escape": {"dtype": "float32", "shape": [1]},/' "$T/o2/index.json"
expect_rc 1 "a damaged offload folder" -- "$BMPLAN" verify "$T/o2"
expect_err_contains "tensor 'model.layers.0.w': content digest"
expect_err_contains "lm_head.weight.dat: tensor 'lm_head.weight': file holds 10 bytes, shape and dtype say 512"
expect_err_contains "outside the offload folder"
expect_err_contains "3 problems"
expect_rc 1 "a path that is nothing" -- "$BMPLAN" verify "$T/none"
expect_rc 2 "no PATH" -- "$BMPLAN" verify
finish
