#!/usr/bin/env bash
# PyTorch .bin checkpoints through the other commands: every .bin fixture
# that bmplan reads (and the sharded/ folder and its index) converted
# to safetensors by `bmplan shard`, each tensor's bytes compared with the
# SHA-256 PyTorch gave (tests/fixtures/torchbin/digests.tsv, written by
# make_fixtures.py from t.contiguous()), non-contiguous views included;
# dtypes.bin (complex128 has no safetensors dtype) and views.bin through
# `bmplan offload` too; `bmplan plan` and `bmplan inspect` on .bin checkpoints.
. "$(dirname "$0")/lib.sh"
F=$ROOT/tests/fixtures/torchbin
before=$(cd "$F" && find . -type f | sort | xargs sha256sum | sha256sum)

# tensors.py digests.tsv PREFIX DIR safetensors|offload: one line per
# difference between the tensors in DIR and the digests.tsv rows whose file
# is PREFIX (a file name, or a folder ending in /), then "N tensors".
cat >"$T/tensors.py" <<'EOF'
import glob, hashlib, json, os, struct, sys
tsv, prefix, out, kind = sys.argv[1:5]
# safetensors dtype codes of PyTorch's dtypes (the safetensors format spec)
ST = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
      "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
      "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
      "uint16": "U16", "uint32": "U32", "uint64": "U64", "complex64": "C64"}
want = {}
for line in open(tsv):
    if line.startswith("#"):
        continue
    f, name, dtype, shape, _stride, _off, _contig, _group, _fo, sha = line.rstrip("\n").split("\t")
    if f == prefix or (prefix.endswith("/") and f.startswith(prefix)):
        want[name] = (dtype, [] if shape == "-" else [int(d) for d in shape.split(",")], sha)
