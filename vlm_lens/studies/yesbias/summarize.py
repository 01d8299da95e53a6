"""The yes-bias sweep's numbers: the benchmark's official metrics per condition, the delta
table against the baseline with paired bootstrap intervals, and the per-layer attention
shares; `analyze` writes them beside a run (table.csv, table.json, metrics.json).

Δ paired accuracy, Δ accuracy, Δ yes-rate and Δ mean score come with paired bootstrap 95%
intervals: pairing units are resampled jointly for the condition and the baseline, and the
difference is taken within each resample.

Not for: making records (`vlm_lens.studies.yesbias.measure`), figures and pages
(`vlm_lens.reports.yesbias`) or the metrics' definitions (`vlm_lens.metrics.yesno`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlm_lens.data.yesno.items import YesNoItem
from vlm_lens.metrics.yesno import bootstrap_unit_sums, evaluate, percentile_interval
from vlm_lens.studies import runlog
from vlm_lens.studies.checks import EmptyMeasurementError, require_finite
from vlm_lens.studies.yesbias.conditions import Condition
from vlm_lens.studies.yesbias.records import load_items, load_records
from vlm_lens.studies.yesbias_options import RUN

__all__ = [
    "TABLE_COLUMNS",
    "analyze",
    "condition_metrics",
    "delta_table",
    "layer_shares",
    "paired_delta",
]


def _by_condition(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Mapping]]:
    out: dict[str, dict[str, Mapping]] = {}
    for r in records:
        out.setdefault(r["condition"], {})[r["item_id"]] = r
    return out


def condition_metrics(
    items: Sequence[YesNoItem],
    records: Iterable[Mapping[str, Any]],
    *,
    benchmark: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """`evaluate(...)` per condition, over the items that condition has records for."""
    benchmark = benchmark or items[0].benchmark
    out = {}
    for cond, rows in _by_condition(records).items():
        done = [it for it in items if it.item_id in rows]
        if not done:
            continue
        out[cond] = evaluate(
            benchmark,
            done,
            {i: r["text"] for i, r in rows.items()},
            scores={i: r["score"] for i, r in rows.items()},
            n_boot=n_boot,
            seed=seed,
        )
    return out


def paired_delta(
    unit: Sequence[Any],
    baseline: Mapping[str, np.ndarray],
    condition: Mapping[str, np.ndarray],
    *,
    label: Sequence[bool] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Differences condition - baseline with a paired bootstrap over pairing units.

    `unit[i]` is item i's pairing unit; `baseline` / `condition` map "correct", "yes"
    (bool per item) and "score" (float per item) for the same items. Paired accuracy is
    the share of units whose every item is right. Each resample draws units with
    replacement once and evaluates both arms on it, so the interval is that of the
    difference, not of two independent estimates. Returns `d_<metric>`, `d_<metric>_lo`,
    `d_<metric>_hi` for paired_accuracy, accuracy, yes_rate and mean_score; with the
    items' `label` also for score_paired_accuracy (share of units holding both labels
    whose every yes item scores above every no item: the answer-free reading).
    """
    codes: dict[Any, int] = {}
    u = np.array([codes.setdefault(x, len(codes)) for x in unit], dtype=np.int64)
    cols = _unit_sums(u, len(codes), baseline, condition, label)
    names = list(cols)
    table = np.column_stack([cols[n] for n in names])  # [unit, column]
    col = {n: i for i, n in enumerate(names)}
    point = _deltas(table.sum(0), col)
    boot = _deltas(bootstrap_unit_sums(table, n_boot, seed), col) if n_boot > 0 else {}
    out: dict[str, float] = {}
    for name, value in point.items():
        lo, hi = percentile_interval(boot[name]) if boot else (math.nan, math.nan)
        out[f"d_{name}"] = float(value)
        out[f"d_{name}_lo"] = lo
        out[f"d_{name}_hi"] = hi
    return out


