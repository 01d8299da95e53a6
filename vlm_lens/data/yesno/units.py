"""What a complete pairing unit of each benchmark holds, and which units of a set lack items.

A paired metric (acc+, qAcc, G_Acc, group score, ...) asks whether every prompt of a
unit is right. A unit that lost a prompt - an interrupted run, a filtered subset, a
damaged file - is easier to get "all right", so scoring it inflates the metric. The
released evaluation scripts refuse such units (MME asserts two questions per image,
NaturalBench four answers per row, BEAF and HallusionBench look up the original
instance and crash without it). `incomplete_units` names them so metrics can leave
them out, and say so.

A unit is incomplete when

* it has fewer items than its loader found for it (`YesNoItem.unit_size`), or
* it breaks its benchmark's shape (benchmarks.md):

============== ==================================================================
benchmark      complete unit
============== ==================================================================
mme            two questions on the image, one yes and one no
pope           as many yes as no questions (3 + 3 in the released files)
hallusionbench a VD question group holds its figure-0 (original figure) instance,
               which the other instances are compared with; a VS group's
               figure 0 is the no-image question, skipped by default and absent
               from the HF `image` split, so it is not required
naturalbench   the four (question, image) cells, each once
winoground     the four (image, caption) cells, each once
sugarcrepe     one positive (yes) and one negative (no) caption
beaf           the question on the original image and on every edited image of
               that original found in the set
synthetic      one yes and one no item
============== ==================================================================

HallusionBench figures (fAcc: all questions of a figure right) are a second grouping;
`incomplete_figures` checks them against `meta["figure_size"]`.

Not for: computing metrics (`vlm_lens.metrics.yesno`) or loading (`loaders`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vlm_lens.data.yesno.items import YesNoItem

Unit = list[YesNoItem]


def _one_yes_one_no(unit: Unit, what: str) -> str | None:
    yes = sum(it.label for it in unit)
    if len(unit) == 2 and yes == 1:
        return None
    return f"holds {len(unit)} {what} ({yes} yes, {len(unit) - yes} no); expected one yes, one no"


def _cells(unit: Unit, keys: tuple[str, str], names: tuple[str, str]) -> str | None:
    cells = sorted((int(it.meta[keys[0]]), int(it.meta[keys[1]])) for it in unit)
    if cells == [(0, 0), (0, 1), (1, 0), (1, 1)]:
        return None
    return f"holds ({names[0]}, {names[1]}) cells {cells}; expected each of the four once"


def _pope(unit: Unit, _: object) -> str | None:
    yes = sum(it.label for it in unit)
    no = len(unit) - yes
    if yes == no and yes > 0:
        return None
    return f"holds {yes} yes and {no} no questions; expected as many yes as no"


def _hallusionbench(unit: Unit, _: object) -> str | None:
    if unit[0].meta.get("category") != "VD":
        return None
    if any(str(it.meta.get("figure_id")) == "0" for it in unit):
        return None
    return "has no figure-0 (original figure) instance to compare the others with"


def _beaf_edits(items: Sequence[YesNoItem]) -> dict[str, set[str]]:
    """Original image -> the edited images of it that the set asks about."""
    edits: dict[str, set[str]] = {}
    for it in items:
        images = edits.setdefault(it.meta["orig_image"], set())
        if not it.meta["orig_img"]:
            images.add(it.meta["image"])
    return edits


def _beaf(unit: Unit, edits: dict[str, set[str]]) -> str | None:
    if sum(bool(it.meta["orig_img"]) for it in unit) != 1:
        return "needs exactly one question on the original image"
    expected = edits[unit[0].meta["orig_image"]]
    asked = {it.meta["image"] for it in unit if not it.meta["orig_img"]}
    if not expected:
        return "has no edited image of its original to compare with"
    if asked != expected:
        return f"is not asked on edited image(s) {sorted(expected - asked)}"
    return None


# Each check sees one unit and a context built once from the whole set (BEAF's edits).
_SHAPE: dict[str, Callable[[Unit, Any], str | None]] = {
    "mme": lambda u, _: _one_yes_one_no(u, "questions"),
    "pope": _pope,
    "hallusionbench": _hallusionbench,
    "naturalbench": lambda u, _: _cells(u, ("question_index", "image_index"), ("q", "i")),
    "winoground": lambda u, _: _cells(u, ("image_index", "caption_index"), ("i", "c")),
    "sugarcrepe": lambda u, _: _one_yes_one_no(u, "captions"),
    "beaf": _beaf,
    "synthetic": lambda u, _: _one_yes_one_no(u, "items"),
}


def group_units(items: Sequence[YesNoItem]) -> dict[str, Unit]:
    """unit_id -> its items, in first-seen order."""
    units: dict[str, Unit] = {}
    for it in items:
        units.setdefault(it.unit_id, []).append(it)
    return units


def incomplete_units(benchmark: str, items: Sequence[YesNoItem]) -> dict[str, str]:
    """unit_id -> why it is incomplete, for the units of `items` that are (module docstring).

    `benchmark` is a registry key ("mme", ...); unknown keys get only the size check.
    """
    shape = _SHAPE.get(benchmark)
    context = _beaf_edits(items) if benchmark == "beaf" else None
    out: dict[str, str] = {}
    for uid, unit in group_units(items).items():
        size = unit[0].unit_size
        if size is not None and len(unit) != size:
            out[uid] = f"has {len(unit)} of its {size} items"
        elif shape is not None and (reason := shape(unit, context)) is not None:
            out[uid] = reason
    return out


def incomplete_figures(items: Sequence[YesNoItem]) -> dict[str, str]:
    """HallusionBench figure_key -> why it is incomplete (fewer questions than loaded)."""
    figures: dict[str, Unit] = {}
    for it in items:
        key = it.meta.get("figure_key")
        if key is not None:
            figures.setdefault(key, []).append(it)
    out = {}
    for key, fig in figures.items():
        size = fig[0].meta.get("figure_size")
        if size is not None and len(fig) != size:
            out[key] = f"has {len(fig)} of its {size} questions"
    return out


__all__ = ["group_units", "incomplete_figures", "incomplete_units"]
