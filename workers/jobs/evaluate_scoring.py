"""What the evaluate job computes with a loaded model (torch): sliding-window perplexity, multiple-choice
log-likelihoods and greedy answers. Every function takes `between`, called after each batch: the program's
progress and stop check. Nothing here prints or logs.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Between = Callable[[int], None]  # told how many batches are done


@dataclass(frozen=True)
class Window:
    begin: int  # input tokens ids[begin:begin + length] predict ids[begin + 1:begin + length + 1]
    length: int
    new: int  # the last `new` of those targets are scored here (none was scored by an earlier window)


def windows(tokens: int, context: int, stride: int) -> list[Window]:
    """The sliding windows over `tokens` ids: every token but the first is scored exactly once, each with up to
    `context` tokens before it. A window starts `stride` after the last one and scores what is new; the last
    window ends at the end and keeps a full context (it overlaps more), so every window has the same length."""
    last = tokens - 1  # targets are tokens 1..last
    length = min(context, last)
    plan, scored, begin = [], 0, 0
    while scored < last:
        end = min(begin + length, last)
        start = end - length
        plan.append(Window(start, length, end - scored))
        scored, begin = end, begin + stride
    return plan


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _keeps_logits(model) -> bool:
    # Most causal LMs compute the head only for the last N positions when asked (logits_to_keep).
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Perplexity:
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int
    seconds: float


def perplexity(model, ids: list[int], context: int, stride: int, batch_size: int, device: str, between: Between):
    """The sliding-window perplexity of `ids` (a `Perplexity`; exp(nll) is the perplexity)."""
    import torch
    import torch.nn.functional as F

    tokens = torch.tensor(ids, dtype=torch.long)
    plan = windows(len(ids), context, stride)
    keeps = _keeps_logits(model)
    total = torch.zeros((), dtype=torch.float64, device=device)
    scored = 0
    with torch.inference_mode():
        # One untimed forward: a process's first pass pays for thread pools and kernel choice (x3 on CPU), which
        # would slow whichever model comes first.
        first = plan[: min(batch_size, len(plan))]
        model(input_ids=torch.stack([tokens[w.begin : w.begin + w.length] for w in first]).to(device), use_cache=False)
    _sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        for done, batch in enumerate(batches(plan, batch_size), start=1):
            keep = max(window.new for window in batch)
            inputs = torch.stack([tokens[w.begin : w.begin + w.length] for w in batch]).to(device)
            # Targets of the last `keep` positions; those an earlier window scored are ignored (-100).
            labels = torch.stack([tokens[w.begin + w.length + 1 - keep : w.begin + w.length + 1] for w in batch])
            for row, window in enumerate(batch):
                labels[row, : keep - window.new] = -100
            if keeps:
                logits = model(input_ids=inputs, use_cache=False, logits_to_keep=keep).logits
            else:
                logits = model(input_ids=inputs, use_cache=False).logits[:, -keep:]
            total += F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                labels.to(device).reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            scored += sum(window.new for window in batch)
            between(done)
    nll = total.item() / scored
    _sync(device)
    return Perplexity(nll=nll, tokens=scored, seconds=time.perf_counter() - started)


def choice_loglikelihoods(
    model, sequences: list[tuple[list[int], list[int]]], batch_size: int, device: str, pad_id: int, between: Between
) -> list[float]:
    """For each (prompt ids, continuation ids): the total log-likelihood of the continuation given the prompt."""
    import torch

    scores: list[float] = []
    with torch.inference_mode():
        for done, batch in enumerate(batches(sequences, batch_size), start=1):
            width = max(len(prompt) + len(choice) for prompt, choice in batch)
            inputs = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (prompt, choice) in enumerate(batch):
                joined = prompt + choice
                inputs[row, : len(joined)] = torch.tensor(joined)
                mask[row, : len(joined)] = 1  # right padding: the real tokens keep positions 0..n-1
            logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for row, (prompt, choice) in enumerate(batch):
                start = len(prompt)
                rows = logits[row, start - 1 : start - 1 + len(choice)].float().log_softmax(-1)
                targets = torch.tensor(choice, device=rows.device).unsqueeze(-1)
                scores.append(rows.gather(-1, targets).sum().item())
            between(done)
    return scores


def greedy_answers(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int, device: str, between: Between
) -> list[str]:
    """Greedy continuations of each prompt (token ids), decoded without special tokens."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    answers: list[str] = []
    with torch.inference_mode():
        for done, batch in enumerate(batches(prompts, batch_size), start=1):
            width = max(len(prompt) for prompt in batch)
            inputs = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, prompt in enumerate(batch):
                inputs[row, width - len(prompt) :] = torch.tensor(prompt)  # left padding: generation continues
                mask[row, width - len(prompt) :] = 1  # right after each prompt
            out = model.generate(
                input_ids=inputs.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
            )
            answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            between(done)
    return answers
