"""Reference figures for the evaluate program's tests, computed the plain way. Runs in the ML environment (no
Django): `python tests/support/evaluate_probe.py SPEC_JSON` prints one JSON object:

    sliding_nll  the same with windows every `stride` tokens, computed one target token at a time
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
        # The sliding window token by token: window k ends at min(k * stride + context, n - 1) and holds the
        # `context` tokens before its end; each target is scored in the first window whose end reaches it.
        last, sliding, ends = len(ids) - 1, 0.0, []
        k = 0
        while not ends or ends[-1] < last:
            ends.append(min(k * spec["stride"] + context, last))
            k += 1
        window_logits = {}
        for target in range(1, last + 1):
            end = next(e for e in ends if e >= target)
            begin = max(0, end - context)
            if end not in window_logits:
                window_logits[end] = model(input_ids=ids[None, begin:end]).logits[0].log_softmax(-1)
            sliding -= window_logits[end][target - begin - 1, ids[target]].item()
        vocab = [
            v
            for v in range(len(tokenizer))
            if tokenizer(tokenizer.decode([v]), add_special_tokens=False)["input_ids"] == [v]
        ]
        choices, greedy = [], []
        for prompt in spec["prompts"]:
            encoded = tokenizer(prompt, return_tensors="pt")
            following = model(**encoded).logits[0, -1]
            ranked = sorted(vocab, key=lambda v: -following[v].item())
            choices.append([tokenizer.decode([v]) for v in ranked[: spec.get("choices", 4)]])
            out = model.generate(**encoded, max_new_tokens=spec["max_new_tokens"], do_sample=False)
            greedy.append(tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True))
    print(
        json.dumps(
            {
                "nll": total / count,
                "sliding_nll": sliding / last,
                "scored": count,
                "tokens": len(ids),
                "choices": choices,
                "greedy": greedy,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
