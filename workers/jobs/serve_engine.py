"""serve.py's generation loop: continuous batching over a transformers causal LM.

One thread owns the model. Requests wait in a queue; between decode steps the loop prefills the
waiting ones (left-padded, one forward) and merges their KV cache into the running batch, so new
clients join without waiting for others to finish (as TGI's router does). Each row keeps its own
sampling settings, seed, LoRA adapter and output callback, so streams never mix: with adapters loaded, every
forward names each row's adapter (peft's mixed-adapter batch; "__base__" for the base model), so rows with
different adapters share a step and each gets only its own, as TGI's segmented LoRA kernels do. Imports nothing
from Django.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

# Test-only fault injection: the Nth generated token of a request fails as a shard error would.
FAULT_AT_TOKEN = int(os.environ.get("SERVE_FAULT_AT_TOKEN", "0") or 0)
BASE_MODEL = "__base__"  # peft's name, in a mixed-adapter batch, for a row without an adapter


@dataclass
class Params:
    max_new_tokens: int
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None  # vLLM's; TGI has none
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    top_n_tokens: int = 0
    decoder_input_details: bool = False
    adapter: str | None = None  # a loaded LoRA adapter's id; None runs the base model

    @property
    def sampling(self) -> bool:
        # TGI samples when asked to, or when any warper is set (temperature 1.0 is no warper).
        return bool(
            self.do_sample
            or (self.temperature is not None and self.temperature != 1.0)
            or self.top_k
            or (self.top_p is not None and self.top_p < 1.0)
            or (self.typical_p is not None and self.typical_p < 1.0)
        )


Emit = Callable[[dict], None]


class Sequence:
    """One request inside the engine."""

    def __init__(self, input_ids: list[int], params: Params, emit: Emit) -> None:
        self.input_ids = input_ids
        self.params = params
        self.emit = emit
        self.generated: list[int] = []
        self.tokens: list[dict] = []
        self.top_tokens: list[list[dict]] = []
        self.prefill: list[dict] = []
        self.text = ""
        self.cancelled = False
        self.finished = False
        self.queued_at = time.monotonic()
        self.started_at: float | None = None
        self.seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.generator: torch.Generator | None = None
        # Incremental detokenization offsets into input_ids + generated (TGI's decode_token).
        self.prefix_offset = max(len(input_ids) - 5, 0)
        self.read_offset = len(input_ids)

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    def __init__(
        self,
        model,
        tokenizer,
        device: torch.device,
        *,
        max_batch_size: int,
        max_batch_total_tokens: int,
        on_error: Callable[[str], None] | None = None,
        metrics=None,
        adapters: dict[str, str] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_batch_size = max_batch_size
        self.max_batch_total_tokens = max_batch_total_tokens
        self.on_error = on_error
        self.metrics = metrics
        self.adapters = adapters or {}  # adapter id -> its peft name; empty when the model has none
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.special_ids = set(tokenizer.all_special_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.waiting: deque[Sequence] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="serve-engine", daemon=True)
        # The running batch: rows, their KV cache, attention mask over the cache, next input and position.
        self.rows: list[Sequence] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None
        self.next_ids: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    # -- public ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=10)

    def submit(self, input_ids: list[int], params: Params, emit: Emit) -> Sequence:
        sequence = Sequence(input_ids, params, emit)
        with self.cond:
            self.waiting.append(sequence)
            self.cond.notify_all()
        return sequence

    @property
    def queue_size(self) -> int:
        return len(self.waiting)

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    def batch_max_tokens(self) -> int:
        """The running rows' token budget, prompt plus max_new_tokens each (TGI's batch.max_tokens, the
        tgi_batch_current_max_tokens gauge; read from another thread: a snapshot of the list)."""
        return sum(len(s.input_ids) + s.params.max_new_tokens for s in list(self.rows))

    def tokens_in_use(self) -> int:
        """KV-cache tokens the running rows hold (read from another thread: a snapshot of the list)."""
        return sum(len(s.input_ids) + len(s.generated) for s in list(self.rows))

    # -- loop ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.cond:
                while not self.stopping and not self.waiting and not self.rows:
                    self.cond.wait()
                if self.stopping:
                    return
                admitted = self._take_waiting()
            try:
                if admitted:
                    self._prefill(admitted)
                if self.rows:
                    self._decode()
            except Exception as exc:
                self._fail_all(admitted, exc)

    def _take_waiting(self) -> list[Sequence]:
        budget = self.max_batch_total_tokens - sum(len(s.input_ids) + s.params.max_new_tokens for s in self.rows)
        admitted: list[Sequence] = []
        while self.waiting and len(self.rows) + len(admitted) < self.max_batch_size:
            sequence = self.waiting[0]
            need = len(sequence.input_ids) + sequence.params.max_new_tokens
            if sequence.cancelled:
                self.waiting.popleft()
                continue
            if need > budget and (self.rows or admitted):
                break  # waits for room, as TGI's queue does
            self.waiting.popleft()
            budget -= need
            admitted.append(sequence)
        return admitted

    def _fail_all(self, admitted: list[Sequence], exc: Exception) -> None:
        message = f"Request failed during generation: Server error: {exc}"
        for sequence in {id(s): s for s in [*self.rows, *admitted]}.values():
            sequence.emit({"type": "error", "error": message, "error_type": "generation"})
        self.rows, self.cache, self.mask, self.next_ids, self.positions = [], None, None, None, None
        if self.on_error:
            self.on_error(message)

    def _forward(self, method: str, rows: list[Sequence], **inputs):
        started = time.monotonic()
        if self.adapters:
            # Without names peft would apply its active adapter to every row, base requests included.
            inputs["adapter_names"] = [self.adapters.get(s.params.adapter, BASE_MODEL) for s in rows]
        output = self.model(**inputs, use_cache=True)
        if self.metrics:
            tokens = sum(len(s.input_ids) for s in rows) if method == "prefill" else len(rows)
            self.metrics.batch_inference(method, time.monotonic() - started, tokens=tokens)
        return output

    def _prefill(self, admitted: list[Sequence]) -> None:
        width = max(len(s.input_ids) for s in admitted)
        ids = torch.full((len(admitted), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(admitted), width), dtype=torch.long)
        for row, sequence in enumerate(admitted):
            n = len(sequence.input_ids)
            ids[row, width - n :] = torch.tensor(sequence.input_ids)
            mask[row, width - n :] = 1
            sequence.started_at = time.monotonic()
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        want_prefill = any(s.params.decoder_input_details for s in admitted)
        output = self._forward(
            "prefill",
            admitted,
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            logits_to_keep=0 if want_prefill else 1,
        )
        if want_prefill:
            self._prefill_details(admitted, output.logits, width)
        logits = output.logits[:, -1, :]
        # Merge the new rows into the running batch, left-padding the shorter KV cache.
        new_positions = mask.sum(-1)
        running = len(self.rows)
        if running:
            self.cache = _merge_caches(self.cache, self.mask, output.past_key_values, mask)
            length = self.cache.get_seq_length()
            self.mask = torch.cat([_pad_left(self.mask, length), _pad_left(mask, length)])
            self.positions = torch.cat([self.positions, new_positions])
        else:
            self.cache, self.mask, self.positions = output.past_key_values, mask, new_positions
        self.rows.extend(admitted)
        chosen = self._choose(admitted, logits)
        self.next_ids = torch.cat([self.next_ids, chosen]) if running else chosen
        self._after_step()

    def _prefill_details(self, admitted: list[Sequence], logits: torch.Tensor, width: int) -> None:
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for row, sequence in enumerate(admitted):
            if not sequence.params.decoder_input_details:
                continue
            n = len(sequence.input_ids)
            start = width - n
            entries = [{"id": sequence.input_ids[0], "text": self._token_text(sequence.input_ids[0]), "logprob": None}]
            for i in range(1, n):
                token = sequence.input_ids[i]
                value = float(logprobs[row, start + i - 1, token])
                entries.append({"id": token, "text": self._token_text(token), "logprob": value})
            sequence.prefill = entries

    def _decode(self) -> None:
        mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long, device=self.device)], dim=1)
        output = self._forward(
            "decode",
            self.rows,
            input_ids=self.next_ids,
            attention_mask=mask,
            position_ids=self.positions[:, None],
            past_key_values=self.cache,
            logits_to_keep=1,
        )
        self.mask = mask
        self.positions = self.positions + 1
        self.next_ids = self._choose(self.rows, output.logits[:, -1, :])
        self._after_step()

    # -- sampling --------------------------------------------------------------------------------------
    def _choose(self, rows: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        """Pick each row's next token, emit it, and return the tokens as a column [rows, 1]."""
        scores = logits.float()
        for i, sequence in enumerate(rows):
            p = sequence.params
            if p.repetition_penalty not in (None, 1.0) or p.frequency_penalty or p.presence_penalty:
                history = torch.tensor(sequence.input_ids + sequence.generated, device=scores.device)
                scores[i] = _penalise(scores[i], history, p.repetition_penalty, p.frequency_penalty, p.presence_penalty)
        chosen = scores.argmax(dim=-1)
        for i, sequence in enumerate(rows):
            p = sequence.params
            if p.sampling:
                scores[i] = _warp(scores[i], p)
                if sequence.generator is None:
                    sequence.generator = torch.Generator(device=scores.device).manual_seed(sequence.seed)
                probs = torch.softmax(scores[i], dim=-1)
                chosen[i] = torch.multinomial(probs, 1, generator=sequence.generator)[0]
        logprobs = torch.log_softmax(scores, dim=-1)
        chosen_list = chosen.tolist()
        picked = logprobs.gather(1, chosen[:, None])[:, 0].tolist()
        for i, sequence in enumerate(rows):
            top = None
            if sequence.params.top_n_tokens:
                values, indices = logprobs[i].topk(sequence.params.top_n_tokens)
                top = [self._token(int(t), float(v)) for v, t in zip(values.tolist(), indices.tolist(), strict=True)]
            self._emit_token(sequence, chosen_list[i], picked[i], top)
        return chosen[:, None]

    def _token(self, token_id: int, logprob: float) -> dict:
        logprob = logprob if logprob == logprob and abs(logprob) != float("inf") else None
        return {
            "id": token_id,
            "text": self._token_text(token_id),
            "logprob": logprob,
            "special": token_id in self.special_ids,
        }

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _emit_token(self, sequence: Sequence, token_id: int, logprob: float, top: list[dict] | None) -> None:
        sequence.generated.append(token_id)
        if FAULT_AT_TOKEN and len(sequence.generated) >= FAULT_AT_TOKEN:
            raise RuntimeError(f"injected fault at token {FAULT_AT_TOKEN} (SERVE_FAULT_AT_TOKEN)")
        special = token_id in self.special_ids
        text = self._token_text(token_id) if special else self._next_text(sequence)
        token = {
            "id": token_id,
            "text": text,
            "logprob": logprob if logprob > float("-inf") else None,
            "special": special,
        }
        sequence.tokens.append(token)
        if top is not None:
            sequence.top_tokens.append(top)
        if not special:
            sequence.text += text
        finish = None
        if token_id in self.eos_ids:
            finish = "eos_token"
        elif any(stop and stop in sequence.text[-(len(stop) + len(text)) :] for stop in sequence.params.stop):
            finish = "stop_sequence"
        elif len(sequence.generated) >= sequence.params.max_new_tokens:
            finish = "length"
        event = {"type": "token", "token": token, "top_tokens": top, "index": len(sequence.generated)}
        if finish:
            event.update(
                type="end",
                finish_reason=finish,
                generated_text=self.tokenizer.decode(sequence.generated, skip_special_tokens=True),
                generated_tokens=len(sequence.generated),
                seed=sequence.seed if sequence.params.sampling else None,
                tokens=sequence.tokens,
                top_tokens_all=sequence.top_tokens,
                prefill=sequence.prefill,
                input_length=len(sequence.input_ids),
                queue_seconds=(sequence.started_at or 0) - sequence.queued_at,
                inference_seconds=time.monotonic() - (sequence.started_at or time.monotonic()),
            )
            sequence.finished = True
        sequence.emit(event)

    def _next_text(self, sequence: Sequence) -> str:
        ids = sequence.input_ids + sequence.generated
        prefix = self.tokenizer.decode(ids[sequence.prefix_offset : sequence.read_offset], skip_special_tokens=False)
        text = self.tokenizer.decode(ids[sequence.prefix_offset :], skip_special_tokens=False)
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            sequence.prefix_offset, sequence.read_offset = sequence.read_offset, len(ids)
            return text[len(prefix) :]
        return ""

    def _after_step(self) -> None:
        """Drop finished and cancelled rows from the batch and trim columns nobody attends to any more."""
        keep = [i for i, s in enumerate(self.rows) if not s.finished and not s.cancelled]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.mask, self.next_ids, self.positions = [], None, None, None, None
            return
        index = torch.tensor(keep, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.next_ids, self.positions = self.mask[index], self.next_ids[index], self.positions[index]
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        self.cache = DynamicCache(
            ddp_cache_data=[
                (layer.keys[index, :, first:], layer.values[index, :, first:]) for layer in self.cache.layers
            ]
        )
        self.mask = self.mask[:, first:]


def _pad_left(tensor: torch.Tensor, length: int, dim: int = 1) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=tensor.dtype, device=tensor.device), tensor], dim=dim)


