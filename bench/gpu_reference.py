#!/usr/bin/env python3
"""PyTorch baselines for bench/gpu.sh, on the same model folder and map.

    gpu_reference.py MODEL_DIR --gpu-layers K [--prompt N] [--generate N]
                     [--offload-generate N] [--skip-offload]

1. PyTorch eager, everything on GPU 0 (from_pretrained(device_map={"": 0}),
   bfloat16, no compilation, no CUDA graphs): median time of a prompt's
   forward pass (prefill) and of one decoding step with the KV cache, with
   transformers' default attention (sdpa) and with its "eager" attention.
2. accelerate: the same device map as bench/gpu_bench (embedding and layers
   < K on GPU 0; the other layers, the norm and the LM head on "cpu"),
   through from_pretrained(device_map=...), which dispatches the model with
   accelerate's hooks: median time of one decoding step.

Prints one JSON object on stdout. Times are wall-clock around
torch.cuda.synchronize(), after a warm-up.
"""
import argparse
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def load(path, device_map):
    try:
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16,
                                                 device_map=device_map)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        m = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16,
                                                 device_map=device_map)
    return m.eval()


def prompt_ids(n, vocab):
    # the same ids as bench/gpu_bench.c
    x, ids = 12345, []
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        ids.append(1 + (x >> 8) % (vocab - 1))
    return torch.tensor([ids], device="cuda:0")


def set_attn(m, name):
    if hasattr(m, "set_attn_implementation"):  # transformers >= 4.56
        m.set_attn_implementation(name)
        return
    m.config._attn_implementation = name
    for mod in m.modules():
        cfg = getattr(mod, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = name


@torch.no_grad()
def prefill(m, ids, reps=3):
    m(input_ids=ids[:, :8], use_cache=True)  # warm-up
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        m(input_ids=ids, use_cache=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def decode(m, ids, steps, warm=2):
    out = m(input_ids=ids, use_cache=True)
    past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
    times, gen = [], []
    for i in range(warm + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = m(input_ids=tok, past_key_values=past, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        if i >= warm:
            times.append(time.perf_counter() - t0)
        gen.append(int(tok))
    return statistics.median(times), gen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--gpu-layers", type=int, required=True)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--generate", type=int, default=32)
    ap.add_argument("--offload-prompt", type=int, default=32)
    ap.add_argument("--offload-generate", type=int, default=6)
    ap.add_argument("--skip-offload", action="store_true")
    a = ap.parse_args()
    res = {"torch": torch.__version__, "transformers": transformers.__version__,
           "gpu": torch.cuda.get_device_name(0)}
    try:
        import accelerate
        res["accelerate"] = accelerate.__version__
    except ImportError:
        res["accelerate"] = None

    # a stage that fails (another transformers' API, say) is reported in
    # the JSON as "<stage>_error" and the others still run
    with open(a.model + "/config.json") as f:
        cfg = json.load(f)
    vocab, layers = cfg["vocab_size"], cfg["num_hidden_layers"]
    try:
        t0 = time.perf_counter()
        m = load(a.model, {"": 0})
        res["resident_load_s"] = time.perf_counter() - t0
        ids = prompt_ids(a.prompt, vocab)
        for attn in ("sdpa", "eager"):
            try:
                set_attn(m, attn)
                res[f"eager_{attn}_prefill_s"] = prefill(m, ids)
                res[f"eager_{attn}_decode_median_s"], _ = decode(m, ids, a.generate)
                print(f"gpu_reference.py: resident ({attn}) done", file=sys.stderr, flush=True)
            except Exception as e:  # noqa: BLE001
                res[f"eager_{attn}_error"] = f"{type(e).__name__}: {e}"
                print(f"gpu_reference.py: resident ({attn}): {e!r}", file=sys.stderr, flush=True)
        del m
    except Exception as e:  # noqa: BLE001
        res["resident_error"] = f"{type(e).__name__}: {e}"
        print(f"gpu_reference.py: resident: {e!r}", file=sys.stderr, flush=True)
    torch.cuda.empty_cache()

    if not a.skip_offload:
        try:
            dm = {"model.embed_tokens": 0}
            for l in range(layers):
                dm[f"model.layers.{l}"] = 0 if l < a.gpu_layers else "cpu"
            dm["model.norm"] = "cpu"
            dm["lm_head"] = "cpu"
            t0 = time.perf_counter()
            m = load(a.model, dm)
            res["offload_load_s"] = time.perf_counter() - t0
            res["offload_decode_median_s"], _ = decode(m, prompt_ids(a.offload_prompt, vocab),
                                                       a.offload_generate, warm=1)
            print("gpu_reference.py: accelerate offload done", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001
            res["offload_error"] = f"{type(e).__name__}: {e}"
            print(f"gpu_reference.py: accelerate offload: {e!r}", file=sys.stderr, flush=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