def _unit_sums(
    u: np.ndarray,
    n_units: int,
    baseline: Mapping[str, np.ndarray],
    condition: Mapping[str, np.ndarray],
    label: Sequence[bool] | None,
) -> dict[str, np.ndarray]:
    """Per pairing unit (`u[i]` is item i's unit), the sums every delta is a ratio of: items,
    units, correct / all-correct / yes / score per arm ("b", "c") and, with `label`, the
    units holding both labels ("mixed") and those whose yes items all outscore its no items."""

    def per_unit(values: np.ndarray) -> np.ndarray:
        return np.bincount(u, weights=np.asarray(values, dtype=np.float64), minlength=n_units)

    n_items = per_unit(np.ones(len(u)))
    cols = {"items": n_items, "units": np.ones(n_units)}
    for arm, data in (("b", baseline), ("c", condition)):
        correct = per_unit(data["correct"])
        cols[f"correct_{arm}"] = correct
        cols[f"all_{arm}"] = (correct == n_items).astype(np.float64)
        cols[f"yes_{arm}"] = per_unit(data["yes"])
        cols[f"score_{arm}"] = per_unit(data["score"])
    if label is not None:
        lab = np.asarray(label, dtype=bool)
        mixed = (per_unit(lab) > 0) & (per_unit(~lab) > 0)
        cols["mixed"] = mixed.astype(np.float64)
        for arm, data in (("b", baseline), ("c", condition)):
            score = np.asarray(data["score"], dtype=np.float64)
            lo = np.full(n_units, np.inf)
            hi = np.full(n_units, -np.inf)
            np.minimum.at(lo, u[lab], score[lab])
            np.maximum.at(hi, u[~lab], score[~lab])
            cols[f"ranked_{arm}"] = (mixed & (lo > hi)).astype(np.float64)
    return cols


