"""The counting study's tables: one flat row per sample, per (sample, digit step, layer) and
per (model, condition), and `write_tables`, which writes them with the summaries.

Not for: the summaries themselves (`vlm_lens.studies.counting.summarize`) or the report
(`vlm_lens.reports.counting`, which reads these tables).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlm_lens.studies import harness, runlog
from vlm_lens.studies.checks import EmptyMeasurementError
from vlm_lens.studies.counting.records import load_records
from vlm_lens.studies.counting.summarize import summarize

__all__ = [
    "ATTENTION_COLUMNS",
    "SAMPLE_COLUMNS",
    "SUMMARY_COLUMNS",
    "attention_table",
    "sample_table",
    "summary_table",
    "write_tables",
]

SAMPLE_COLUMNS = (
    "model",
    "condition",
    "index",
    "count",
    "prediction",
    "correct",
    "error",
    "abs_error",
    "text",
    "n_digits",
    "digit_steps",
    "regrounded_prediction",
    "regrounded_correct",
    "regrounded_error",
)
ATTENTION_COLUMNS = (
    "model",
    "condition",
    "index",
    "count",
    "prediction",
    "correct",
    "digit",
    "step",
    "token",
    "layer",
    "image_mass",
    "gini",
    "textbook_gini",
    "entropy",
    "centre",
    "hull_band",
    "background",
    "centroid_hit_rate",
    "area_centre",
    "area_hull_band",
    "area_background",
    "head_image_mass",
    "head_gini",
    "head_entropy",
)
SUMMARY_COLUMNS = (
    "model",
    "condition",
    "n",
    "n_parsed",
    "accuracy",
    "mbe",
    "mae",
    "headline_layer",
    "gini_digit1",
    "gini_digit2",
    "entropy_digit1",
    "entropy_digit2",
    "image_mass_digit1",
    "image_mass_digit2",
    "sparsity_drop",
    "sparsity_drop_statistic",
    "sparsity_drop_p",
    "sparsity_drop_n",
    "entropy_rise",
    "entropy_rise_p",
    "centre_share_digit1",
    "hull_band_share_digit1",
    "background_share_digit1",
    "centroid_hit_rate_digit1",
    "centre_area",
    "hull_band_area",
    "background_area",
    "regrounding",
    "regrounded_accuracy",
    "regrounded_mbe",
    "delta_accuracy",
    "delta_mbe",
)


def sample_table(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """One flat row per sample (answers and, if run, the re-grounded answers)."""
    table = []
    for r in rows:
        reg = r.get("regrounding") or {}
        table.append(
            {
                "model": r.get("model", ""),
                "condition": r["condition"],
                "index": r["index"],
                "count": r["count"],
                "prediction": r["prediction"],
                "correct": r["correct"],
                "error": r["error"],
                "abs_error": None if r["error"] is None else abs(r["error"]),
                "text": r["text"],
                "n_digits": len(r["digit_steps"]),
                "digit_steps": " ".join(map(str, r["digit_steps"])),
                "regrounded_prediction": reg.get("prediction"),
                "regrounded_correct": reg.get("correct"),
                "regrounded_error": reg.get("error"),
            }
        )
    return table


def attention_table(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Tidy long table: one row per (sample, digit step, layer); per-head values `;`-joined."""
    table = []
    for r in rows:
        for e in r["attention"]:
            item = {
                "model": r.get("model", ""),
                "condition": r["condition"],
                "index": r["index"],
                "count": r["count"],
                "prediction": r["prediction"],
                "correct": r["correct"],
            }
            for col in ATTENTION_COLUMNS[len(item) :]:
                if col.startswith("area_"):
                    item[col] = r["area"][col[5:]]
                elif col.startswith("head_"):
                    item[col] = ";".join("" if v is None else f"{v:.6g}" for v in e[col])
                else:
                    item[col] = e.get(col)
            table.append(item)
    return table


def _step(summary: dict, layer: int | None, digit: int, metric: str) -> float | None:
    for s in summary["steps"]:
        if s["layer"] == layer and s["digit"] == digit:
            return s[f"{metric}_mean"]
    return None


_REGIONS = ("centre", "hull_band", "background")


