"""The counting study's attention metrics of one query row: the paper's Eq. 1-3 and the
Halo shares of the row that predicts a digit, per (digit step, layer).

Not for: the metric definitions (`vlm_lens.metrics.attention`) or which steps hold digits
(`vlm_lens.studies.counting.answers`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens.core.image_frame import to_image_frame
from vlm_lens.core.recording import Recording
from vlm_lens.core.segments import ImageSpan, Segments
from vlm_lens.data import dots
from vlm_lens.metrics.attention import (
    centroid_hit_rate,
    gini_sparsity,
    halo_masks,
    halo_shares,
    normalized_entropy,
    textbook_gini,
)
from vlm_lens.studies.checks import STEP_TRACKING_HINT, EmptyMeasurementError

__all__ = ["area_shares", "digit_step_metrics", "recording_metrics"]


def _num(x: Any) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None


def digit_step_metrics(
    image: Float[Tensor, "head image"],
    sample: dots.DotsSample,
    grid: tuple[int, int],
    band_width: float = 1.0,
    keep_map: bool = False,
) -> dict[str, Any]:
    """Metrics of one query row's attention to the image (one step, one layer).

    `image` holds each head's post-softmax attention on the image keys (in prompt order,
    row-major over `grid`), not renormalised. Eq. 1 averages the heads; the map is then
    renormalised over the image tokens before the paper's metrics are taken.

    An all-NaN `image` (the recording found none of the image keys among the keys the
    hook saw) raises `EmptyMeasurementError`. A partly NaN one (some image keys outside a
    sliding window) gives NaN metrics, stored as None.
    """
    image = image.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(image).any()):
        raise EmptyMeasurementError(
            "the image attention map is all NaN: none of the image keys was among the keys "
            "the hook saw. Either a sliding window dropped the image, or "
            f"{STEP_TRACKING_HINT}"
        )
    mean = image.mean(dim=0)  # Eq. 1
    mass = mean.sum()
    p = mean / mass
    h, w = grid
    entry: dict[str, Any] = {
        "image_mass": _num(mass),
        "gini": _num(gini_sparsity(p)),
        "textbook_gini": _num(textbook_gini(p)),
        "entropy": _num(normalized_entropy(p)),
        "head_image_mass": [_num(v) for v in image.sum(dim=-1)],
        "head_gini": [_num(v) for v in gini_sparsity(image)],
        "head_entropy": [_num(v) for v in normalized_entropy(image)],
    }
    if h * w == p.shape[-1]:
        masks = halo_masks(sample.centres, sample.size, grid, band_width)
        for name, share in halo_shares(p, masks).items():
            entry[name] = _num(share)
        entry["centroid_hit_rate"] = _num(centroid_hit_rate(p, sample.centres, sample.size, grid))
    else:  # several images or an unexpected grid: no spatial metrics
        entry.update(centre=None, hull_band=None, background=None, centroid_hit_rate=None)
    if keep_map:
        entry["map"] = [round(float(v), 7) for v in p]
    return entry


def recording_metrics(
    recording: Recording,
    steps: Sequence[int],
    digits: Sequence[str],
    layers: Sequence[int],
    sample: dots.DotsSample,
    grid: tuple[int, int],
    *,
    row: int = 0,
    band_width: float = 1.0,
    keep_map: bool = False,
    image_span: ImageSpan | None = None,
    segments: Segments | None = None,
) -> list[dict[str, Any]]:
    """`digit_step_metrics` for every (digit step, layer) of batch row `row` of a recording.

    With `image_span` of a tiled image (several tiles), each head's attention on the image's
    tokens is first stitched into the original image's frame (`to_image_frame`: detail tiles
    only, the thumbnail left out), and `grid` must be that frame's (`frame_grid`).

    With the prompt's `segments` (a model with cross-attention layers, Mllama), each layer's
    own image axis and grid are read (`Recording.image_attention`: a cross-attention layer's
    image keys); a layer whose image axis is not the map's gets no map and no halo metrics.

    `steps[k]` is the step that predicted digit string `digits[k]`; the recording must
    keep the image columns of all heads (`keep=("image",)`, `heads="all"`) at every one of
    those steps (a missing step raises `EmptyMeasurementError`).
    """
    entries = []
    for k, (step, digit) in enumerate(zip(steps, digits)):
        if step not in recording.image:
            raise EmptyMeasurementError(
                f"no image attention was recorded at step {step} (digit {digit!r}); "
                f"recorded steps: {sorted(recording.image)}"
            )
        for layer in layers:
            if segments is None:
                image = recording.image[step][row, recording.layers.index(layer), :, -1, :]
                if image_span is not None and len(image_span.tiles) > 1:
                    n = image_span.n_tokens  # the first image's tokens come first
                    image = to_image_frame(image[:, :n], image_span).flatten(-2)
                layer_grid: tuple[int, int] | None = grid
            else:  # the layer's own image axis (a cross-attention layer's image keys)
                image, grids = recording.image_attention(step, row, layer, segments)
                image, layer_grid = image[:, -1], grids[0] if len(grids) == 1 else None
            on_map = layer_grid is not None and tuple(layer_grid) == tuple(grid)
            entry: dict[str, Any] = {"digit": k, "step": step, "token": digit, "layer": layer}
            try:
                # Maps and halo metrics are on the sample's grid: a layer whose image axis is
                # another (Mllama's <|image|> token in a self-attention layer) gets neither.
                entry.update(
                    digit_step_metrics(
                        image, sample, grid if on_map else (0, 0), band_width, keep_map and on_map
                    )
                )
            except EmptyMeasurementError as err:
                raise EmptyMeasurementError(f"step {step}, layer {layer}: {err}") from err
            entries.append(entry)
    return entries


def area_shares(sample: dots.DotsSample, grid: tuple[int, int], band_width: float) -> dict:
    masks = halo_masks(sample.centres, sample.size, grid, band_width)
    return {name: float(m.float().mean()) for name, m in masks.as_dict().items()}
