"""The counting study's summary per (model, condition): accuracy, MBE and MAE, the metrics
per layer and digit step, the sparsity drop and entropy rise tests, the re-grounded answers.

Not for: the flat tables written from the summaries (`vlm_lens.studies.counting.tables`)
or the statistics themselves (`vlm_lens.studies.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlm_lens.studies.checks import STEP_TRACKING_HINT, EmptyMeasurementError, require_finite
from vlm_lens.studies.counting.claims import claims_summary
from vlm_lens.studies.counting.config import CONTROL_CONDITION
from vlm_lens.studies.stats import wilcoxon_signed_rank

__all__ = ["STEP_METRICS", "summarize"]


def _mean(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def _std(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.std(v, ddof=1)) if len(v) > 1 else None


STEP_METRICS = (
    "gini",
    "textbook_gini",
    "entropy",
    "image_mass",
    "centre",
    "hull_band",
    "background",
    "centroid_hit_rate",
)


def _answer_stats(pairs: list[tuple[int, int | None]]) -> dict[str, Any]:
    n = len(pairs)
    errors = [p - c for c, p in pairs if p is not None]
    return {
        "n": n,
        "n_parsed": len(errors),
        "accuracy": sum(p == c for c, p in pairs) / n if n else None,
        "mbe": _mean(errors),
        "mae": _mean([abs(e) for e in errors]),
    }


def _paired(rows: list[dict], layer: int, metric: str) -> tuple[list[float], list[float]]:
    first, second = [], []
    for row in rows:
        by_digit = {e["digit"]: e.get(metric) for e in row["attention"] if e["layer"] == layer}
        a, b = by_digit.get(0), by_digit.get(1)
        if a is not None and b is not None:
            first.append(a)
            second.append(b)
    return first, second


def _require_attention(group: Sequence[dict], where: str) -> None:
    """Raise `EmptyMeasurementError` if a (model, condition) has no attention metric at all."""
    entries = [e for r in group for e in r["attention"]]
    if not entries:
        if not any(r["digit_steps"] for r in group):
            raise EmptyMeasurementError(
                f"{where}: none of the {len(group)} answers held a number, so no digit step "
                "had attention to measure (an untrained model needs digits_only, "
                "`--digits-only`)"
            )
        raise EmptyMeasurementError(
            f"{where}: the answers held digits but no attention was recorded at their steps; "
            f"{STEP_TRACKING_HINT}"
        )
    require_finite(
        [[e.get(m) for m in STEP_METRICS] for e in entries],
        f"{where}: every attention metric of {len(entries)} (digit step, layer) entries",
        "the recorded image maps held no number",
    )


def summarize(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """One summary per (model, condition): accuracy, MBE, MAE, per-step metrics, drop tests.

    `steps`: per layer and digit step, mean and std of every metric. `sparsity_drop`:
    per layer, Gini of the 1st minus the 2nd digit on the samples that have both, with a
    two-sided Wilcoxon signed-rank test; `entropy_rise` likewise (2nd minus 1st).
    `regrounding`: the re-grounded answers' accuracy, MBE and MAE, and the changes.
    Every condition but the content-free one also gets `controls`, `decay`,
    `regrounding_test`, `claims` and `headline` (`claims.claims_summary`).

    Raises `EmptyMeasurementError` for no rows, or for a (model, condition) whose
    attention metrics are all missing (no digit step, nothing recorded, all-NaN maps).
    """
    if not rows:
        raise EmptyMeasurementError("no samples to summarize")
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row.get("model", ""), row["condition"]), []).append(row)
    out = []
    for (model, condition), group in groups.items():
        _require_attention(group, f"model {model!r}, condition {condition!r}")
        summary: dict[str, Any] = {"model": model, "condition": condition}
        summary.update(_answer_stats([(r["count"], r["prediction"]) for r in group]))
        layers = sorted({e["layer"] for r in group for e in r["attention"]})
        summary["layers"] = layers
        summary["headline_layer"] = group[0]["layers"][0] if group[0]["layers"] else None
        summary["steps"] = [item for layer in layers for item in _step_stats(group, layer)]
        summary["sparsity_drop"] = {}
        summary["entropy_rise"] = {}
        for layer in layers:
            g1, g2 = _paired(group, layer, "gini")
            summary["sparsity_drop"][str(layer)] = wilcoxon_signed_rank(g1, g2).as_dict()
            e1, e2 = _paired(group, layer, "entropy")
            summary["entropy_rise"][str(layer)] = wilcoxon_signed_rank(e2, e1).as_dict()
        summary["area"] = {
            name: _mean([r["area"][name] for r in group])
            for name in ("centre", "hull_band", "background")
        }
        summary["regrounding"] = _regrounding(group)
        if condition != CONTROL_CONDITION:
            layer = str(summary["headline_layer"])
            summary.update(
                claims_summary(
                    group,
                    groups.get((model, CONTROL_CONDITION)),
                    layers,
                    summary["headline_layer"],
                    {
                        "sparsity_drop": summary["sparsity_drop"].get(layer),
                        "entropy_rise": summary["entropy_rise"].get(layer),
                    },
                )
            )
        out.append(summary)
    return out


def _step_stats(group: Sequence[dict], layer: int) -> list[dict[str, Any]]:
    """Mean and std of every metric per digit step of `layer`, over the samples of `group`."""
    digits = sorted({e["digit"] for r in group for e in r["attention"] if e["layer"] == layer})
    stats = []
    for digit in digits:
        entries = [
            e for r in group for e in r["attention"] if e["layer"] == layer and e["digit"] == digit
        ]
        item: dict[str, Any] = {"layer": layer, "digit": digit, "n": len(entries)}
        for metric in STEP_METRICS:
            values = [e.get(metric) for e in entries]
            item[f"{metric}_mean"] = _mean(values)
            item[f"{metric}_std"] = _std(values)
        stats.append(item)
    return stats


def _regrounding(group: Sequence[dict]) -> dict[str, Any] | None:
    """The re-grounded answers against the same samples' baseline answers (None if not run)."""
    regrounded = [r for r in group if r.get("regrounding")]
    if not regrounded:
        return None
    base = _answer_stats([(r["count"], r["prediction"]) for r in regrounded])
    new = _answer_stats([(r["count"], r["regrounding"]["prediction"]) for r in regrounded])
    return {
        "mode": regrounded[0]["regrounding"]["mode"],
        "layers": regrounded[0]["regrounding"]["layers"],
        "n": new["n"],
        "baseline": base,
        "regrounded": new,
        "delta_accuracy": _delta(new["accuracy"], base["accuracy"]),
        "delta_mbe": _delta(new["mbe"], base["mbe"]),
        "delta_mae": _delta(new["mae"], base["mae"]),
        "changed_answers": sum(
            r["regrounding"]["prediction"] != r["prediction"] for r in regrounded
        ),
    }


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b