def _deltas(sums: np.ndarray, col: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Condition - baseline of each metric from column sums (`[..., column]`: the total, or
    one row per bootstrap resample)."""
    s = {n: sums[..., i] for n, i in col.items()}
    out = {
        "paired_accuracy": (s["all_c"] - s["all_b"]) / s["units"],
        "accuracy": (s["correct_c"] - s["correct_b"]) / s["items"],
        "yes_rate": (s["yes_c"] - s["yes_b"]) / s["items"],
        "mean_score": (s["score_c"] - s["score_b"]) / s["items"],
    }
    if "mixed" in s:
        with np.errstate(invalid="ignore", divide="ignore"):
            out["score_paired_accuracy"] = (s["ranked_c"] - s["ranked_b"]) / s["mixed"]
    return out


def _arm(rows: Mapping[str, Mapping], items: Sequence[YesNoItem]) -> dict[str, np.ndarray]:
    answers = [rows[it.item_id]["answer"] for it in items]
    labels = np.array([it.label for it in items])
    yes = np.array([a == "yes" for a in answers])
    no = np.array([a == "no" for a in answers])
    return {
        "correct": (yes & labels) | (no & ~labels),
        "yes": yes,
        "score": np.array([rows[it.item_id]["score"] for it in items], dtype=np.float64),
    }


TABLE_COLUMNS = (
    "benchmark",
    "model",
    "condition",
    "kind",
    "target",
    "source",
    "recipients",
    "layers",
    "fraction",
    "alpha",
    "n_items",
    "n_units",
    "paired_accuracy",
    "accuracy",
    "yes_rate",
    "other_rate",
    "mean_score",
    "baseline_paired_accuracy",
    "baseline_yes_rate",
    "d_paired_accuracy",
    "d_paired_accuracy_lo",
    "d_paired_accuracy_hi",
    "d_accuracy",
    "d_accuracy_lo",
    "d_accuracy_hi",
    "d_yes_rate",
    "d_yes_rate_lo",
    "d_yes_rate_hi",
    "d_mean_score",
    "d_mean_score_lo",
    "d_mean_score_hi",
    "d_score_paired_accuracy",
    "d_score_paired_accuracy_lo",
    "d_score_paired_accuracy_hi",
)


def delta_table(
    items: Sequence[YesNoItem],
    records: Iterable[Mapping[str, Any]],
    *,
    baseline: str = "baseline",
    model: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One tidy row per condition (baseline included, with zero deltas): its rates and its
    paired-bootstrap differences to the baseline over the items both have records for.

    Columns: `TABLE_COLUMNS`. Rates are fractions; "other" answers count as wrong.
    """
    by_cond = _by_condition(records)
    if baseline not in by_cond:
        raise ValueError(f"no records of the baseline condition {baseline!r}")
    base_rows = by_cond[baseline]
    order = sorted(by_cond, key=lambda c: (c != baseline,))  # baseline first, else as logged
    out = []
    for cond_id in order:
        rows = by_cond[cond_id]
        common = [it for it in items if it.item_id in rows and it.item_id in base_rows]
        if not common:
            continue
        cond = Condition.parse(cond_id)
        b, c = _arm(base_rows, common), _arm(rows, common)
        unit = [it.unit_id for it in common]
        labels = [it.label for it in common]
        delta = paired_delta(unit, b, c, label=labels, n_boot=n_boot, seed=seed)
        answers = [rows[it.item_id]["answer"] for it in common]
        out.append(
            {
                "benchmark": common[0].benchmark,
                "model": model,
                "condition": cond_id,
                "kind": cond.kind,
                "target": cond.target,
                "source": cond.source,
                "recipients": "+".join(cond.recipients) or None,
                "layers": cond.layers,
                "fraction": cond.fraction,
                "alpha": cond.alpha,
                "n_items": len(common),
                "n_units": len(dict.fromkeys(unit)),
                "paired_accuracy": _all_right(unit, c["correct"]),
                "accuracy": float(np.mean(c["correct"])),
                "yes_rate": float(np.mean(c["yes"])),
                "other_rate": float(np.mean([a == "other" for a in answers])),
                "mean_score": float(np.mean(c["score"])),
                "baseline_paired_accuracy": _all_right(unit, b["correct"]),
                "baseline_yes_rate": float(np.mean(b["yes"])),
                **delta,
            }
        )
    return out


def _all_right(unit: Sequence[Any], correct: Sequence[bool]) -> float:
    """Paired accuracy: the share of pairing units whose every item is right."""
    unit_all = {x: True for x in dict.fromkeys(unit)}
    for x, ok in zip(unit, correct):
        unit_all[x] &= bool(ok)
    return float(np.mean(list(unit_all.values())))


def _write_table(rows: Sequence[Mapping[str, Any]], stem: Path) -> dict[str, Path]:
    """The delta table as `<stem>.csv` (`TABLE_COLUMNS`, then any other keys) and `<stem>.json`."""
    columns = list(TABLE_COLUMNS) + [k for r in rows for k in r if k not in TABLE_COLUMNS]
    paths = {"table_csv": stem.with_suffix(".csv"), "table_json": stem.with_suffix(".json")}
    runlog.write_csv(paths["table_csv"], rows, list(dict.fromkeys(columns)))
    runlog.write_json_atomic(paths["table_json"], list(rows))
    return paths


def layer_shares(
    records: Iterable[Mapping[str, Any]], condition: str = "baseline"
) -> np.ndarray | None:
    """Mean attention share of the answer row per layer, `[layer, 4]` over
    (system, image, text, generated), averaged over heads and items; None if not recorded.
    Shares recorded but all NaN raise `EmptyMeasurementError`."""
    stacks = [r["shares"] for r in records if r["condition"] == condition and r.get("shares")]
    if not stacks:
        return None
    require_finite(stacks, f"attention shares of {condition!r}", "nothing was measured")
    return np.asarray(stacks, dtype=np.float64).mean(0)


# -------------------------------------------------------------------------------- analysis


def analyze(
    run_dir: str | Path,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics, the delta table (table.csv / table.json) and metrics.json of a run.

    Shard logs not merged yet are read too (use `merge` to fold them). Returns
    `{"items", "records", "metrics", "table", "shares", "paths"}`. A run without records
    raises `EmptyMeasurementError` and writes nothing.
    """
    run_dir = Path(run_dir)
    with runlog.run_lock(run_dir):
        return _analyze(run_dir, n_boot, seed)


def _analyze(run_dir: Path, n_boot: int, seed: int) -> dict[str, Any]:
    settings = json.loads((run_dir / RUN).read_text(encoding="utf-8"))
    items = load_items(run_dir)
    records = load_records(run_dir)
    if not records:
        raise EmptyMeasurementError(f"{run_dir}: no records to analyse (the sweep wrote none)")
    metrics = condition_metrics(items, records, n_boot=n_boot, seed=seed)
    try:
        table = delta_table(items, records, model=settings.get("model"), n_boot=n_boot, seed=seed)
    except ValueError:  # no baseline records (yet): metrics per condition only
        table = []
    shares = layer_shares(records)
    paths = _write_table(table, run_dir / "table")
    paths["metrics"] = run_dir / "metrics.json"
    runlog.write_json_atomic(paths["metrics"], metrics)
    result = {
        "settings": settings,
        "items": items,
        "records": records,
        "metrics": metrics,
        "table": table,
        "shares": shares,
        "paths": paths,
    }
    return result
