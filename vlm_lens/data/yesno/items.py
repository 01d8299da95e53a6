"""One yes/no prompt of a paired benchmark, its prompt form, and how answers are read.

A `YesNoItem` is the unit every loader yields and every metric consumes: one image
set, one question, one ground-truth yes/no label, plus the `unit_id` that ties it to
the other prompts of its pairing unit (the thing paired accuracy and the bootstrap
resample). Images stay unloaded until `load_images()` is called, so a whole
benchmark can be listed and filtered without decoding a single picture.

Answers are read two ways, matching the yes-bias paper's protocol:

* generated text -> `parse_yes_no` (first word only: "Yes." -> yes, "Yesterday" ->
  other);
* logits at the answer step -> `yes_no_score` = log P(yes) - log P(no), summed over
  the tokenizer's yes/no spellings found by `yes_no_token_ids`.

Not for: reading benchmark files (see `loaders`) or computing benchmark metrics
(see `vlm_lens.metrics.yesno`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from vlm_lens.data.images import load_image

#: Appended to every question that does not already ask for a yes/no answer.
ANSWER_SUFFIX = " Answer only 'yes' or 'no'."

#: Questions containing this (case-insensitive) already carry an instruction (MME).
_EXISTING_INSTRUCTION = "please answer yes or no"

#: Anything `YesNoItem.load_images` can turn into a PIL image.
ImageSource = str | Path | bytes | Image.Image | Callable[[], Image.Image]

Answer = Literal["yes", "no", "other"]


def make_prompt(question: str) -> str:
    """The prompt the yes-bias paper sends for a question.

    MME already ends its questions with "Please answer yes or no."; adding a second
    instruction there would change the benchmark's own prompt, so it is kept as is.
    """
    q = question.strip()
    if _EXISTING_INSTRUCTION in q.lower():
        return q
    return q + ANSWER_SUFFIX


def caption_prompt(caption: str) -> str:
    """Caption benchmarks (Winoground, SugarCrepe) asked as a yes/no question.

    A caption's own final full stop is dropped so the prompt does not read ".?".
    """
    c = caption.strip().rstrip(".").rstrip()
    return f"Does this image show: {c}?{ANSWER_SUFFIX}"


@dataclass
class YesNoItem:
    """One yes/no prompt.

    Attributes:
        benchmark: registry name of the benchmark ("mme", "pope", ...).
        item_id: unique within the benchmark.
        unit_id: the pairing unit (benchmarks.md): all items sharing it form one
            paired-accuracy unit and are resampled together by the bootstrap.
        images: image sources, decoded lazily by `load_images()`; empty for
            text-only items.
        question: the benchmark's raw question (or caption).
        prompt: what is sent to the model (`make_prompt` / `caption_prompt`).
        label: True when the correct answer is "yes".
        meta: what the benchmark's official metrics need (category, subset, image
            and question index within the unit, ...).
        origin: where the item was read from (file and line / row / record), named by
            error messages about it; "" for items not read from a file.
        unit_size: how many items its unit has in the benchmark as loaded (None when
            unknown); metrics report a unit with fewer items as incomplete.
    """

    benchmark: str
    item_id: str
    unit_id: str
    images: list[ImageSource] = field(repr=False)
    question: str
    prompt: str
    label: bool
    meta: dict[str, Any] = field(default_factory=dict)
    origin: str = ""
    unit_size: int | None = None

    @property
    def answer(self) -> str:
        """The ground truth as text: "yes" or "no"."""
        return "yes" if self.label else "no"

    def load_images(self) -> list[Image.Image]:
        """Decode the images now, as RGB PIL images (a fresh list on every call), all
        through `vlm_lens.data.images.load_image`; errors name the item and its origin."""
        where = f"{self.benchmark} item {self.item_id!r}" + (
            f", {self.origin}" if self.origin else ""
        )
        out = []
        for src in self.images:
            label = f"{src} ({where})" if isinstance(src, (str, Path)) else where
            if callable(src) and not isinstance(src, Image.Image):
                src = src()  # a lazy reference (parquet cell, drawn image) decodes itself
            out.append(load_image(src, source=label))
        return out


def parse_yes_no(text: str | None) -> Answer:
    """Read a generated answer from its first word: "yes", "no" or "other".

    Leading quotes, markdown, punctuation and whitespace are skipped and the word
    ends at the first non-letter, so "Yes.", " no,", "**YES**", "'no'" all parse;
    "Yesterday", "Not sure", "1. yes" and an empty string are "other".
    """
    if not text:
        return "other"
    n = len(text)
    start = 0
    while start < n and not text[start].isalnum():
        start += 1
    end = start
    while end < n and text[end].isalpha():
        end += 1
    word = text[start:end].lower()
    if word == "yes":
        return "yes"
    if word == "no":
        return "no"
    return "other"


_YES_VARIANTS = ("yes", "Yes", "YES", " yes", " Yes", " YES")
_NO_VARIANTS = ("no", "No", "NO", " no", " No", " NO")
# Raw vocabulary pieces carry the leading-space marker of their tokenizer family.
_SPACE_MARKERS = "\u2581\u0120 "


def _encode(tok: Any, text: str) -> list[int]:
    try:
        ids = tok.encode(text, add_special_tokens=False)
    except TypeError:
        ids = tok.encode(text)
    if hasattr(ids, "ids"):  # a `tokenizers.Encoding`
        ids = ids.ids
    return [int(i) for i in ids]


def _decode_one(tok: Any, i: int) -> str:
    return str(tok.decode([i]))


def yes_no_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Ids of the single tokens that spell yes / no, in any case, with or without a
    leading space.

    Works with a HF tokenizer, a processor (its `.tokenizer` is used), or anything
    with `encode` / `decode` (and optionally `get_vocab`). Candidates come from both
    encoding the spellings and scanning the vocabulary, and each one is kept only if
    decoding it alone gives yes/no, so a "yes" piece inside "yesterday" is never
    counted.

    Character-level tokenizers have no single token for "yes": then the first token
    of each spelling is used ("y"/"Y" against "n"/"N"), which is the best one-step
    proxy for the answer such a model can give. If even that cannot separate the two
    sets a ValueError is raised.
    """
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    targets = {"yes": set(), "no": set()}

    candidates: set[int] = set()
    for variant in _YES_VARIANTS + _NO_VARIANTS:
        ids = _encode(tok, variant)
        if len(ids) == 1:
            candidates.add(ids[0])
    if hasattr(tok, "get_vocab"):
        for piece, i in tok.get_vocab().items():
            if str(piece).lstrip(_SPACE_MARKERS).lower() in targets:
                candidates.add(int(i))
    for i in candidates:
        word = _decode_one(tok, i).strip().lower()
        if word in targets:
            targets[word].add(i)

    yes_ids, no_ids = sorted(targets["yes"]), sorted(targets["no"])
    if yes_ids and no_ids:
        return yes_ids, no_ids

    first_yes = {ids[0] for v in _YES_VARIANTS if (ids := _encode(tok, v))}
    first_no = {ids[0] for v in _NO_VARIANTS if (ids := _encode(tok, v))}
    # A bare space token would be shared by " yes" and " no": it says nothing.
    shared = first_yes & first_no
    first_yes -= shared
    first_no -= shared
    if not first_yes or not first_no:
        raise ValueError("tokenizer has no tokens that tell 'yes' from 'no'")
    return sorted(first_yes), sorted(first_no)


