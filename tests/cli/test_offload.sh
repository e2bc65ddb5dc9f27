#!/usr/bin/env bash
# bmplan offload: folders byte for byte as accelerate 0.27.2's
# offload_state_dict writes them (tests/fixtures/shard/make_fixtures.py),
# --by-reference entries as transformers builds them, device maps,
# merging like accelerate, zstd, --force/--merge rules.
. "$(dirname "$0")/lib.sh"
F=$ROOT/tests/fixtures/shard
E=$F/expect
SRC=$(cd "$F/tiny" && pwd -P)/model.safetensors

same_tree() {
    local got=$1 want=$2 what=$3; shift 3
    if diff -r "$@" "$got" "$want" >"$T/diff" 2>&1; then ok "$what"; else notok "$what: $(head -c 300 "$T/diff")"; fi
}

expect_rc 0 "offload every tensor" -- "$BMPLAN" offload "$F/tiny" -o "$T/all"
same_tree "$T/all" "$E/offload-all" "index.json and .dat files as accelerate writes them" -x bmplan.json
if grep -q '"model.empty"' "$T/all/bmplan.json" && ! grep -q '"model.empty"' "$T/all/index.json"; then
    ok "the empty tensor is kept in bmplan.json, not index.json"; else notok "empty tensor placement"; fi
expect_rc 0 "verify it" -- "$BMPLAN" verify "$T/all"
expect_out_contains "11 tensors, 10 digests verified"

expect_rc 0 "--jobs 3" -- "$BMPLAN" offload "$F/tiny" -o "$T/all3" --jobs 3 -q
same_tree "$T/all3" "$T/all" "--jobs 3 writes the same bytes as --jobs 1 (bmplan.json included)"
expect_rc 0 "zstd with --jobs 1 and 3" -- sh -c "'$BMPLAN' offload '$F/tiny' -o '$T/zj1' --compress zstd -q && '$BMPLAN' offload '$F/tiny' -o '$T/zj3' --compress zstd -q -j 3"
same_tree "$T/zj3" "$T/zj1" "compressed: same bytes for any --jobs"

expect_rc 0 "offload as bfloat16" -- "$BMPLAN" offload "$F/tiny" -o "$T/bf" --dtype bfloat16 -q
same_tree "$T/bf" "$E/offload-bf16" "bfloat16 .dat files (raw 16-bit patterns) and \"bfloat16\" entries" -x bmplan.json

expect_rc 0 "offload the disk part of a device map" -- "$BMPLAN" offload "$F/tiny" -o "$T/dm" \
    --device-map "$F/devmap.json" -q
same_tree "$T/dm" "$E/shard-devmap-offload" "only the disk-mapped tensors" -x bmplan.json

expect_rc 1 "an existing folder is refused" -- "$BMPLAN" offload "$F/tiny" -o "$T/dm"
expect_err_contains "already exists"
expect_rc 0 "--merge adds to it" -- "$BMPLAN" offload "$F/tiny" -o "$T/dm" --merge
same_tree "$T/dm" "$E/offload-merge" "merged index: old keys in place, new ones appended (accelerate's update)" -x bmplan.json
expect_rc 0 "the merged folder verifies" -- "$BMPLAN" verify "$T/dm"
expect_rc 0 "--force replaces it" -- "$BMPLAN" offload "$F/tiny" -o "$T/dm" --force --device-map "$F/devmap.json" -q
same_tree "$T/dm" "$E/shard-devmap-offload" "replaced whole" -x bmplan.json
expect_rc 2 "--force with --merge" -- "$BMPLAN" offload "$F/tiny" -o "$T/dm" --force --merge

expect_rc 0 "--by-reference" -- "$BMPLAN" offload "$F/tiny" -o "$T/ref" --by-reference
sed "s|@SRC@|$SRC|" "$E/by-reference.index.json" >"$T/want-ref.json"
if cmp -s "$T/want-ref.json" "$T/ref/index.json"; then ok "entries point into the safetensors file (absolute path)"; else notok "by-reference index differs"; fi
if [ "$(ls "$T/ref")" = "$(printf 'bmplan.json\nindex.json')" ]; then ok "nothing copied"; else notok "by-reference copied: $(ls "$T/ref")"; fi
expect_rc 0 "it verifies from another folder" -- sh -c "cd / && '$BMPLAN' verify '$T/ref'"
expect_rc 0 "--by-reference with --dtype" -- "$BMPLAN" offload "$F/tiny" -o "$T/refbf" --by-reference --dtype bfloat16 -q
sed "s|@SRC@|$SRC|; s|\"dtype\": \"float32\"|\"dtype\": \"bfloat16\"|" "$E/by-reference.index.json" >"$T/want-refbf.json"
if cmp -s "$T/want-refbf.json" "$T/refbf/index.json"; then
    ok "entries ask for the cast at load time (ints and bools keep their dtype)"; else notok "by-reference --dtype index differs"; fi
expect_rc 0 "and it verifies" -- "$BMPLAN" verify "$T/refbf"
expect_rc 2 "--by-reference cannot compress" -- "$BMPLAN" offload "$F/tiny" -o "$T/x" --by-reference --compress zstd

expect_rc 0 "--compress zstd" -- "$BMPLAN" offload "$F/tiny" -o "$T/z" --compress zstd:5
expect_err_contains "for \`bmplan run\` only"
if [ ! -e "$T/z/index.json" ] && [ -f "$T/z/model.embed.weight.dat.zst" ]; then ok "compressed entries live in bmplan.json only"; else notok "zstd layout: $(ls "$T/z")"; fi
expect_rc 0 "the zstd folder verifies" -- "$BMPLAN" verify "$T/z"
expect_out_contains "10 digests verified"
expect_rc 2 "bad --compress" -- "$BMPLAN" offload "$F/tiny" -o "$T/x" --compress gzip
expect_rc 2 "zstd level out of range" -- "$BMPLAN" offload "$F/tiny" -o "$T/x" --compress zstd:30
expect_rc 2 "missing -o" -- "$BMPLAN" offload "$F/tiny"
expect_rc 1 "a missing model" -- "$BMPLAN" offload "$T/nothing-here" -o "$T/x"
one_line_err
finish
