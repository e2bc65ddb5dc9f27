#!/usr/bin/env python3
"""PyTorch CPU baseline for bench_run.sh: the same Llama model folder, the
same threads, the same work as `bmrun` (a 128-token prompt whose last
position's logits are computed, then greedy decoding with a KV cache).
Plain PyTorch (transformers' LlamaForCausalLM math: rotate_half RoPE, GQA,
RMSNorm in float32, SwiGLU), so it needs only torch and numpy.

usage: bench_run_torch.py FOLDER THREADS PROMPT_LEN NEW_TOKENS
prints: prefill_tok_s decode_tok_s
"""
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def load(folder):
    path = os.path.join(folder, "model.safetensors")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    mm = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    w = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        assert v["dtype"] == "F32"
        w[k] = torch.from_numpy(np.array(mm[a:b]).view(np.float32).reshape(v["shape"]))
    with open(os.path.join(folder, "config.json")) as f:
        return w, json.load(f)


def rms(x, w, eps):
    v = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(v + eps))


def rot_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Llama:
    def __init__(self, w, c, max_len):
        self.w, self.c = w, c
        self.H, self.KV = c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = c["hidden_size"] // self.H
        self.L = c["num_hidden_layers"]
        self.head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, self.hd, 2).float() / self.hd))
        f = torch.outer(torch.arange(max_len).float(), inv)
        emb = torch.cat((f, f), -1)
        self.cos, self.sin = emb.cos(), emb.sin()
        self.k = [torch.zeros(self.KV, max_len, self.hd) for _ in range(self.L)]
        self.v = [torch.zeros(self.KV, max_len, self.hd) for _ in range(self.L)]

    def forward(self, ids, pos):
        w, c, H, KV, hd = self.w, self.c, self.H, self.KV, self.hd
        T = len(ids)
        x = w["model.embed_tokens.weight"][ids]
        cos, sin = self.cos[pos:pos + T], self.sin[pos:pos + T]
        mask = torch.full((T, pos + T), float("-inf")).triu(pos + 1)
        for l in range(self.L):
            p = f"model.layers.{l}."
            h = rms(x, w[p + "input_layernorm.weight"], c["rms_norm_eps"])
            q = F.linear(h, w[p + "self_attn.q_proj.weight"]).view(T, H, hd).transpose(0, 1)
            k = F.linear(h, w[p + "self_attn.k_proj.weight"]).view(T, KV, hd).transpose(0, 1)
            v = F.linear(h, w[p + "self_attn.v_proj.weight"]).view(T, KV, hd).transpose(0, 1)
            q = q * cos + rot_half(q) * sin
            k = k * cos + rot_half(k) * sin
            self.k[l][:, pos:pos + T] = k
            self.v[l][:, pos:pos + T] = v
            kk = self.k[l][:, :pos + T].repeat_interleave(H // KV, 0)
            vv = self.v[l][:, :pos + T].repeat_interleave(H // KV, 0)
            a = torch.softmax(q @ kk.transpose(1, 2) / math.sqrt(hd) + mask, -1) @ vv
            x = x + F.linear(a.transpose(0, 1).reshape(T, H * hd), w[p + "self_attn.o_proj.weight"])
            h = rms(x, w[p + "post_attention_layernorm.weight"], c["rms_norm_eps"])
            g = F.silu(F.linear(h, w[p + "mlp.gate_proj.weight"])) * F.linear(h, w[p + "mlp.up_proj.weight"])
            x = x + F.linear(g, w[p + "mlp.down_proj.weight"])
        x = rms(x[-1:], w["model.norm.weight"], c["rms_norm_eps"])
        return F.linear(x, self.head)[0]


def main():
    folder, threads, n, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    w, c = load(folder)
    ids = [(i * 37) % c["vocab_size"] for i in range(n)]
    with torch.no_grad():
        m = Llama(w, c, n + new)
        m.forward(ids[:8], 0)  # warm-up (first-call allocations)
        m = Llama(w, c, n + new)
        t = time.perf_counter()
        logits = m.forward(ids, 0)
        prefill = time.perf_counter() - t
        tok = int(torch.argmax(logits))
        t = time.perf_counter()
        for i in range(new - 1):
            tok = int(torch.argmax(m.forward([tok], n + i)))
        decode = time.perf_counter() - t
    print(f"{n / prefill:.2f} {(new - 1) / decode:.2f}")


if __name__ == "__main__":
    main()
