"""Per-token values over an image's visual tokens, drawn per tile or in the original image's frame.

A tiled image's visual tokens (`ImageSpan.positions()`: tile by tile, each row-major) do not
form one grid: LLaVA-OneVision gives a thumbnail grid then a finer grid of the whole image,
InternVL and Idefics3 a grid of tiles each covering part of the image plus a thumbnail.
`tile_maps` cuts a per-token vector (an attention row restricted to the image, a patching
score per position) into one (h, w) map per tile. `to_image_frame` stitches the tiles back
into one map over the original image: each tile's cells are spread over the frame cells
their box overlaps, in proportion to the overlap, so a cell's value is *mass* (attention
mass, not density) and the frame sums to what the stitched tiles sum to.

The frame's resolution is the finest of the tiles' scales (a whole-image tile of 6 x 8 and
tiles of 2 x 2 tiles of 4 x 4 each give 8 x 8). The thumbnail is a second, coarser view of
the same image; it is either left out of the frame (`thumbnail="separate"`, the default:
read it with `tile_maps`) or drawn too and the two views averaged (`thumbnail="mean"`: the
frame then holds the mean of the mass the detailed tiles and the thumbnail put on each cell,
so it sums to the mean of their totals). An untiled image (one tile covering the whole image)
maps to its own grid unchanged.

Not for: finding which positions are an image's tokens (`vlm_lens.core.segments`), or drawing
the maps (`vlm_lens.viz`, `vlm_lens.reports`).
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens.core.segments import ImageSpan, Tile

Thumbnail = Literal["separate", "mean"]


def tile_maps(
    values: Float[Tensor, "... tokens"], image: ImageSpan
) -> list[Float[Tensor, "... h w"]]:
    """One map per tile of `image`, from `values` over its visual tokens in
    `image.positions()` order."""
    if values.shape[-1] != image.n_tokens:
        raise ValueError(
            f"the image has {image.n_tokens} visual tokens in {len(image.tiles)} tile(s) but the "
            f"values have {values.shape[-1]} on their last axis"
        )
    maps, start = [], 0
    for tile in image.tiles:
        h, w = tile.grid
        maps.append(values[..., start : start + h * w].unflatten(-1, (h, w)))
        start += h * w
    return maps


def frame_grid(image: ImageSpan) -> tuple[int, int]:
    """(rows, columns) of `to_image_frame`'s map: the finest scale among the detailed tiles."""
    tiles = _detailed(image) or list(image.tiles)
    rows = max(round(t.grid[0] / (t.box[2] - t.box[0])) for t in tiles)
    cols = max(round(t.grid[1] / (t.box[3] - t.box[1])) for t in tiles)
    return rows, cols


def to_image_frame(
    values: Float[Tensor, "... tokens"], image: ImageSpan, thumbnail: Thumbnail = "separate"
) -> Float[Tensor, "... rows cols"]:
    """`values` over the image's visual tokens as one map over the original image (see the
    module docstring for how tiles and the thumbnail are combined)."""
    if thumbnail not in ("separate", "mean"):
        raise ValueError(f"thumbnail must be 'separate' or 'mean', got {thumbnail!r}")
    maps = tile_maps(values, image)
    rows, cols = frame_grid(image)
    detailed = bool(_detailed(image))
    # With detailed tiles, the thumbnail is a second view, not more of the image.
    drawn = [(m, t) for m, t in zip(maps, image.tiles) if not (detailed and t.thumbnail)]
    frame = sum(_spread(m, t, rows, cols) for m, t in drawn)
    thumbs = [(m, t) for m, t in zip(maps, image.tiles) if t.thumbnail]
    if thumbnail == "mean" and detailed and thumbs:
        views = [frame] + [_spread(m, t, rows, cols) for m, t in thumbs]
        frame = torch.stack(views).mean(0)
    return frame


def _detailed(image: ImageSpan) -> list[Tile]:
    return [t for t in image.tiles if not t.thumbnail]


def _spread(
    tile_map: Float[Tensor, "... h w"], tile: Tile, rows: int, cols: int
) -> Float[Tensor, "... rows cols"]:
    top, left, bottom, right = tile.box
    along_y = _overlap(top, bottom, tile.grid[0], rows).to(tile_map)  # [h, rows]
    along_x = _overlap(left, right, tile.grid[1], cols).to(tile_map)  # [w, cols]
    return torch.einsum("...hw,hr,wc->...rc", tile_map, along_y, along_x)


def _overlap(lo: float, hi: float, n: int, out: int) -> Float[Tensor, "n out"]:
    """Share of each of `n` equal cells of [lo, hi] that falls in each of `out` equal cells
    of [0, 1] (rows sum to 1 where the cell lies inside [0, 1])."""
    edges = torch.linspace(lo, hi, n + 1, dtype=torch.float64)
    frame = torch.linspace(0.0, 1.0, out + 1, dtype=torch.float64)
    start = torch.maximum(edges[:-1, None], frame[None, :-1])
    end = torch.minimum(edges[1:, None], frame[None, 1:])
    return (end - start).clamp(min=0) / (edges[1:] - edges[:-1])[:, None]


__all__ = ["Thumbnail", "frame_grid", "tile_maps", "to_image_frame"]
