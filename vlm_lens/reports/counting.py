"""The counting study's HTML report, and the one call that writes all its outputs.

`write_outputs(out_dir)` reads every model's records under `out_dir`, has the study write
its tables (`vlm_lens.studies.counting.write_tables`: summary.json/csv, samples.csv,
attention.csv) and then writes `report.html` (and `figures/*.png` when a PNG backend
works) from them with `counting_report`. The report reads the study's tables; the study
never imports this module (the CLI or a notebook calls it).

Not for: the figures themselves (`vlm_lens.reports.figures`), computing metrics or
summaries (`vlm_lens.studies.counting`) or the page layout (`vlm_lens.reports.html`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from vlm_lens.reports import figures as fg
from vlm_lens.reports.html import Report
from vlm_lens.studies.checks import EmptyMeasurementError, require_finite
from vlm_lens.studies.counting import (
    CONTROL_CONDITION,
    SUMMARY_COLUMNS,
    summary_table,
    write_tables,
)
from vlm_lens.studies.counting.claims import DECAY_SCORES

__all__ = ["HEADLINE", "counting_report", "headline_rows", "headline_text", "write_outputs"]

_METRICS_NOTE = (
    "Visual sparsity is the paper's Eq. 2 as printed (uniform attention gives −1/M); "
    "entropy is Eq. 3. Attention is that of the query row predicting each digit, averaged "
    "over heads (Eq. 1) and renormalised over the image tokens."
)


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else spec.format(x)


def _share(row: dict, region: str) -> str:
    """A region's share of the image attention beside its share of the image's area."""
    return f"{_fmt(row.get(f'{region}_share_digit1'), '{:.2f}')} / " + _fmt(
        row.get(f"{region}_area"), "{:.2f}"
    )


#: The headline columns of the page and the terminal: (label, cell text from a
#: `summary_table` row, definition shown on hover and in the legend).
HEADLINE: tuple[tuple[str, Callable[[dict], str], str], ...] = (
    ("model", lambda r: str(r["model"]), "model name"),
    ("condition", lambda r: str(r["condition"]), "prompt / setting of the run"),
    ("n", lambda r: str(r["n"]), "samples (images)"),
    ("acc", lambda r: _fmt(r["accuracy"], "{:.3f}"), "share of exact counts"),
    ("MAE", lambda r: _fmt(r["mae"], "{:.2f}"), "mean |prediction − count|, in dots"),
    ("MBE", lambda r: _fmt(r["mbe"], "{:+.2f}"), "mean (prediction − count), in dots"),
    (
        "mass 1st→2nd",
        lambda r: (
            f"{_fmt(r['image_mass_digit1'], '{:.3f}')}→" + _fmt(r["image_mass_digit2"], "{:.3f}")
        ),
        "share of the attention on image tokens, at the 1st and the 2nd digit step",
    ),
    ("Gini 1st", lambda r: _fmt(r["gini_digit1"], "{:.3f}"), "visual sparsity, Eq. 2"),
    ("Gini 2nd", lambda r: _fmt(r["gini_digit2"], "{:.3f}"), "visual sparsity, Eq. 2"),
    (
        "p Gini",
        lambda r: _fmt(r["sparsity_drop_p"], "{:.2g}"),
        "Wilcoxon signed-rank p (two-sided), Gini 1st vs 2nd digit, paired by sample",
    ),
    ("H 1st", lambda r: _fmt(r["entropy_digit1"], "{:.3f}"), "visual entropy, Eq. 3 (nats)"),
    ("H 2nd", lambda r: _fmt(r["entropy_digit2"], "{:.3f}"), "visual entropy, Eq. 3 (nats)"),
    (
        "p H",
        lambda r: _fmt(r["entropy_rise_p"], "{:.2g}"),
        "Wilcoxon signed-rank p (two-sided), entropy 2nd vs 1st digit, paired by sample",
    ),
    (
        "centre / area",
        lambda r: _share(r, "centre"),
        "share of image attention on the dots' centres at the 1st digit / their share of "
        "the image's area (what uniform attention would give)",
    ),
    (
        "band / area",
        lambda r: _share(r, "hull_band"),
        "same for the band around the dots' hull",
    ),
    ("bg / area", lambda r: _share(r, "background"), "same for the background"),
)


def headline_rows(summaries: Sequence[dict]) -> list[dict[str, str]]:
    """The headline cells per (model, condition), keyed by the `HEADLINE` labels."""
    return [{label: cell(row) for label, cell, _ in HEADLINE} for row in summary_table(summaries)]


def headline_text(summaries: Sequence[dict]) -> str:
    """`headline_rows` as a right-aligned text table for the terminal."""
    cells = [[label for label, _, _ in HEADLINE]]
    cells += [list(row.values()) for row in headline_rows(summaries)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


def write_outputs(
    out_dir: str | Path, *, png: bool = True, title: str = "Counting study"
) -> dict[str, Any]:
    """Summaries, tables, figures and the HTML report of every model under `out_dir`.

    Reads each `<out_dir>/<model>/samples.jsonl` (run `merge` first after a sharded run)
    and writes `summary.json`, `summary.csv`, `samples.csv`, `attention.csv`,
    `report.html` and, if a PNG backend works, `figures/*.png`. Returns the summaries and
    the paths written. Nothing is written when there are no samples or a condition's
    attention metrics are all missing (`EmptyMeasurementError`, see `summarize`).
    """
    tables = write_tables(out_dir)
    report = counting_report(
        tables["rows"],
        tables["summaries"],
        out_dir,
        png=png,
        title=title,
        manifests=tables["manifests"],
        notes=tables["notes"],
    )
    return {"summaries": tables["summaries"], "paths": {**tables["paths"], **report}}


def _runs_table(report: Report, manifests: Sequence[dict]) -> None:
    report.heading("Runs")
    report.table(
        [
            {
                "model": m.get("model"),
                "condition": name,
                "n": cfg.get("n"),
                "layers": str(cfg.get("layers")),
                "prompt": cfg.get("prompt"),
                "regrounding": str(cfg.get("regrounding")),
            }
            for m in manifests
            for name, cfg in m.get("conditions", {}).items()
        ],
        text_columns=("model", "condition", "prompt", "layers", "regrounding"),
    )


def _figures(rows: Sequence[dict], summaries: Sequence[dict]) -> list[tuple[str, go.Figure, str]]:
    """(file stem, figure, caption) of the summary figures, in page order."""
    figures: list[tuple[str, go.Figure, str]] = [
        ("accuracy_mbe", fg.accuracy_mbe_bars(summaries), "Accuracy and MBE per model (Fig. 2)."),
        (
            "sparsity_box",
            fg.sparsity_box(rows),
            "Sparsity of the 1st vs 2nd digit step (Fig. 3), headline layer.",
        ),
        (
            "step_curves",
            fg.step_curves(summaries),
            "Entropy and sparsity across digit steps (Fig. 5).",
        ),
        ("halo", fg.halo_bars(summaries), "Halo metrics; black ticks: the regions' area shares."),
    ]
    if any(s.get("regrounding") for s in summaries):
        figures.append(
            (
                "regrounding",
                fg.regrounding_bars(summaries),
                "Re-grounding: same samples, with and without.",
            )
        )
    return figures


_SUMMARY_HELP = {
    "n_parsed": "answers with a number in them",
    "mbe": "mean bias error: mean (prediction − count), in dots",
    "mae": "mean absolute error, in dots",
    "headline_layer": "the layer the attention columns are read at",
    "gini": "visual sparsity (Eq. 2) of the image attention",
    "entropy": "visual entropy (Eq. 3) of the image attention, nats",
    "image_mass": "share of the attention on image tokens",
    "sparsity_drop": "mean Gini 1st − 2nd digit; statistic W, p and n of the Wilcoxon test",
    "entropy_rise": "mean entropy 2nd − 1st digit; p of the Wilcoxon test",
    "share": "share of the image attention on the region (centre / hull band / background)",
    "area": "the region's share of the image area (uniform attention gives this share)",
    "centroid_hit_rate": "share of samples whose attention peak lies on a dot",
    "regrounding": "re-grounding mode, its accuracy / MBE and the change they make",
}


def _summary_label(column: str) -> str:
    """`gini_digit1` -> `gini (1st digit)`: a summary column's name for people."""
    text = column.replace("_digit1", " (1st digit)").replace("_digit2", " (2nd digit)")
    return {"mbe": "MBE", "mae": "MAE", "n_parsed": "n parsed"}.get(text, text.replace("_", " "))


