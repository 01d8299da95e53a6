"""Inputs for patching: teacher-forced answer prefixes, layout checks, batch replication.

Patching copies activations position by position, so the clean and the corrupted input
must have the same token layout: the same number of tokens, the same images with the
same token grids, the same kind (system / image / text / generated) at every position.
`check_same_layout` says which of these differs, in words.

Not for: running the model or choosing what to patch (see `vlm_lens.patching.sweep`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from vlm_lens.core.prepare import VLMInputs
from vlm_lens.core.segments import KIND_OF_CODE, Segments

# Per-token tensors a processor returns get what `inputs.appended` says an appended (generated)
# token gets. Anything else shaped like `input_ids` is refused: silently not extending it runs
# wrong.
_NOT_PER_TOKEN = ("pixel_", "image_", "video_")
# Per-token tensors whose last row a generated token repeats (Mllama: the images a token sees,
# as HF's generation extends it).
_PER_TOKEN_REPEAT_LAST = ("cross_attention_mask",)


def with_answer_prefix(inputs: VLMInputs, prefix: Sequence[int] | Tensor) -> VLMInputs:
    """`inputs` with answer tokens appended (teacher forcing): the layout of decoding step k.

    With `k = len(prefix)` tokens appended, the last position is the one that predicts
    answer token k, exactly as the k-th decoding step of `model.generate` does (same
    positions, same rotary positions, same keys; see `vlm_lens.patching` for why the
    activations are the same). The appended positions are of kind "generated".

    Args:
        inputs: one prepared example or a batch (every row gets the same prefix).
        prefix: answer token ids `[k]`; empty gives `inputs` back unchanged.
    """
    ids: Int[Tensor, "batch pos"] = inputs.input_ids
    tokens = torch.as_tensor(list(prefix) if not isinstance(prefix, Tensor) else prefix)
    tokens = tokens.to(dtype=ids.dtype, device=ids.device).flatten()
    k = tokens.numel()
    if k == 0:
        return inputs
    batch, length = ids.shape
    out: dict[str, Tensor] = {}
    for name, t in inputs.tensors.items():
        if name == "input_ids":
            out[name] = torch.cat([t, tokens.expand(batch, k)], dim=1)
        elif name in inputs.appended:
            fill = torch.full((batch, k), inputs.appended[name], dtype=t.dtype, device=t.device)
            out[name] = torch.cat([t, fill], dim=1)
        elif name in _PER_TOKEN_REPEAT_LAST:
            out[name] = torch.cat([t, t[:, -1:].expand(-1, k, *t.shape[2:])], dim=1)
        elif t.shape[:2] == (batch, length) and not name.startswith(_NOT_PER_TOKEN):
            raise ValueError(
                f"cannot append answer tokens: the processor output {name!r} is per token "
                f"({tuple(t.shape)}) and vlm_lens does not know what a generated token gets there"
            )
        else:
            out[name] = t
    texts = list(inputs.texts)
    return VLMInputs(out, inputs.segments.with_generated(k), texts, inputs.appended)


def repeat_inputs(inputs: VLMInputs, n: int, *, share_pixels: bool = False) -> VLMInputs:
    """A batch of `n` copies of a one-example input (every tensor repeated along its first axis).

    Qwen's `pixel_values` are `[patches, dim]` for the whole batch and `image_grid_thw` is
    `[images, 3]`: repeating those along their first axis is exactly what the processor
    returns for `n` copies of the example, as it is for `[batch, ...]` tensors.

    `share_pixels=True` keeps the pixel tensors (`pixel_*`) as the one copy: only for a run
    whose vision tower encodes one copy and stacks its output per row (the patching sweep's
    full path does); a plain forward of such a batch fails on the image-token count.
    """
    if inputs.batch_size != 1:
        raise ValueError(f"repeat_inputs takes one example, got a batch of {inputs.batch_size}")
    if n == 1:
        return inputs
    tensors = {
        name: t if share_pixels and name.startswith("pixel_") else torch.cat([t] * n, dim=0)
        for name, t in inputs.tensors.items()
    }
    return VLMInputs(
        tensors, repeat_segments(inputs.segments, n), list(inputs.texts) * n, inputs.appended
    )


def repeat_segments(segments: Segments, n: int) -> Segments:
    """The layout of a batch of `n` copies of the rows of `segments`."""
    return Segments(
        segments.kinds.repeat(n, 1), segments.image_index.repeat(n, 1), list(segments.samples) * n
    )


def _grid(g: tuple[int, int]) -> str:
    return f"{g[0]}x{g[1]}"


def layout_difference(clean: VLMInputs, corrupted: VLMInputs) -> str | None:
    """How the token layouts of two one-example inputs differ, in words (None if they match)."""
    for name, x in (("clean", clean), ("corrupted", corrupted)):
        if x.batch_size != 1:
            return f"{name} is a batch of {x.batch_size}; patching takes one example per input"
    a, b = clean.segments.samples[0], corrupted.segments.samples[0]
    if len(a.images) != len(b.images):
        return f"clean has {len(a.images)} image(s), corrupted has {len(b.images)}"
    for i, (sa, sb) in enumerate(zip(a.images, b.images)):
        if sa.grid != sb.grid or len(sa) != len(sb):
            which = f"image {i}: " if len(a.images) > 1 else ""
            return (
                f"{which}clean has {len(sa)} image tokens (grid {_grid(sa.grid)}), "
                f"corrupted has {len(sb)} (grid {_grid(sb.grid)})"
            )
    na, nb = clean.input_ids.shape[1], corrupted.input_ids.shape[1]
    if na != nb:
        return f"clean has {na} tokens, corrupted has {nb} (the text or answer prefix differs in length)"
    ka, kb = clean.segments.kinds[0], corrupted.segments.kinds[0]
    differ = (ka != kb).nonzero().flatten()
    if differ.numel():
        p = int(differ[0])
        return (
            f"position {p} is a {KIND_OF_CODE[int(ka[p])]} token in clean but a "
            f"{KIND_OF_CODE[int(kb[p])]} token in corrupted ({differ.numel()} positions differ in kind)"
        )
    for i, (sa, sb) in enumerate(zip(a.images, b.images)):
        if (sa.start, sa.end) != (sb.start, sb.end):
            return f"image {i} spans [{sa.start}:{sa.end}] in clean but [{sb.start}:{sb.end}] in corrupted"
    if not torch.equal(clean.attention_mask, corrupted.attention_mask):
        return "the attention masks differ (padding)"
    return None


def check_same_layout(clean: VLMInputs, corrupted: VLMInputs) -> None:
    """Raise a ValueError naming the difference if the two inputs' token layouts differ."""
    diff = layout_difference(clean, corrupted)
    if diff is not None:
        raise ValueError(
            "clean and corrupted inputs must have the same token layout for patching: " + diff
        )
