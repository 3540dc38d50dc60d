"""Prompt tokens counted before a call, for quotas: with the model's own tokenizer.json through the `tokenizers`
library (the Rust tokenizer, no transformers), or a conservative estimate when the model has none. Sync and
CPU-bound: the gateway calls it in a thread."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

# Chat templates wrap each message in role markers that the contents alone do not show: ChatML's
# "<|im_start|>user\n ... <|im_end|>\n" and Llama 3's "<|start_header_id|>user<|end_header_id|>\n\n ... <|eot_id|>"
# are 5 tokens, Mistral's "[INST] ... [/INST]" fewer. Rendering each model's Jinja template on the hot path would be
# exact but slow, so a fixed overhead per message stands in for it, on the high side (a quota should not undercount),
# plus the BOS token and the assistant header the template adds to open the reply.
PER_MESSAGE_TOKENS = 5
REPLY_TOKENS = 4
CACHED_TOKENIZERS = 16  # one per deployed model directory; each holds its vocabulary in memory


@lru_cache(maxsize=CACHED_TOKENIZERS)
def tokenizer_for(tokenizer_dir: str) -> Tokenizer | None:
    """The directory's tokenizer.json, loaded once (bounded cache); None when it has none or it cannot be read."""
    from tokenizers import Tokenizer

    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # a broken file must not fail calls; the estimate takes over
        log.warning("cannot load %s (%s); prompt tokens are estimated", path, exc)
        return None
    # Some tokenizer.json files carry truncation (e.g. to 512) or padding from training: a quota counts it all.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def estimate(text: str) -> int:
    """Without a tokenizer: about 3 characters a token, on the high side (English runs near 4)."""
    return len(text) // 3 + 1


def _count(tokenizer: Tokenizer | None, text: str, *, special: bool) -> int:
    if not text:
        return 0
    if tokenizer is None:
        return estimate(text)
    return len(tokenizer.encode(text, add_special_tokens=special).ids)


def _message_text(message: dict) -> str:
    """The text a message puts in the prompt: its content (a string or OpenAI content parts), its name and any
    tool calls (as the JSON the template writes)."""
    content = message.get("content")
    parts: list[str] = []
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts.extend(str(part.get("text", "")) for part in content if isinstance(part, dict))
    if message.get("name"):
        parts.append(str(message["name"]))
    if message.get("tool_calls"):
        parts.append(json.dumps(message["tool_calls"]))
    return "\n".join(part for part in parts if part)


def prompt_tokens(
    tokenizer_dir: str | None, *, prompt: str | list | None = None, messages: list[dict] | None = None
) -> int:
    """Tokens the model will read: a completion prompt (a string, a list of strings or of token ids, as the
    OpenAI API allows; special tokens such as BOS included) or chat messages (contents plus the role markers)."""
    tokenizer = tokenizer_for(str(tokenizer_dir)) if tokenizer_dir else None
    if messages is not None:
        total = REPLY_TOKENS
        for message in messages:
            text = _message_text(message) if isinstance(message, dict) else str(message)
            total += PER_MESSAGE_TOKENS + _count(tokenizer, text, special=False)
        return total
    if isinstance(prompt, list):
        if all(isinstance(item, int) for item in prompt):
            return len(prompt)  # already token ids
        return sum(prompt_tokens(tokenizer_dir, prompt=item) for item in prompt)
    return _count(tokenizer, prompt or "", special=True)


def completion_tokens(tokenizer_dir: str | None, text: str) -> int:
    """Tokens of generated text when the server did not say (no BOS: the model does not emit one)."""
    tokenizer = tokenizer_for(str(tokenizer_dir)) if tokenizer_dir else None
    return _count(tokenizer, text, special=False)