got, bad = {}, []
if kind == "safetensors":
    files = sorted(glob.glob(os.path.join(out, "*.safetensors")))
    index = os.path.join(out, "model.safetensors.index.json")
    weight_map = json.load(open(index))["weight_map"] if os.path.exists(index) else None
    for path in files:
        with open(path, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
            for name, e in header.items():
                if name == "__metadata__":
                    continue
                a, b = e["data_offsets"]
                fh.seek(8 + n + a)
                got[name] = (e["dtype"], e["shape"], hashlib.sha256(fh.read(b - a)).hexdigest())
                if weight_map is not None and weight_map.get(name) != os.path.basename(path):
                    bad.append("%s: in %s, the index says %s" % (name, os.path.basename(path), weight_map.get(name)))
    if weight_map is not None and set(weight_map) != set(got):
        bad.append("index names %d tensors, the shards hold %d" % (len(weight_map), len(got)))
    want = {k: (ST[d], s, h) for k, (d, s, h) in want.items()}
else:
    for name, e in json.load(open(os.path.join(out, "index.json"))).items():
        with open(os.path.join(out, name + ".dat"), "rb") as fh:
            got[name] = (e["dtype"], e["shape"], hashlib.sha256(fh.read()).hexdigest())
    # zero-element tensors, which accelerate cannot hold, are in bmplan.json
    for name, e in json.load(open(os.path.join(out, "bmplan.json")))["tensors"].items():
        if e.get("storage") == "empty":
            got[name] = (e["dtype"], e["shape"], hashlib.sha256(b"").hexdigest())
for name in sorted(set(want) | set(got)):
    if name not in got:
        bad.append("%s: missing" % name)
    elif name not in want:
        bad.append("%s: not in the source" % name)
    elif got[name] != want[name]:
        bad.append("%s: %s, want %s" % (name, got[name], want[name]))
for b in bad:
    print(b)
print("%d tensors" % len(got))
EOF
# same_tensors WHAT PREFIX DIR KIND: DIR holds exactly PREFIX's tensors, byte for byte
same_tensors() {
    local what=$1 prefix=$2 dir=$3 kind=$4 want
    want=$(grep -c "^$prefix" "$F/digests.tsv")
    python3 "$T/tensors.py" "$F/digests.tsv" "$prefix" "$dir" "$kind" >"$T/cmp" 2>&1
    if [ "$(cat "$T/cmp")" = "$want tensors" ]; then ok "$what: $want tensors, dtypes, shapes and bytes as PyTorch holds them"
    else notok "$what: $(head -c 400 "$T/cmp")"; fi
}

for src in byteorder_little.bin module.bin module_proto4.bin module_zip64.bin params.bin v3_dtypes.bin views.bin; do
    expect_rc 0 "shard $src" -- "$BMPLAN" shard "$F/$src" -o "$T/$src" -q
    same_tensors "$src -> model.safetensors" "$src" "$T/$src" safetensors
    expect_rc 0 "verify the converted $src" -- "$BMPLAN" verify "$T/$src"
    expect_out_contains "1 digest verified"
done

# the sharded checkpoint, as a folder and as its index, into one and into several shards
expect_rc 0 "shard the sharded .bin folder" -- "$BMPLAN" shard "$F/sharded" -o "$T/sh1" -q
same_tensors "sharded/ -> model.safetensors" sharded/ "$T/sh1" safetensors
expect_rc 0 "shard the .bin index into 100-byte shards" -- \
    "$BMPLAN" shard "$F/sharded/pytorch_model.bin.index.json" -o "$T/sh2" --max-shard-size 100
same_tensors "pytorch_model.bin.index.json -> shards" sharded/ "$T/sh2" safetensors
# huggingface_hub's rule on PyTorch's sizes, in state-dict order: 0.weight
# (160 B > 100) alone; 1.weight, 1.bias, 2.weight, 2.bias, 3.weight
# (48+4x12 = 96 B; 3.bias would make 108); the rest (3x12+8 = 44 B)
if python3 - "$T/sh2/model.safetensors.index.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["weight_map"]
want = {}
for i, names in enumerate([["0.weight"], ["1.weight", "1.bias", "2.weight", "2.bias", "3.weight"],
                           ["3.bias", "3.running_mean", "3.running_var", "3.num_batches_tracked"]]):
    for n in names:
        want[n] = "model-%05d-of-00003.safetensors" % (i + 1)
assert m == want, m
PY
then ok "3 shards split as huggingface_hub splits them"; else notok "split: $(ls "$T/sh2")"; fi
expect_err_contains "10 tensors in 3 shards (300 B)"
expect_rc 0 "verify the re-sharded folder" -- "$BMPLAN" verify "$T/sh2"
expect_out_contains "3 digests verified"

# complex128 has no safetensors dtype: refused whole, nothing written ...
expect_rc 1 "shard dtypes.bin (complex128) is refused" -- "$BMPLAN" shard "$F/dtypes.bin" -o "$T/dt" -q
expect_err_contains "'c128'"
expect_err_contains "complex128"
one_line_err
if [ ! -e "$T/dt" ] && [ -z "$(ls -A "$T" | grep '^\.dt')" ]; then ok "nothing left behind"; else notok "left: $(ls -A "$T")"; fi
# ... but an offload folder holds any dtype: raw C-order bytes per tensor
expect_rc 0 "offload dtypes.bin" -- "$BMPLAN" offload "$F/dtypes.bin" -o "$T/dtoff" -q
same_tensors "dtypes.bin -> offload folder" dtypes.bin "$T/dtoff" offload
expect_rc 0 "offload views.bin" -- "$BMPLAN" offload "$F/views.bin" -o "$T/viewsoff" -q
same_tensors "views.bin -> offload folder (views in C order, the empty one in bmplan.json)" views.bin "$T/viewsoff" offload

# plan on a .bin: sizes from the file (Embedding(10,4) 160 B, Linear(4,3)
# 60 B, LayerNorm(3) 24 B, BatchNorm1d(3) 56 B). By accelerate's algorithm
# (spec §6.2-6.3) GPU 0 keeps room for the largest layer still waiting:
# 60 B while 0 and 1 are placed, then 56 B while 2 is, then none for 3, so
# 300 bytes take everything (cleaned to {"": 0}) and 299 stop at layer 2.
plan_is() { # plan_is BUDGET0 WANT_JSON
    expect_rc 0 "plan module.bin with 0=$1" -- "$BMPLAN" plan "$F/module.bin" --max-memory "0=$1,cpu=1GB"
    if python3 -c 'import json,sys; assert json.load(open(sys.argv[1])) == json.loads(sys.argv[2])' "$T/out" "$2" 2>/dev/null &&
       [ "$(python3 -c 'import json,sys; print(list(json.load(open(sys.argv[1]))))' "$T/out")" = "$(python3 -c 'import json,sys; print(list(json.loads(sys.argv[1])))' "$2")" ]; then
        ok "0=$1: $2"
    else
        notok "0=$1: got $(tr -d ' \n' <"$T/out"), want $2"
    fi
}
plan_is 300 '{"": 0}'
plan_is 299 '{"0": 0, "1": 0, "2": "cpu", "3": "cpu"}'

# inspect on the .bin index: PyTorch's sizes and the index's two files
expect_rc 0 "inspect pytorch_model.bin.index.json --json" -- \
    "$BMPLAN" inspect "$F/sharded/pytorch_model.bin.index.json" --json
if python3 - "$T/out" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["bytes"] == 300 and d["parameters"] == 74, (d["bytes"], d["parameters"])
assert d["largest_layer"]["bytes"] == 160 and d["largest_layer"]["names"] == ["0"], d["largest_layer"]
c = d["checkpoint"]
files = [(f["name"], f["tensors"], f["tensor_bytes"]) for f in c["files"]]
assert files == [("pytorch_model-00001-of-00002.bin", 5, 244),
                 ("pytorch_model-00002-of-00002.bin", 5, 56)], files
assert c["index_total_size"] == 300, c
EOF
then ok "300 B, 74 parameters, largest layer 0 (160 B), files of 5 tensors (244 B and 56 B)"
else notok "inspect: $(head -c 400 "$T/out")"; fi

after=$(cd "$F" && find . -type f | sort | xargs sha256sum | sha256sum)
if [ "$before" = "$after" ]; then ok "the fixtures are untouched"; else notok "a fixture changed"; fi
# --checkpoint alone names the model too
expect_rc 0 "plan --checkpoint .bin" -- "$BMPLAN" plan --checkpoint "$F/module.bin" --max-memory 0=299,cpu=1GB
if python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))=={"0":0,"1":0,"2":"cpu","3":"cpu"}' "$T/out"; then ok "plan --checkpoint map"; else notok "plan --checkpoint map: $(cat "$T/out")"; fi
finish
