"""Write a real Hugging Face model directory with random weights, in seconds, with nothing downloaded.

    python -m workers.jobs.tiny_model OUT_DIR [--size tiny|small] [--seed N]

Llama architecture; config.json, model.safetensors, generation_config.json and a byte-level BPE
tokenizer trained on the spot with `tokenizers` (tokenizer.json + tokenizer_config.json with a chat
template). `tiny` is a few MB for tests; `small` (~85M parameters) is for benchmarks. Runs in the ML
environment; imports nothing from Django.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SIZES = {
    "tiny": {
        "vocab": 1000,
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "small": {
        "vocab": 8000,
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
    },
}
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_WORD_TEXT = (
    "the model server deploys tokens gpu memory cache batch request stream answer question data "
    "bank hospital factory mine audit console host weights layer attention prefill decode shard "
    "deep seek llama quick brown fox jumps over lazy dog hello world my name is and i am you we "
    "模型 部署 服务器 显存 审计 令牌 推理 数据 银行 医院 工厂"
)
_WORDS = _WORD_TEXT.split()


def _corpus(seed: int, sentences: int = 8000) -> list[str]:
    rng = random.Random(seed)
    # Made-up words from syllables give BPE enough distinct material to reach the vocabulary size.
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    invented = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(4000)]
    lines = []
    for _ in range(sentences):
        words = [rng.choice(_WORDS) if rng.random() < 0.4 else rng.choice(invented) for _ in range(rng.randint(4, 14))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ",", " 123.", " 2026."]))
    return lines


def _train_tokenizer(vocab_size: int, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    # Prepend <s> like Llama's tokenizer, so prompts carry a BOS token.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return tokenizer


def make_tiny_model(out_dir: str | Path, size: str = "tiny", seed: int = 0, max_positions: int = 2048) -> Path:
    """Write the model directory and return its path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}")
    shape = dict(SIZES[size])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    raw = _train_tokenizer(shape.pop("vocab"), seed)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=max_positions,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
        **shape,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)
    (out / "README.md").write_text(f"Random-weight Llama ({size}, seed {seed}) made by workers.jobs.tiny_model.\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.jobs.tiny_model", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make_tiny_model(args.out_dir, args.size, args.seed)
    config = json.loads((out / "config.json").read_text())
    weights = (out / "model.safetensors").stat().st_size
    print(
        json.dumps(
            {
                "event": "result",
                "path": str(out),
                "model_type": config["model_type"],
                "vocab_size": config["vocab_size"],
                "weights_bytes": weights,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
