"""An offline paired yes/no set: dark dots on white, questions with known answers.

`generate(n_units, seed)` returns `YesNoItem`s (benchmark "synthetic") so that a
yes-bias study, its metrics and its bootstrap run end to end with no downloaded
data. Every unit holds exactly one yes item and one no item, so labels are 50/50
for any `n_units`, and a model that always says yes gets paired accuracy 0.

Two unit types alternate (unit 0 is type a):

* "quadrant" (a): the same question, "Is there a dot in the top-left quarter of
  the image?", on two images that differ only in that quarter (one has a dot
  there, one has none) - the image decides the answer.
* "count" (b): one image with N dots and two questions, "Are there exactly N
  dots?" (yes) and "Are there exactly M dots?" (no) - the question decides.

Which image / which question comes first is drawn at random, so position in the
unit carries no label information. Dots never straddle the centre lines, so each
dot's quarter is unambiguous. Images are drawn only when `load_images()` is
called, from the dot positions stored in `meta["dots"]`.

Not for: the dot-counting stimuli of the dots study (`vlm_lens.data.dots`), which
this module does not depend on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vlm_lens.data.yesno.items import YesNoItem, make_prompt

QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True)
class DotImage:
    """Deterministic renderer of one image: called with no argument, it draws."""

    dots: tuple[tuple[float, float], ...]  # centres, as fractions of the side
    size: int
    radius: float  # fraction of the side

    def __call__(self) -> Image.Image:
        im = Image.new("RGB", (self.size, self.size), "white")
        draw = ImageDraw.Draw(im)
        r = self.radius * self.size
        for x, y in self.dots:
            cx, cy = x * self.size, y * self.size
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(20, 20, 20))
        return im


def quadrant_question(quadrant: int) -> str:
    """The quadrant question; `quadrant` indexes `QUADRANTS`."""
    return f"Is there a dot in the {QUADRANTS[quadrant]} quarter of the image?"


def count_question(n: int) -> str:
    """The exact-count question."""
    return (
        f"{'Is' if n == 1 else 'Are'} there exactly {n} {'dot' if n == 1 else 'dots'} in the image?"
    )


def _quadrant_of(x: float, y: float) -> int:
    return (2 if y >= 0.5 else 0) + (1 if x >= 0.5 else 0)


def _place(
    rng: np.random.Generator, quadrants: list[int], radius: float
) -> tuple[tuple[float, float], ...]:
    """One dot per entry of `quadrants`, inside that quarter, not touching another."""
    gap = 2.5 * radius
    dots: list[tuple[float, float]] = []
    for q in quadrants:
        x0, y0 = (q % 2) * 0.5, (q // 2) * 0.5
        for _ in range(1000):
            x = x0 + rng.uniform(gap, 0.5 - gap)
            y = y0 + rng.uniform(gap, 0.5 - gap)
            if all((x - a) ** 2 + (y - b) ** 2 > (2 * gap) ** 2 for a, b in dots):
                dots.append((round(x, 4), round(y, 4)))
                break
        else:
            raise RuntimeError("could not place dots; lower the dot count or radius")
    return tuple(dots)


def generate(
    n_units: int,
    seed: int = 0,
    size: int = 1024,
    radius: float = 10 / 1024,
    max_dots: int = 6,
) -> list[YesNoItem]:
    """`2 * n_units` items in `n_units` pairing units, half yes, half no.

    The default images are the counting study's dots (`vlm_lens.data.dots`: 1024 px, radius
    10 px, near-black on white), so a model trained on those -- the shipped organism -- is
    asked about images of the kind it was trained on.

    Args:
        n_units: number of pairing units (types alternate quadrant / count).
        seed: the set is a pure function of the arguments.
        size: image side in pixels (square RGB images).
        radius: dot radius as a fraction of the side.
        max_dots: most dots in any image, 2 to 7 (at most two dots share a quarter,
            so placement never has to search hard).
    """
    if n_units < 0:
        raise ValueError("n_units must be >= 0")
    if not 2 <= max_dots <= 7:
        raise ValueError("max_dots must be between 2 and 7")
    rng = np.random.default_rng(seed)
    items: list[YesNoItem] = []
    for u in range(n_units):  # one generator, drawn from in unit order: a pure function
        make = _quadrant_unit if u % 2 == 0 else _count_unit
        items += make(rng, f"synthetic/{u}", size, radius, max_dots)
    return items


def _item(
    unit: str, item_id: str, image: DotImage, question: str, label: bool, **meta: Any
) -> YesNoItem:
    return YesNoItem(
        benchmark="synthetic",
        item_id=f"{unit}/{item_id}",
        unit_id=unit,
        images=[image],
        question=question,
        prompt=make_prompt(question),
        label=label,
        meta=meta,
    )


def _quadrant_unit(
    rng: np.random.Generator, unit: str, size: int, radius: float, max_dots: int
) -> list[YesNoItem]:
    """Two images, one with a dot in quarter q and one without, asked about quarter q."""
    q = int(rng.integers(4))
    others = [k for k in range(4) if k != q]
    n_other = int(rng.integers(0, max_dots))  # dots outside quarter q
    outside = [int(k) for k in rng.permutation(others * 2)[:n_other]]
    with_dot = _place(rng, [q, *outside], radius)
    without_dot = _place(rng, outside, radius)
    question = quadrant_question(q)
    pair = [(with_dot, True), (without_dot, False)]
    items = []
    for image_index, k in enumerate(rng.permutation(2)):
        dots, label = pair[int(k)]
        items.append(
            _item(
                unit,
                f"i{image_index}",
                DotImage(dots, size, radius),
                question,
                label,
                unit_type="quadrant",
                image_index=image_index,
                question_index=0,
                quadrant=QUADRANTS[q],
                n_dots=len(dots),
                dots=dots,
            )
        )
    return items


def _count_unit(
    rng: np.random.Generator, unit: str, size: int, radius: float, max_dots: int
) -> list[YesNoItem]:
    """One image of n dots, asked whether it holds n and whether it holds a wrong m."""
    n = int(rng.integers(1, max_dots + 1))
    wrong = [m for m in range(max(1, n - 2), n + 3) if m != n]
    m = wrong[int(rng.integers(len(wrong)))]
    quads = [int(k) for k in rng.permutation(list(range(4)) * 2)[:n]]
    dots = _place(rng, quads, radius)
    image = DotImage(dots, size, radius)
    pair = [(n, True), (m, False)]
    items = []
    for question_index, k in enumerate(rng.permutation(2)):
        asked, label = pair[int(k)]
        items.append(
            _item(
                unit,
                f"q{question_index}",
                image,
                count_question(asked),
                label,
                unit_type="count",
                image_index=0,
                question_index=question_index,
                n_dots=n,
                asked=asked,
                dots=dots,
            )
        )
    return items
