#!/usr/bin/env python3
"""Random-weight Llama model folders for bench/gpu.sh.

    gpu_make_model.py OUT_DIR [7b|tiny]

Writes OUT_DIR/config.json and OUT_DIR/model.safetensors (bfloat16): the
Llama-2-7B shapes (6.74e9 parameters, 13.5 GB) or a tiny one for trying
the script without a GPU. The GPU machine has no network, so nothing is
downloaded: weights are drawn on the GPU with torch (normal, std 0.02, as
transformers initialises Llama; norm weights 1) and streamed to the file
tensor by tensor, so host memory holds one tensor at a time. Without torch
(the tiny preset only) Python's own random numbers are used.

The folder is written under a temporary name and renamed when complete; an
existing complete folder of the same preset is kept.
"""
import json
import os
import random
import shutil
import struct
import sys

PRESETS = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "tiny": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
}


def config_for(preset):
    c = dict(PRESETS[preset])
    c.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
             max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
             tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
             bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16", use_cache=True,
             initializer_range=0.02, bmplan_bench_preset=preset)
    return c


def tensors(c):
    """(name, shape) in the order transformers saves them."""
    H, I, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = H // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", [V, H])]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", [H]),
                (p + "self_attn.q_proj.weight", [H, H]),
                (p + "self_attn.k_proj.weight", [kv, H]),
                (p + "self_attn.v_proj.weight", [kv, H]),
                (p + "self_attn.o_proj.weight", [H, H]),
                (p + "post_attention_layernorm.weight", [H]),
                (p + "mlp.gate_proj.weight", [I, H]),
                (p + "mlp.up_proj.weight", [I, H]),
                (p + "mlp.down_proj.weight", [H, I])]
    out += [("model.norm.weight", [H]), ("lm_head.weight", [V, H])]
    return out


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def bf16_bytes_python(n, ones, rng):
    """n bfloat16 values (normal, std 0.02, or ones) without torch."""
    out = bytearray(2 * n)
    for i in range(n):
        v = 1.0 if ones else rng.gauss(0.0, 0.02)
        (u,) = struct.unpack("<I", struct.pack("<f", v))
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even
        struct.pack_into("<H", out, 2 * i, u & 0xFFFF)
    return bytes(out)


def main():
    if len(sys.argv) < 2 or len(sys.argv) > 3:
        sys.exit(__doc__)
    out = sys.argv[1]
    preset = sys.argv[2] if len(sys.argv) == 3 else "7b"
    if preset not in PRESETS:
        sys.exit(f"gpu_make_model.py: unknown preset '{preset}' (7b, tiny)")
    c = config_for(preset)
    cfg_path = os.path.join(out, "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            if json.load(f).get("bmplan_bench_preset") == preset and \
                    os.path.exists(os.path.join(out, "model.safetensors")):
                print(f"gpu_make_model.py: {out} exists", file=sys.stderr)
                return
    try:
        import torch
        have_torch = True
    except ImportError:
        have_torch = False
        if preset != "tiny":
            sys.exit("gpu_make_model.py: the 7b preset needs torch")
    dev = "cuda" if have_torch and torch.cuda.is_available() else "cpu"

    names = tensors(c)
    header, off = {}, 0
    for name, shape in names:
        n = 2 * numel(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)

    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    gen = torch.Generator(device=dev).manual_seed(0) if have_torch else None
    rng = random.Random(0)
    with open(os.path.join(tmp, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, shape in names:
            ones = name.endswith("norm.weight")
            if have_torch:
                if ones:
                    t = torch.ones(shape, dtype=torch.bfloat16, device=dev)
                else:
                    t = torch.randn(shape, dtype=torch.float32, device=dev, generator=gen)
                    t = (t * 0.02).to(torch.bfloat16)
                f.write(t.contiguous().view(torch.int16).cpu().numpy().tobytes())
            else:
                f.write(bf16_bytes_python(numel(shape), ones, rng))
        f.flush()
        os.fsync(f.fileno())
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    params = sum(numel(s) for _, s in names)
    print(f"gpu_make_model.py: {out}: {params / 1e9:.2f}e9 parameters, "
          f"{off / 1e9:.1f} GB bfloat16 ({dev})", file=sys.stderr)


if __name__ == "__main__":
    main()