def _tests_table(report: Report, summaries: Sequence[dict]) -> None:
    tests = [
        {
            "model": s["model"],
            "condition": s["condition"],
            "layer": layer,
            "n": t["n"],
            "mean drop (1st − 2nd)": t["mean_diff"],
            "median drop": t["median_diff"],
            "W (min)": t["statistic"],
            "p (two-sided)": t["p_value"],
            "method": t["method"],
        }
        for s in summaries
        for layer, t in s["sparsity_drop"].items()
    ]
    report.heading("Sparsity drop from the 1st to the 2nd digit (Wilcoxon signed-rank)")
    report.table(tests, text_columns=("model", "condition", "method"))


def _heatmaps(
    report: Report,
    rows: Sequence[dict],
    n_heatmaps: int,
    fig_dir: Path,
    pngs: list[tuple[go.Figure, Path]],
) -> None:
    """Up to `n_heatmaps` example maps per model and condition; the first two go to `pngs`."""
    shown: dict[str, int] = {}
    drawn = 0
    for r in rows:
        if not any("map" in e for e in r["attention"]):
            continue
        key = f"{r.get('model', '')}/{r['condition']}"
        if shown.get(key, 0) >= n_heatmaps:
            continue
        shown[key] = shown.get(key, 0) + 1
        if drawn == 0:
            report.heading("Attention over the image (Fig. 1); red crosses: dot centres")
        fig = fg.attention_heatmaps(r)
        report.figure(fig)
        if drawn < 2:
            pngs.append((fig, fig_dir / f"heatmap_{drawn}.png"))
        drawn += 1


