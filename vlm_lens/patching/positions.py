"""Which positions a patch covers: one position, a segment, an image patch, or all of them.

A sweep patches one *position group* per cell. Groupings by name:

- ``"each"``: every position on its own (labels like ``"23 text ':'"``);
- ``"segment"``: system / image / text / generated (the teacher-forced answer prefix);
- ``"image_patch"``: every image token on its own, with its (row, col) in the image's token
  grid, so results draw as a map over the image;
- ``"all"``: one group of every position;
- ``"last"``: the last position, the query row that predicts the answer token of this step.

or a mapping ``{label: positions}`` / a plain sequence of positions (one group; negative
indices count from the end).

Not for: running anything; groups are plain data computed from `Segments`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from vlm_lens.core.segments import KIND_NAMES, KIND_OF_CODE, SEGMENT_KINDS, Segments

GROUPINGS = ("each", "segment", "image_patch", "all", "last")

Positions = str | Mapping[str, Sequence[int]] | Sequence[int]
"""A grouping name from `GROUPINGS`, a mapping label -> positions, or one list of positions."""


@dataclass(frozen=True)
class PositionGroup:
    """Positions patched together in one cell, and what they are.

    `key` identifies the group across decoding steps (a position index, a segment name, an
    image patch); `image`, `row`, `col` are set for single image tokens.
    """

    key: object
    label: str
    positions: tuple[int, ...]
    kind: str
    image: int | None = None
    row: int | None = None
    col: int | None = None


def _each(segments: Segments, token_text: Callable[[int], str] | None) -> list[PositionGroup]:
    kinds = segments.kinds[0].tolist()
    groups = []
    for p, code in enumerate(kinds):
        kind = KIND_OF_CODE[code]
        if kind == "pad":
            continue
        text = f" {token_text(p)!r}" if token_text is not None else ""
        groups.append(PositionGroup(p, f"{p} {kind}{text}", (p,), kind))
    return groups


def _segments(segments: Segments) -> list[PositionGroup]:
    kinds = segments.kinds[0]
    groups = []
    for kind in SEGMENT_KINDS:
        positions = (kinds == KIND_NAMES[kind]).nonzero().flatten().tolist()
        if positions:
            groups.append(PositionGroup(kind, kind, tuple(positions), kind))
    return groups


def _image_patches(segments: Segments) -> list[PositionGroup]:
    sample = segments.samples[0]
    if not sample.images:
        raise ValueError("positions='image_patch' needs an input with an image")
    groups = []
    several = len(sample.images) > 1
    for i, span in enumerate(sample.images):
        _, w = span.grid
        if w == 0:  # several tiles or markers: no single grid to name a patch by (issue #15)
            raise ValueError(
                f"positions='image_patch': image {i} is tiled ({len(span.tiles)} tiles); "
                "patching by image patch covers untiled images only for now"
            )
        for j, p in enumerate(range(span.start, span.end)):
            r, c = divmod(j, w)
            name = f"img{i}[{r},{c}]" if several else f"[{r},{c}]"
            groups.append(PositionGroup((i, r, c), name, (p,), "image", i, r, c))
    return groups


def position_groups(
    segments: Segments,
    positions: Positions,
    token_text: Callable[[int], str] | None = None,
) -> list[PositionGroup]:
    """The position groups of a one-example layout (see the module docstring for `positions`)."""
    length = segments.prompt_len
    non_pad = [p for p, k in enumerate(segments.kinds[0].tolist()) if k != KIND_NAMES["pad"]]
    if isinstance(positions, str):
        if positions == "each":
            return _each(segments, token_text)
        if positions == "segment":
            return _segments(segments)
        if positions == "image_patch":
            return _image_patches(segments)
        if positions == "all":
            return [PositionGroup("all", "all", tuple(non_pad), "all")]
        if positions == "last":
            kind = KIND_OF_CODE[int(segments.kinds[0, -1])]
            return [PositionGroup("last", "last", (length - 1,), kind)]
        raise ValueError(
            f"unknown position grouping {positions!r}; use one of {GROUPINGS}, a mapping "
            "{label: positions} or a list of positions"
        )
    items = (
        list(positions.items()) if isinstance(positions, Mapping) else [("positions", positions)]
    )
    groups = []
    for label, ps in items:
        resolved = []
        for p in ps:
            p = int(p)
            if not -length <= p < length:
                raise IndexError(f"position {p} out of range for a layout of {length} tokens")
            resolved.append(p % length)
        if not resolved:
            raise ValueError(f"position group {label!r} is empty")
        kinds = {KIND_OF_CODE[int(segments.kinds[0, p])] for p in resolved}
        kind = kinds.pop() if len(kinds) == 1 else "mixed"
        groups.append(PositionGroup(label, str(label), tuple(sorted(set(resolved))), kind))
    return groups
