"""Prompt tokens for quotas, counted with a real tokenizer.json (tests/fixtures/tokenizer, the tiny test model's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tokenizers import Tokenizer

from deployments.gateway import tokens
from deployments.gateway.tokens import PER_MESSAGE_TOKENS, REPLY_TOKENS, completion_tokens, prompt_tokens

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "tokenizer"
TEXT = "Hello world, the model server deploys tokens."


def test_a_prompt_is_counted_with_the_model_tokenizer_including_bos():
    # <s> Hello Ġworld , Ġthe Ġmodel Ġserver Ġdeploys Ġtokens .
    assert prompt_tokens(str(FIXTURE), prompt=TEXT) == 10
    assert prompt_tokens(str(FIXTURE), prompt="") == 0
    # Text the vocabulary lacks falls apart into byte-level pieces: the tokenizer counts what the model reads.
    assert prompt_tokens(str(FIXTURE), prompt="量子纠缠") == 13


def test_generated_text_is_counted_without_bos():
    assert completion_tokens(str(FIXTURE), TEXT) == 9
    assert completion_tokens(None, "x" * 30) == 11


def test_completion_prompt_lists_as_the_openai_api_allows():
    assert prompt_tokens(str(FIXTURE), prompt=[TEXT, TEXT]) == 20
    assert prompt_tokens(str(FIXTURE), prompt=[1, 17, 42]) == 3  # token ids
    assert prompt_tokens(str(FIXTURE), prompt=[[1, 17], [1, 42, 43]]) == 5


def test_chat_messages_count_contents_plus_role_markers():
    messages = [
        {"role": "system", "content": "the model server"},  # t he Ġmodel Ġserver: 4
        {"role": "user", "content": [{"type": "text", "text": TEXT}]},  # 9 without <s>
    ]
    assert prompt_tokens(str(FIXTURE), messages=messages) == REPLY_TOKENS + 2 * PER_MESSAGE_TOKENS + 4 + 9
    assert prompt_tokens(str(FIXTURE), messages=[]) == REPLY_TOKENS
    with_tool_call = [{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "lookup"}}]}]
    assert prompt_tokens(str(FIXTURE), messages=with_tool_call) > REPLY_TOKENS + PER_MESSAGE_TOKENS


def test_without_a_tokenizer_the_estimate_is_conservative(tmp_path):
    assert prompt_tokens(None, prompt="x" * 300) == 101
    assert prompt_tokens(str(tmp_path), prompt="x" * 30) == 11  # a directory without tokenizer.json
    assert prompt_tokens(None, messages=[{"role": "user", "content": "x" * 30}]) == REPLY_TOKENS + 5 + 11
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    assert prompt_tokens(str(tmp_path / "broken"), prompt="x" * 30) == 11


def test_truncation_saved_in_tokenizer_json_does_not_shorten_the_count(tmp_path):
    """Some models ship tokenizer.json with truncation on; a quota must count the whole prompt."""
    data = json.loads((FIXTURE / "tokenizer.json").read_text())
    data["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    assert len(Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(TEXT * 3).ids) == 8
    assert prompt_tokens(str(tmp_path), prompt=TEXT * 3) == prompt_tokens(str(FIXTURE), prompt=TEXT * 3) > 20


def test_tokenizers_are_loaded_once_per_directory_and_the_cache_is_bounded(tmp_path):
    tokens.tokenizer_for.cache_clear()
    assert tokens.tokenizer_for(str(FIXTURE)) is tokens.tokenizer_for(str(FIXTURE))
    for n in range(tokens.CACHED_TOKENIZERS + 4):
        shutil.copytree(FIXTURE, tmp_path / str(n))
        prompt_tokens(str(tmp_path / str(n)), prompt=TEXT)
    info = tokens.tokenizer_for.cache_info()
    assert info.currsize == info.maxsize == tokens.CACHED_TOKENIZERS
