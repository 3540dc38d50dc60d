"""Token lengths of training records, counted as the fine-tune counts them (finetune_train's check against
max_seq_len): a chat record is its messages through the tokenizer's chat template; prompt/completion and text
records are their text through the tokenizer plus the end-of-sequence token TRL appends. The lengths are kept
as a tally (length -> rows), so exact percentiles and any histogram come out at the end in memory that grows
with the number of distinct lengths, not with the number of rows.

Percentiles are nearest-rank: p50 is the smallest length that at least half of the rows do not exceed
(numpy's method="inverted_cdf"). Histogram bin i counts the rows whose length L has bins[i] <= L < bins[i+1].

The tokenizer is transformers' AutoTokenizer without torch: transformers imports torch whenever it is
installed (seconds, and over half a GiB of address space), though no tokenizer needs it.
"""

from __future__ import annotations

import math
import os
import sys
from bisect import bisect_right
from collections import Counter
from pathlib import Path
from typing import Any

from workers.jobs.protocol import BadInput

PERCENTILES = (50, 90, 99)
DEFAULT_BINS = 20


def load_tokenizer(path: str, shape: str):
    """The model directory's tokenizer, loaded without torch; BadInput when it cannot count this shape."""
    # Threads that would only reserve address space: the stats do no BLAS work.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # "PyTorch was not found" is true here on purpose; keep it out of the job log.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "torch" not in sys.modules:
        sys.modules["torch"] = None  # importlib.util.find_spec("torch") answers None: transformers skips it
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except MemoryError:
        raise
    except Exception as exc:  # a broken directory fails in many ways; the type is enough to say which
        raise BadInput(
            f"The tokenizer at {path} cannot be loaded ({type(exc).__name__}).", cause="no_tokenizer", field="tokenizer"
        ) from exc
    if shape == "chat" and not tokenizer.chat_template:
        raise BadInput(
            f"The tokenizer at {path} has no chat template, which a chat dataset needs.",
            cause="no_chat_template",
            field="tokenizer",
            next_step="Choose a model whose tokenizer has a chat template, or a prompt/completion dataset.",
        )
    return tokenizer


def tokenizer_name(path: str) -> str:
    return Path(path).name or str(path)


def count_tokens(tokenizer, shape: str, records: list[dict[str, Any]]) -> list[int]:
    """Token lengths of normalized records of one shape, one batch at a time (the same figures as one by one)."""
    if not records:
        return []
    if shape == "chat":
        conversations = [record["messages"] for record in records]
        return [len(ids) for ids in tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=False)]
    if shape == "text":
        texts = [record["text"] for record in records]
    else:
        texts = [record["prompt"] + record["completion"] for record in records]
    return [len(ids) + 1 for ids in tokenizer(texts)["input_ids"]]  # + the EOS token TRL appends


class LengthTally:
    """How many rows have each token length."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.rows = 0
        self.total = 0

    def add(self, lengths: list[int]) -> None:
        self.counts.update(lengths)
        self.rows += len(lengths)
        self.total += sum(lengths)

    def percentile(self, p: int) -> int:
        rank = max(1, -(-p * self.rows // 100))  # ceil(p/100 * rows) in integers
        seen = 0
        for length in sorted(self.counts):
            seen += self.counts[length]
            if seen >= rank:
                return length
        raise ValueError("no rows")

    def summary(self, bins: int | list[int] | None, tokenizer: str) -> dict[str, Any]:
        low, high = min(self.counts), max(self.counts)
        edges = histogram_edges(low, high, bins)
        counts = [0] * (len(edges) - 1)
        for length, rows in self.counts.items():
            counts[bisect_right(edges, length) - 1] += rows
        return {
            "tokenizer": tokenizer,
            "min": low,
            "max": high,
            "mean": round(self.total / self.rows, 2),
            **{f"p{p}": self.percentile(p) for p in PERCENTILES},
            "bins": edges,
            "counts": counts,
        }


def histogram_edges(low: int, high: int, bins: int | list[int] | None) -> list[int]:
    """Whole-number edges covering low..high: `bins` equal-width bins, or the edges given, widened with low and
    high + 1 where the data reaches past them (so the counts always add up to the rows)."""
    if isinstance(bins, list):
        edges = list(bins)
        if low < edges[0]:
            edges.insert(0, low)
        if high >= edges[-1]:
            edges.append(high + 1)
        return edges
    wanted = bins or DEFAULT_BINS
    width = max(1, math.ceil((high - low + 1) / wanted))
    steps = math.ceil((high - low + 1) / width)
    return [low + step * width for step in range(steps + 1)]