def yes_no_score(
    logits: torch.Tensor | np.ndarray,
    yes_ids: Sequence[int],
    no_ids: Sequence[int],
) -> torch.Tensor | np.ndarray:
    """log P(yes) - log P(no) from next-token logits `[..., vocab]`, per row.

    P(yes) sums the probabilities of all yes spellings (log-sum-exp of their
    log-softmax), likewise for no. The softmax normaliser cancels in the
    difference, so it is computed from the raw logits in float64 (float32 on
    devices without it): exact, and stable for large logits. Returns a tensor
    (or array, for numpy input) of shape `logits.shape[:-1]`.
    """
    if len(yes_ids) == 0 or len(no_ids) == 0:
        raise ValueError("yes_ids and no_ids must both be non-empty")
    if isinstance(logits, np.ndarray):
        t = torch.from_numpy(np.asarray(logits, dtype=np.float64))
        return yes_no_score(t, yes_ids, no_ids).numpy()
    dtype = torch.float32 if logits.device.type == "mps" else torch.float64
    x = logits.to(dtype)
    yes = torch.as_tensor(list(yes_ids), device=x.device, dtype=torch.long)
    no = torch.as_tensor(list(no_ids), device=x.device, dtype=torch.long)
    return torch.logsumexp(x.index_select(-1, yes), -1) - torch.logsumexp(
        x.index_select(-1, no), -1
    )
