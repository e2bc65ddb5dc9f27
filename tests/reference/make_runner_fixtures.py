#!/usr/bin/env python3
"""Reference fixtures for `bmplan run`, computed by PyTorch + transformers.

Builds tiny Llama (GQA, rope_theta, RMSNorm, SwiGLU, untied head) and GPT-2
(learned positions, LayerNorm, gelu_new, Conv1D, tied head) models with
seeded random weights, saves them as Hugging Face model folders
(config.json + model.safetensors, written by save_pretrained) and writes
what the real transformers classes compute for them:

  tests/fixtures/runner/<model>/            the model folder
  tests/fixtures/runner/<model>.expected.json
      prompt, logits of the last position, logits of every position,
      greedy generation (model.generate, KV cache) and the smallest top-1 /
      top-2 logit gap met while generating (how safe the greedy check is)
  tests/fixtures/runner/ops.json            single operations (linear,
      RMSNorm, LayerNorm, rotary embedding, GQA attention, gelu_new, SiLU)
      on small random inputs, for the kernel unit tests

bf16 variants hold the same weights cast to bfloat16, and their expected
values come from the model run in bfloat16 by PyTorch.

Needs torch and transformers (CI does not run this; the outputs are
committed). On Debian:
  python3 -m venv --system-site-packages /tmp/refvenv
  /tmp/refvenv/bin/pip install transformers==4.40.2 safetensors
  /tmp/refvenv/bin/python tests/reference/make_runner_fixtures.py
"""
import json
import math
import os
import shutil
import sys

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "runner")
EXAMPLE = os.path.join(ROOT, "examples", "tiny-llama")

PROMPT = [1, 15, 200, 33, 7, 99, 42, 128, 5, 250, 64, 17]
NEW_TOKENS = 10


