"""Greedy continuations of prompts from a base model, the base with a LoRA adapter, and a merged model.
Runs in the ML environment (no Django): `python tests/support/finetune_probe.py SPEC_JSON` prints one JSON
object {"base": [...], "adapter": [...], "merged": [...]}, the keys present being those the spec names."""

from __future__ import annotations

import json
import sys


def continuations(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    import torch

    out = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        out.append(tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def main(spec_json: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = json.loads(spec_json)
    tokenizer = AutoTokenizer.from_pretrained(spec["base"])
    prompts, length = spec["prompts"], spec.get("max_new_tokens", 8)
    found = {"base": continuations(AutoModelForCausalLM.from_pretrained(spec["base"]), tokenizer, prompts, length)}
    if spec.get("adapter"):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(spec["base"]), spec["adapter"])
        found["adapter"] = continuations(model.eval(), tokenizer, prompts, length)
    if spec.get("merged"):
        model = AutoModelForCausalLM.from_pretrained(spec["merged"])
        found["merged"] = continuations(model, AutoTokenizer.from_pretrained(spec["merged"]), prompts, length)
    print(json.dumps(found))


if __name__ == "__main__":
    main(sys.argv[1])
