"""Reference figures for the evaluate program's tests, computed the plain way. Runs in the ML environment (no
Django): `python tests/support/evaluate_probe.py SPEC_JSON` prints one JSON object:

    nll        the mean negative log-likelihood of ids[1:] given the tokens before, the text cut into
               consecutive chunks of `context` inputs each predicting its next tokens (exact when the token count
               minus one is a multiple of `context`)
    tokens     how many ids the text has (at most max_tokens)
    choices    per prompt: single-token continuations that decode and re-encode to themselves, the model's most
               likely first (so a multiple-choice question made of them has a known answer)
    greedy     per prompt: the greedy continuation of `max_new_tokens` tokens, decoded, one prompt at a time
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(spec_json: str) -> None:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = json.loads(spec_json)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).eval()
    text = Path(spec["text"]).read_text(encoding="utf-8")
    ids = torch.tensor(tokenizer(text)["input_ids"][: spec["max_tokens"]])
    context, total, count = spec["context"], 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(ids) - 1, context):
            inputs, targets = ids[begin : begin + context], ids[begin + 1 : begin + context + 1]
            logits = model(input_ids=inputs[None, : len(targets)]).logits[0]
            total += F.cross_entropy(logits, targets, reduction="sum").item()
            count += len(targets)
        vocab = [
            v
            for v in range(len(tokenizer))
            if tokenizer(tokenizer.decode([v]), add_special_tokens=False)["input_ids"] == [v]
        ]
        choices, greedy = [], []
        for prompt in spec["prompts"]:
            encoded = tokenizer(prompt, return_tensors="pt")
            last = model(**encoded).logits[0, -1]
            ranked = sorted(vocab, key=lambda v: -last[v].item())
            choices.append([tokenizer.decode([v]) for v in ranked[: spec.get("choices", 4)]])
            out = model.generate(**encoded, max_new_tokens=spec["max_new_tokens"], do_sample=False)
            greedy.append(tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True))
    print(json.dumps({"nll": total / count, "scored": count, "tokens": len(ids), "choices": choices, "greedy": greedy}))


if __name__ == "__main__":
    main(sys.argv[1])
