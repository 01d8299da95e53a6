"""From (images, prompt) to model inputs that know their own layout.

`prepare_inputs` renders each prompt with the processor's chat template, runs the
real processor (every tensor it returns is kept: dropping `token_type_ids` or
`mm_token_type_ids` runs silently wrong), and derives the segments of each row:

- system: tokens before the user's first content item (BOS, chat header, system prompt);
- image: exactly the placeholder positions that carry visual features, one span per image,
  with the image's token grid (h, w) after merging;
- text: every other prompt token (user words, delimiters such as vision_start, the
  assistant header);
- generated: appended by generation.

Spans come from token ids, the processor's outputs and the config. The system span
is found by tokenizing the rendered prompt up to the first content item (the header)
alone. Its ids are normally a prefix of the prompt's ids. A real tokenizer may merge
the header's last characters with the content's first ones into one token (Gemma3's
"\n" + "\n\n" -> "\n\n\n"); such a token straddles the boundary, and the rule is: the
system span is the tokens wholly inside the header, the straddling token is text.

Not for: running the model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from vlm_lens.adapters import Adapter
from vlm_lens.core.segments import (
    KIND_IMAGE,
    KIND_PAD,
    KIND_SYSTEM,
    KIND_TEXT,
    ImageSpan,
    SampleSegments,
    Segments,
    Span,
)
from vlm_lens.data.images import ImageLike, load_image

IMAGE_PLACEHOLDER = "<image>"
"""Where a prompt names this, the next image goes there; otherwise images go before the text."""


@dataclass
class VLMInputs:
    """Processor outputs of a batch plus their `segments` and the rendered prompt texts."""

    tensors: dict[str, Tensor]
    segments: Segments
    texts: list[str] = field(default_factory=list)

    @property
    def input_ids(self) -> Tensor:
        return self.tensors["input_ids"]

    @property
    def attention_mask(self) -> Tensor:
        return self.tensors["attention_mask"]

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    def keys(self):
        return self.tensors.keys()

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> VLMInputs:
        """Tensors moved to `device`; floating tensors (pixel values) cast to `dtype` if given."""
        moved = {}
        for name, t in self.tensors.items():
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype=dtype)
            moved[name] = t.to(device) if device is not None else t
        return VLMInputs(moved, self.segments, self.texts)


def _as_batch(images: Any, prompt: str | Sequence[str]) -> tuple[list[list[ImageLike]], list[str]]:
    if isinstance(prompt, str):
        prompts = [prompt]
        if images is None:
            per_row = [[]]
        elif isinstance(images, (list, tuple)):
            per_row = [list(images)]
        else:
            per_row = [[images]]
    else:
        prompts = list(prompt)
        if images is None:
            per_row = [[] for _ in prompts]
        else:
            if not isinstance(images, (list, tuple)) or len(images) != len(prompts):
                raise ValueError(
                    f"a batch of {len(prompts)} prompts needs a list of {len(prompts)} image entries "
                    "(an image, a list of images, or None per prompt)"
                )
            per_row = [
                [] if im is None else list(im) if isinstance(im, (list, tuple)) else [im]
                for im in images
            ]
    if not prompts:
        raise ValueError("no prompt given")
    return per_row, prompts


def _content_items(prompt: str, n_images: int, row: int) -> list[dict]:
    parts = prompt.split(IMAGE_PLACEHOLDER)
    n_marks = len(parts) - 1
    if n_marks == 0:
        items = [{"type": "image"} for _ in range(n_images)]
        if prompt:
            items.append({"type": "text", "text": prompt})
        return items
    if n_marks != n_images:
        raise ValueError(
            f"prompt {row} has {n_marks} image placeholder(s) {IMAGE_PLACEHOLDER!r} but {n_images} image(s) were given"
        )
    items: list[dict] = []
    for i, part in enumerate(parts):
        if part:
            items.append({"type": "text", "text": part})
        if i < n_marks:
            items.append({"type": "image"})
    return items


def _render(processor: Any, items: list[dict], system: str | None) -> str:
    """The prompt rendered by the processor's chat template, ending with the assistant header."""
    messages = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": items})
    if getattr(processor, "chat_template", None) is None:
        raise ValueError(
            "the processor has no chat template; pass chat_template=False and a raw prompt"
        )
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _first_item_char(text: str, items: list[dict], system: str | None, adapter: Adapter) -> int:
    """Character index where the first rendered content item starts.

    Templates may reorder items (LLaVA's puts images before text) or trim text (Gemma3's),
    so take the earliest match of any item, searching after the system prompt.
    """
    start = 0
    if system:
        at = text.find(system)
        if at >= 0:
            start = at + len(system)
    found = []
    for item in items:
        needle = adapter.image_marker if item["type"] == "image" else item["text"].strip()
        at = text.find(needle, start) if needle else -1
        if at >= 0:
            found.append(at)
    if not found:
        raise ValueError(f"cannot find the user's content in the rendered prompt {text!r}")
    return min(found)


