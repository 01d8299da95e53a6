"""Metrics for paired yes/no benchmarks: each benchmark's official ones plus yes-bias ones.

`evaluate(name, items, predictions, scores=None)` takes `YesNoItem`s and, per
item_id, a prediction (generated text, "yes"/"no"/"other", or a bool) and optionally a
continuous score (e.g. `yes_no_score`, higher = more yes). It returns a dict with

* for every benchmark: `yes_rate` (of predictions), `gt_yes_rate`, `other_rate`
  (unparseable share), `accuracy` ("other" counts as wrong), `paired_accuracy`
  (share of complete pairing units whose every item is right), with percentile
  bootstrap 95% intervals under `ci` that resample whole pairing units; with scores
  also `score_paired_accuracy` (share of complete units with both labels whose every
  yes item scores above every no item). These read answers with our first-word
  parser (`parser: "first_word"`);
* `official`: the benchmark's own metrics (below), answers read with our first-word
  parser too, so they compare across benchmarks;
* `official_benchmark_parser`: the same metrics with answers read the way the
  benchmark's released evaluation reads them (`vlm_lens.data.yesno.parsers`; MME,
  POPE, NaturalBench, BEAF, and VLMEvalKit's reading standing in for HallusionBench's
  GPT-4 judge). Absent for Winoground and SugarCrepe, which are officially scored
  from model scores, and for the synthetic set. Every block names its `parser`.
* `incomplete_units`: `count`, `ids` and `reasons` of the pairing units that lack
  items (`vlm_lens.data.yesno.units`).

Incomplete units: the released scripts refuse a unit that lost items; here such
units are reported, warned about (`IncompleteUnitsWarning`) and left out of every
paired metric (paired_accuracy and its interval, score_paired_accuracy, MME acc+,
HallusionBench fAcc / qAcc, NaturalBench Q/I/G_Acc, Winoground, SugarCrepe pair
accuracy, BEAF TU/IG/SB/ID); per-item metrics (accuracy, yes rates, POPE and BEAF
precision / recall, MME acc) keep their items.

All rates are fractions in [0, 1] (the papers print percentages); MME scores keep
the official points scale (category score = 100*acc + 100*acc+, max 200). A ratio
with an empty denominator is NaN.

============== ===============================================================
benchmark      official metrics
============== ===============================================================
mme            per category acc, acc_plus (both questions of an image right),
               score; perception = sum of the 10 perception scores, cognition =
               sum of the 4 cognition scores (only categories present are
               summed; `n_perception` / `n_cognition` say how many)
pope           accuracy, precision, recall, f1, yes_ratio of predictions, overall
               and per category
hallusionbench aAcc, fAcc (figure: all its questions right; VS figure 0 has no
               figure), qAcc (question group: all instances right), pct_diff,
               fp_ratio; fAcc/qAcc on mixed groups (both answers present); per
               category VD / VS. Matches HallusionBench's evaluation, which
               differs from a plain reading in two ways: an unclear ("other")
               answer to a no-image VS question counts as right, and pct_diff /
               fp_ratio infer the answer from correctness (right -> the label,
               wrong -> its opposite, so an "other" on a "no" question counts as a
               yes). The answers' own yes rate minus the GT yes rate is the
               generic `yes_rate - gt_yes_rate`.
naturalbench   Acc, Q_Acc (question right on both images), I_Acc (image right on
               both questions), G_Acc (all four); groups by Index and the items'
               own labels, never by row order
winoground     strict reading from answers: an example counts only if all four
               answers are right, which is what text, image and group all reduce
               to with yes/no answers; with scores: text (each image prefers its
               caption), image (each caption prefers its image), group (both)
sugarcrepe     per subset: accuracy (both prompts right), item accuracy, and with
               scores positive_preferred (s(positive) > s(negative)); macro means
beaf           accuracy, precision, recall, f1; for removed-object questions the
               (original, edited) outcome pair: TU (TP->TN), IG (FN->FP), SB+
               (TP->FP), SB- (FN->TN) over all such pairs; ID = share of
               non-removed questions whose correctness flips; F1_TU_ID =
               harmonic mean of TU and 1 - ID
synthetic      accuracy and paired accuracy per unit type
============== ===============================================================

"other" answers are wrong everywhere (except HallusionBench's no-image rule above):
for POPE/BEAF they are neither a yes (TP/FP) nor a correct no (TN), so they count as
FN on yes items; in BEAF's outcome pairs they fall in no cell (TU+IG+SB+ + SB- < 1
then). POPE's own parser never says "other" (no "no"/"not" word means yes).

Not for: producing predictions (run the model) or loading data
(`vlm_lens.data.yesno`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlm_lens.data.yesno.items import YesNoItem, parse_yes_no
from vlm_lens.data.yesno.loaders import MME_COGNITION, MME_PERCEPTION, canonical_name
from vlm_lens.data.yesno.parsers import ANSWER_PARSERS, BENCHMARK_PARSER
from vlm_lens.data.yesno.units import incomplete_figures, incomplete_units

NAN = float("nan")
OUR_PARSER = "first_word"


class IncompleteUnitsWarning(UserWarning):
    """Some pairing units lack items; they were left out of the paired metrics."""


@dataclass
class _Eval:
    items: list[YesNoItem]
    label: np.ndarray  # bool
    pred_yes: np.ndarray  # bool
    pred_no: np.ndarray  # bool
    correct: np.ndarray  # bool
    score: np.ndarray | None  # float
    unit: np.ndarray  # int codes
    n_units: int
    complete: np.ndarray  # bool per item: its unit is complete
    parser: str

    def meta(self, key: str) -> list[Any]:
        return [it.meta.get(key) for it in self.items]

    def reread(self, answers: Sequence[str], parser: str) -> _Eval:
        """The same items with other parsed answers."""
        pred_yes = np.array([a == "yes" for a in answers], dtype=bool)
        pred_no = np.array([a == "no" for a in answers], dtype=bool)
        correct = (pred_yes & self.label) | (pred_no & ~self.label)
        return dataclasses.replace(
            self, pred_yes=pred_yes, pred_no=pred_no, correct=correct, parser=parser
        )


def _codes(keys: Sequence[Hashable]) -> tuple[np.ndarray, int]:
    table: dict[Hashable, int] = {}
    codes = np.fromiter((table.setdefault(k, len(table)) for k in keys), np.int64, len(keys))
    return codes, len(table)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else NAN


def _all_right(correct: np.ndarray, keys: Sequence[Hashable], mask: np.ndarray | None = None):
    """Share of groups (by key) whose every item is right, and the number of groups."""
    if mask is not None:
        correct = correct[mask]
        keys = [k for k, m in zip(keys, mask) if m]
    if len(keys) == 0:
        return NAN, 0
    codes, n = _codes(keys)
    wrong = np.bincount(codes, weights=(~correct).astype(np.float64), minlength=n)
    return float(np.mean(wrong == 0)), n


def _mixed(label: np.ndarray, keys: Sequence[Hashable]) -> np.ndarray:
    """Per item: does its group hold both a yes and a no item?"""
    codes, n = _codes(keys)
    yes = np.bincount(codes, weights=label.astype(np.float64), minlength=n)
    tot = np.bincount(codes, minlength=n)
    return ((yes > 0) & (yes < tot))[codes]


def _binary(ev: _Eval, mask: np.ndarray | None = None) -> dict[str, float]:
    m = np.ones(len(ev.items), bool) if mask is None else mask
    lab, yes, no = ev.label[m], ev.pred_yes[m], ev.pred_no[m]
    tp, fp = int(np.sum(yes & lab)), int(np.sum(yes & ~lab))
    tn = int(np.sum(no & ~lab))
    fn = int(np.sum(lab)) - tp
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, int(np.sum(lab)))
    if math.isnan(precision) or math.isnan(recall):
        f1 = NAN
    else:
        f1 = _ratio(2 * precision * recall, precision + recall) if precision + recall else 0.0
    return {
        "accuracy": _ratio(tp + tn, len(lab)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": _ratio(int(np.sum(yes)), len(lab)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


# ------------------------------------------------------------------- official metrics


def _mme(ev: _Eval) -> dict[str, Any]:
    official = {c.lower(): c for c in MME_PERCEPTION + MME_COGNITION}
    cats = [official.get(str(c).lower(), str(c)) for c in ev.meta("category")]
    units = [it.unit_id for it in ev.items]
    per_cat: dict[str, dict[str, float]] = {}
    for cat in dict.fromkeys(cats):
        mask = np.array([c == cat for c in cats])
        acc = float(np.mean(ev.correct[mask]))
        acc_plus, n_images = _all_right(ev.correct, units, mask & ev.complete)
        per_cat[cat] = {
            "acc": acc,
            "acc_plus": acc_plus,
            "score": 100 * acc + 100 * acc_plus,
            "n_items": int(mask.sum()),
            "n_images": n_images,
        }
    perception = [per_cat[c]["score"] for c in MME_PERCEPTION if c in per_cat]
    cognition = [per_cat[c]["score"] for c in MME_COGNITION if c in per_cat]
    acc_plus, _ = _all_right(ev.correct, units, ev.complete)
    return {
        "perception": float(sum(perception)),
        "cognition": float(sum(cognition)),
        "total": float(sum(perception) + sum(cognition)),
        "n_perception": len(perception),
        "n_cognition": len(cognition),
        "acc": float(np.mean(ev.correct)),
        "acc_plus": acc_plus,
        "categories": per_cat,
    }


def _pope(ev: _Eval) -> dict[str, Any]:
    out: dict[str, Any] = _binary(ev)
    cats = ev.meta("category")
    out["categories"] = {
        str(c): _binary(ev, np.array([x == c for x in cats])) for c in dict.fromkeys(cats)
    }
    return out


def _hallusion_core(
    ev: _Eval, mask: np.ndarray, correct: np.ndarray, figure_ok: np.ndarray
) -> dict[str, float]:
    qkeys, fkeys = ev.meta("question_key"), ev.meta("figure_key")
    q_acc, n_q = _all_right(correct, qkeys, mask & ev.complete)
    f_acc, n_f = _all_right(correct, fkeys, mask & figure_ok)
    # The official script never sees the answer, only its correctness: a right answer
    # is taken to be the label, a wrong one its opposite.
    said_yes = correct == ev.label
    wrong = mask & ~correct
    return {
        "aAcc": float(np.mean(correct[mask])) if mask.any() else NAN,
        "fAcc": f_acc,
        "qAcc": q_acc,
        "pct_diff": float(np.mean(said_yes[mask]) - np.mean(ev.label[mask])) if mask.any() else NAN,
        "fp_ratio": _ratio(int(np.sum(wrong & said_yes)), int(np.sum(wrong))),
        "n_questions": int(mask.sum()),
        "n_question_groups": n_q,
        "n_figures": n_f,
    }


def _hallusionbench(ev: _Eval) -> dict[str, Any]:
    cats = ev.meta("category")
    no_image_vs = np.array(
        [c == "VS" and str(f) == "0" for c, f in zip(cats, ev.meta("figure_id"))], dtype=bool
    )
    other = ~(ev.pred_yes | ev.pred_no)
    # HallusionBench: not knowing the answer without the figure is not a mistake.
    correct = ev.correct | (other & no_image_vs)
    fkeys = ev.meta("figure_key")
    broken = incomplete_figures(ev.items)
    figure_ok = np.array([k is not None and k not in broken for k in fkeys], dtype=bool)
    everything = np.ones(len(ev.items), bool)
    out: dict[str, Any] = _hallusion_core(ev, everything, correct, figure_ok)
    qkeys = ev.meta("question_key")
    q_mixed = _mixed(ev.label, qkeys) & ev.complete
    f_mixed = _mixed(ev.label, fkeys) & figure_ok
    out["qAcc_mixed"], out["n_mixed_question_groups"] = _all_right(correct, qkeys, q_mixed)
    out["fAcc_mixed"], out["n_mixed_figures"] = _all_right(correct, fkeys, f_mixed)
    out["incomplete_figures"] = {"count": len(broken), "ids": list(broken), "reasons": broken}
    out["categories"] = {
        str(c): _hallusion_core(ev, np.array([x == c for x in cats]), correct, figure_ok)
        for c in dict.fromkeys(cats)
    }
    out["notes"] = (
        "As HallusionBench's evaluation: an 'other' answer to a no-image VS question "
        "counts as right, and pct_diff / fp_ratio infer each answer from its "
        "correctness; the answers' own yes rate is the generic yes_rate."
    )
    return out


def _naturalbench(ev: _Eval) -> dict[str, Any]:
    units = [it.unit_id for it in ev.items]
    qs = [(u, q) for u, q in zip(units, ev.meta("question_index"))]
    ims = [(u, i) for u, i in zip(units, ev.meta("image_index"))]
    return {
        "Acc": float(np.mean(ev.correct)),
        "Q_Acc": _all_right(ev.correct, qs, ev.complete)[0],
        "I_Acc": _all_right(ev.correct, ims, ev.complete)[0],
        "G_Acc": _all_right(ev.correct, units, ev.complete)[0],
    }


def _winoground(ev: _Eval) -> dict[str, Any]:
    # Complete units hold each (image, caption) cell once (`units.incomplete_units`).
    units: dict[str, dict[tuple[int, int], int]] = {}
    for row in np.flatnonzero(ev.complete):
        it = ev.items[row]
        cell = (int(it.meta["image_index"]), int(it.meta["caption_index"]))
        units.setdefault(it.unit_id, {})[cell] = int(row)
    strict, _ = _all_right(ev.correct, [it.unit_id for it in ev.items], ev.complete)
    out: dict[str, Any] = {
        "strict_text": strict,
        "strict_image": strict,
        "strict_group": strict,
        "n_examples": len(units),
    }
    if ev.score is not None:
        out["from_scores"] = ["text", "image", "group"]
        if units:
            s = np.array(
                [[ev.score[c[(i, j)]] for i in (0, 1) for j in (0, 1)] for c in units.values()]
            )
            s00, s01, s10, s11 = s.T  # s_ij = score(image i, caption j)
            text = (s00 > s01) & (s11 > s10)
            image = (s00 > s10) & (s11 > s01)
            out.update(
                text=float(np.mean(text)),
                image=float(np.mean(image)),
                group=float(np.mean(text & image)),
            )
        else:
            out.update(text=NAN, image=NAN, group=NAN)
    return out


def _sugarcrepe(ev: _Eval) -> dict[str, Any]:
    subsets = ev.meta("subset")
    units = [it.unit_id for it in ev.items]
    per: dict[str, dict[str, float]] = {}
    for sub in dict.fromkeys(subsets):
        mask = np.array([s == sub for s in subsets])
        acc, n = _all_right(ev.correct, units, mask & ev.complete)
        per[str(sub)] = {
            "accuracy": acc,
            "item_accuracy": float(np.mean(ev.correct[mask])),
            "n_pairs": n,
        }
        if ev.score is not None:
            pos: dict[str, float] = {}
            neg: dict[str, float] = {}
            for row in np.flatnonzero(mask & ev.complete):
                (pos if ev.label[row] else neg)[units[row]] = float(ev.score[row])
            preferred = [pos[u] > neg[u] for u in pos]
            per[str(sub)]["positive_preferred"] = float(np.mean(preferred)) if pos else NAN
    out: dict[str, Any] = {"accuracy": _finite_mean([v["accuracy"] for v in per.values()])}
    if ev.score is not None:
        out["positive_preferred"] = _finite_mean([v["positive_preferred"] for v in per.values()])
        out["from_scores"] = ["positive_preferred"]
    out["subsets"] = per
    return out


def _finite_mean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else NAN


def _beaf(ev: _Eval) -> dict[str, Any]:
    out: dict[str, Any] = _binary(ev)
    # Complete units hold exactly one original-image item (`units.incomplete_units`).
    orig_row: dict[str, int] = {}
    for row, it in enumerate(ev.items):
        if it.meta["orig_img"] and ev.complete[row]:
            orig_row[it.unit_id] = row
    cells = {"TU": 0, "IG": 0, "SB+": 0, "SB-": 0}
    n_removed = n_id = n_flip = 0
    for row, it in enumerate(ev.items):
        if it.meta["orig_img"] or not ev.complete[row]:
            continue
        o = orig_row[it.unit_id]
        if it.meta["removed_q"]:
            # Only the edit that removed the object turns a yes into a no; the other
            # removed-object questions on this edit keep their yes and form no cell.
            if not (ev.label[o] and not ev.label[row]):
                continue
            n_removed += 1
            before = "TP" if ev.pred_yes[o] else "FN" if ev.pred_no[o] else None
            after = "TN" if ev.pred_no[row] else "FP" if ev.pred_yes[row] else None
            cell = {
                ("TP", "TN"): "TU",
                ("FN", "FP"): "IG",
                ("TP", "FP"): "SB+",
                ("FN", "TN"): "SB-",
            }.get((before, after))
            if cell is not None:
                cells[cell] += 1
        else:
            n_id += 1
            n_flip += int(ev.correct[o] != ev.correct[row])
    for name, count in cells.items():
        out[name] = _ratio(count, n_removed)
    out["ID"] = _ratio(n_flip, n_id)
    tu, keep = out["TU"], 1 - out["ID"]
    out["F1_TU_ID"] = _ratio(2 * tu * keep, tu + keep) if tu + keep else 0.0
    out.update(n_removed_pairs=n_removed, n_id_pairs=n_id)
    return out


def _synthetic(ev: _Eval) -> dict[str, Any]:
    types = ev.meta("unit_type")
    units = [it.unit_id for it in ev.items]
    out = {}
    for t in dict.fromkeys(types):
        mask = np.array([x == t for x in types])
        out[str(t)] = {
            "accuracy": float(np.mean(ev.correct[mask])),
            "paired_accuracy": _all_right(ev.correct, units, mask & ev.complete)[0],
            "yes_rate": float(np.mean(ev.pred_yes[mask])),
        }
    return {"unit_types": out}


OFFICIAL: dict[str, Callable[[_Eval], dict[str, Any]]] = {
    "mme": _mme,
    "pope": _pope,
    "hallusionbench": _hallusionbench,
    "naturalbench": _naturalbench,
    "winoground": _winoground,
    "sugarcrepe": _sugarcrepe,
    "beaf": _beaf,
    "synthetic": _synthetic,
}


# -------------------------------------------------------------------------- bootstrap


def _resample_counts(rng: np.random.Generator, n_boot: int, n_units: int) -> np.ndarray:
    """How often each unit is drawn in each of `n_boot` resamples, shape (n_boot, n_units)."""
    idx = rng.integers(0, n_units, size=(n_boot, n_units))
    flat = idx + (np.arange(n_boot) * n_units)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n_units).reshape(n_boot, n_units)


def bootstrap_unit_sums(
    per_unit: np.ndarray, n_boot: int = 1000, seed: int = 0, max_cells: int = 4_000_000
) -> np.ndarray:
    """Column sums of `per_unit` (units x k) over `n_boot` resamples of units.

    Resampling n units with replacement = multiplying by a matrix of draw counts,
    so every statistic that is a ratio of per-unit sums costs one matmul. Resamples
    are drawn in chunks of at most `max_cells` counts to bound memory; the chunking
    depends only on the sizes, so results are a function of `seed`.
    """
    per_unit = np.asarray(per_unit, dtype=np.float64)
    if per_unit.ndim == 1:
        per_unit = per_unit[:, None]
    n_units = per_unit.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, max_cells // max(n_units, 1))
    out = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        out.append(_resample_counts(rng, b, n_units) @ per_unit)
    return np.concatenate(out) if out else np.zeros((0, per_unit.shape[1]))


def bootstrap_ratio_ci(
    numerator: np.ndarray,
    denominator: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of sum(numerator) / sum(denominator) over unit resamples.

    `numerator[u]`, `denominator[u]` are the per-unit totals (e.g. correct items
    and items of unit u).
    """
    sums = bootstrap_unit_sums(np.stack([numerator, denominator], 1), n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = sums[:, 0] / sums[:, 1]
    return percentile_interval(values, level)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap `values`, over their finite
    entries (a resample whose statistic is undefined is left out); NaNs if none is finite."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return NAN, NAN
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


# ------------------------------------------------------------------------ entry point


def _raw_answers(items: Sequence[YesNoItem], predictions: Sequence[Any]) -> list[str | None]:
    out: list[str | None] = []
    for it, p in zip(items, predictions):
        if isinstance(p, (bool, np.bool_)):
            out.append("yes" if p else "no")
        elif p is None or isinstance(p, str):
            out.append(p)
        else:
            raise TypeError(
                f"prediction for item_id {it.item_id!r} is a {type(p).__name__}; expected "
                "generated text, 'yes' / 'no' / 'other', or a bool"
            )
    return out


def _prepare(
    key: str,
    items: Sequence[YesNoItem],
    predictions: Mapping[str, Any] | Sequence[Any],
    scores: Mapping[str, float] | Sequence[float] | None,
) -> tuple[_Eval, list[str | None], dict[str, str]]:
    """The first-word reading of the answers, the raw answers, and the incomplete units."""
    items = list(items)
    if not items:
        raise ValueError("no items to evaluate")
    seen: set[str] = set()
    for it in items:
        if it.item_id in seen:
            raise ValueError(f"item_id {it.item_id!r} appears twice among the items")
        seen.add(it.item_id)

    def aligned(values: Mapping[str, Any] | Sequence[Any], what: str) -> list[Any]:
        if isinstance(values, Mapping):
            missing = [it.item_id for it in items if it.item_id not in values]
            if missing:
                raise ValueError(
                    f"{len(missing)} items have no {what}, e.g. item_id {missing[0]!r}"
                )
            return [values[it.item_id] for it in items]
        values = list(values)
        if len(values) != len(items):
            raise ValueError(f"{len(values)} {what} for {len(items)} items")
        return values

    raw = _raw_answers(items, aligned(predictions, "prediction"))
    label = np.array([bool(it.label) for it in items])
    score = None
    if scores is not None:
        score = np.asarray(aligned(scores, "score"), dtype=np.float64)
        if np.isnan(score).any():
            raise ValueError("scores contain NaN")
    unit, n_units = _codes([it.unit_id for it in items])
    broken = incomplete_units(key, items)
    complete = np.array([it.unit_id not in broken for it in items], dtype=bool)
    base = _Eval(
        items=items,
        label=label,
        pred_yes=np.zeros(len(items), bool),
        pred_no=np.zeros(len(items), bool),
        correct=np.zeros(len(items), bool),
        score=score,
        unit=unit,
        n_units=n_units,
        complete=complete,
        parser=OUR_PARSER,
    )
    return base.reread([parse_yes_no(a) for a in raw], OUR_PARSER), raw, broken


def _score_paired(ev: _Eval, unit_complete: np.ndarray) -> float:
    """Share of complete units with both labels where min score(yes) > max score(no)."""
    assert ev.score is not None
    lo = np.full(ev.n_units, np.inf)
    hi = np.full(ev.n_units, -np.inf)
    np.minimum.at(lo, ev.unit[ev.label], ev.score[ev.label])
    np.maximum.at(hi, ev.unit[~ev.label], ev.score[~ev.label])
    both = np.isfinite(lo) & np.isfinite(hi) & unit_complete
    return float(np.mean(lo[both] > hi[both])) if both.any() else NAN


def _warn_incomplete(key: str, broken: Mapping[str, str], n_units: int) -> None:
    shown = "; ".join(f"{uid!r} {why}" for uid, why in list(broken.items())[:3])
    more = f"; and {len(broken) - 3} more" if len(broken) > 3 else ""
    warnings.warn(
        IncompleteUnitsWarning(
            f"{key}: {len(broken)} of {n_units} pairing units are incomplete and left out "
            f"of the paired metrics (the official evaluation refuses them): {shown}{more}. "
            "The result's incomplete_units lists them all."
        ),
        stacklevel=3,
    )


def evaluate(
    benchmark_name: str,
    items: Sequence[YesNoItem],
    predictions: Mapping[str, Any] | Sequence[Any],
    scores: Mapping[str, float] | Sequence[float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of one benchmark run (see the module docstring for the keys).

    Args:
        benchmark_name: "mme", "pope", "hallusionbench", "naturalbench",
            "winoground", "sugarcrepe", "beaf" or "synthetic" (case and
            punctuation ignored).
        items: the evaluated items (a whole benchmark or a subset of whole units;
            units that lack items are reported and left out of paired metrics,
            with an `IncompleteUnitsWarning`).
        predictions: item_id -> generated text / "yes" / "no" / "other" / bool,
            or a sequence aligned with `items`. Pass the generated text: the
            benchmark parsers read it their own way.
        scores: optional item_id -> score (higher = more yes), or aligned sequence.
        n_boot: bootstrap resamples for the `ci` intervals (0: no intervals).
        seed: bootstrap seed.
    """
    key = canonical_name(benchmark_name)
    if key not in OFFICIAL:
        raise KeyError(f"unknown benchmark {benchmark_name!r}; known: {sorted(OFFICIAL)}")
    ev, raw, broken = _prepare(key, items, predictions, scores)
    if broken:
        _warn_incomplete(key, broken, ev.n_units)
    n = len(ev.items)
    other = ~(ev.pred_yes | ev.pred_no)

    per_unit = np.stack(
        [
            np.bincount(ev.unit, weights=col.astype(np.float64), minlength=ev.n_units)
            for col in (np.ones(n), ev.pred_yes, ev.label, other, ev.correct)
        ],
        1,
    )
    unit_complete = np.zeros(ev.n_units, bool)
    unit_complete[ev.unit[ev.complete]] = True
    all_right = ((per_unit[:, 4] == per_unit[:, 0]) & unit_complete).astype(np.float64)
    result: dict[str, Any] = {
        "benchmark": key,
        "parser": OUR_PARSER,
        "n_items": n,
        "n_units": ev.n_units,
        "n_complete_units": int(unit_complete.sum()),
        "yes_rate": float(ev.pred_yes.mean()),
        "gt_yes_rate": float(ev.label.mean()),
        "other_rate": float(other.mean()),
        "accuracy": float(ev.correct.mean()),
        "paired_accuracy": _ratio(all_right.sum(), unit_complete.sum()),
    }
    if ev.score is not None:
        result["score_paired_accuracy"] = _score_paired(ev, unit_complete)

    if n_boot > 0:
        table = np.column_stack([per_unit, all_right, unit_complete.astype(np.float64)])
        sums = bootstrap_unit_sums(table, n_boot, seed)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = {
                "yes_rate": sums[:, 1] / sums[:, 0],
                "gt_yes_rate": sums[:, 2] / sums[:, 0],
                "other_rate": sums[:, 3] / sums[:, 0],
                "accuracy": sums[:, 4] / sums[:, 0],
                "paired_accuracy": sums[:, 5] / sums[:, 6],
            }
        result["ci"] = {name: percentile_interval(v, 0.95) for name, v in boot.items()}
    result["incomplete_units"] = {
        "count": len(broken),
        "ids": list(broken),
        "reasons": dict(broken),
    }
    result["official"] = {"parser": OUR_PARSER, **OFFICIAL[key](ev)}
    if key in BENCHMARK_PARSER:
        name = BENCHMARK_PARSER[key]
        theirs = ev.reread([ANSWER_PARSERS[name](a) for a in raw], name)
        result["official_benchmark_parser"] = {"parser": name, **OFFICIAL[key](theirs)}
    return result


def to_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per number of an `evaluate` result, for a table or a DataFrame.

    Rows are `{"benchmark", "metric", "value", "ci_low", "ci_high"}`; nested official
    metrics get dotted names ("official.categories.OCR.score"); the intervals are
    NaN where none was computed.
    """
    bench = result.get("benchmark")
    ci = result.get("ci", {})
    rows: list[dict[str, Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, bool
        ):
            lo, hi = ci.get(prefix, (NAN, NAN))
            rows.append(
                {
                    "benchmark": bench,
                    "metric": prefix,
                    "value": float(value),
                    "ci_low": lo,
                    "ci_high": hi,
                }
            )

    walk("", {k: v for k, v in result.items() if k not in ("benchmark", "ci")})
    return rows


__all__ = [
    "OFFICIAL",
    "OUR_PARSER",
    "IncompleteUnitsWarning",
    "bootstrap_ratio_ci",
    "bootstrap_unit_sums",
    "evaluate",
    "percentile_interval",
    "to_rows",
]
