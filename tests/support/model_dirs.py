"""Model directories made on the spot for planner tests: a Llama config.json and a safetensors file holding only
its header (the planner reads headers, never weights), at any size without writing the weights."""

from __future__ import annotations

import json
import struct
from pathlib import Path

# hidden, intermediate, layers, heads, kv heads, vocab
SIZES = {"tiny": (64, 128, 2, 4, 2, 100), "7b": (4096, 11008, 32, 32, 32, 32000)}


def llama_shapes(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int) -> dict:
    kv = kv_heads * (hidden // heads)
    shapes = {
        "model.embed_tokens.weight": [vocab, hidden],
        "lm_head.weight": [vocab, hidden],
        "model.norm.weight": [hidden],
    }
    for layer in range(layers):
        p = f"model.layers.{layer}."
        shapes |= {
            p + "self_attn.q_proj.weight": [hidden, hidden],
            p + "self_attn.k_proj.weight": [kv, hidden],
            p + "self_attn.v_proj.weight": [kv, hidden],
            p + "self_attn.o_proj.weight": [hidden, hidden],
            p + "mlp.gate_proj.weight": [intermediate, hidden],
            p + "mlp.up_proj.weight": [intermediate, hidden],
            p + "mlp.down_proj.weight": [hidden, intermediate],
            p + "input_layernorm.weight": [hidden],
            p + "post_attention_layernorm.weight": [hidden],
        }
    return shapes


def write_llama_dir(directory: Path, size: str = "tiny") -> Path:
    """config.json + model.safetensors (header only, BF16) of a Llama of this size; returns the directory."""
    hidden, intermediate, layers, heads, kv_heads, vocab = SIZES[size]
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "max_position_embeddings": 4096,
    }
    (directory / "config.json").write_text(json.dumps(config))
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in llama_shapes(*SIZES[size]).items():
        length = 2
        for dim in shape:
            length *= dim
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + length]}
        offset += length
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    return directory
