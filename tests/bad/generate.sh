#!/usr/bin/env bash
# Regenerate the hostile inputs under tests/bad/ (they are committed; this
# script documents how each was made and rebuilds them byte for byte, the
# zstd frames as the zstd 1.5 command line writes them).
# Every file here is wrong on purpose; tests/bad/EXPECT says how bmplan must
# refuse it and tests/cli/test_bad.sh checks that it does.
#   usage: tests/bad/generate.sh
set -eu
export LC_ALL=C
cd "$(dirname "$0")"

# ---- helpers ---------------------------------------------------------------

# le64 N: N as 8 little-endian bytes (N < 2^63; bigger ones are written raw)
le64() {
    local n=$1 i
    for i in 0 1 2 3 4 5 6 7; do
        printf "\\$(printf %03o $(( (n >> (8 * i)) & 255 )))"
    done
}
# st FILE JSON DATA_BYTES: a safetensors file, JSON padded with spaces to 8
st() {
    local f=$1 json=$2 data=$3
    local pad=$(( (8 - ${#json} % 8) % 8 ))
    { le64 $(( ${#json} + pad )); printf '%s' "$json"; printf '%*s' "$pad" '';
      head -c "$data" /dev/zero; } >"$f"
}
# t NAME DTYPE SHAPE BEGIN END: one header entry
t() { printf '"%s":{"dtype":"%s","shape":[%s],"data_offsets":[%s,%s]}' "$1" "$2" "$3" "$4" "$5"; }
# rep STR N: STR repeated N times
rep() { local s=$1 n=$2; head -c "$n" /dev/zero | tr '\0' 'x' | sed "s/x/$s/g"; }
# a valid shard holding a.weight (F32 [2]) and b.weight (F32 [2])
good_shard() { st "$1" "{$(t a.weight F32 2 0 8),$(t b.weight F32 2 8 16)}" 16; }

rm -rf st index graph hf offload bin devmap maxmem maxshard runids
mkdir -p st index graph hf offload bin devmap maxmem maxshard runids
# a valid checkpoint, the input of the rows that test option values
good_shard good.safetensors

# ---- safetensors files -------------------------------------------------------
: >st/empty.safetensors
printf '\x10\x00\x00' >st/short-length.safetensors
{ printf '\x00\x00\x00\x00\x00\x00\x00\x80'; printf '{}      '; } >st/header-len-2p63.safetensors
{ printf '\xff\xff\xff\xff\xff\xff\xff\xff'; printf '{}      '; } >st/header-len-max.safetensors
{ le64 4096; printf '{"a":{}}'; } >st/header-past-eof.safetensors
{ le64 0; } >st/header-len-zero.safetensors
{ le64 200000000; printf '{}'; } >st/header-len-200mb.safetensors
st st/not-json.safetensors 'this is not json' 0
st st/top-level-array.safetensors '[1,2,3]' 0
st st/trailing-garbage.safetensors '{} {}' 0
st st/name-dotdot.safetensors "{$(t ../../evil F32 1 0 4)}" 4
st st/name-slash.safetensors "{$(t layers/0/../../../etc/cron.d/x F32 1 0 4)}" 4
st st/name-absolute.safetensors "{$(t /tmp/owned F32 1 0 4)}" 4
st st/name-nul.safetensors "{$(t 'a\u0000b' F32 1 0 4)}" 4
st st/name-10kb.safetensors "{$(t "$(rep n 10240)" F32 1 0 4)}" 4
st st/name-duplicate.safetensors "{$(t w F32 1 0 4),$(t w F32 1 4 8)}" 8
st st/name-empty.safetensors "{$(t '' F32 1 0 4)}" 4
{ json=$(printf '{"\xff\xfe":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')
  st st/name-bad-utf8.safetensors "$json" 4; }
st st/name-empty-component.safetensors "{$(t 'a..b' F32 1 0 4)}" 4
st st/shape-overflow.safetensors "{$(t w F32 '4294967296,4294967296,16' 0 0)}" 0
st st/shape-overflow-bytes.safetensors "{$(t w F64 '2305843009213693952,4' 0 0)}" 0
st st/shape-negative.safetensors "{$(t w F32 '-1' 0 0)}" 0
st st/shape-nine-dims.safetensors "{$(t w F32 '1,1,1,1,1,1,1,1,1' 0 4)}" 4
st st/shape-fraction.safetensors "{$(t w F32 '1.5' 0 4)}" 4
st st/shape-string.safetensors "{$(t w F32 '"2"' 0 8)}" 8
st st/offsets-past-eof.safetensors "{$(t w F32 1024 0 4096)}" 16
st st/offsets-overlap.safetensors "{$(t a F32 2 0 8),$(t b F32 2 4 12)}" 12
st st/offsets-gap.safetensors "{$(t a F32 1 0 4),$(t b F32 1 8 12)}" 12
st st/offsets-reversed.safetensors "{$(t w F32 0 8 4)}" 8
st st/offsets-u64-max.safetensors "{$(t w U8 1 18446744073709551615 0)}" 0
st st/offsets-size-mismatch.safetensors "{$(t w F32 4 0 8)}" 8
st st/dtype-unknown.safetensors "{$(t w Q4_K 1 0 4)}" 4
st st/dtype-missing.safetensors '{"w":{"shape":[1],"data_offsets":[0,4]}}' 4
st st/entry-extra-key.safetensors '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"exec":"rm -rf /"}}' 4
st st/metadata-not-strings.safetensors '{"__metadata__":{"format":{"pt":1}}}' 0
st st/nested-100k.safetensors "{\"__metadata__\":$(rep '[' 100000)$(rep ']' 100000)}" 0

# ---- index files -------------------------------------------------------------
mkdir -p index/dotdot index/absolute index/backslash index/missing-shard \
    index/not-in-shard index/total-negative index/not-json index/nested \
    index/map-not-strings index/empty-name index/duplicate-name index/dot-shard
for d in index/*/; do good_shard "$d/model-00001-of-00001.safetensors"; done
printf '{"metadata":{"total_size":16},"weight_map":{"a.weight":"../../etc/passwd","b.weight":"model-00001-of-00001.safetensors"}}\n' \
    >index/dotdot/model.safetensors.index.json
printf '{"weight_map":{"a.weight":"/etc/passwd","b.weight":"model-00001-of-00001.safetensors"}}\n' \
    >index/absolute/model.safetensors.index.json
printf '{"weight_map":{"a.weight":"..\\\\..\\\\windows\\\\win.ini","b.weight":"model-00001-of-00001.safetensors"}}\n' \
    >index/backslash/model.safetensors.index.json
printf '{"weight_map":{"a.weight":"..","b.weight":"model-00001-of-00001.safetensors"}}\n' \
    >index/dot-shard/model.safetensors.index.json
printf '{"weight_map":{"a.weight":"model-00001-of-00002.safetensors","b.weight":"model-00002-of-00002.safetensors"}}\n' \
    >index/missing-shard/model.safetensors.index.json
printf '{"weight_map":{"a.weight":"model-00001-of-00001.safetensors","b.weight":"model-00001-of-00001.safetensors","c.weight":"model-00001-of-00001.safetensors"}}\n' \
    >index/not-in-shard/model.safetensors.index.json
printf '{"metadata":{"total_size":-16},"weight_map":{"a.weight":"model-00001-of-00001.safetensors","b.weight":"model-00001-of-00001.safetensors"}}\n' \
    >index/total-negative/model.safetensors.index.json
printf '{"weight_map": {"a.weight": "model-00001-of-00001.safetensors",\n' \
    >index/not-json/model.safetensors.index.json
{ printf '{"metadata":'; rep '[' 100000; rep ']' 100000; printf ',"weight_map":{}}'; } \
    >index/nested/model.safetensors.index.json
printf '{"weight_map":{"a.weight":1,"b.weight":["model-00001-of-00001.safetensors"]}}\n' \
    >index/map-not-strings/model.safetensors.index.json
printf '{"weight_map":{"":"model-00001-of-00001.safetensors","a.weight":"model-00001-of-00001.safetensors","b.weight":"model-00001-of-00001.safetensors"}}\n' \
    >index/empty-name/model.safetensors.index.json
printf '{"weight_map":{"a.weight":"model-00001-of-00001.safetensors","a.weight":"model-00001-of-00001.safetensors","b.weight":"model-00001-of-00001.safetensors"}}\n' \
    >index/duplicate-name/model.safetensors.index.json

mkdir -p index/bin-dotdot
printf '{"metadata":{"total_size":8},"weight_map":{"w":"../../../../etc/shadow"}}\n' \
    >index/bin-dotdot/pytorch_model.bin.index.json

# ---- PyTorch .bin (zip) files --------------------------------------------------
# (the pickle-level attacks are tests/fixtures/torchbin/hostile/, used as is)
# an end-of-central-directory record claiming 65535 entries of 4 GiB
# (after a local header's signature, so that it is taken for a zip)
lh() { printf 'PK\003\004'; head -c 26 /dev/zero; }
{ lh; printf 'PK\005\006\000\000\000\000\377\377\377\377\377\377\377\377\000\000\000\000\000\000'; } >bin/eocd-huge.bin
# a zip64 end record pointing 2^63 bytes into the file
{ lh; printf 'PK\006\006'; le64 44; printf '\055\000\055\000\000\000\000\000\000\000\000\000'
  le64 1; le64 1; le64 46; printf '\000\000\000\000\000\000\000\200'
  printf 'PK\006\007\000\000\000\000'; le64 30; printf '\001\000\000\000'
  printf 'PK\005\006\000\000\000\000\377\377\377\377\377\377\377\377\377\377\377\377\000\000'; } >bin/zip64-offset-2p63.bin
# a local header alone
printf 'PK\003\004\024\000\000\000\000\000' >bin/local-header-only.bin

# ---- graph files (YAML and JSON) ---------------------------------------------
hdr='format: bmplan-graph/1'
{ echo "$hdr"; echo 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'
  p=a; for l in b c d e f g h i; do
      printf '%s: &%s [*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s]\n' $l $l $p $p $p $p $p $p $p $p $p; p=$l; done
  echo 'root: {class: M, modules: {x: {class: L, params: {w: [*i]}}}}'; } >graph/billion-laughs.yaml
{ echo "$hdr"; printf 'config: '; rep '[' 100000; rep ']' 100000; echo; echo 'root: {class: M}'; } \
    >graph/nested-100k-flow.yaml
{ echo "$hdr"; printf 'config: '; rep '{a: ' 100000; printf 'b'; rep '}' 100000; echo; echo 'root: {class: M}'; } \
    >graph/nested-100k-mapping.yaml
{ printf '{"format":"bmplan-graph/1","config":'; rep '[' 100000; rep ']' 100000; printf ',"root":{"class":"M"}}\n'; } \
    >graph/nested-100k.json
cat >graph/repeat-bomb.yaml <<'EOF'
format: bmplan-graph/1
root:
  class: M
  modules:
    l:
      class: L
      repeat: 1000
      template:
        class: B
        modules:
          m:
            class: L
            repeat: 1000
            template:
              class: C
              modules:
                n:
                  class: L
                  repeat: 1000
                  template: {class: D, params: {w: [1]}}
EOF
printf '%s\nroot:\n  class: M\n  modules:\n    l: {class: L, repeat: 1000000000000000000, template: {class: B}}\n' "$hdr" >graph/repeat-huge.yaml
printf '%s\nroot:\n  class: M\n  modules:\n    l: {class: L, repeat: -1, template: {class: B}}\n' "$hdr" >graph/repeat-negative.yaml
printf '%s\nroot:\n  class: M\n  params:\n    w: [4294967296, 4294967296, 16]\n' "$hdr" >graph/shape-overflow.yaml
printf '%s\nroot:\n  class: M\n  params:\n    w: [-4, 4]\n' "$hdr" >graph/shape-negative.yaml
printf '%s\nroot:\n  class: M\n  params:\n    w: [1e400]\n' "$hdr" >graph/shape-huge-float.yaml
printf '%s\nroot:\n  class: M\n  modles: {}\n' "$hdr" >graph/unknown-key.yaml
printf 'format: bmplan-graph/9\nroot:\n  class: M\n' >graph/wrong-format.yaml
printf '%s\nroot:\n\tclass: M\n' "$hdr" >graph/tab-indent.yaml
printf '%s\nroot:\n  class: M\n  class: N\n' "$hdr" >graph/duplicate-key.yaml
printf '%s\nroot:\n  class: M\n  modules:\n    x: *undefined\n' "$hdr" >graph/undefined-alias.yaml
printf '%s\nroot:\n  class: M\n  modules:\n    "a.b": {class: L}\n' "$hdr" >graph/dotted-name.yaml
printf '%s\ntied: [[w, nonesuch]]\nroot:\n  class: M\n  params:\n    w: [2]\n' "$hdr" >graph/tie-missing.yaml
printf '%s\nroot:\n  class: M\n  params:\n    w: {shape: [2], dtype: float99}\n' "$hdr" >graph/dtype-unknown.yaml
printf '%s\nroot: !!python/object/apply:os.system ["touch pwned"]\n' "$hdr" >graph/python-tag.yaml
: >graph/empty.yaml
head -c 4096 /dev/zero | tr '\0' '\377' >graph/binary.yaml
printf '{"format":"bmplan-graph/1","root":{"class":"M","class":"N"}}\n' >graph/duplicate-key.json
printf '{"format":"bmplan-graph/1","root":{"class":"M"}} trailing\n' >graph/trailing-garbage.json
printf '{"format":"bmplan-graph/1","root":{"class":"M","modules":{"a\\u0000b":{"class":"L"}}}}\n' \
    >graph/name-nul.json
printf '{"format":"bmplan-graph/1","root":{"class":"\xc0\xaf"}}\n' >graph/bad-utf8.json
printf '{"format":"bmplan-graph/1","root":{"class":"M","params":{"w":[18446744073709551616]}}}\n' \
    >graph/dim-too-big.json

# ---- config.json (Hugging Face model folders) --------------------------------
mkd() { mkdir -p "hf/$1"; printf '%s\n' "$2" >"hf/$1/config.json"; }
mkd layers-huge '{"model_type":"llama","num_hidden_layers":1000000000000}'
mkd hidden-negative '{"model_type":"llama","hidden_size":-4096}'
mkd vocab-string '{"model_type":"gpt2","vocab_size":"50257"}'
mkd type-unknown '{"model_type":"pickle_exec"}'
mkd not-object '["model_type","llama"]'
mkd not-json '{"model_type": "llama",'
mkd shape-overflow '{"model_type":"llama","hidden_size":4294967296,"intermediate_size":4294967296,"num_attention_heads":1,"num_key_value_heads":1}'
mkdir -p hf/nested-100k
{ printf '{"model_type":"llama","x":'; rep '[' 100000; rep ']' 100000; printf '}\n'; } >hf/nested-100k/config.json

# ---- offload folders (accelerate's index.json, bmplan.json) --------------------
# off NAME INDEX_JSON: a folder with w.dat (float32 [2]) and that index
off() { mkdir -p "offload/$1"; printf '\000\000\200\077\000\000\000\100' >"offload/$1/w.dat"
        [ -z "$2" ] || printf '%s\n' "$2" >"offload/$1/index.json"; }
# side NAME JSON_TENSORS [DIGESTS]: a bmplan.json
side() { printf '{"format": "bmplan-offload", "version": 1, "digest": "xxh64", "tensors": %s, "digests": %s}\n' \
             "$2" "${3:-{\}}" >"offload/$1/bmplan.json"; }
off key-dotdot '{"../w": {"dtype": "float32", "shape": [2]}}'
off key-absolute '{"/etc/passwd": {"dtype": "float32", "shape": [2]}}'
off key-long "{\"$(rep k 300)\": {\"dtype\": \"float32\", \"shape\": [2]}}"
off key-empty '{"": {"dtype": "float32", "shape": [2]}}'
off dat-size '{"w": {"dtype": "float32", "shape": [3]}}'
off dat-missing '{"v": {"dtype": "float32", "shape": [2]}}'
off dtype-unknown '{"w": {"dtype": "float99", "shape": [2]}}'
off shape-overflow '{"w": {"dtype": "float32", "shape": [4294967296, 4294967296, 16]}}'
off shape-negative '{"w": {"dtype": "float32", "shape": [-2]}}'
off ref-passwd '{"w": {"safetensors_file": "../../../../../../../../../../etc/passwd", "weight_name": "w", "dtype": "float32"}}'
off ref-missing '{"w": {"safetensors_file": "/nonexistent/model.safetensors", "weight_name": "w"}}'
off index-not-object '[{"w": {"dtype": "float32", "shape": [2]}}]'
off index-nested "{\"w\": $(rep '[' 100000)$(rep ']' 100000)}"
off dat-is-folder '{"d": {"dtype": "float32", "shape": [2]}}'; mkdir -p offload/dat-is-folder/d.dat
: >offload/dat-is-folder/d.dat/keep  # (git keeps no empty folder)
printf '0123456789abcdef' >frame.raw
off zstd-size ''; zstd -q -c --content-size frame.raw >offload/zstd-size/t.dat.zst
side zstd-size '{"t": {"storage": "zstd", "dtype": "float32", "shape": [8], "planes": 1, "block": 1048576}}'
off zstd-garbage ''; head -c 64 /dev/zero | tr '\0' 'Z' >offload/zstd-garbage/t.dat.zst
side zstd-garbage '{"t": {"storage": "zstd", "dtype": "float32", "shape": [4], "planes": 1, "block": 1048576}}'
off zstd-two-frames ''; { zstd -q -c --content-size frame.raw; zstd -q -c --content-size frame.raw; } >offload/zstd-two-frames/t.dat.zst
side zstd-two-frames '{"t": {"storage": "zstd", "dtype": "float32", "shape": [4], "planes": 1, "block": 1048576}}'
off zstd-planes ''; zstd -q -c --content-size frame.raw >offload/zstd-planes/t.dat.zst
side zstd-planes '{"t": {"storage": "zstd", "dtype": "float32", "shape": [4], "planes": 3, "block": 12}}'
off zstd-block-zero ''; zstd -q -c --content-size frame.raw >offload/zstd-block-zero/t.dat.zst
side zstd-block-zero '{"t": {"storage": "zstd", "dtype": "float32", "shape": [4], "planes": 4, "block": 0}}'
off storage-exec ''
side storage-exec '{"t": {"storage": "exec", "dtype": "float32", "shape": [4], "command": "rm -rf ~"}}'
off empty-with-elements ''
side empty-with-elements '{"t": {"storage": "empty", "dtype": "float32", "shape": [4]}}'
off digest-not-hex '{"w": {"dtype": "float32", "shape": [2]}}'
side digest-not-hex '{}' '{"w": "$(rm -rf /)"}'
off digest-mismatch '{"w": {"dtype": "float32", "shape": [2]}}'
side digest-mismatch '{}' '{"w": "0123456789abcdef"}'
off sidecar-version '{"w": {"dtype": "float32", "shape": [2]}}'
printf '{"format": "bmplan-offload", "version": 2, "tensors": {}, "digests": {}}\n' >offload/sidecar-version/bmplan.json
off sidecar-duplicate '{"w": {"dtype": "float32", "shape": [2]}}'
side sidecar-duplicate '{"w": {"storage": "empty", "dtype": "float32", "shape": [0]}}'
off sidecar-key-slash ''
side sidecar-key-slash '{"../../t": {"storage": "empty", "dtype": "float32", "shape": [0]}}'
rm -f frame.raw

# ---- device maps (bmplan check) ------------------------------------------------
cat >devmap/model.yaml <<'EOF2'
format: bmplan-graph/1
tied: [[emb.weight, head.weight]]
root:
  class: M
  modules:
    emb: {class: Embedding, params: {weight: [10, 4]}}
    blocks:
      class: ModuleList
      repeat: 2
      template: {class: Block, params: {weight: [4, 4]}}
    head: {class: Linear, params: {weight: [10, 4]}}
EOF2
{ rep '[' 100000; rep ']' 100000; } >devmap/nested-100k.json
printf '["emb", 0]\n' >devmap/not-object.json
printf '{"emb": 0, "emb": "cpu", "blocks": 0, "head": 0}\n' >devmap/duplicate-key.json
printf '{"emb": "gpu0", "blocks": 0, "head": 0}\n' >devmap/device-unknown.json
{ printf '{"emb": 0, "blocks": 0, "head": 0, "'; rep k 102400; printf '": 0}\n'; } >devmap/key-100kb.json
printf '{"emb": 99999999999999999999, "blocks": 0, "head": 0}\n' >devmap/device-huge.json
printf '{"emb": null, "blocks": {"0": 0}, "head": true}\n' >devmap/device-not-scalar.json
printf '{"emb": 0, "blocks": 0, "head": 0, "x\\nOK: the map is valid": 0}\n' >devmap/key-newline.json
printf '{"emb": 0, "blocks": 0, "head": 0, "../../etc/passwd": "disk"}\n' >devmap/key-unknown.json
printf '{"emb": 0, "blocks": 0, "head": "cpu"}\n' >devmap/tied-split.json
printf '{"emb": 0, "blocks": 0, "\xff\xfe": 0}\n' >devmap/bad-utf8.json
: >devmap/empty.json

# ---- --max-memory specs (bmplan plan), one per file ------------------------------
mm() { printf '%s' "$2" >"maxmem/$1.txt"; }
mm negative '0=-1GB'
mm huge '0=1e400GB'
mm infinite '0=infGB'
mm nan '0=NaNGB'
mm cuda-key 'cuda:0=5GB'
mm unit-unknown '0=5XB'
mm device-huge '99999999999999999999=1GB'
mm empty-item '0=1GB,,cpu=2GB'
mm no-size 'cpu'
mm long "$(rep 0 10240)=1GB"
printf '{"0": "-1GB", "cpu": "2GB"}\n' >maxmem/budgets-negative.json
{ printf '{"0": '; rep '[' 100000; rep ']' 100000; printf '}\n'; } >maxmem/budgets-nested.json
printf '{"0": 1.5e400, "cpu": "2GB"}\n' >maxmem/budgets-float.json

# ---- --max-shard-size values (bmplan shard), one per file ------------------------
ms() { printf '%s' "$2" >"maxshard/$1.txt"; }
ms zero '0'
ms negative '-1GB'
ms huge '1e400GB'
ms fraction-bytes '1.5'
ms unit-unknown '5XB'
ms hex '0x10MB'
ms nan 'nanGB'

# ---- prompts for bmplan run (--input-file) -------------------------------------
printf '1, -2, 3\n' >runids/negative.txt
printf '99999999\n' >runids/out-of-vocab.txt
printf '99999999999999999999\n' >runids/overflow.txt
printf '1 2\000 3\n' >runids/nul.txt
printf '\377\376\000\001PK\003\004' >runids/binary.txt
{ rep '[' 100000; rep ']' 100000; } >runids/brackets-only.txt
: >runids/empty.txt
# a map that sends the whole model to disk (for hostile offload folders)
printf '{"": "disk"}\n' >run-disk-map.json

echo "generated: $(find st index graph hf offload bin devmap maxmem maxshard runids -type f | wc -l) files"
