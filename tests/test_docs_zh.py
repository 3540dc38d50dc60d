"""The Chinese operations and troubleshooting pages (docs/zh/) follow their English originals: the same headings per
level in the same places, the same tables row for row, and every command, setting, log line and identifier (the
backticked spans and the fenced code) unchanged. A section added to the English page without its translation fails
here."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
# A code span: a run of backticks, then text, then a run of the same length (``Error: X(`a`)`` included).
TICKS = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)


def _outside_code(text: str) -> str:
    return FENCE.sub("", text)


def headings(text: str) -> list[int]:
    return [len(m.group(1)) for m in re.finditer(r"^(#{1,6}) ", _outside_code(text), re.M)]


def table_shapes(text: str) -> list[int]:
    """Each table's number of rows, in order."""
    shapes, rows = [], 0
    for line in _outside_code(text).splitlines():
        if line.lstrip().startswith("|"):
            rows += 1
        elif rows:
            shapes.append(rows)
            rows = 0
    return shapes + ([rows] if rows else [])


def spans(text: str) -> Counter:
    # Spans may wrap in the English page and not in the Chinese one: compare them with whitespace folded.
    return Counter(" ".join(span.split()) for _ticks, span in TICKS.findall(_outside_code(text)))


@pytest.mark.parametrize("page", ["operations.md", "troubleshooting.md"])
def test_the_chinese_page_follows_the_english_one(page):
    english, chinese = (DOCS / page).read_text(), (DOCS / "zh" / page).read_text()
    assert re.search(r"[\u4e00-\u9fff]", chinese)
    assert headings(chinese) == headings(english), "a section is missing or extra in docs/zh/" + page
    assert table_shapes(chinese) == table_shapes(english), "a table's rows differ in docs/zh/" + page
    assert FENCE.findall(chinese) == FENCE.findall(english), "code blocks must stay as in English"
    missing = spans(english) - spans(chinese)
    assert not missing, f"backticked text of the English page missing in docs/zh/{page}: {list(missing)[:15]}"
