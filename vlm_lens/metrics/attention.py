"""Metrics of attention distributions over image tokens (counting paper §3.3, plus halo).

Concentration metrics (distribution on the LAST axis, vectorised over any leading
axes such as batch / layer / head / step):

- `gini_sparsity`: the paper's Eq. 2, exactly as printed.
- `textbook_gini`: the standard Gini coefficient, for comparison.
- `normalized_entropy`: the paper's Eq. 3.
- `image_attention_mass`: how much of a query row's attention lands on image keys.

Halo metrics (the paper only shows the Halo Effect as heatmaps; these quantify it) on
an attention map over the visual grid, for one image's dots:

- `halo_masks`: grid cells holding dot centres, cells on a band around the boundary of
  the dots' convex hull, and the rest.
- `halo_shares`: share of the map's mass on each of those regions.
- `centroid_hit_rate`: share of dots whose cell is among the k most attended cells.
- `halo_metrics` / `halo_metrics_batch`: all of the above in one call.

Inputs may be torch tensors or numpy arrays; numpy in gives numpy out. Half-precision
inputs are computed in float32.

Missing values: NaN in, NaN out. A distribution or map holding any NaN (a recording marks
image keys it could not see with NaN) gives NaN from every function here: Gini (both),
entropy, halo shares and the centroid hit rate (which would otherwise rank NaN cells and
report a rate from nothing); `image_attention_mass` is NaN when a NaN sits on an image key
(with `normalize=True`, on any key). All-zero rows also give NaN (0/0: no distribution).
Nothing here raises on NaN; a study decides whether a NaN result is an error.

Not for: extracting the attention maps from a model (hooks and recordings do that) or
averaging heads (do it before calling, as Eq. 1 does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float
from scipy.spatial import ConvexHull, QhullError
from torch import Tensor

Array = Tensor | np.ndarray

__all__ = [
    "HaloMasks",
    "centroid_hit_rate",
    "convex_hull",
    "gini_sparsity",
    "halo_masks",
    "halo_metrics",
    "halo_metrics_batch",
    "halo_shares",
    "image_attention_mass",
    "normalized_entropy",
    "textbook_gini",
]


# ----------------------------------------------------------------------------- helpers


def _tensor(x: Array | Sequence[float]) -> tuple[Tensor, bool]:
    """`(tensor, came_from_numpy)`; floats below 32 bits and ints become float32."""
    was_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x)) if was_numpy else torch.as_tensor(x)
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    return t, was_numpy


def _out(t: Tensor, was_numpy: bool) -> Array:
    return t.detach().cpu().numpy() if was_numpy else t


def _distribution(p: Tensor, normalize: bool) -> Tensor:
    if p.ndim == 0 or p.shape[-1] == 0:
        raise ValueError(
            f"expected distributions on a non-empty last axis, got shape {tuple(p.shape)}"
        )
    if bool((p < 0).any()):
        raise ValueError("attention distributions must be non-negative")
    # An all-zero row becomes 0/0 = NaN on purpose: it holds no distribution, and a NaN
    # shows up in any aggregate instead of passing for a real value.
    return p / p.sum(dim=-1, keepdim=True) if normalize else p


# ------------------------------------------------------------------ concentration metrics


def gini_sparsity(p: Float[Array, "... m"], *, normalize: bool = True) -> Float[Array, "..."]:
    """Attention sparsity, EXACTLY the paper's Eq. 2 as printed.

    With `p` sorted ascending (`p_1 <= ... <= p_M`)::

        Sparsity(p) = 1 - (2 / M) * sum_{i=1..M} (M + 1 - i) * p_i

    Beware: as printed, this is the textbook Gini coefficient minus `1/M`. Its range is
    `[-1/M, 1 - 2/M]`: a uniform distribution gives `-1/M` (not 0) and a one-hot gives
    `1 - 2/M` (not 1). For the paper's grids (M = 256 for Gemma3) the shift is 0.004,
    negligible for comparisons at a fixed M but not across different M. Use
    `textbook_gini` for the standard coefficient.

    Args:
        p: `[..., M]` non-negative weights on the last axis.
        normalize: divide by the sum over the last axis first, i.e. use the attention
            renormalised over the image tokens, as the paper assumes. All-zero rows give
            NaN. With `normalize=False` the formula is applied to `p` as given.

    Returns:
        `[...]` sparsity per distribution.

    Example:
        >>> import torch
        >>> M = 4
        >>> round(float(gini_sparsity(torch.full((M,), 1 / M))), 6)  # -1/M
        -0.25
        >>> float(gini_sparsity(torch.tensor([0.0, 0.0, 1.0, 0.0])))  # 1 - 2/M
        0.5
    """
    t, was_numpy = _tensor(p)
    t = _distribution(t, normalize)
    m = t.shape[-1]
    ascending = t.sort(dim=-1).values
    weights = torch.arange(m, 0, -1, dtype=t.dtype, device=t.device)  # M + 1 - i for i = 1..M
    return _out(1 - (2 / m) * (ascending * weights).sum(dim=-1), was_numpy)


def textbook_gini(p: Float[Array, "... m"]) -> Float[Array, "..."]:
    """The standard Gini coefficient of the non-negative values on the last axis.

    `G = sum_ij |p_i - p_j| / (2 M sum_i p_i)`, computed from the ascending sort as
    `(2 / M) * sum_i i * q_i - (M + 1) / M` with `q = p / sum(p)`. It is scale invariant,
    0 for a uniform distribution and `(M - 1) / M` for a one-hot. All-zero rows give NaN.

    Example:
        >>> import torch
        >>> float(textbook_gini(torch.ones(4)))
        0.0
        >>> float(textbook_gini(torch.tensor([0.0, 3.0, 0.0, 0.0])))
        0.75
    """
    t, was_numpy = _tensor(p)
    q = _distribution(t, normalize=True)
    m = q.shape[-1]
    ranks = torch.arange(1, m + 1, dtype=q.dtype, device=q.device)
    g = (2 / m) * (q.sort(dim=-1).values * ranks).sum(dim=-1) - (m + 1) / m
    return _out(g, was_numpy)


def normalized_entropy(p: Float[Array, "... m"], *, normalize: bool = True) -> Float[Array, "..."]:
    """Visual entropy, the paper's Eq. 3: `-(1 / log M) * sum_i p_i log p_i`.

    `0 log 0` is taken as 0. A uniform distribution gives 1, a one-hot gives 0. For
    `M = 1` the normaliser `log M` is 0; the single possible distribution is both
    uniform and one-hot and carries no uncertainty, so we define the result as 0.
    Results are clamped to `[0, 1]` to remove rounding overshoot.

    Args:
        p: `[..., M]` non-negative weights on the last axis.
        normalize: divide by the sum over the last axis first (all-zero rows give NaN).

    Example:
        >>> import torch
        >>> round(float(normalized_entropy(torch.full((8,), 0.125))), 6)
        1.0
        >>> float(normalized_entropy(torch.tensor([0.0, 1.0, 0.0])))
        0.0
    """
    t, was_numpy = _tensor(p)
    t = _distribution(t, normalize)
    m = t.shape[-1]
    if m == 1:
        h = torch.where(torch.isnan(t[..., 0]), torch.nan, 0.0).to(t.dtype)
        return _out(h, was_numpy)
    # `0.0 - x` rather than `-x` so a one-hot gives 0.0, not -0.0.
    h = 0.0 - torch.xlogy(t, t).sum(dim=-1) / math.log(m)
    return _out(h.clamp(0.0, 1.0), was_numpy)


def image_attention_mass(
    pattern: Float[Array, "... key"], image_mask: Bool[Array, "... key"], *, normalize: bool = False
) -> Float[Array, "..."]:
    """Attention a query row puts on image keys: `sum_k pattern[..., k] * image_mask[..., k]`.

    For post-softmax rows (`hook_pattern`, rows sum to 1) this is the share of the row's
    attention on the image. `image_mask` broadcasts against `pattern` by the usual rules,
    so a `[batch, key]` mask for a `[batch, head, query, key]` pattern must be passed as
    `mask[:, None, None, :]`.

    Args:
        normalize: divide by the row's total, for rows that do not sum to 1 (e.g. already
            restricted to a subset of keys). All-zero rows then give NaN.

    Example:
        >>> import torch
        >>> row = torch.tensor([0.1, 0.2, 0.3, 0.4])
        >>> round(float(image_attention_mass(row, torch.tensor([False, True, True, False]))), 6)
        0.5
    """
    t, was_numpy = _tensor(pattern)
    mask = (
        torch.from_numpy(np.asarray(image_mask))
        if isinstance(image_mask, np.ndarray)
        else image_mask
    )
    mask = torch.as_tensor(mask, device=t.device).to(torch.bool)
    mass = torch.where(mask, t, torch.zeros((), dtype=t.dtype, device=t.device)).sum(dim=-1)
    if normalize:
        mass = mass / t.sum(dim=-1)
    return _out(mass, was_numpy)


# ------------------------------------------------------------------------------- halo


def _grid_coords(
    centres: Array | Sequence[Sequence[float]],
    image_size: tuple[float, float],
    grid: tuple[int, int],
) -> np.ndarray:
    """`[n, 2]` dot centres in continuous grid units `(x, y)`; cell `(r, c)` spans `[c, c+1) x [r, r+1)`."""
    pts = np.asarray(centres.cpu() if isinstance(centres, Tensor) else centres, dtype=np.float64)
    pts = pts.reshape(-1, 2)
    width, height = image_size
    h, w = grid
    return pts * np.array([w / width, h / height])


def _cells(coords: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the cell holding each point (points on the far edge go to the last cell)."""
    h, w = grid
    cols = np.clip(np.floor(coords[:, 0]).astype(np.int64), 0, w - 1)
    rows = np.clip(np.floor(coords[:, 1]).astype(np.int64), 0, h - 1)
    return rows, cols