def _claims_block(report: Report, summaries: Sequence[dict]) -> None:
    """The headline: each claim of the paper, this run's verdict and its numbers."""
    judged = [s for s in summaries if s.get("claims")]
    if not judged:
        return
    report.heading("The paper's claims: what this run says")
    report.table(
        [
            {
                "model": s["model"],
                "condition": s["condition"],
                "claim": v["statement"],
                "verdict": v["verdict"],
                "evidence": v["evidence"],
            }
            for s in judged
            for claim in s["claims"]
            for v in (claim, *claim.get("parts", ()))
        ],
        text_columns=("model", "condition", "claim", "verdict", "evidence"),
    )
    report.paragraph(
        "Halo: the permutation test scores each image's attention against the hull of "
        "another image with the same count. Decay: AUROC of the units digit's sparsity, "
        "entropy and image mass for that digit being right. Takeover: Wilcoxon tests of "
        "the 1st against the 2nd digit, headline layer.",
        note=True,
    )


def _controls_tables(report: Report, summaries: Sequence[dict]) -> None:
    """Halo controls per layer and digit step; decay -> error per digit place."""
    controls = [
        {"model": s["model"], "condition": s["condition"], **c}
        for s in summaries
        for c in s.get("controls") or []
        if c["measured"]
    ]
    if controls:
        report.heading("Halo controls: sink baseline (dots shuffled) and hull permutation test")
        report.table(
            [
                {
                    "model": c["model"],
                    "condition": c["condition"],
                    "layer": c["layer"],
                    "digit": c["digit"] + 1,
                    "sink cells": len(c["sink_cells"]),
                    **{
                        f"{label} {kind}": c["halo"][f"{prefix}{region}"]
                        for region, label in (("hull_band", "hull band"), ("centre", "centre"))
                        for kind, prefix in (
                            ("raw", ""),
                            ("sinks out", "nosink_"),
                            ("/ baseline", "ratio_"),
                        )
                    },
                    "hull excess": c["permutation"]["hull_band"].get("excess"),
                    "p (hull >)": c["permutation"]["hull_band"].get("p_greater"),
                    "centre excess": c["permutation"]["centre"].get("excess"),
                    "p (centre <)": c["permutation"]["centre"].get("p_less"),
                }
                for c in controls
            ],
            text_columns=("model", "condition"),
        )
    decay = [
        {
            "model": s["model"],
            "condition": s["condition"],
            "digit": place,
            "n": d["n"],
            "wrong": d["n_wrong"],
            "score": score,
            "AUROC": d[score]["auroc"]["auroc"],
            "CI low": d[score]["auroc"]["ci_low"],
            "CI high": d[score]["auroc"]["ci_high"],
            "logit coef (per sd, count held)": d[score]["score_coef"],
            "p": d[score]["score_p"],
        }
        if d["status"] == "measured"
        else {
            "model": s["model"],
            "condition": s["condition"],
            "digit": place,
            "n": d["n"],
            "wrong": d["n_wrong"],
            "score": d["status"],
        }
        for s in summaries
        for place, d in (s.get("decay") or {}).items()
        for score in (DECAY_SCORES if d["status"] == "measured" else ("",))
    ]
    if decay:
        report.heading("Does attention decay predict a wrong digit?")
        report.table(decay, text_columns=("model", "condition", "digit", "score"))
    tests = [
        {"model": s["model"], "condition": s["condition"], **s["regrounding_test"]}
        for s in summaries
        if s.get("regrounding_test")
    ]
    if tests:
        report.heading("Re-grounding and the units digit (McNemar exact test)")
        report.table(tests, text_columns=("model", "condition", "method"))