def summary_table(summaries: Sequence[dict]) -> list[dict[str, Any]]:
    """One flat row per (model, condition), metrics at the headline (first chosen) layer."""
    table = []
    for s in summaries:
        layer = s["headline_layer"]
        drop = s["sparsity_drop"].get(str(layer), {})
        rise = s["entropy_rise"].get(str(layer), {})
        reg = s.get("regrounding") or {}
        table.append(
            {
                "model": s["model"],
                "condition": s["condition"],
                "n": s["n"],
                "n_parsed": s["n_parsed"],
                "accuracy": s["accuracy"],
                "mbe": s["mbe"],
                "mae": s["mae"],
                "headline_layer": layer,
                "gini_digit1": _step(s, layer, 0, "gini"),
                "gini_digit2": _step(s, layer, 1, "gini"),
                "entropy_digit1": _step(s, layer, 0, "entropy"),
                "entropy_digit2": _step(s, layer, 1, "entropy"),
                "image_mass_digit1": _step(s, layer, 0, "image_mass"),
                "image_mass_digit2": _step(s, layer, 1, "image_mass"),
                "sparsity_drop": drop.get("mean_diff"),
                "sparsity_drop_statistic": drop.get("statistic"),
                "sparsity_drop_p": drop.get("p_value"),
                "sparsity_drop_n": drop.get("n"),
                "entropy_rise": rise.get("mean_diff"),
                "entropy_rise_p": rise.get("p_value"),
                "centre_share_digit1": _step(s, layer, 0, "centre"),
                "hull_band_share_digit1": _step(s, layer, 0, "hull_band"),
                "background_share_digit1": _step(s, layer, 0, "background"),
                "centroid_hit_rate_digit1": _step(s, layer, 0, "centroid_hit_rate"),
                **{f"{k}_area": (s.get("area") or {}).get(k) for k in _REGIONS},
                "regrounding": reg.get("mode"),
                "regrounded_accuracy": (reg.get("regrounded") or {}).get("accuracy"),
                "regrounded_mbe": (reg.get("regrounded") or {}).get("mbe"),
                "delta_accuracy": reg.get("delta_accuracy"),
                "delta_mbe": reg.get("delta_mbe"),
            }
        )
    return table


def write_tables(out_dir: str | Path) -> dict[str, Any]:
    """Summaries and tables of every model under `out_dir` (the report is written from these).

    Reads each `<out_dir>/<model>/samples.jsonl` (run `merge` first after a sharded run)
    and writes `summary.json`, `summary.csv`, `samples.csv` and `attention.csv`. Returns
    `{"rows", "summaries", "manifests", "notes", "paths"}`. Nothing is written when there
    are no samples or a condition's attention metrics are all missing
    (`EmptyMeasurementError`, see `summarize`). `vlm_lens.reports.counting.write_outputs`
    calls this and then writes the report.
    """
    out_dir = Path(out_dir)
    with harness.holding(out_dir):  # no run or merge of any model meanwhile
        return _write_tables(out_dir)


def _write_tables(out_dir: Path) -> dict[str, Any]:
    rows: list[dict] = []
    incomplete = []
    manifests = []
    for manifest_path in sorted(out_dir.glob(f"*/{harness.MANIFEST}")):
        model_dir = manifest_path.parent
        manifests.append(json.loads(manifest_path.read_text(encoding="utf-8")))
        found = load_records(model_dir)
        if not found and runlog.shard_files(model_dir):
            incomplete.append(model_dir.name)
        rows.extend(found)
    if not rows:
        hint = "; only shard logs: run `vlm-lens count merge` first" if incomplete else ""
        raise EmptyMeasurementError(f"no samples under {out_dir}{hint}")
    if incomplete:
        print(f"note: only shard logs in {', '.join(incomplete)}: run `vlm-lens count merge` first")
    summaries = summarize(rows)
    runlog.write_json_atomic(out_dir / "summary.json", summaries)
    paths = {
        "summary_json": out_dir / "summary.json",
        "summary_csv": runlog.write_csv(
            out_dir / "summary.csv", summary_table(summaries), SUMMARY_COLUMNS
        ),
        "samples_csv": runlog.write_csv(
            out_dir / "samples.csv", sample_table(rows), SAMPLE_COLUMNS
        ),
        "attention_csv": runlog.write_csv(
            out_dir / "attention.csv", attention_table(rows), ATTENTION_COLUMNS
        ),
    }
    notes = [f"{m['model']}: {m['note']}" for m in manifests if m.get("note")]
    notes += [f"{name}: only shard logs found; run `vlm-lens count merge`" for name in incomplete]
    return {
        "rows": rows,
        "summaries": summaries,
        "manifests": manifests,
        "notes": notes,
        "paths": paths,
    }