def _system_length(
    ids: Int[Tensor, " token"], header: Int[Tensor, " header"], tokenizer: Any, row: int
) -> int:
    """How many leading `ids` (padding removed) lie wholly inside the header text.

    `header` is the header tokenized alone. Where it is not a prefix of `ids`, the ids
    after the common prefix are decoded until they cover the header's text: a token that
    ends exactly at the header's end is still system, one that reaches past it straddles
    the boundary and is text. Anything else (the prompt does not start with the header's
    text) is an error.
    """
    n = header.shape[0]
    limit = min(n, ids.shape[0])
    differ = (ids[:limit] != header[:limit]).nonzero()
    common = int(differ[0]) if len(differ) else limit
    if common == n:
        return n

    def decode(t: Tensor) -> str:
        return tokenizer.decode(t.tolist(), skip_special_tokens=False)

    header_text = decode(header)
    for end in range(common + 1, ids.shape[0] + 1):
        covered = decode(ids[:end])
        if len(covered) >= len(header_text):
            if covered == header_text:
                return end
            if covered.startswith(header_text):
                return end - 1
            break
    raise ValueError(
        f"row {row}: the prompt's tokens do not start with the text before its first content "
        f"item ({header_text!r}); cannot place the system span"
    )


def _row_segments(
    ids: Tensor,
    attn: Tensor,
    n_system: int,
    image_token_id: int,
    grids: list[tuple[int, int]],
    row: int,
) -> tuple[SampleSegments, Tensor, Tensor]:
    """Kinds and image indices of one row; `n_system` counts system tokens after padding."""
    length = ids.shape[0]
    n_pad = int((attn == 0).sum())
    if bool(attn[:n_pad].any()) or not bool(attn[n_pad:].all()):
        raise ValueError("vlm_lens expects left padding (padding_side='left')")
    kinds = torch.full((length,), KIND_TEXT, dtype=torch.long)
    kinds[:n_pad] = KIND_PAD
    kinds[n_pad : n_pad + n_system] = KIND_SYSTEM
    image_index = torch.full((length,), -1, dtype=torch.long)

    positions = (ids == image_token_id).nonzero().flatten().tolist()
    expected = sum(h * w for h, w in grids)
    if len(positions) != expected:
        raise ValueError(
            f"row {row}: {len(positions)} image tokens in the input ids but the images' grids "
            f"{grids} need {expected}"
        )
    spans: list[ImageSpan] = []
    cursor = 0
    for i, (h, w) in enumerate(grids):
        block = positions[cursor : cursor + h * w]
        cursor += h * w
        if block[-1] - block[0] + 1 != h * w:
            raise ValueError(f"row {row}: the visual tokens of image {i} are not contiguous")
        if block[0] < n_pad + n_system:
            raise ValueError(f"row {row}: image {i} starts inside the system span")
        spans.append(ImageSpan(block[0], block[-1] + 1, grid=(h, w)))
        kinds[block[0] : block[-1] + 1] = KIND_IMAGE
        image_index[block[0] : block[-1] + 1] = i

    text_spans: list[Span] = []
    cursor = n_pad + n_system
    for s in spans + [ImageSpan(length, length)]:
        if s.start > cursor:
            text_spans.append(Span(cursor, s.start))
        cursor = s.end
    sample = SampleSegments(Span(0, n_pad), Span(n_pad, n_pad + n_system), spans, text_spans)
    return sample, kinds, image_index


