#!/usr/bin/env bash
# bench/gpu.sh - the CUDA backend's benchmark, one prepared script for a GPU
# machine (written for one H200; a few minutes). Prints figures and the
# targets they are held to; exits 0 when every figure was measured
# (whether or not the targets are met: the verdicts are in the summary).
#
#   1. a Llama-2-7B-shaped model with random bfloat16 weights, generated on
#      the GPU (bench/gpu_make_model.py; no network needed)
#   2. bmrun (bench/gpu_bench: the runner library), all resident: 512-token
#      prefill and decoding
#   3. bmrun with layers >= 16, the norm and the LM head on "cpu" under a
#      GPU budget of the resident part + 2 GiB: decoding streams half the
#      model per token; the CUDA backend's report gives the pinned
#      host -> device bandwidth measured at startup
#   4. PyTorch eager (all resident) and accelerate (same map) through
#      transformers' from_pretrained(device_map=...) (bench/gpu_reference.py)
#   5. the summary: bench-summary.md and bench-results.json in $BENCH_OUT
#
# Environment: BUILD (build), BENCH_OUT ($BUILD/bench-gpu), BENCH_MODEL
# (the model folder; default /dev/shm/bmplan-bench-llama7b), BENCH_PRESET
# (7b, or tiny to try the script), BENCH_SKIP_TORCH=1 (bmrun only),
# BENCH_BACKEND (cuda; cpu runs the script's logic on virtual devices).
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
OUTD=${BENCH_OUT:-$BUILD/bench-gpu}
PRESET=${BENCH_PRESET:-7b}
# the model in RAM (/dev/shm) when it has room for 16 GiB, else on disk
shm_free=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')
if [ "${shm_free:-0}" -gt $((16 << 20)) ] || [ "$PRESET" = tiny ]; then
    MODEL=${BENCH_MODEL:-/dev/shm/bmplan-bench-llama-$PRESET}
else
    MODEL=${BENCH_MODEL:-$BUILD/bench-model-llama-$PRESET}
fi
GPU_LAYERS=${BENCH_GPU_LAYERS:-16}
[ "$PRESET" = tiny ] && GPU_LAYERS=${BENCH_GPU_LAYERS:-2}
mkdir -p "$OUTD"
rm -f "$OUTD"/cuda-*.json
export BMPLAN_CUDA_LIB=${BMPLAN_CUDA_LIB:-$PWD/$BUILD/libbmplan_cuda.so}
BACKEND=${BENCH_BACKEND:-cuda}
BENCH=$BUILD/bench/gpu_bench
[ -x "$BENCH" ] || make -s "$BENCH" || exit 1
t0=$(date +%s)
fail=0
say() { echo "== [$(($(date +%s) - t0))s] $*" >&2; }

say "machine"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.max,pcie.link.width.max \
        --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
    echo "memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
} >"$OUTD/machine.txt"
cat "$OUTD/machine.txt" >&2

say "model ($PRESET) in $MODEL"
python3 bench/gpu_make_model.py "$MODEL" "$PRESET" || exit 1

# the GPU budget of the offload run: what the map keeps on GPU 0 (the
# embedding and the first GPU_LAYERS layers), plus 2 GiB for activations,
# the KV cache and the weights streamed in ahead of use
budget=$(python3 - "$MODEL" "$GPU_LAYERS" <<'EOF'
import json, struct, sys
path, k = sys.argv[1], int(sys.argv[2])
with open(path + "/model.safetensors", "rb") as f:
    h = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
n = 0
for name, t in h.items():
    if name == "__metadata__":
        continue
    keep = name.startswith("model.embed_tokens.") or any(
        name.startswith(f"model.layers.{l}.") for l in range(k))
    if keep:
        n += t["data_offsets"][1] - t["data_offsets"][0]
print(n + (2 << 30))
EOF
)

say "bmrun: all resident (prefill 512, decode 32)"
BMPLAN_CUDA_REPORT="$OUTD/cuda-resident.json" timeout 150 "$BENCH" "$MODEL" --gpu-layers -1 --prompt 512 \
    --generate 34 --warmup --dtype bfloat16 --backend "$BACKEND" --report "$OUTD/run-resident.json" \
    >"$OUTD/bmrun-resident.json" || { echo "bmrun resident: failed" >&2; fail=1; }
cat "$OUTD/bmrun-resident.json" >&2

if [ "${BENCH_PROFILE:-1}" = 1 ]; then
    say "bmrun: all resident, every operation timed (BMPLAN_CUDA_PROFILE)"
    BMPLAN_CUDA_PROFILE=1 BMPLAN_CUDA_REPORT="$OUTD/cuda-resident-profile.json" timeout 150 "$BENCH" \
        "$MODEL" --gpu-layers -1 --prompt 512 --generate 34 --warmup --dtype bfloat16 \
        --backend "$BACKEND" >"$OUTD/bmrun-resident-profile.json" || echo "bmrun profile: failed" >&2
fi

say "bmrun: layers >= $GPU_LAYERS on cpu, GPU budget $budget bytes (decode 12)"
BMPLAN_CUDA_REPORT="$OUTD/cuda-offload.json" timeout 150 "$BENCH" "$MODEL" --gpu-layers "$GPU_LAYERS" \
    --prompt 32 --generate 13 --warmup --dtype bfloat16 --budget "$budget" --backend "$BACKEND" \
    --report "$OUTD/run-offload.json" >"$OUTD/bmrun-offload.json" || { echo "bmrun offload: failed" >&2; fail=1; }
cat "$OUTD/bmrun-offload.json" >&2

