"""What a benchmark sends: prompt and output lengths (fixed, or drawn from a distribution), prompts built to a
token length, and Poisson arrival times. Deterministic for a seed; standard library plus, when a tokenizer is
given, the `tokenizers` package (the control plane has it; nothing of transformers or torch).

Lengths (spec `workload.prompt_tokens` and `workload.output_tokens`):
    128                                         every request
    {"percentiles": {"min": 16, "p50": 128, "p90": 400, "max": 1024}}   drawn by the inverse of the piecewise
                                                linear distribution through those points (min/p0 and max/p100 needed)
    {"histogram": {"bins": [0, 64, 256, 1024], "counts": [10, 70, 20]}} a bin by its count, then a whole number
                                                uniformly in bins[i] <= L < bins[i + 1]: the shape dataset_stats
                                                writes as `token_lengths`, which is accepted as it is

Prompts are runs of common English words taken at a random word of a seeded corpus, so no two requests share a
prefix (a server's prefix cache would otherwise answer from cache and flatter TTFT). With a tokenizer the run is
cut where both ends fall on word starts of the tokenized corpus, so the prompt encodes to exactly the asked number
of tokens (as a completion; a chat template adds its own few). Without one, a word stands for a token: most
tokenizers encode these words with their leading space as one token, so the length is approximate, and the
server's own count (OpenAI usage) is what the figures use when it is reported.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workers.jobs.protocol import BadInput

_WORD_TEXT = (
    "the of and to in is was for on that with as by at from his her they this which but be are not have had one "
    "all were when we there can an your more so if out about up time them some into only other new could two "
    "been first its now people my over than way down day did get come made may part long little after work "
    "year back use water good most man well world very through just form great where much before right too "
    "mean old any same tell boy follow came want show also around three small set put end does another large "
    "must big even such here why ask went men read need land different home us move try kind hand picture "
    "again change off play spell air away animal house point page letter mother answer found study still learn "
    "should world high every near add food between own below country plant last school father keep tree never "
    "start city earth eye light thought head under story saw left few while along might close something seem "
    "next hard open example begin life always those both paper together got group often run important until "
    "children side feet car mile night walk white sea began grow took river four carry state once book hear stop"
)
WORDS = tuple(_WORD_TEXT.split())
CORPUS_SPARE_WORDS = 65_536  # room for random starting points beyond the longest prompt
MAX_LENGTH = 1_000_000


class LengthDistribution:
    """Token lengths: `draw(rng)` gives one; `maximum` bounds them."""

    def __init__(self, points: list[tuple[float, float]] | None = None, bins: list[tuple[int, int, int]] | None = None):
        self.points, self.bins = points, bins
        if points:
            self.maximum = math.ceil(points[-1][1])
        else:
            self.maximum = max(high - 1 for _, high, _ in bins or [(0, 1, 1)])
        self._weights = [count for _, _, count in bins] if bins else None

    @classmethod
    def fixed(cls, length: int) -> LengthDistribution:
        return cls(points=[(0.0, float(length)), (100.0, float(length))])

    @classmethod
    def parse(cls, value: Any, field: str) -> LengthDistribution:
        if isinstance(value, int) and not isinstance(value, bool):
            _check_length(value, field)
            return cls.fixed(value)
        if not isinstance(value, dict):
            raise BadInput(f"{field} must be a whole number of tokens or a distribution.", field=field)
        if "percentiles" in value:
            return cls(points=_percentile_points(value["percentiles"], f"{field}.percentiles"))
        histogram = value.get("histogram", value)
        if isinstance(histogram, dict) and "bins" in histogram and "counts" in histogram:
            return cls(bins=_histogram_bins(histogram, f"{field}.histogram"))
        raise BadInput(f"{field} must hold 'percentiles' or a 'histogram' with 'bins' and 'counts'.", field=field)

    def draw(self, rng: random.Random) -> int:
        if self.bins:
            low, high, _ = rng.choices(self.bins, weights=self._weights)[0]
            return rng.randrange(low, high)
        u = rng.uniform(0.0, 100.0)
        index = max(1, bisect.bisect_left([q for q, _ in self.points], u))
        (q0, v0), (q1, v1) = self.points[index - 1], self.points[index]
        value = v0 if q1 == q0 else v0 + (v1 - v0) * (u - q0) / (q1 - q0)
        return max(1, round(value))


def _check_length(value: Any, field: str) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool)) or not 1 <= value <= MAX_LENGTH:
        raise BadInput(f"{field} must be a whole number from 1 to {MAX_LENGTH}.", field=field)


def _percentile_points(raw: Any, field: str) -> list[tuple[float, float]]:
    if not isinstance(raw, dict):
        raise BadInput(f"{field} must map percentiles (min, p50, ..., max) to token lengths.", field=field)
    points = {}
    for key, length in raw.items():
        name = str(key).lower()
        q = 0.0 if name == "min" else 100.0 if name == "max" else _float(name.removeprefix("p"))
        if q is None or not 0 <= q <= 100:
            raise BadInput(f"{field}: {key!r} is not a percentile (min, p0..p100, max).", field=field)
        if not isinstance(length, int | float) or isinstance(length, bool) or not 1 <= length <= MAX_LENGTH:
            raise BadInput(f"{field}.{key} must be a length from 1 to {MAX_LENGTH}.", field=f"{field}.{key}")
        points[q] = float(length)
    ordered = sorted(points.items())
    if len(ordered) < 2 or ordered[0][0] != 0 or ordered[-1][0] != 100:
        raise BadInput(f"{field} needs at least min (p0) and max (p100).", field=field)
    if any(b[1] < a[1] for a, b in itertools.pairwise(ordered)):
        raise BadInput(f"{field}: lengths must not fall as the percentile rises.", field=field)
    return ordered


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _histogram_bins(raw: dict, field: str) -> list[tuple[int, int, int]]:
    edges, counts = raw["bins"], raw["counts"]
    whole = (isinstance(edges, list) and isinstance(counts, list)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in [*edges, *counts]
    )
    if not whole or len(edges) != len(counts) + 1 or not counts:
        raise BadInput(f"{field}: bins must be n + 1 whole-number edges for n whole-number counts.", field=field)
    if any(b <= a for a, b in itertools.pairwise(edges)) or edges[0] < 0 or edges[-1] > MAX_LENGTH + 1:
        raise BadInput(f"{field}: bin edges must rise, from 0 to {MAX_LENGTH + 1}.", field=field)
    bins = [(max(low, 1), high, count) for low, high, count in zip(edges, edges[1:], counts, strict=False)]
    bins = [(low, high, count) for low, high, count in bins if count > 0 and high > low]
    if not bins or any(count < 0 for count in counts):
        raise BadInput(f"{field}: counts must be >= 0 with at least one non-empty bin of lengths >= 1.", field=field)
    return bins


def load_tokenizer(path: str):
    """A `tokenizers.Tokenizer` from a tokenizer.json or a model directory holding one."""
    from tokenizers import Tokenizer

    file = Path(path)
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise BadInput(f"workload.tokenizer: no tokenizer.json at {path}.", field="workload.tokenizer")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:
        raise BadInput(f"workload.tokenizer: {file} cannot be loaded ({exc}).", field="workload.tokenizer") from exc


class PromptBuilder:
    """Prompts of a given token length from a seeded word corpus (see the module docstring)."""

    CHECKED = 16  # the first prompts are encoded again; a tokenizer whose cuts do not hold is then counted always

    def __init__(self, *, longest: int, seed: int, tokenizer=None) -> None:
        rng = random.Random(f"{seed}:corpus")
        self.words = rng.choices(WORDS, k=longest + CORPUS_SPARE_WORDS)
        self.tokenizer = tokenizer
        self.checked, self.count_always = 0, False
        if tokenizer is None:
            return
        encoding = tokenizer.encode(" " + " ".join(self.words), add_special_tokens=False)
        self.ids = encoding.ids
        # Token positions where a word starts: a cut there leaves whole words, which encode as they did in place.
        word_of = encoding.word_ids
        starts = [i for i in range(len(self.ids)) if i == 0 or word_of[i] != word_of[i - 1] or word_of[i] is None]
        if len(starts) < len(self.ids) // 8:  # no word boundaries to speak of (no pre-tokenizer): count always
            starts, self.count_always = list(range(len(self.ids))), True
        self.starts, self.start_set = starts, {*starts, len(self.ids)}

    def build(self, length: int, rng: random.Random) -> tuple[str, int]:
        """A prompt and its token count (exact with a tokenizer, the word count without)."""
        if self.tokenizer is None:
            first = rng.randrange(0, len(self.words) - length)
            return " ".join(self.words[first : first + length]), length
        room = bisect.bisect_right(self.starts, len(self.ids) - length)
        for _ in range(64):
            first = self.starts[rng.randrange(0, room)]
            if first + length in self.start_set:
                break
        text = self.tokenizer.decode(self.ids[first : first + length])
        if self.count_always or self.checked < self.CHECKED:
            counted = len(self.tokenizer.encode(text, add_special_tokens=False).ids)
            self.checked += 1
            self.count_always = self.count_always or counted != length
            return text, counted
        return text, length


def poisson_offsets_ns(rate: float, rng: random.Random) -> Iterator[int]:
    """Send times (ns after the step's start) of a Poisson process of `rate` requests per second."""
    at = 0.0
    while True:
        at += rng.expovariate(rate)
        yield round(at * 1e9)
