#!/usr/bin/env python3
"""Write a Llama model folder with random weights (config.json +
model.safetensors) for the runner benchmark. numpy only.

usage: make_random_llama.py FOLDER [hidden layers inter heads kv_heads vocab]
Default: ~100M parameters (hidden 768, 12 layers, MLP 2048, 12 heads, 4 KV
heads, vocabulary 32000, tied head), float32.
"""
import json
import os
import struct
import sys

import numpy as np


def main():
    folder = sys.argv[1]
    d, layers, inter, heads, kv, vocab = (int(x) for x in (sys.argv[2:8] or
                                                          [768, 12, 2048, 12, 4, 32000]))
    hd = d // heads
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    shapes = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "self_attn.q_proj.weight", (heads * hd, d)),
                   (p + "self_attn.k_proj.weight", (kv * hd, d)),
                   (p + "self_attn.v_proj.weight", (kv * hd, d)),
                   (p + "self_attn.o_proj.weight", (d, heads * hd)),
                   (p + "mlp.gate_proj.weight", (inter, d)),
                   (p + "mlp.up_proj.weight", (inter, d)),
                   (p + "mlp.down_proj.weight", (d, inter)),
                   (p + "input_layernorm.weight", (d,)),
                   (p + "post_attention_layernorm.weight", (d,))]
    shapes.append(("model.norm.weight", (d,)))
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes:
        n = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, shape in shapes:
            if len(shape) == 1:
                a = np.ones(shape, np.float32)
            else:
                a = (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[1])).astype(np.float32)
            f.write(a.tobytes())
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": 2048,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
           "hidden_act": "silu", "torch_dtype": "float32"}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    print(sum(int(np.prod(s)) for _, s in shapes))


if __name__ == "__main__":
    main()
