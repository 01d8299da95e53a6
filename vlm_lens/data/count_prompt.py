"""The counting question and the one parser of its answers (ASCII digits only).

Every place that asks a model to count the dots (the counting study, count patching, the
`demo` command, the organism's training script) uses `COUNT_PROMPT` (or `COT_COUNT_PROMPT`,
the chain-of-thought variant), and every place that reads the count back from generated
text uses `parse_count`, so the question and its reading cannot drift apart. The module
imports only `re` so that a command-line parser may import it cheaply.

Not for: the images (`vlm_lens.data.dots`) or which generation steps produced the digits
(`vlm_lens.studies.counting.digit_steps`).
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = ["COT_COUNT_PROMPT", "COUNT_PROMPT", "answer_span", "parse_count"]

COUNT_PROMPT = "How many dots are there in the image? Answer directly. Answer: "
COT_COUNT_PROMPT = (
    "How many dots are there in the image? Count them step by step, then give the total "
    "as a number at the end. Answer: "
)

# ASCII only: `\d` would also take fullwidth or Arabic-Indic digits, which `int` accepts
# but which are not an answer in the prompt's script.
_INTEGER = re.compile(r"[0-9]+")


def answer_span(
    text: str | None, which: Literal["first", "last"] = "first"
) -> tuple[int, int] | None:
    """Character span of the first (or last) run of ASCII digits in `text`, or None."""
    matches = list(_INTEGER.finditer(text or ""))
    if not matches:
        return None
    return (matches[0] if which == "first" else matches[-1]).span()


def parse_count(text: str | None, which: Literal["first", "last"] = "first") -> int | None:
    """The first (or last) integer in `text` written with ASCII digits 0-9; None if there
    is none. Other scripts' digits (fullwidth, Arabic-Indic, ...) are not part of a number."""
    span = answer_span(text, which)
    return None if span is None else int(text[span[0] : span[1]])
