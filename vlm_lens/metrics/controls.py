"""Controls for the halo metrics: a content-free baseline, attention sinks, and a permutation test.

The halo shares of `vlm_lens.metrics.attention` say how much of an image's attention map
lies on the dots' cells, on a band around their convex hull and elsewhere. Two things
other than the dots can produce the same numbers:

- Sinks: cells that draw attention whatever the image shows (corners and edges of the
  grid, register-like tokens). The content-free baseline is the mean map of runs of the
  same prompt on images without the dots (blank, or the dots moved elsewhere,
  `vlm_lens.data.dots.content_free`); `sink_cells` flags the cells whose baseline share
  is far above uniform. `halo_controls` reports every halo metric raw, with the sink
  cells taken out of the map (and out of the regions' areas), and as a ratio to what the
  baseline map puts on the same regions.
- Geometry: any map puts some mass on a hull band just because bands cover part of the
  grid. `hull_permutation_test` scores each map against the hull of a different image
  with the same number of dots; an attention that follows the image's own hull must beat
  those other hulls.

Maps are numpy arrays `[..., h, w]` (any leading axes such as layer or digit step) of
non-negative attention over the visual grid; they need not sum to 1.

Not for: recording the maps (`vlm_lens.core`), making the content-free images
(`vlm_lens.data.dots`), the halo regions themselves (`vlm_lens.metrics.attention`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from jaxtyping import Bool, Float

from vlm_lens.metrics.attention import centroid_hit_rate, halo_masks, halo_shares

__all__ = [
    "REGIONS",
    "SINK_FACTOR",
    "HullPermutation",
    "baseline_map",
    "halo_controls",
    "hull_permutation_test",
    "sink_cells",
]

REGIONS = ("centre", "hull_band", "background")

SINK_FACTOR = 5.0
"""A cell is a sink when the baseline puts more than `SINK_FACTOR / M` of its mass there
(M cells, so `1 / M` is uniform). Five times uniform is far outside what a smooth
positional preference gives, and it bounds the flagged set: at most `M / SINK_FACTOR`
cells (a fifth of the grid) can exceed it. On a grid of `M <= SINK_FACTOR` cells no cell
can be a sink."""


def _normalised(maps: np.ndarray, where: str) -> np.ndarray:
    a = np.asarray(maps, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError(f"{where}: expected maps [..., h, w], got shape {a.shape}")
    if (a < 0).any():
        raise ValueError(f"{where}: attention maps must be non-negative")
    total = a.sum(axis=(-2, -1), keepdims=True)
    if not np.all(total > 0):
        raise ValueError(f"{where}: a map sums to zero or NaN; it holds no distribution")
    return a / total


def baseline_map(maps: Float[np.ndarray, "run ... h w"]) -> Float[np.ndarray, "... h w"]:
    """The content-free baseline: the mean over runs of each map renormalised over the grid.

    Args:
        maps: `[run, ..., h, w]` maps of the same prompt on content-free images (blank,
            or dots shuffled to new places), one per run on the first axis.
    """
    a = _normalised(maps, "baseline_map")
    if a.ndim < 3 or a.shape[0] == 0:
        raise ValueError(f"baseline_map: expected [run, ..., h, w] with runs, got {a.shape}")
    return a.mean(axis=0)


def sink_cells(
    baseline: Float[np.ndarray, "... h w"], factor: float = SINK_FACTOR
) -> Bool[np.ndarray, "... h w"]:
    """Cells whose baseline share exceeds `factor` times uniform (`factor / (h * w)`)."""
    if factor <= 1:
        raise ValueError(f"sink factor must be > 1 (a multiple of uniform), got {factor}")
    b = _normalised(baseline, "sink_cells")
    m = b.shape[-2] * b.shape[-1]
    return b > factor / m


def _area(mask: np.ndarray, keep: np.ndarray | None, lead: tuple[int, ...]) -> np.ndarray:
    """`[*lead]` share of the (kept) cells that lie in `mask`."""
    if keep is None:
        return np.full(lead, mask.mean())
    with np.errstate(invalid="ignore", divide="ignore"):
        return (mask & keep).sum(axis=(-2, -1)) / keep.sum(axis=(-2, -1))


def halo_controls(
    a: Float[np.ndarray, "... h w"],
    centres: np.ndarray | Sequence[Sequence[float]],
    image_size: tuple[float, float],
    baseline: Float[np.ndarray, "... h w"],
    sinks: Bool[np.ndarray, "... h w"] | None = None,
    *,
    band_width: float = 1.0,
    radii: np.ndarray | Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
    """Halo metrics of one image's map, raw, without sink cells, and against the baseline.

    Keys (each `[...]`, the map's leading axes):

    - `centre`, `hull_band`, `background`, `centroid_hit_rate`: raw, as `halo_metrics`;
      `area_<region>`: the region's share of the grid (what uniform attention gives).
    - `nosink_<region>`, `nosink_centroid_hit_rate`: the map with the sink cells set to
      zero and renormalised over the rest (a dot whose cell is a sink can then only be
      hit when fewer than k other cells hold any mass); `nosink_area_<region>`: the
      region's share of the non-sink cells. Without `sinks` nothing is excluded.
    - `baseline_<region>`, `baseline_centroid_hit_rate`: the same metrics of the baseline
      map for this image's dots (what a content-free run would score).
    - `ratio_<region>`: raw share / baseline share (> 1: the image puts more on the
      region than the content-free runs do). `excess_centroid_hit_rate`: raw minus
      baseline hit rate; a difference, not a ratio, because the baseline often hits no
      dot at all (take a ratio of means over samples if one is wanted).

    Args:
        a: the image's map `[..., h, w]`.
        centres, image_size, band_width, radii: as in `halo_masks`.
        baseline: `baseline_map` for the same leading axes (`[..., h, w]`, broadcasting).
        sinks: `sink_cells(baseline)` or any boolean mask broadcasting against `a`.
    """
    m = _normalised(a, "halo_controls")
    b = _normalised(baseline, "halo_controls baseline")
    grid = (m.shape[-2], m.shape[-1])
    if b.shape[-2:] != grid:
        raise ValueError(f"baseline grid {b.shape[-2:]} differs from the map's grid {grid}")
    masks = halo_masks(centres, image_size, grid, band_width, radii)
    regions = {name: mask.numpy() for name, mask in masks.as_dict().items()}
    out: dict[str, np.ndarray] = {}

    def metrics(prefix: str, x: np.ndarray, keep: np.ndarray | None) -> None:
        for name, share in halo_shares(x, regions).items():
            out[f"{prefix}{name}"] = share
        out[f"{prefix}centroid_hit_rate"] = centroid_hit_rate(x, centres, image_size, grid)
        if prefix != "baseline_":
            for name, mask in regions.items():
                out[f"{prefix}area_{name}"] = _area(mask, keep, m.shape[:-2])

    metrics("", m, None)
    keep = None
    if sinks is not None:
        sinks = np.asarray(sinks, dtype=bool)
        if sinks.shape[-2:] != grid:
            raise ValueError(f"sink mask grid {sinks.shape[-2:]} differs from the map's {grid}")
        keep = np.broadcast_to(~sinks, np.broadcast_shapes(sinks.shape, m.shape))
    metrics("nosink_", m if keep is None else m * keep, keep)
    if keep is not None:  # all mass on sinks: nothing left to rank (halo_shares gives NaN)
        empty = (m * keep).sum(axis=(-2, -1)) == 0
        out["nosink_centroid_hit_rate"] = np.where(empty, np.nan, out["nosink_centroid_hit_rate"])
    metrics("baseline_", b, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        for key in REGIONS:
            out[f"ratio_{key}"] = np.asarray(out[key]) / np.asarray(out[f"baseline_{key}"])
    out["excess_centroid_hit_rate"] = np.asarray(out["centroid_hit_rate"]) - np.asarray(
        out["baseline_centroid_hit_rate"]
    )
    return out


# -------------------------------------------------------------------- permutation test


@dataclass(frozen=True)
class HullPermutation:
    """A permutation test of "the map follows this image's hull, not any hull of its count".

    The statistic is the mean over images of `share(region) - area(region)`: the map's
    mass on the region of its OWN image's dots minus the region's share of the grid. The
    null draws, for every image, the region of another image with the same dot count.

    Attributes:
        region: which halo region was scored (`hull_band` by default).
        observed: the statistic with each image's own dots.
        null_mean, null_std: of the statistic over the permutations.
        excess: `observed - null_mean`, what the own hull adds over other hulls.
        p_greater: `(1 + #{null >= observed}) / (1 + permutations)`, one-sided.
        p_less: the same for `null <= observed`.
        p_two_sided: `min(1, 2 * min(p_greater, p_less))`.
        n: images scored (those whose count no other image shares are left out).
        n_permutations: null draws.
    """

    region: str
    observed: float
    null_mean: float
    null_std: float
    excess: float
    p_greater: float
    p_less: float
    p_two_sided: float
    n: int
    n_permutations: int

    def as_dict(self) -> dict:
        return asdict(self)


def hull_permutation_test(
    maps: Float[np.ndarray, "n h w"],
    centres: Sequence[np.ndarray | Sequence[Sequence[float]]],
    image_size: tuple[float, float],
    *,
    region: str = "hull_band",
    exclude: Bool[np.ndarray, "h w"] | None = None,
    band_width: float = 1.0,
    n_permutations: int = 10_000,
    seed: int = 0,
) -> HullPermutation:
    """Score every image's map against its own dots' region and against other images' of the same count.

    Images are grouped by dot count; image `i`'s null score uses the region of an image
    `j != i` drawn uniformly from its group, independently per image and per permutation
    (so an image whose count is unique is left out of the test). Under the null that the
    map does not depend on where this image's dots are (beyond their number), its own
    region is one more draw from that set.

    Args:
        maps: `[n, h, w]` one map per image, one layer and digit step.
        centres: per image, its `[k, 2]` dot centres in pixels.
        image_size: `(W, H)` shared by all images.
        region: "centre", "hull_band" or "background".
        exclude: cells to leave out (e.g. `sink_cells`): zeroed in every map and dropped
            from every region's area.
        n_permutations: null draws; the smallest p-value possible is `1 / (1 + n_permutations)`.
        seed: of the permutations.

    Raises:
        ValueError: wrong shapes, an unknown region, a map that sums to zero or holds NaN,
            or no two images sharing a count.
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    p = np.asarray(maps, dtype=np.float64)
    if p.ndim != 3 or len(p) != len(centres):
        raise ValueError(f"expected maps [n, h, w] for {len(centres)} images, got shape {p.shape}")
    grid = (p.shape[1], p.shape[2])
    keep = np.ones(grid, dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
    if keep.shape != grid:
        raise ValueError(f"exclude has shape {keep.shape}, expected the grid {grid}")
    p = _normalised(p * keep, "hull_permutation_test").reshape(len(p), -1)
    regions = np.stack(
        [
            getattr(halo_masks(c, image_size, grid, band_width), region).numpy() & keep
            for c in centres
        ]
    ).reshape(len(p), -1)
    area = regions.sum(axis=1) / keep.sum()
    # score[i, j]: image i's map on image j's region, above that region's area.
    score = p @ regions.T.astype(np.float64) - area[None, :]
    counts = np.array([len(np.asarray(c).reshape(-1, 2)) for c in centres])
    groups = [np.flatnonzero(counts == c) for c in np.unique(counts)]
    groups = [g for g in groups if len(g) >= 2]
    n = sum(len(g) for g in groups)
    if n == 0:
        raise ValueError("hull_permutation_test: no two images share a dot count")
    rng = np.random.default_rng(seed)
    observed = sum(float(score[g, g].sum()) for g in groups) / n
    null = np.zeros(n_permutations)
    for g in groups:
        k = len(g)
        # An offset in 1..k-1 from each member's position picks another member uniformly.
        offset = rng.integers(1, k, size=(n_permutations, k))
        partner = g[(np.arange(k)[None, :] + offset) % k]
        null += score[g[None, :], partner].sum(axis=1)
    null /= n
    p_greater = (1 + int((null >= observed).sum())) / (1 + n_permutations)
    p_less = (1 + int((null <= observed).sum())) / (1 + n_permutations)
    return HullPermutation(
        region=region,
        observed=observed,
        null_mean=float(null.mean()),
        null_std=float(null.std(ddof=1)) if n_permutations > 1 else math.nan,
        excess=observed - float(null.mean()),
        p_greater=p_greater,
        p_less=p_less,
        p_two_sided=min(1.0, 2 * min(p_greater, p_less)),
        n=n,
        n_permutations=n_permutations,
    )