def prepare_inputs(
    processor: Any,
    adapter: Adapter,
    config: Any,
    images: Any = None,
    prompt: str | Sequence[str] = "",
    system: str | None = None,
    chat_template: bool = True,
) -> VLMInputs:
    """Processor inputs and segments for one prompt or a batch of prompts (see `HookedVLM.prepare`)."""
    per_row, prompts = _as_batch(images, prompt)
    rgb_rows = [[load_image(im) for im in row] for row in per_row]
    texts, first_chars = _texts(processor, adapter, rgb_rows, prompts, system, chat_template)
    out, prefixes = _tokenize(processor, texts, rgb_rows, first_chars)
    tensors = {k: v for k, v in out.items() if isinstance(v, Tensor)}
    n_images = sum(len(row) for row in rgb_rows)
    all_grids = adapter.grids(config, tensors, n_images) if n_images else []
    ids, attn = tensors["input_ids"], tensors["attention_mask"]
    samples, kinds, index = [], [], []
    cursor = 0
    for row in range(ids.shape[0]):
        n_pad = int((attn[row] == 0).sum())
        prefix = prefixes[row]
        n_sys = 0
        if prefix is not None and prefix.shape[0]:
            n_sys = _system_length(ids[row, n_pad:], prefix, processor.tokenizer, row)
        grids = all_grids[cursor : cursor + len(rgb_rows[row])]
        cursor += len(rgb_rows[row])
        sample, k, i = _row_segments(
            ids[row], attn[row], n_sys, adapter.image_token_id(config), grids, row
        )
        samples.append(sample)
        kinds.append(k)
        index.append(i)
    segments = Segments(torch.stack(kinds), torch.stack(index), samples)
    return VLMInputs(tensors, segments, texts)


def _texts(
    processor: Any,
    adapter: Adapter,
    rgb_rows: list[list[Any]],
    prompts: Sequence[str],
    system: str | None,
    chat_template: bool,
) -> tuple[list[str], list[int]]:
    """Each row's rendered text, and where its first content item starts in it (0 without a
    chat template: the whole text is the user's)."""
    texts: list[str] = []
    first_chars: list[int] = []
    for row, (imgs, p) in enumerate(zip(rgb_rows, prompts)):
        if chat_template:
            items = _content_items(p, len(imgs), row)
            if not items:
                raise ValueError(f"prompt {row} is empty and has no image")
            text = _render(processor, items, system)
            first_chars.append(_first_item_char(text, items, system, adapter))
        else:
            text = p
            marker = getattr(processor, "image_token", None) or IMAGE_PLACEHOLDER
            n_marks = text.count(adapter.image_marker if adapter.image_marker in text else marker)
            if n_marks != len(imgs):
                raise ValueError(
                    f"prompt {row} has {n_marks} image placeholder(s) but {len(imgs)} image(s) were given"
                )
            first_chars.append(0)
        texts.append(text)
    return texts, first_chars


def _tokenize(
    processor: Any, texts: list[str], rgb_rows: list[list[Any]], first_chars: list[int]
) -> tuple[Any, list[Tensor | None]]:
    """The processor's left-padded batch, and each row's text before its first content item
    tokenized alone (None where it is empty): the system tokens."""
    flat_images = [im for row in rgb_rows for im in row]
    tokenizer = processor.tokenizer
    # Templates that write BOS themselves (Gemma3) must not get a second one from the tokenizer.
    bos = tokenizer.bos_token
    add_special = not (bos and all(t.startswith(bos) for t in texts))
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        # Per-row nesting tells batch processors (Gemma3) which images belong to which prompt.
        nested = rgb_rows if len(rgb_rows) > 1 and flat_images else flat_images or None
        out = processor(
            text=texts,
            images=nested,
            return_tensors="pt",
            padding=True,
            add_special_tokens=add_special,
        )
        prefixes = [
            processor(text=[text[:cut]], return_tensors="pt", add_special_tokens=add_special)[
                "input_ids"
            ][0]
            if cut
            else None
            for text, cut in zip(texts, first_chars)
        ]
    finally:
        tokenizer.padding_side = old_side
    return out, prefixes


def find_unsupported_placeholder(prompt: str) -> str | None:
    """The first processor-specific image token a user wrote by hand, if any (for clearer errors)."""
    match = re.search(r"<\|image_pad\|>|<image_soft_token>|<start_of_image>", prompt)
    return match.group(0) if match else None