def _merge_caches(old: DynamicCache, old_mask: torch.Tensor, new: DynamicCache, new_mask: torch.Tensor) -> DynamicCache:
    length = max(old_mask.shape[1], new_mask.shape[1])
    pairs = []
    for a, b in zip(old.layers, new.layers, strict=True):
        keys = torch.cat([_pad_left(a.keys, length, 2), _pad_left(b.keys, length, 2)])
        values = torch.cat([_pad_left(a.values, length, 2), _pad_left(b.values, length, 2)])
        pairs.append((keys, values))
    return DynamicCache(ddp_cache_data=pairs)


def _penalise(
    scores: torch.Tensor,
    history: torch.Tensor,
    repetition: float | None,
    frequency: float | None,
    presence: float | None = None,
) -> torch.Tensor:
    scores = scores.clone()
    if repetition not in (None, 1.0):
        seen = history.unique()
        picked = scores[seen]
        scores[seen] = torch.where(picked < 0, picked * repetition, picked / repetition)
    if frequency or presence:
        counts = torch.bincount(history, minlength=scores.shape[0]).to(scores.dtype)
        scores -= (frequency or 0.0) * counts + (presence or 0.0) * (counts > 0).to(scores.dtype)
    return scores


def _warp(scores: torch.Tensor, p: Params) -> torch.Tensor:
    if p.temperature is not None and p.temperature != 1.0:
        scores = scores / p.temperature
    if p.top_k:
        kth = scores.topk(min(p.top_k, scores.shape[-1])).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if p.top_p is not None and p.top_p < 1.0:
        ordered, order = scores.sort(descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) >= p.top_p  # keep the smallest set reaching top_p
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    if p.typical_p is not None and p.typical_p < 1.0:
        logp = scores.log_softmax(-1)
        entropy = -(logp.exp() * logp).nan_to_num().sum()
        shifted = (-logp - entropy).abs()
        ordered, order = shifted.sort()
        cumulative = logp.exp()[order].cumsum(-1)
        drop = cumulative - logp.exp()[order] >= p.typical_p
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return scores