def seeded_init(model, seed, gain=3.0, emb_std=1.0):
    """Weights large enough that logits are O(1) and greedy decoding does
    not fall into a one-token loop (the transformers default of std 0.02
    makes every logit ~0): matrices get gain / sqrt(fan_in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".ln_" in name and name.endswith("weight") \
                    or name.endswith("ln_f.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2 and ("embed" in name or "wte" in name or "wpe" in name):
                p.copy_(emb_std * torch.randn(p.shape, generator=g))
            else:
                # fan-in scaling; GPT-2's Conv1D stores [in, out]
                fan_in = p.shape[0] if "transformer.h" in name else p.shape[1]
                p.copy_(gain * torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def greedy(model, prompt, n):
    ids = torch.tensor([prompt])
    out = model.generate(ids, max_new_tokens=n, do_sample=False, num_beams=1,
                         output_scores=True, return_dict_in_generate=True,
                         pad_token_id=0, eos_token_id=None)
    gen = out.sequences[0, len(prompt):].tolist()
    margin = float("inf")
    for s in out.scores:
        top = torch.topk(s[0].float(), 2).values
        margin = min(margin, float(top[0] - top[1]))
    return gen, margin


def expected(model, prompt):
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0].float()
    gen, margin = greedy(model, prompt, NEW_TOKENS)
    return {
        "prompt": prompt,
        "logits_last": logits[-1].tolist(),
        "logits_all": logits.tolist(),
        "generated": gen,
        "greedy_min_margin": margin,
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}",
    }


def save(model, name, dtype):
    folder = os.path.join(OUT, name)
    shutil.rmtree(folder, ignore_errors=True)
    model = model.to(dtype)
    model.save_pretrained(folder, safe_serialization=True)
    # generation_config.json is noise for bmplan
    gc = os.path.join(folder, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    exp = expected(model, PROMPT)
    with open(os.path.join(OUT, name + ".expected.json"), "w") as f:
        json.dump(exp, f)
    print(f"{name}: margin {exp['greedy_min_margin']:.4f} generated {exp['generated']}",
          file=sys.stderr)
    return folder


def tiny_llama(gain=3.0, emb_std=1.0):
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=172,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=500000.0,
                      tie_word_embeddings=False, attn_implementation="eager")
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).eval()
    seeded_init(m, 1234, gain, emb_std)
    return m


def tiny_gpt2(gain=3.0, emb_std=1.0):
    cfg = GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=4, n_head=4,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, attn_implementation="eager")
    torch.manual_seed(0)
    m = GPT2LMHeadModel(cfg).eval()
    seeded_init(m, 4321, gain, emb_std)
    m.tie_weights()
    return m


def ops_fixture():
    """Single operations from transformers' own code on random inputs."""
    from transformers.activations import NewGELUActivation
    from transformers.models.llama import modeling_llama as ml

    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g)
    ops = {}
    x, w, b = r(5, 24), r(40, 24), r(40)
    ops["linear"] = {"x": x.tolist(), "w": w.tolist(), "b": b.tolist(),
                     "y": torch.nn.functional.linear(x, w, b).tolist()}
    norm = ml.LlamaRMSNorm(24, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(r(24))
        ops["rmsnorm"] = {"x": x.tolist(), "w": norm.weight.tolist(), "eps": 1e-6,
                          "y": norm(x).tolist()}
        ln = torch.nn.LayerNorm(24, eps=1e-5)
        ln.weight.copy_(r(24))
        ln.bias.copy_(r(24))
        ops["layernorm"] = {"x": x.tolist(), "w": ln.weight.tolist(), "b": ln.bias.tolist(),
                            "eps": 1e-5, "y": ln(x).tolist()}
    # rotary + GQA causal attention, with 3 cached positions and 4 new ones
    T, past, H, KV, hd, theta = 4, 3, 4, 2, 8, 10000.0
    cfg = LlamaConfig(hidden_size=H * hd, num_attention_heads=H, num_key_value_heads=KV,
                      rope_theta=theta, max_position_embeddings=64)
    rot = ml.LlamaRotaryEmbedding(hd, max_position_embeddings=64, base=theta)
    q, k, v = r(1, H, past + T, hd), r(1, KV, past + T, hd), r(1, KV, past + T, hd)
    pos = torch.arange(past + T)[None]
    cos, sin = rot(v, pos)
    qr, kr = ml.apply_rotary_pos_emb(q, k, cos, sin)
    kk, vv = ml.repeat_kv(kr, H // KV), ml.repeat_kv(v, H // KV)
    att = torch.matmul(qr, kk.transpose(2, 3)) / math.sqrt(hd)
    mask = torch.full((past + T, past + T), float("-inf")).triu(1)
    att = torch.softmax(att + mask, dim=-1, dtype=torch.float32)
    o = torch.matmul(att, vv)  # [1, H, S, hd]
    flat = lambda t: t[0].transpose(0, 1).reshape(t.shape[2], -1)  # [S, heads*hd]
    ops["rope_attention"] = {
        "heads": H, "kv_heads": KV, "head_dim": hd, "theta": theta, "past": past, "new": T,
        "q": flat(q).tolist(), "k": flat(k).tolist(), "v": flat(v).tolist(),
        "q_rot": flat(qr).tolist(), "k_rot": flat(kr).tolist(),
        "out": flat(o)[past:].tolist(),
    }
    y = r(6, 10)
    ops["gelu_new"] = {"x": y.tolist(), "y": NewGELUActivation()(y).tolist()}
    u = r(6, 10)
    ops["silu_mul"] = {"g": y.tolist(), "u": u.tolist(),
                       "y": (torch.nn.functional.silu(y) * u).tolist()}
    with open(os.path.join(OUT, "ops.json"), "w") as f:
        json.dump(ops, f)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    save(tiny_llama(), "tiny-llama", torch.float32)
    save(tiny_gpt2(), "tiny-gpt2", torch.float32)
    # bf16 logits are only as good as bf16's resolution at their magnitude
    # (1/256 relative): the bf16 models are scaled to keep logits near 1
    save(tiny_llama(gain=0.5), "tiny-llama-bf16", torch.bfloat16)
    save(tiny_gpt2(gain=0.5, emb_std=0.05), "tiny-gpt2-bf16", torch.bfloat16)
    ops_fixture()
    # the README example: the fp32 tiny Llama
    shutil.rmtree(EXAMPLE, ignore_errors=True)
    shutil.copytree(os.path.join(OUT, "tiny-llama"), EXAMPLE)
    # a device map for the README: two GPUs, the rest offloaded to the CPU
    with open(os.path.join(EXAMPLE, "device_map.json"), "w") as f:
        json.dump({"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1,
                   "model.layers.2": "cpu", "model.layers.3": "cpu", "model.norm": "cpu",
                   "lm_head": "cpu"}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
