"""The synthetic dots dataset of the counting study (paper §3.1), plus controls and pairs.

Defaults reproduce the paper exactly: 1024x1024 grayscale images, white background
(255), filled dark discs of radius 10 whose intensity is an integer drawn uniformly from
[0, 20], a count drawn uniformly from the integers [10, 16], and centres placed by
uniform rejection sampling so that every disc lies fully inside the image and any two
discs are at least 2r apart edge to edge. Every parameter can be changed (3-digit counts,
other sizes, varied radii for training data, other separations).

Three families of samples:

- `generate`: the paper's dataset.
- `control_set`: the same images, but the total dark area is drawn independently of the
  count, so a model (or a probe) that estimates "how much ink" cannot count by area.
- `counterfactual_pairs`: two images that differ by exactly one added dot, for
  activation patching.

and `content_free` derives, from any of them, the images of the halo baseline: blank
ones, or the same dots moved to new places.

Conventions: `size` is `(width, height)` as in PIL; a centre is `(x, y)` with `x` along
the columns; pixel `(row i, column j)` covers `[j, j+1) x [i, i+1)`, so its centre is
`(j + 0.5, i + 0.5)`. A disc of radius `r` is the set of pixels whose centre lies within
distance `r` of the dot's centre (no anti-aliasing, so the ground truth is exact).

Determinism: sample `i` of a call with seed `s` is drawn from its own generator seeded
by `(family, s, i)`, so it does not depend on `n`, on other samples, or on the order in
which samples are made. Same seed and parameters give identical PNG bytes.

Placement is sequential rejection sampling: each dot's centre is drawn uniformly over
the positions that keep it inside the image, and redrawn until it respects the
separation from the dots already placed. Settings that cannot be satisfied raise
`ValueError` (an up-front packing bound, then a bounded number of tries) instead of
looping forever.

Not for: loading natural-image counting benchmarks, or turning images into model
inputs (that is the model's `prepare`).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlm_lens.data.images import load_image
from vlm_lens.data.paths import confined

Renderer = Callable[["DotsSample"], np.ndarray]
"""A function from a sample to its `uint8 [height, width]` pixel array."""

_FAMILY_GENERATE = 0
_FAMILY_CONTROL = 1
_FAMILY_PAIRS = 2
_FAMILY_SHUFFLED = 3

# Densest packing of equal discs in the plane (Thue / Fejes Toth); Groemer's inequality
# makes it a valid bound for discs inside a finite convex container too.
_HEX_DENSITY = math.pi / math.sqrt(12.0)
# Candidates are drawn and tested this many at a time; part of the deterministic stream.
_CANDIDATE_BATCH = 64
# A layout that jams is restarted from scratch a few times before giving up.
_RESTARTS = 4

_REQUIRED_FIELDS = ("index", "seed", "width", "height", "centres", "radii", "intensities")


# --------------------------------------------------------------------------- rendering


def _disc_window(
    x: float, y: float, r: float, width: int, height: int
) -> tuple[slice, slice, np.ndarray]:
    """Rows, columns and inside-mask of one disc within its (clipped) bounding box."""
    x0, x1 = max(math.floor(x - r), 0), min(math.ceil(x + r) + 1, width)
    y0, y1 = max(math.floor(y - r), 0), min(math.ceil(y + r) + 1, height)
    dx = np.arange(x0, x1, dtype=np.float64) + 0.5 - x
    dy = np.arange(y0, y1, dtype=np.float64) + 0.5 - y
    inside = dy[:, None] ** 2 + dx[None, :] ** 2 <= r * r
    return slice(y0, y1), slice(x0, x1), inside


def render_discs(
    size: tuple[int, int],
    centres: Iterable[tuple[float, float]],
    radii: Iterable[float],
    intensities: Iterable[int],
    background: int = 255,
) -> np.ndarray:
    """`uint8 [height, width]` image of filled discs on a flat background.

    Only each disc's bounding box is touched, so the cost is the disc area, not the image.
    Later discs are painted over earlier ones (they can only share pixels if they touch).
    """
    width, height = size
    image = np.full((height, width), background, dtype=np.uint8)
    for (x, y), r, v in zip(centres, radii, intensities):
        rows, cols, inside = _disc_window(x, y, r, width, height)
        image[rows, cols][inside] = v
    return image


def disc_mask(size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """`bool [height, width]` mask of the pixels `render_discs` paints for one disc."""
    width, height = size
    mask = np.zeros((height, width), dtype=bool)
    rows, cols, inside = _disc_window(centre[0], centre[1], radius, width, height)
    mask[rows, cols] = inside
    return mask


def render_sample(sample: DotsSample) -> np.ndarray:
    """The default renderer: exact, non-anti-aliased discs (see `render_discs`)."""
    return render_discs(
        sample.size, sample.centres, sample.radii, sample.intensities, sample.background
    )


# ----------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class DotsSample:
    """One image of dots, described by its dots; pixels are rendered (or read) on demand.

    Attributes:
        index: position of the sample in its dataset (also its file name on disk).
        seed: the dataset seed it was drawn with.
        size: `(width, height)` in pixels.
        centres: `(x, y)` centre of each dot, in pixels.
        radii: radius of each dot, in pixels.
        intensities: gray value of each dot.
        background: gray value of the background.
        meta: JSON-able extras (which family it belongs to, its role in a pair, ...).
        image_path: where the PNG lives, for samples read by `load`; `None` means render.
        renderer: how to draw it when `image_path` is `None` (default `render_sample`).

    Equality compares the description (not the path or the renderer).
    """

    index: int
    seed: int
    size: tuple[int, int]
    centres: tuple[tuple[float, float], ...]
    radii: tuple[float, ...]
    intensities: tuple[int, ...]
    background: int = 255
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    image_path: Path | None = field(default=None, compare=False, repr=False)
    renderer: Renderer | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not len(self.centres) == len(self.radii) == len(self.intensities):
            raise ValueError(
                f"sample {self.index}: {len(self.centres)} centres, {len(self.radii)} radii and "
                f"{len(self.intensities)} intensities; they must have the same length"
            )

    @property
    def count(self) -> int:
        return len(self.centres)

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    def pixels(self) -> np.ndarray:
        """`uint8 [height, width]` pixel array (read from `image_path` or rendered)."""
        if self.image_path is not None:
            source = f"{self.image_path} (dots sample {self.index})"
            array = np.asarray(load_image(self.image_path, source=source).convert("L"))
            if array.shape != (self.height, self.width):
                raise ValueError(
                    f"{self.image_path}: image is {array.shape[1]}x{array.shape[0]}, "
                    f"its record says {self.width}x{self.height}"
                )
            return array
        array = (self.renderer or render_sample)(self)
        return np.asarray(array, dtype=np.uint8)

    @property
    def image(self) -> Image.Image:
        """The sample as a PIL grayscale ('L') image."""
        return Image.fromarray(self.pixels())

    def to_png_bytes(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()

    def dark_area(self) -> int:
        """Number of pixels that differ from the background."""
        return int((self.pixels() != self.background).sum())

    def to_record(self) -> dict[str, Any]:
        """JSON-able description from which `from_record` rebuilds an equal sample."""
        return {
            "index": self.index,
            "seed": self.seed,
            "count": self.count,
            "width": self.width,
            "height": self.height,
            "background": self.background,
            "centres": [[x, y] for x, y in self.centres],
            "radii": list(self.radii),
            "intensities": list(self.intensities),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_record(
        cls, record: dict[str, Any], image_path: Path | None = None, *, where: str = "record"
    ) -> DotsSample:
        missing = [name for name in _REQUIRED_FIELDS if name not in record]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
        sample = cls(
            index=int(record["index"]),
            seed=int(record["seed"]),
            size=(int(record["width"]), int(record["height"])),
            centres=tuple((float(x), float(y)) for x, y in record["centres"]),
            radii=tuple(float(r) for r in record["radii"]),
            intensities=tuple(int(v) for v in record["intensities"]),
            background=int(record.get("background", 255)),
            meta=dict(record.get("meta", {})),
            image_path=image_path,
        )
        if "count" in record and int(record["count"]) != sample.count:
            raise ValueError(
                f"{where}: 'count' is {record['count']} but there are {sample.count} centres"
            )
        return sample


@dataclass(frozen=True)
class DotsPair:
    """Two images that differ by exactly one added dot, for activation patching.

    `with_added` holds every dot of `without_added` (same centres, radii, intensities, in
    the same order) plus the added dot, appended last. Which of the two is the "clean"
    run is a choice of the experiment: `clean_has_added=True` (the default of
    `counterfactual_pairs`) makes `clean` the image with one dot more.
    """

    clean: DotsSample
    corrupted: DotsSample
    added_centre: tuple[float, float]
    added_radius: float
    added_intensity: int
    clean_has_added: bool = True

    @property
    def index(self) -> int:
        return self.clean.index

    @property
    def with_added(self) -> DotsSample:
        return self.clean if self.clean_has_added else self.corrupted

    @property
    def without_added(self) -> DotsSample:
        return self.corrupted if self.clean_has_added else self.clean

    def added_mask(self) -> np.ndarray:
        """`bool [height, width]`: the only pixels where the two images may differ."""
        return disc_mask(self.clean.size, self.added_centre, self.added_radius)

    def to_record(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "clean": self.clean.to_record(),
            "corrupted": self.corrupted.to_record(),
            "added_centre": list(self.added_centre),
            "added_radius": self.added_radius,
            "added_intensity": self.added_intensity,
            "clean_has_added": self.clean_has_added,
        }


# ------------------------------------------------------------------------ the sampler


def _int_range(
    name: str, value: Sequence[int], lowest: int, highest: int | None = None
) -> tuple[int, int]:
    if len(value) != 2:
        raise ValueError(f"{name} must be a (low, high) pair, got {value!r}")
    lo, hi = int(value[0]), int(value[1])
    if lo != value[0] or hi != value[1]:
        raise ValueError(f"{name} must hold integers, got {value!r}")
    if lo > hi or lo < lowest or (highest is not None and hi > highest):
        bound = f"[{lowest}, {highest}]" if highest is not None else f">= {lowest}"
        raise ValueError(f"{name} must satisfy low <= high within {bound}, got {value!r}")
    return lo, hi


def quadrant_box(width: float, height: float, quadrant: int) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of a quarter: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right."""
    if quadrant not in (0, 1, 2, 3):
        raise ValueError(f"quadrant must be 0-3 (top-left ... bottom-right), got {quadrant!r}")
    half_w, half_h = width / 2, height / 2
    x0, y0 = (quadrant % 2) * half_w, (quadrant // 2) * half_h
    return (x0, y0, x0 + half_w, y0 + half_h)


def has_dot_in(sample: DotsSample, quadrant: int) -> bool:
    """Whether a dot centre of ``sample`` lies in that quarter (numbered as in `quadrant_box`)."""
    x0, y0, x1, y1 = quadrant_box(sample.width, sample.height, quadrant)
    return any(x0 <= x < x1 and y0 <= y < y1 for x, y in sample.centres)


@dataclass(frozen=True)
class _Spec:
    """Validated parameters shared by all families."""

    width: int
    height: int
    count_range: tuple[int, int]
    intensity_range: tuple[int, int]
    background: int
    separation: float
    radius_bounds: tuple[float, float]
    max_tries: int
    renderer: Renderer | None

    @classmethod
    def build(
        cls,
        *,
        size: int | tuple[int, int],
        radius: float,
        count_range: Sequence[int],
        intensity_range: Sequence[int],
        background: int,
        min_separation: float | None,
        radius_range: Sequence[float] | None,
        max_tries: int,
        renderer: Renderer | None,
    ) -> _Spec:
        width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if width <= 0 or height <= 0:
            raise ValueError(f"size must be positive, got {size!r}")
        counts = _int_range("count_range", count_range, 0)
        intensities = _int_range("intensity_range", intensity_range, 0, 255)
        if not 0 <= background <= 255:
            raise ValueError(f"background must be in [0, 255], got {background}")
        if intensities[0] <= background <= intensities[1]:
            # A dot drawn in the background colour would be invisible yet counted.
            raise ValueError(f"background {background} lies inside intensity_range {intensities}")
        if radius_range is None:
            if radius <= 0:
                raise ValueError(f"radius must be positive, got {radius}")
            bounds = (float(radius), float(radius))
            nominal = float(radius)
        else:
            if len(radius_range) != 2 or not 0 < radius_range[0] <= radius_range[1]:
                raise ValueError(
                    f"radius_range must be (low, high) with 0 < low <= high, got {radius_range!r}"
                )
            bounds = (float(radius_range[0]), float(radius_range[1]))
            nominal = (bounds[0] + bounds[1]) / 2
        separation = 2 * nominal if min_separation is None else float(min_separation)
        if separation < 0:
            raise ValueError(f"min_separation must be >= 0, got {min_separation}")
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        return cls(
            width,
            height,
            counts,
            intensities,
            int(background),
            separation,
            bounds,
            int(max_tries),
            renderer,
        )

    def check_feasible(self, radius_bounds: tuple[float, float], max_count: int) -> None:
        """Raise if no layout can exist (the biggest dot does not fit, or too many dots)."""
        r_lo, r_hi = radius_bounds
        if 2 * r_hi > min(self.width, self.height):
            raise ValueError(
                f"a dot of radius {r_hi:g} does not fit inside a {self.width}x{self.height} image"
            )
        if max_count == 0:
            return
        # Discs of radius r + s/2 around the centres are disjoint and lie in the image grown
        # by s/2 on each side; shrinking every dot to the smallest radius keeps that true.
        s = self.separation
        needed = max_count * math.pi * (r_lo + s / 2) ** 2
        available = _HEX_DENSITY * (self.width + s) * (self.height + s)
        if needed > available:
            raise ValueError(
                f"impossible setting: {max_count} dots of radius >= {r_lo:g} with edge-to-edge "
                f"separation {s:g} cannot fit in a {self.width}x{self.height} image (even a "
                f"perfect hexagonal packing holds fewer); lower the count, radius or separation"
            )

    def place(
        self,
        rng: np.random.Generator,
        radii: np.ndarray,
        keep_free: tuple[float, float, float, float] | None = None,
    ) -> np.ndarray:
        """`[n, 2]` centres for dots of the given radii, by sequential rejection sampling.

        `keep_free`: a box ``(x0, y0, x1, y1)`` no part of any dot may touch (no draw of the
        random stream is added, so without it layouts are unchanged).
        """
        n = len(radii)
        for _ in range(_RESTARTS + 1):
            centres = np.empty((n, 2), dtype=np.float64)
            for k in range(n):
                spot = self._place_one(rng, centres[:k], radii[:k], float(radii[k]), keep_free)
                if spot is None:
                    break
                centres[k] = spot
            else:
                return centres
        raise ValueError(
            f"could not place {n} dots (radii {radii.min():g}-{radii.max():g}, edge-to-edge "
            f"separation {self.separation:g}) in a {self.width}x{self.height} image: "
            f"{self.max_tries} tries per dot, {_RESTARTS + 1} attempts; the setting is too dense "
            f"for rejection sampling (lower the count, radius or separation, or raise max_tries)"
        )

    def _place_one(
        self,
        rng: np.random.Generator,
        placed: np.ndarray,
        placed_radii: np.ndarray,
        r: float,
        keep_free: tuple[float, float, float, float] | None = None,
    ) -> np.ndarray | None:
        tries = 0
        min_dist = placed_radii + r + self.separation
        while tries < self.max_tries:
            batch = min(_CANDIDATE_BATCH, self.max_tries - tries)
            tries += batch
            xs = rng.uniform(r, self.width - r, batch)
            ys = rng.uniform(r, self.height - r, batch)
            ok = np.ones(batch, dtype=bool)
            if keep_free is not None:  # the dot's bounding box must miss the box
                x0, y0, x1, y1 = keep_free
                ok &= (xs + r <= x0) | (xs - r >= x1) | (ys + r <= y0) | (ys - r >= y1)
            if len(placed):
                d2 = (xs[:, None] - placed[None, :, 0]) ** 2 + (
                    ys[:, None] - placed[None, :, 1]
                ) ** 2
                ok &= np.all(d2 >= min_dist[None, :] ** 2, axis=1)
            hits = np.flatnonzero(ok)
            if len(hits):
                return np.array([xs[hits[0]], ys[hits[0]]])
        return None

    def draw_radii(self, rng: np.random.Generator, count: int) -> np.ndarray:
        lo, hi = self.radius_bounds
        if lo == hi:
            return np.full(count, lo)
        return rng.uniform(lo, hi, count)

    def draw_intensities(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return rng.integers(self.intensity_range[0], self.intensity_range[1] + 1, count)

    def sample(
        self,
        index: int,
        seed: int,
        centres: np.ndarray,
        radii: np.ndarray,
        intensities: np.ndarray,
        meta: dict[str, Any],
    ) -> DotsSample:
        return DotsSample(
            index=index,
            seed=seed,
            size=(self.width, self.height),
            centres=tuple((float(x), float(y)) for x, y in centres),
            radii=tuple(float(r) for r in radii),
            intensities=tuple(int(v) for v in intensities),
            background=self.background,
            meta=meta,
            renderer=self.renderer,
        )


def _rng(family: int, seed: int, index: int) -> np.random.Generator:
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([family, seed, index]))


def _check_n(n: int) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")


# ------------------------------------------------------------------------- public API


def generate(
    n: int = 256,
    seed: int = 0,
    *,
    size: int | tuple[int, int] = 1024,
    radius: float = 10,
    count_range: tuple[int, int] = (10, 16),
    intensity_range: tuple[int, int] = (0, 20),
    background: int = 255,
    min_separation: float | None = None,
    radius_range: tuple[float, float] | None = None,
    max_tries: int = 10_000,
    renderer: Renderer | None = None,
    empty_quadrant: int | None = None,
) -> list[DotsSample]:
    """The paper's counting dataset (§3.1); defaults reproduce it exactly.

    Args:
        n: number of samples.
        seed: dataset seed; sample `i` depends only on `(seed, i)` and the parameters.
        size: image side, or `(width, height)`.
        radius: dot radius in pixels (ignored when `radius_range` is given).
        count_range: inclusive range the count is drawn from uniformly.
        intensity_range: inclusive integer range each dot's gray value is drawn from.
        background: background gray value (must lie outside `intensity_range`).
        min_separation: minimum edge-to-edge gap between dots, i.e. centre distance
            `>= min_separation + r_i + r_j`. Default: twice the nominal radius (`radius`,
            or the midpoint of `radius_range`), the paper's `d_min >= 2r`.
        radius_range: draw each dot's radius uniformly (real-valued) from this range,
            e.g. `(7, 13)` for training data.
        max_tries: candidate centres drawn per dot before a layout is declared jammed.
        renderer: how to draw a sample (default: exact discs, `render_sample`).
        empty_quadrant: keep this quarter free of ink (0 top-left, 1 top-right,
            2 bottom-left, 3 bottom-right), at any count: "no" images for a "is there a dot
            in the ... quarter?" question whose label does not follow the count. Recorded in
            `meta`.

    Raises:
        ValueError: for invalid or impossible settings (too many / too large dots).
    """
    _check_n(n)
    spec = _Spec.build(
        size=size,
        radius=radius,
        count_range=count_range,
        intensity_range=intensity_range,
        background=background,
        min_separation=min_separation,
        radius_range=radius_range,
        max_tries=max_tries,
        renderer=renderer,
    )
    spec.check_feasible(spec.radius_bounds, spec.count_range[1])
    free = None if empty_quadrant is None else quadrant_box(spec.width, spec.height, empty_quadrant)
    meta: dict[str, Any] = {"family": "dots"}
    if empty_quadrant is not None:
        meta["empty_quadrant"] = empty_quadrant
    samples = []
    for i in range(n):
        rng = _rng(_FAMILY_GENERATE, seed, i)
        count = int(rng.integers(spec.count_range[0], spec.count_range[1] + 1))
        radii = spec.draw_radii(rng, count)
        intensities = spec.draw_intensities(rng, count)
        centres = spec.place(rng, radii, free)
        samples.append(spec.sample(i, seed, centres, radii, intensities, dict(meta)))
    return samples


def control_set(
    n: int = 256,
    seed: int = 0,
    *,
    area_range: tuple[float, float] | None = None,
    size: int | tuple[int, int] = 1024,
    radius: float = 10,
    count_range: tuple[int, int] = (10, 16),
    intensity_range: tuple[int, int] = (0, 20),
    background: int = 255,
    min_separation: float | None = None,
    max_tries: int = 10_000,
    renderer: Renderer | None = None,
) -> list[DotsSample]:
    """A control set in which the total dark area carries no information about the count.

    In the default dataset every dot has the same radius, so the dark area is almost
    exactly `count * pi * r^2`: a model could "count" by estimating ink. Here each
    sample draws its count uniformly from `count_range` and, independently, a target
    total dark area `A` uniformly from `area_range`; all its dots then get the radius
    `sqrt(A / (count * pi))`. Count and area are independent by construction (the
    rendered pixel area follows `A` up to discretisation), so their correlation is ~0.

    Args:
        area_range: range of the target total dark area in pixels. Default: the range the
            default dataset spans, `(lo * pi * radius^2, hi * pi * radius^2)` for
            `count_range = (lo, hi)`, which gives radii between `radius * sqrt(lo/hi)`
            and `radius * sqrt(hi/lo)` (7.9 to 12.6 px for the paper's setting).
        min_separation: as in `generate`; the default is `2 * radius` (the nominal radius).
        Other arguments: as in `generate`.

    The record's `meta` holds `target_area`.
    """
    _check_n(n)
    spec = _Spec.build(
        size=size,
        radius=radius,
        count_range=count_range,
        intensity_range=intensity_range,
        background=background,
        min_separation=min_separation,
        radius_range=None,
        max_tries=max_tries,
        renderer=renderer,
    )
    lo, hi = spec.count_range
    if lo < 1:
        raise ValueError(
            f"control_set needs at least one dot per image; count_range is {count_range}"
        )
    if area_range is None:
        area_range = (lo * math.pi * radius**2, hi * math.pi * radius**2)
    a_lo, a_hi = float(area_range[0]), float(area_range[1])
    if not 0 < a_lo <= a_hi:
        raise ValueError(f"area_range must be (low, high) with 0 < low <= high, got {area_range!r}")
    spec.check_feasible((math.sqrt(a_lo / (hi * math.pi)), math.sqrt(a_hi / (lo * math.pi))), hi)
    samples = []
    for i in range(n):
        rng = _rng(_FAMILY_CONTROL, seed, i)
        count = int(rng.integers(lo, hi + 1))
        area = float(rng.uniform(a_lo, a_hi))
        radii = np.full(count, math.sqrt(area / (count * math.pi)))
        intensities = spec.draw_intensities(rng, count)
        centres = spec.place(rng, radii)
        meta = {"family": "control", "target_area": area}
        samples.append(spec.sample(i, seed, centres, radii, intensities, meta))
    return samples


def counterfactual_pairs(
    n: int = 256,
    seed: int = 0,
    *,
    clean_has_added: bool = True,
    size: int | tuple[int, int] = 1024,
    radius: float = 10,
    count_range: tuple[int, int] = (10, 16),
    intensity_range: tuple[int, int] = (0, 20),
    background: int = 255,
    min_separation: float | None = None,
    radius_range: tuple[float, float] | None = None,
    max_tries: int = 10_000,
    renderer: Renderer | None = None,
) -> list[DotsPair]:
    """Pairs of images that differ by exactly one dot, for activation patching.

    For each pair a count `N` is drawn uniformly from `[lo, hi - 1]` so that both images
    (`N` and `N + 1` dots) stay within `count_range`. `N + 1` dots are placed as in
    `generate`; the last one is the added dot, itself drawn from the spec (inside the
    image, separated from every other dot, radius and intensity from their ranges). The
    image without it has the first `N` dots, identical in every respect, so the two
    images agree pixel for pixel outside the added disc (`DotsPair.added_mask`).

    Args:
        clean_has_added: if True (default) the clean image is the one with `N + 1` dots
            and the corrupted one has `N`; if False, the other way round.
        Other arguments: as in `generate`.

    Sample `meta` records `role` ("clean" / "corrupted") and `has_added`.
    """
    _check_n(n)
    spec = _Spec.build(
        size=size,
        radius=radius,
        count_range=count_range,
        intensity_range=intensity_range,
        background=background,
        min_separation=min_separation,
        radius_range=radius_range,
        max_tries=max_tries,
        renderer=renderer,
    )
    lo, hi = spec.count_range
    if hi <= lo:
        raise ValueError(
            f"count_range {count_range} must span at least two counts to form N vs N+1 pairs"
        )
    spec.check_feasible(spec.radius_bounds, hi)
    pairs = []
    for i in range(n):
        rng = _rng(_FAMILY_PAIRS, seed, i)
        base = int(rng.integers(lo, hi))
        radii = spec.draw_radii(rng, base + 1)
        intensities = spec.draw_intensities(rng, base + 1)
        centres = spec.place(rng, radii)
        with_added = spec.sample(
            i, seed, centres, radii, intensities, _pair_meta(True, clean_has_added)
        )
        without = spec.sample(
            i,
            seed,
            centres[:base],
            radii[:base],
            intensities[:base],
            _pair_meta(False, clean_has_added),
        )
        clean, corrupted = (with_added, without) if clean_has_added else (without, with_added)
        pairs.append(
            DotsPair(
                clean=clean,
                corrupted=corrupted,
                added_centre=with_added.centres[-1],
                added_radius=with_added.radii[-1],
                added_intensity=with_added.intensities[-1],
                clean_has_added=clean_has_added,
            )
        )
    return pairs


CONTENT_FREE_KINDS = ("blank", "shuffled")


def content_free(
    samples: Sequence[DotsSample],
    kind: str = "blank",
    seed: int = 0,
    *,
    min_separation: float | None = None,
    max_tries: int = 10_000,
) -> list[DotsSample]:
    """Images that keep everything of `samples` except where the dots are: the halo baseline.

    Where a model's attention goes on these images is where it goes whatever the dots
    are (`vlm_lens.metrics.controls.baseline_map`).

    Args:
        samples: the images to derive from (any family; read from disk or generated).
        kind: "blank": same size and background, no dot at all. "shuffled": the same dots
            (count, radii, intensities, in order) placed anew by the sampler of `generate`
            (inside the image, at least `min_separation` apart edge to edge).
        seed: for "shuffled"; sample `i`'s layout depends only on `(seed, its index)`.
        min_separation: as in `generate`; default twice the sample's mean radius.
        max_tries: as in `generate`.

    Each result keeps its source's `index` and renderer; `meta` holds `family` (the kind)
    and `source_seed`. Drawing these images does not touch the streams of the other
    families, so existing datasets are unchanged.
    """
    if kind not in CONTENT_FREE_KINDS:
        raise ValueError(f"kind must be one of {CONTENT_FREE_KINDS}, got {kind!r}")
    out = []
    for sample in samples:
        meta: dict[str, Any] = {"family": kind, "source_seed": sample.seed}
        if kind == "blank":
            layout: dict[str, tuple] = {"centres": (), "radii": (), "intensities": ()}
        elif sample.count == 0:
            layout = {}
        else:
            radii = np.asarray(sample.radii, dtype=np.float64)
            intensities = np.asarray(sample.intensities)
            spec = _Spec.build(
                size=sample.size,
                radius=float(radii.mean()),
                count_range=(sample.count, sample.count),
                intensity_range=(int(intensities.min()), int(intensities.max())),
                background=sample.background,
                min_separation=2 * float(radii.mean())
                if min_separation is None
                else min_separation,
                radius_range=(float(radii.min()), float(radii.max())),
                max_tries=max_tries,
                renderer=sample.renderer,
            )
            spec.check_feasible(spec.radius_bounds, sample.count)
            centres = spec.place(_rng(_FAMILY_SHUFFLED, seed, sample.index), radii)
            layout = {"centres": tuple((float(x), float(y)) for x, y in centres)}
        # Everything else (index, size, background, radii and intensities when shuffled,
        # renderer) is the source's; the pixels are drawn anew, never read from its file.
        out.append(replace(sample, seed=seed, meta=meta, image_path=None, **layout))
    return out


def _pair_meta(has_added: bool, clean_has_added: bool) -> dict[str, Any]:
    role = "clean" if has_added == clean_has_added else "corrupted"
    return {"family": "pair", "role": role, "has_added": has_added}


# --------------------------------------------------------------------------------- disk


_IMAGES_DIR = "images"
_INDEX_FILE = "samples.jsonl"


def save(samples: Sequence[DotsSample], directory: str | Path) -> Path:
    """Write `images/{index:05d}.png` and `samples.jsonl` (one record per line) under `directory`.

    Each record is `DotsSample.to_record()` plus `"image"`, the PNG path relative to
    `directory`. Returns the path of `samples.jsonl`.
    """
    directory = Path(directory)
    indices = [s.index for s in samples]
    if len(set(indices)) != len(indices):
        raise ValueError(
            "samples have duplicate indices; their image files would overwrite each other"
        )
    (directory / _IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    lines = []
    for sample in samples:
        relative = f"{_IMAGES_DIR}/{sample.index:05d}.png"
        sample.image.save(directory / relative, format="PNG")
        lines.append(json.dumps({**sample.to_record(), "image": relative}))
    index_path = directory / _INDEX_FILE
    index_path.write_text("".join(line + "\n" for line in lines))
    return index_path


def load(directory: str | Path, *, allow_outside_root: bool = False) -> list[DotsSample]:
    """Read a directory written by `save`; images are read lazily when pixels are asked for.

    Image names in `samples.jsonl` must resolve inside `directory` (a shared set could
    name any file otherwise); `allow_outside_root=True` lifts that.

    Raises:
        FileNotFoundError: naming `samples.jsonl` or the image file that is missing.
        ValueError: naming the line and the field of a malformed record.
        OutsideRootError: naming the line of an image path that leaves `directory`.
    """
    directory = Path(directory)
    index_path = directory / _INDEX_FILE
    if not index_path.is_file():
        raise FileNotFoundError(f"no {_INDEX_FILE} in {directory} (expected {index_path})")
    samples = []
    for lineno, line in enumerate(index_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{index_path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err})") from err
        if "image" not in record:
            raise ValueError(f"{where}: missing field(s) 'image'")
        image_path = confined(
            directory / str(record["image"]), directory, "dots", where, allow_outside_root
        )
        if not image_path.is_file():
            raise FileNotFoundError(f"{where}: image file {image_path} does not exist")
        samples.append(DotsSample.from_record(record, image_path, where=where))
    return samples