def convex_hull(points: np.ndarray) -> np.ndarray:
    """`[v, 2]` vertices of the convex hull of `[n, 2]` points, counter-clockwise.

    Starts at the lowest point in `(x, y)` order. Points on an edge are not vertices, so
    collinear points give their two end points and a single distinct point gives itself.
    """
    pts = np.unique(np.asarray(points, dtype=np.float64).reshape(-1, 2), axis=0)
    if len(pts) <= 2:
        return pts
    try:
        vertices = ConvexHull(pts).vertices  # counter-clockwise in 2-d
    except QhullError:
        # Qhull refuses a flat (collinear) set; its hull is the segment between the
        # extreme points, which np.unique has sorted to both ends.
        return pts[[0, -1]]
    # Qhull starts anywhere on the loop; rotate to the lowest point so the output does not
    # depend on Qhull's internals.
    return np.roll(pts[vertices], -int(np.argmin(vertices)), axis=0)


def _distance_to_boundary(cells: np.ndarray, hull: np.ndarray) -> np.ndarray:
    """Distance from each `[n, 2]` point to the polygon boundary through `hull` (closed)."""
    a = hull
    b = np.roll(hull, -1, axis=0)
    ab = b - a  # [e, 2]
    ap = cells[:, None, :] - a[None, :, :]  # [n, e, 2]
    length2 = (ab**2).sum(-1)
    safe = np.where(length2 > 0, length2, 1.0)
    t = np.clip((ap * ab[None]).sum(-1) / safe, 0.0, 1.0)
    t = np.where(length2 > 0, t, 0.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.sqrt(((cells[:, None, :] - closest) ** 2).sum(-1)).min(axis=1)


@dataclass(frozen=True)
class HaloMasks:
    """Disjoint boolean `[h, w]` regions of the visual grid for one image's dots.

    Attributes:
        centre: cells holding at least one dot centre (or touched by a dot, if radii
            were given).
        hull_band: cells whose centre is within `band_width` cells of the boundary of
            the convex hull of the dot centres, minus `centre` cells.
        background: every other cell.
        hull: `[v, 2]` hull vertices in grid units `(x, y)`, counter-clockwise.
    """

    centre: Bool[Tensor, "h w"]
    hull_band: Bool[Tensor, "h w"]
    background: Bool[Tensor, "h w"]
    hull: Float[np.ndarray, "v 2"]

    @property
    def grid(self) -> tuple[int, int]:
        return (self.centre.shape[0], self.centre.shape[1])

    def as_dict(self) -> dict[str, Tensor]:
        return {"centre": self.centre, "hull_band": self.hull_band, "background": self.background}


def halo_masks(
    centres: Array | Sequence[Sequence[float]],
    image_size: tuple[float, float],
    grid: tuple[int, int],
    band_width: float = 1.0,
    radii: Array | Sequence[float] | None = None,
) -> HaloMasks:
    """Centre / hull-band / background regions of a `grid = (h, w)` visual grid.

    A dot at pixel `(x, y)` of an image of `image_size = (W, H)` falls in grid cell
    `(row, col) = (floor(y / H * h), floor(x / W * w))`. Distances are measured in cell
    units between cell centres `(col + 0.5, row + 0.5)` and the hull of the dot centres
    (mapped to the same units), so `band_width=1` marks cells whose centre lies within one
    cell of the hull's boundary, inside or outside it.

    Args:
        centres: `[n, 2]` dot centres `(x, y)` in pixels of the original image.
        image_size: `(W, H)` of the original image.
        grid: `(h, w)` of the visual grid (rows, columns), as in `ImageSpan.grid`.
        band_width: half-width of the hull band, in cells.
        radii: optional dot radii in pixels; if given, `centre` holds every cell whose
            rectangle overlaps a dot's disc instead of only the cell of its centre.

    With no dots everything is background; with one (or collinear) dots the "hull" is a
    point (or a segment) and the band is measured from it.
    """
    h, w = grid
    coords = _grid_coords(centres, image_size, grid)
    centre = np.zeros((h, w), dtype=bool)
    band = np.zeros((h, w), dtype=bool)
    hull = convex_hull(coords) if len(coords) else np.zeros((0, 2))
    if len(coords):
        if radii is None:
            rows, cols = _cells(coords, grid)
            centre[rows, cols] = True
        else:
            centre = _touched_cells(centres, radii, image_size, grid)
        cy, cx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        cell_centres = np.stack([cx.ravel(), cy.ravel()], axis=1)
        band = (_distance_to_boundary(cell_centres, hull) <= band_width).reshape(h, w) & ~centre
    background = ~(centre | band)
    return HaloMasks(
        torch.from_numpy(centre), torch.from_numpy(band), torch.from_numpy(background), hull
    )


def _touched_cells(
    centres: Array | Sequence[Sequence[float]],
    radii: Array | Sequence[float],
    image_size: tuple[float, float],
    grid: tuple[int, int],
) -> np.ndarray:
    """Cells whose rectangle (in pixels) overlaps the open disc of some dot."""
    width, height = image_size
    h, w = grid
    pts = np.asarray(
        centres.cpu() if isinstance(centres, Tensor) else centres, dtype=np.float64
    ).reshape(-1, 2)
    r = np.asarray(radii.cpu() if isinstance(radii, Tensor) else radii, dtype=np.float64).reshape(
        -1
    )
    if len(r) != len(pts):
        raise ValueError(f"{len(pts)} centres but {len(r)} radii")
    x_edges = np.arange(w + 1) * (width / w)
    y_edges = np.arange(h + 1) * (height / h)
    # Nearest point of each cell rectangle to each centre, per axis.
    nx = np.clip(pts[:, 0:1], x_edges[None, :-1], x_edges[None, 1:]) - pts[:, 0:1]  # [n, w]
    ny = np.clip(pts[:, 1:2], y_edges[None, :-1], y_edges[None, 1:]) - pts[:, 1:2]  # [n, h]
    d2 = ny[:, :, None] ** 2 + nx[:, None, :] ** 2  # [n, h, w]
    return (d2 < (r**2)[:, None, None]).any(axis=0)


def _flat_map(a: Tensor, grid: tuple[int, int]) -> Tensor:
    """`[..., h*w]` view of a map given as `[..., h, w]` (preferred) or `[..., h*w]`."""
    h, w = grid
    if a.ndim >= 2 and tuple(a.shape[-2:]) == (h, w):
        return a.reshape(*a.shape[:-2], h * w)
    if a.ndim >= 1 and a.shape[-1] == h * w:
        return a
    raise ValueError(
        f"attention map of shape {tuple(a.shape)} matches neither [..., {h}, {w}] nor [..., {h * w}]"
    )


def halo_shares(
    a: Float[Array, "... h w"] | Float[Array, "... hw"],
    masks: HaloMasks | Mapping[str, Bool[Tensor, "h w"]],
) -> dict[str, Float[Array, "..."]]:
    """Share of the map's mass on each region, the map renormalised over the grid.

    Args:
        a: attention over the visual grid, `[..., h, w]` or flattened `[..., h*w]`
            (if the last two axes equal the grid, they are read as the grid).
        masks: `HaloMasks` (regions `centre`, `hull_band`, `background`, which sum to 1)
            or any mapping from names to `[h, w]` boolean masks.

    Returns:
        `{name: [...] share}`; all-zero maps give NaN.
    """
    named = masks.as_dict() if isinstance(masks, HaloMasks) else dict(masks)
    if not named:
        raise ValueError("no masks given")
    t, was_numpy = _tensor(a)
    first = next(iter(named.values()))
    grid = (int(first.shape[0]), int(first.shape[1]))
    flat = _flat_map(t, grid)
    total = flat.sum(dim=-1)
    shares = {}
    for name, mask in named.items():
        m = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask)
        if tuple(m.shape) != grid:
            raise ValueError(f"mask {name!r} has shape {tuple(m.shape)}, expected {grid}")
        m = m.reshape(-1).to(device=flat.device, dtype=torch.bool)
        shares[name] = _out((flat * m).sum(dim=-1) / total, was_numpy)
    return shares