def _baseline_heatmaps(report: Report, summaries: Sequence[dict]) -> None:
    """The content-free baseline map of each judged condition, drawn as the samples are."""
    drawn = 0
    for s in summaries:
        entries = [
            {"layer": c["layer"], "digit": c["digit"], "token": "any", "map": c["baseline_map"]}
            for c in s.get("controls") or []
            if c["measured"]
        ]
        if not entries:
            continue
        grids = {tuple(c["grid"]) for c in s["controls"] if c["measured"]}
        if len(grids) != 1:
            continue
        pseudo = {
            "model": s["model"],
            "condition": CONTROL_CONDITION,
            "index": "mean",
            "count": "-",
            "grid": list(grids.pop()),
            "image_size": [1, 1],
            "attention": entries,
        }
        if not drawn:
            report.heading("Content-free baseline (dots shuffled), beside the sample maps below")
        drawn += 1
        fig = fg.attention_heatmaps(pseudo)
        fig.update_layout(
            title=f"{s['model']} · content-free baseline for '{s['condition']}': "
            "mean map over the dots-shuffled images"
        )
        report.figure(fig, "Where attention goes whatever the dots are (the sink baseline).")


def _examples_table(report: Report, rows: Sequence[dict]) -> None:
    report.heading("Example answers")
    report.table(
        [
            {
                "model": r.get("model", ""),
                "condition": r["condition"],
                "index": r["index"],
                "count": r["count"],
                "generated text": r["text"],
                "prediction": r["prediction"],
                "re-grounded text": (r.get("regrounding") or {}).get("text"),
            }
            for r in rows[:40]
        ],
        text_columns=("model", "condition", "generated text", "re-grounded text"),
    )


def counting_report(
    rows: Sequence[dict],
    summaries: Sequence[dict],
    out_dir: str | Path,
    *,
    png: bool = True,
    title: str = "Counting study",
    manifests: Sequence[dict] = (),
    notes: Sequence[str] = (),
    n_heatmaps: int = 2,
) -> dict[str, Path]:
    """Write `report.html` (and `figures/*.png` if possible) for the study's outputs.

    Raises `EmptyMeasurementError` (and writes nothing) for no samples or summaries, or
    when no attention metric of any sample is a number.
    """
    if not rows or not summaries:
        raise EmptyMeasurementError("counting report: no samples or summaries to report")
    require_finite(
        [e.get("gini") for r in rows for e in r["attention"]],
        "counting report: the attention metrics of every sample",
        "nothing was measured at the answers' digit steps",
    )
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    written: dict[str, Path] = {}
    report = Report(title)
    for note in notes:
        report.paragraph(note, note=True)
    report.heading("Headline")
    report.paragraph(
        "At the headline layer (the first chosen); 1st / 2nd: the digit steps of the answer. "
        "Hover a column name for its definition."
    )
    report.table(
        headline_rows(summaries),
        [label for label, _, _ in HEADLINE],
        text_columns=("model", "condition"),
        help={label: text for label, _, text in HEADLINE},
    )
    _claims_block(report, summaries)
    report.paragraph(_METRICS_NOTE)
    pngs: list[tuple[go.Figure, Path]] = []
    for name, fig, caption in _figures(rows, summaries):
        report.heading(caption.split(" (")[0].rstrip("."))
        report.figure(fig, caption)
        pngs.append((fig, fig_dir / f"{name}.png"))
    _controls_tables(report, summaries)
    _baseline_heatmaps(report, summaries)
    _heatmaps(report, rows, n_heatmaps, fig_dir, pngs)
    with report.details("Runs and full tables"):
        if manifests:
            _runs_table(report, manifests)
        report.heading("Summary (all columns)")
        report.legend({_summary_label(c): text for c, text in _SUMMARY_HELP.items()})
        report.table(
            summary_table(summaries),
            SUMMARY_COLUMNS,
            text_columns=("model", "condition"),
            labels={c: _summary_label(c) for c in SUMMARY_COLUMNS},
        )
        _tests_table(report, summaries)
        _examples_table(report, rows)
    if png:
        fig_dir.mkdir(parents=True, exist_ok=True)
        for path in fg.save_pngs(pngs):
            written[f"png_{path.stem}"] = path
    png_state = fg.png_status()
    if png and png_state["works"] is False:
        report.paragraph(f"PNG export was unavailable: {png_state['reason']}", note=True)
    written["report"] = report.write(out_dir / "report.html")
    if fig_dir.is_dir() and not any(fig_dir.iterdir()):
        fig_dir.rmdir()
    return written
