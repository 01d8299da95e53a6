"""Where the counting answer's digits were generated: `digit_steps`, and the generation
settings that keep an untrained model's answers to digits.

Not for: parsing the answer (`vlm_lens.data.count_prompt.parse_count`) or the attention at
those steps (`vlm_lens.studies.counting.metrics`).
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from vlm_lens.data.count_prompt import answer_span

if TYPE_CHECKING:
    from vlm_lens.core.hooked_vlm import HookedVLM

__all__ = ["digit_steps", "digits_only_kwargs"]


def digit_steps(
    tokens: Sequence[int],
    decode: Callable[[Sequence[int]], str],
    which: Literal["first", "last"] = "first",
) -> tuple[list[int], list[str]]:
    """Generation steps that produced the digits of the answer, and each step's digits.

    Decodes growing prefixes of `tokens` (the same way the text is decoded) to find the
    token holding each character of the answer's span, so tokenizers that merge digits
    or add prefix spaces are handled.
    """
    tokens = list(tokens)
    text = decode(tokens)
    span = answer_span(text, which)
    if span is None:
        return [], []
    ends: list[int] = []
    for i in range(len(tokens)):
        ends.append(len(decode(tokens[: i + 1])))
        if ends[-1] >= span[1]:
            break
    steps: list[int] = []
    digits: list[str] = []
    for c in range(*span):
        step = min(bisect.bisect_right(ends, c), len(ends) - 1)
        if steps and steps[-1] == step:
            digits[-1] += text[c]
        else:
            steps.append(step)
            digits.append(text[c])
    return steps, digits


_DIGIT_SUPPRESS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _all_digits(text: str) -> bool:
    """Whether `text` is one run of ASCII digits (the parser's notion of a number)."""
    return bool(text) and answer_span(text) == (0, len(text))


def digits_only_kwargs(model: HookedVLM, max_digits: int) -> tuple[dict[str, Any], int]:
    """`generate` kwargs that allow only digit tokens (and EOS), and the new-token cap."""
    if model in _DIGIT_SUPPRESS:
        return {"suppress_tokens": _DIGIT_SUPPRESS[model]}, max_digits
    tok = model.processor.tokenizer
    vocab = max(len(tok), model.cfg.d_vocab)
    digits = {i for i in range(len(tok)) if _all_digits(tok.decode([i]).strip())}
    allowed = digits | set(model.eos_token_ids)
    _DIGIT_SUPPRESS[model] = [i for i in range(vocab) if i not in allowed]
    return {"suppress_tokens": _DIGIT_SUPPRESS[model]}, max_digits