def centroid_hit_rate(
    a: Float[Array, "... h w"] | Float[Array, "... hw"],
    centres: Array | Sequence[Sequence[float]],
    image_size: tuple[float, float],
    grid: tuple[int, int],
    k: int | None = None,
) -> Float[Array, "..."]:
    """Share of dots whose grid cell is among the `k` most attended cells.

    `k` defaults to the number of dots (not of distinct cells: two dots in one cell count
    twice, and both hit or both miss). Ties are broken deterministically in favour of
    the lower flat index (row-major: top rows first, then left columns), so equal
    attention everywhere selects the first `k` cells in reading order. With no dots, or a
    map holding any NaN, the rate is NaN.
    """
    t, was_numpy = _tensor(a)
    flat = _flat_map(t, grid)
    rows, cols = _cells(_grid_coords(centres, image_size, grid), grid)
    n = len(rows)
    if n == 0:
        return _out(torch.full(flat.shape[:-1], torch.nan, dtype=flat.dtype), was_numpy)
    k = n if k is None else int(k)
    k = max(0, min(k, flat.shape[-1]))
    order = torch.sort(flat, dim=-1, descending=True, stable=True).indices[..., :k]
    in_top = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device).scatter_(-1, order, True)
    dot_cells = torch.as_tensor(rows * grid[1] + cols, device=flat.device)
    hits = in_top[..., dot_cells].to(flat.dtype)
    rate = torch.where(flat.isnan().any(dim=-1), torch.nan, hits.mean(dim=-1))
    return _out(rate, was_numpy)