if [ "${BENCH_SKIP_TORCH:-0}" != 1 ]; then
    say "PyTorch eager and accelerate"
    PYTHONUNBUFFERED=1 timeout 300 python3 bench/gpu_reference.py "$MODEL" --gpu-layers "$GPU_LAYERS" --prompt 512 --generate 32 \
        --offload-prompt 32 --offload-generate 6 >"$OUTD/torch.json" ||
        { echo "gpu_reference.py: failed" >&2; echo '{}' >"$OUTD/torch.json"; }
    cat "$OUTD/torch.json" >&2
else
    echo '{}' >"$OUTD/torch.json"
fi

say "summary"
python3 - "$OUTD" <<'EOF'
import json, os, sys
d = sys.argv[1]
def ld(n):
    p = os.path.join(d, n)
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return {}
res, off = ld("bmrun-resident.json"), ld("bmrun-offload.json")
cres, coff, tor = ld("cuda-resident.json"), ld("cuda-offload.json"), ld("torch.json")
cprof = ld("cuda-resident-profile.json")
machine = open(os.path.join(d, "machine.txt")).read().strip()
pinned = coff.get("h2d_pinned_GBps") or cres.get("h2d_pinned_GBps") or 0
g = coff["gpus"][0] if coff.get("gpus") else {}
eff = off.get("effective_GBps", 0)
nan = float("nan")
rows, verdicts = [], []
def row(what, value, target=None, ok=None):
    rows.append((what, value, target or "", "" if ok is None else ("yes" if ok else "NO")))
    if ok is not None:
        verdicts.append(ok)
row("pinned host->device (measured at startup)", f"{pinned:.1f} GB/s")
row("pageable host->device (driver staging)", f"{coff.get('h2d_pageable_GBps', 0):.1f} GB/s")
row("pageable host->device (bmplan staging rings)", f"{coff.get('h2d_staged_GBps', 0):.1f} GB/s")
row("streamed decode: effective host->device", f"{eff:.1f} GB/s ({off.get('offloaded_bytes_per_token', 0)/1e9:.2f} GB/token)")
row("streamed decode: effective / pinned", f"{eff / pinned * 100:.1f}%" if pinned else "-",
    ">= 85%", pinned > 0 and eff >= 0.85 * pinned)
if g:
    row("streamed uploads: copy-stream DMA rate", f"{g.get('streamed_dma_GBps', 0):.1f} GB/s")
    row("GPU idle waiting on uploads (offload run)", f"{g.get('gpu_idle_waiting_on_uploads_s', 0):.2f} s of {g.get('gpu_idle_s', 0):.2f} s idle")
row("bmrun offload: time per token", f"{off.get('decode_median_s', nan)*1e3:.1f} ms")
acc = tor.get("offload_decode_median_s")
if acc:
    row("accelerate offload: time per token", f"{acc*1e3:.1f} ms")
    row("accelerate / bmrun: offload time per token", f"{acc / off.get('decode_median_s', nan):.1f}x",
        ">= 3x", "decode_median_s" in off and acc >= 3 * off["decode_median_s"])
# resident figures against PyTorch eager: each attention implementation is
# reported; the target is held against the faster of the two
def vs_torch(label, ours, key):
    row(f"bmrun resident: {label}", f"{ours*1e3:.2f} ms")
    best = None
    for attn in ("sdpa", "eager"):
        t = tor.get(f"eager_{attn}_{key}")
        if t:
            row(f"PyTorch eager ({attn} attention): {label}", f"{t*1e3:.2f} ms")
            best = t if best is None else min(best, t)
    if best:
        row(f"bmrun / faster PyTorch: {label}", f"{ours / best:.2f}x", "<= 1.2x",
            ours <= 1.2 * best)
vs_torch("time per token", res.get("decode_median_s", nan), "decode_median_s")
vs_torch("512-token prefill (median of 3, warm)", res.get("prefill_s", nan), "prefill_s")
row("bmrun resident: 512-token prefill, first (cold) run", f"{res.get('prefill_cold_s', nan)*1e3:.1f} ms")
md = ["# bench/gpu.sh", "", "```", machine,
      f"torch {tor.get('torch')}, transformers {tor.get('transformers')}, accelerate {tor.get('accelerate')}",
      "```", "", "| figure | value | target | met |", "|---|---|---|---|"]
md += [f"| {a} | {b} | {c} | {e} |" for a, b, c, e in rows]
md += ["", f"targets met: {sum(verdicts)} of {len(verdicts)}"]
pg = cprof.get("gpus", [{}])[0].get("profile") if cprof.get("gpus") else None
if pg:
    md += ["", "Every operation timed (all resident; the warm-up run, three prefills and",
           "the timed run together; BMPLAN_CUDA_PROFILE=1):", "",
           "| operation | calls | GPU ms | GPU us/call | host us/call |", "|---|---|---|---|---|"]
    for o in sorted(pg, key=lambda o: -o["gpu_s"]):
        md.append(f"| {o['op']} | {o['calls']} | {o['gpu_s']*1e3:.1f} | "
                  f"{o['gpu_s']/o['calls']*1e6:.1f} | {o['host_s']/o['calls']*1e6:.1f} |")
errs = [f"{k}: {v}" for k, v in tor.items() if k.endswith("_error")]
if not res or not off:
    errs.append("bmrun: " + ("" if res else "resident run failed ") + ("" if off else "offload run failed"))
if errs:
    md += ["", "errors:"] + [f"- {e}" for e in errs]
text = "\n".join(md) + "\n"
open(os.path.join(d, "bench-summary.md"), "w").write(text)
json.dump({"machine": machine, "bmrun_resident": res, "bmrun_offload": off, "cuda_resident": cres,
           "cuda_offload": coff, "torch": tor}, open(os.path.join(d, "bench-results.json"), "w"),
          indent=1)
print(text)
EOF
say "done"
exit $fail