def halo_metrics(
    a: Float[Array, "... h w"] | Float[Array, "... hw"],
    centres: Array | Sequence[Sequence[float]],
    image_size: tuple[float, float],
    grid: tuple[int, int],
    band_width: float = 1.0,
    radii: Array | Sequence[float] | None = None,
) -> dict[str, Float[Array, "..."]]:
    """`halo_shares` (keys `centre`, `hull_band`, `background`) plus `centroid_hit_rate`."""
    out = halo_shares(a, halo_masks(centres, image_size, grid, band_width, radii))
    out["centroid_hit_rate"] = centroid_hit_rate(a, centres, image_size, grid)
    return out


def halo_metrics_batch(
    maps: Float[Array, "batch ... h w"] | Sequence[Array],
    centres: Sequence[Array | Sequence[Sequence[float]]],
    image_size: tuple[float, float] | Sequence[tuple[float, float]],
    grid: tuple[int, int] | Sequence[tuple[int, int]],
    band_width: float = 1.0,
    radii: Sequence[Array | Sequence[float]] | None = None,
) -> dict[str, Float[Array, "batch ..."]]:
    """`halo_metrics` for a batch of images, each with its own dots (and grid, if listed).

    `maps[b]` is image `b`'s map; `image_size` and `grid` are either one value for all
    images or one per image. Leading axes of the maps must agree so results stack into
    `[batch, ...]`.
    """
    n = len(maps)
    if len(centres) != n:
        raise ValueError(f"{n} maps but {len(centres)} sets of centres")
    sizes = [image_size] * n if _is_pair(image_size) else list(image_size)
    grids = [grid] * n if _is_pair(grid) else list(grid)
    rows = [
        halo_metrics(
            maps[b], centres[b], sizes[b], grids[b], band_width, None if radii is None else radii[b]
        )
        for b in range(n)
    ]
    if not rows:
        return {}
    stack = np.stack if isinstance(rows[0]["centre"], np.ndarray) else torch.stack
    return {key: stack([row[key] for row in rows]) for key in rows[0]}


def _is_pair(value: object) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float, np.integer, np.floating)) for v in value)
    )
