"""Figures of the yes-bias study (plotly) and its HTML report.

Each figure function takes the study's plain data (the delta table of
`vlm_lens.studies.yesbias.delta_table`, or the per-layer shares of `layer_shares`) and
returns a plotly figure:

- `quarter_heatmap`: Δ metric (paired accuracy, yes-rate, ...) against the baseline, one
  row per intervention, one column per layer selection (Q1..Q4, then any other);
- `dose_response`: Δ metric against the fraction of the source's attention moved, one
  line per direction, one panel per layer selection, with the bootstrap intervals;
- `layer_shares_figure`: the answer row's attention share on system / image / text keys
  per layer (stacked bars), the paper's "system takes ~70%" observation.

`report_run(run_dir)` analyses one run folder (`vlm_lens.studies.yesbias.analyze`) and
writes its `report.html`; `write_report` assembles one self-contained page (`vlm_lens.reports.html.Report`: plotly
inlined once, every string escaped) over one or more benchmarks. Names drawn inside
figures are escaped too (plotly renders labels as a small HTML subset).

Not for: computing the numbers (`vlm_lens.studies.yesbias`) or page layout
(`vlm_lens.reports.html`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from vlm_lens.core.segments import SEGMENT_KINDS
from vlm_lens.metrics.yesno import to_rows
from vlm_lens.reports.html import Report
from vlm_lens.studies import harness
from vlm_lens.studies.checks import EmptyMeasurementError, require_finite
from vlm_lens.studies.yesbias import analyze

__all__ = [
    "HEADLINE_FILE",
    "HEADLINE_METRICS",
    "METRIC_TITLES",
    "dose_response",
    "headline_grid",
    "headline_text",
    "layer_shares_figure",
    "quarter_heatmap",
    "report_run",
    "write_report",
]

METRIC_TITLES = {
    "d_paired_accuracy": "Δ paired accuracy",
    "d_accuracy": "Δ accuracy",
    "d_yes_rate": "Δ yes-rate",
    "d_mean_score": "Δ mean log P(yes) − log P(no)",
    "d_score_paired_accuracy": "Δ score paired accuracy",
}
_QUARTER_ORDER = ("Q1", "Q2", "Q3", "Q4")
_SHARE_COLORS = {"system": "#7f7f7f", "image": "#1f77b4", "text": "#ff7f0e", "generated": "#2ca02c"}


def _label(text: Any) -> str:
    return html.escape(str(text))


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _layer_order(layers: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(layers))
    first = [q for q in _QUARTER_ORDER if q in present]
    return first + [x for x in present if x not in first]


def _row_label(row: Mapping[str, Any], long: bool = False) -> str:
    """An intervention's name: short for a heatmap's axis, `long` for the headline grid."""
    if row["kind"] == "redistribute":
        if long:
            return f"move {row['target']} (fraction {row['fraction']:g})"
        return f"{row['target']} f={row['fraction']:g}"
    if row["kind"] == "scale":
        return f"{row['target']} {'attention ' if long else ''}×{row['alpha']:g}"
    return f"{row['kind']} {row['target']}"


def _heatmap_cells(
    labels: Sequence[str],
    columns: Sequence[str],
    cell: Mapping[tuple[str, str], Mapping[str, Any]],
    metric: str,
) -> tuple[list[list], list[list[str]], list[list[str]]]:
    """The heatmap's values, cell texts and hover texts, row `labels` by `columns`."""
    z, text, hover = [], [], []
    for lab in labels:
        zr, tr, hr = [], [], []
        for col in columns:
            r = cell.get((lab, col))
            v = None if r is None else _num(r.get(metric))
            zr.append(v)
            tr.append("" if v is None else f"{v:+.2f}")
            if r is None:
                hr.append("not run")
            else:
                lo, hi = _num(r.get(f"{metric}_lo")), _num(r.get(f"{metric}_hi"))
                ci = "" if lo is None or hi is None else f" [{lo:+.3f}, {hi:+.3f}]"
                hr.append(_label(f"{r['condition']}: {v:+.3f}{ci} (n units {r['n_units']})"))
        z.append(zr)
        text.append(tr)
        hover.append(hr)
    return z, text, hover


def quarter_heatmap(
    table: Sequence[Mapping[str, Any]],
    metric: str = "d_paired_accuracy",
    fractions: Sequence[float] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Heatmap of `metric` (a delta column of the table): intervention × layer selection.

    `fractions`: which redistribution fractions get a row (default: the largest one
    present, the paper's complete redistribution when 1.0 was run). Cells show the value
    and hover shows the 95% interval.
    """
    rows = [r for r in table if r["kind"] != "baseline"]
    fr = [r["fraction"] for r in rows if r["kind"] == "redistribute"]
    if fractions is None:
        fractions = [max(fr)] if fr else []
    rows = [r for r in rows if r["kind"] != "redistribute" or r["fraction"] in fractions]
    columns = _layer_order([r["layers"] for r in rows])
    labels = list(dict.fromkeys(_row_label(r) for r in rows))
    cell = {(_row_label(r), r["layers"]): r for r in rows}
    z, text, hover = _heatmap_cells(labels, columns, cell, metric)
    finite = [abs(v) for zr in z for v in zr if v is not None]
    bound = max(finite) if finite and max(finite) > 0 else 1.0
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[_label(c) for c in columns],
            y=[_label(lab) for lab in labels],
            text=text,
            texttemplate="%{text}",
            hovertext=hover,
            hoverinfo="text",
            colorscale="RdBu",
            zmid=0,
            zmin=-bound,
            zmax=bound,
            colorbar={"title": _label(METRIC_TITLES.get(metric, metric))},
        )
    )
    fig.update_layout(
        title=_label(title or f"{METRIC_TITLES.get(metric, metric)} against the baseline"),
        xaxis_title="layers",
        yaxis={"autorange": "reversed"},
        height=max(300, 60 + 40 * len(labels)),
    )
    return fig


def dose_response(
    table: Sequence[Mapping[str, Any]],
    metric: str = "d_paired_accuracy",
    title: str | None = None,
) -> go.Figure:
    """`metric` against the fraction moved: one panel per layer selection, one line per
    direction, error bars = paired bootstrap 95% intervals. Fraction 0 is the baseline
    (a delta of 0 by definition)."""
    rows = [r for r in table if r["kind"] == "redistribute"]
    panels = _layer_order([r["layers"] for r in rows]) or ["(none)"]
    directions = list(dict.fromkeys(r["target"] for r in rows))
    fig = make_subplots(
        rows=1,
        cols=len(panels),
        shared_yaxes=True,
        subplot_titles=[_label(p) for p in panels],
    )
    palette = ["#1f77b4", "#d62728", "#9467bd", "#2ca02c", "#ff7f0e", "#8c564b", "#17becf"]
    for d_index, direction in enumerate(directions):
        color = palette[d_index % len(palette)]
        for p_index, layers in enumerate(panels):
            pts = sorted(
                (r for r in rows if r["target"] == direction and r["layers"] == layers),
                key=lambda r: r["fraction"],
            )
            if not pts:
                continue
            x = [0.0] + [r["fraction"] for r in pts]
            y = [0.0] + [_num(r.get(metric)) for r in pts]
            plus = [0.0] + [
                None if _num(r.get(f"{metric}_hi")) is None else r[f"{metric}_hi"] - r[metric]
                for r in pts
            ]
            minus = [0.0] + [
                None if _num(r.get(f"{metric}_lo")) is None else r[metric] - r[f"{metric}_lo"]
                for r in pts
            ]
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines+markers",
                    name=_label(direction),
                    legendgroup=_label(direction),
                    showlegend=p_index == 0,
                    line={"color": color},
                    error_y={"type": "data", "array": plus, "arrayminus": minus, "visible": True},
                ),
                row=1,
                col=p_index + 1,
            )
    fig.add_hline(y=0, line={"color": "#999", "dash": "dot"})
    fig.update_xaxes(title_text="fraction moved", range=[-0.05, 1.05])
    fig.update_yaxes(title_text=_label(METRIC_TITLES.get(metric, metric)), row=1, col=1)
    fig.update_layout(
        title=_label(title or f"Dose-response: {METRIC_TITLES.get(metric, metric)}"),
        height=400,
    )
    return fig


def layer_shares_figure(
    shares: np.ndarray | Sequence[Sequence[float]],
    layers: Sequence[int] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Stacked bars of the answer row's attention share per layer: system / image / text
    (and generated, if any weight is there). `shares` is `[layer, 4]` in that order."""
    arr = np.asarray(shares, dtype=np.float64)
    layers = list(range(arr.shape[0])) if layers is None else list(layers)
    kinds = SEGMENT_KINDS
    fig = go.Figure()
    for k, kind in enumerate(kinds):
        if kind == "generated" and not np.any(arr[:, k] > 0):
            continue
        fig.add_trace(
            go.Bar(
                x=layers,
                y=arr[:, k],
                name=kind,
                marker_color=_SHARE_COLORS[kind],
                hovertemplate=f"layer %{{x}}: {kind} %{{y:.3f}}<extra></extra>",
            )
        )
    mean_system = float(arr[:, 0].mean()) if arr.size else math.nan
    fig.update_layout(
        barmode="stack",
        title=_label(
            title or f"Attention share of the answer row per layer (system mean {mean_system:.0%})"
        ),
        xaxis_title="layer",
        yaxis={"title": "share of attention", "range": [0, 1]},
        height=380,
    )
    return fig


# -------------------------------------------------------------------------------- headline

HEADLINE_METRICS = ("d_paired_accuracy", "d_yes_rate")
_SHORT = {"d_paired_accuracy": "Δ paired acc.", "d_yes_rate": "Δ yes-rate"}
_HELP = {
    "Δ paired acc.": "Change in paired accuracy against the baseline (fraction of pairing "
    "units whose every prompt is answered right; +0.10 = 10 points more), paired bootstrap "
    "95% interval below.",
    "Δ yes-rate": "Change in the share of answers that are 'yes' against the baseline "
    "(+0.10 = 10 points more yes), paired bootstrap 95% interval below.",
}


def headline_grid(
    table: Sequence[Mapping[str, Any]], fraction: float | None = None
) -> tuple[list[str], list[tuple[str, list[tuple[float, float, float] | None]]]]:
    """The paper's Table-style summary: one row per intervention (each redistribution
    direction at `fraction`, default the largest run; image scaling; knockout), one column
    group per layer selection (Q1..Q4, then any other), and in each group
    `HEADLINE_METRICS` as (value, low, high) or None where the cell was not run.

    Returns (layer selections, rows); rows are (label, cells) with cells group-major.
    """
    rows = [r for r in table if r["kind"] != "baseline"]
    fr = [r["fraction"] for r in rows if r["kind"] == "redistribute"]
    if fraction is None and fr:
        fraction = max(fr)
    rows = [r for r in rows if r["kind"] != "redistribute" or r["fraction"] == fraction]
    columns = _layer_order([r["layers"] for r in rows])
    cell = {(_row_label(r, long=True), r["layers"]): r for r in rows}
    out = []
    for label in dict.fromkeys(_row_label(r, long=True) for r in rows):
        cells: list[tuple[float, float, float] | None] = []
        for col in columns:
            r = cell.get((label, col))
            for m in HEADLINE_METRICS:
                v = None if r is None else _num(r.get(m))
                cells.append(
                    None if v is None else (v, _num(r.get(f"{m}_lo")), _num(r.get(f"{m}_hi")))
                )
        out.append((label, cells))
    return columns, out


def _fmt_ci(cell: tuple[float, float, float] | None) -> str:
    if cell is None:
        return "-"
    v, lo, hi = cell
    if lo is None or hi is None:
        return f"{v:+.2f}"
    mark = "*" if lo > 0 or hi < 0 else " "
    return f"{v:+.2f}{mark}[{lo:+.2f},{hi:+.2f}]"


def headline_text(table: Sequence[Mapping[str, Any]], benchmark: str = "") -> str:
    """`headline_grid` as a compact text table (one block per metric) for the terminal; *
    marks an interval that excludes 0."""
    columns, rows = headline_grid(table)
    if not rows:
        return f"{benchmark}: baseline only (no intervention to compare)"
    base = next((r for r in table if r["kind"] == "baseline"), None)
    lines = [
        f"{benchmark}: Δ against the baseline, paired bootstrap 95% CI (* excludes 0)"
        + (
            ""
            if base is None
            else f"; baseline paired acc. {base['paired_accuracy']:.2f}, "
            f"yes-rate {base['yes_rate']:.2f}, {base['n_units']} units"
        )
    ]
    width = max(len(lab) for lab, _ in rows)
    k = len(HEADLINE_METRICS)
    for m_index, metric in enumerate(HEADLINE_METRICS):
        cells = [[_fmt_ci(c[g * k + m_index]) for g in range(len(columns))] for _, c in rows]
        col_w = [max([len(columns[g])] + [len(r[g]) for r in cells]) for g in range(len(columns))]
        lines.append(
            f"  {_SHORT[metric]:<{width}}  "
            + "  ".join(c.ljust(w) for c, w in zip(columns, col_w, strict=True)).rstrip()
        )
        for (label, _), r in zip(rows, cells, strict=True):
            lines.append(
                f"  {label:<{width}}  "
                + "  ".join(c.ljust(w) for c, w in zip(r, col_w, strict=True)).rstrip()
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- report

_TABLE_VIEW = (
    "condition",
    "n_units",
    "paired_accuracy",
    "accuracy",
    "yes_rate",
    "other_rate",
    "d_paired_accuracy",
    "d_paired_accuracy_lo",
    "d_paired_accuracy_hi",
    "d_yes_rate",
    "d_yes_rate_lo",
    "d_yes_rate_hi",
    "d_mean_score",
    "d_score_paired_accuracy",
)
_TABLE_LABELS = {
    "condition": "condition",
    "n_units": "units",
    "paired_accuracy": "paired acc.",
    "accuracy": "accuracy",
    "yes_rate": "yes-rate",
    "other_rate": "other-rate",
    "d_paired_accuracy": "Δ paired acc.",
    "d_paired_accuracy_lo": "(95% low)",
    "d_paired_accuracy_hi": "(95% high)",
    "d_yes_rate": "Δ yes-rate",
    "d_yes_rate_lo": "(95% low)",
    "d_yes_rate_hi": "(95% high)",
    "d_mean_score": "Δ mean score",
    "d_score_paired_accuracy": "Δ score paired acc.",
}
_TABLE_HELP = {
    "condition": "kind:source->recipients:layers:fraction (f) or scale factor (a)",
    "n_units": "pairing units (e.g. the yes- and no-question about one image) measured",
    "paired_accuracy": "fraction of pairing units whose every prompt is answered right",
    "accuracy": "fraction of prompts answered right (first word yes/no; other = wrong)",
    "yes_rate": "fraction of answers that are 'yes'",
    "other_rate": "fraction of answers that are neither yes nor no",
    "d_paired_accuracy": "paired accuracy minus the baseline's, same items",
    "d_paired_accuracy_lo": "paired bootstrap 95% interval, lower end",
    "d_paired_accuracy_hi": "paired bootstrap 95% interval, upper end",
    "d_yes_rate": "yes-rate minus the baseline's, same items",
    "d_yes_rate_lo": "paired bootstrap 95% interval, lower end",
    "d_yes_rate_hi": "paired bootstrap 95% interval, upper end",
    "d_mean_score": "change in the mean of log P(yes) - log P(no) at the first answer step (nats)",
    "d_score_paired_accuracy": "change in paired accuracy when the answer is the sign of the score",
}


def _headline_conditions(metrics: Mapping[str, Any]) -> list[str]:
    """Baseline and the paper's arms (Q4, complete redistribution from system; image ×2)."""
    wanted = [
        "baseline",
        "redistribute:system->text:Q4:f1.0",
        "redistribute:system->image:Q4:f1.0",
        "redistribute:system->image+text:Q4:f1.0",
        "scale:image:Q4:a2.0",
        "scale:image:all:a2.0",
    ]
    return [c for c in wanted if c in metrics]


def _official_rows(metrics: Mapping[str, Any], conditions: Sequence[str]) -> list[dict]:
    """Metric rows (from `to_rows`) with one column per condition."""
    table: dict[str, dict[str, Any]] = {}
    for cond in conditions:
        for row in to_rows(metrics[cond]):
            entry = table.setdefault(row["metric"], {"metric": row["metric"]})
            entry[cond] = row["value"]
            if cond == "baseline" and math.isfinite(row["ci_low"]):
                entry["baseline 95% CI"] = f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    return list(table.values())


def _system_label(settings: Mapping[str, Any]) -> str:
    text = repr(settings.get("system"))
    preset = settings.get("system_preset")  # absent from runs made before presets existed
    return f"{preset} ({text})" if preset else text


def write_report(
    path: str | Path,
    results: Sequence[Mapping[str, Any]],
    *,
    title: str = "Yes-bias study",
    notes: Sequence[str] = (),
    n_examples: int = 8,
) -> Path:
    """One HTML page over the `analyze` results of one or more benchmarks.

    Raises `EmptyMeasurementError` (and writes nothing) for no results, a result without
    records, or recorded attention shares that are all NaN.
    """
    if not results:
        raise EmptyMeasurementError("yes-bias report: no results to report")
    for result in results:
        bench = result.get("settings", {}).get("benchmark", "?")
        if not result["records"]:
            raise EmptyMeasurementError(f"yes-bias report, {bench}: no records")
        if result.get("shares") is not None:
            require_finite(result["shares"], f"yes-bias report, {bench}: attention shares")
    report = Report(title)
    for note in notes:
        report.paragraph(note, note=True)
    report.paragraph(
        "Each condition edits the post-softmax attention in the chosen layers, of the rows its "
        "run names: 'answer' (the last prompt row and the generated rows) or 'all' (every row, "
        "still causal). Δ = condition − baseline on the same items; intervals are paired "
        "bootstrap 95% intervals over pairing units. Paired accuracy: share of pairing units "
        "whose every prompt is answered right (first word yes/no; anything else is wrong)."
    )
    for result in results:
        _benchmark_section(report, result, n_examples)
    return report.write(path)


def _benchmark_section(report: Report, result: Mapping[str, Any], n_examples: int) -> None:
    """One benchmark's part of the page: the headline grid, figures, then the run's
    details, full tables and example answers collapsed."""
    settings = result.get("settings", {})
    table = result["table"]
    metrics = result["metrics"]
    bench = settings.get("benchmark") or (table[0]["benchmark"] if table else "?")
    report.heading(f"{bench}")
    _headline_section(report, table)
    if any(r["kind"] != "baseline" for r in table):
        for metric in HEADLINE_METRICS:
            report.figure(
                quarter_heatmap(table, metric, title=f"{bench}: {METRIC_TITLES[metric]}"),
                caption=f"{METRIC_TITLES[metric]} per intervention and layer selection "
                "(hover: 95% interval).",
            )
    if any(r["kind"] == "redistribute" for r in table):
        report.figure(
            dose_response(table, title=f"{bench}: dose-response"),
            caption="Δ paired accuracy against the fraction of the source's attention moved.",
        )
    shares = result.get("shares")
    if shares is not None:
        report.figure(
            layer_shares_figure(shares, title=f"{bench}: attention share at the answer step"),
            caption="Baseline run, mean over heads and items, first answer step.",
        )
    with report.details(f"{bench}: run settings and full tables"):
        _run_paragraphs(report, result)
        if table:
            report.heading("Conditions against the baseline", level=3)
            report.legend({_TABLE_LABELS[c]: _TABLE_HELP[c] for c in _TABLE_VIEW})
            report.table(
                table,
                _TABLE_VIEW,
                text_columns=("condition",),
                labels=_TABLE_LABELS,
                help=_TABLE_HELP,
            )
        heads = _headline_conditions(metrics)
        if heads:
            report.heading("Official metrics (baseline and the paper's arms)", level=3)
            report.table(
                _official_rows(metrics, heads),
                ["metric", *heads, "baseline 95% CI"],
                text_columns=("metric", "baseline 95% CI"),
            )
        _examples(report, result, n_examples)


def _headline_section(report: Report, table: Sequence[Mapping[str, Any]]) -> None:
    """The grid of `headline_grid` with the baseline it is measured against."""
    columns, rows = headline_grid(table)
    base = next((r for r in table if r["kind"] == "baseline"), None)
    report.heading("Headline: change against the baseline per layer quarter", level=3)
    if base is not None:
        report.paragraph(
            f"Baseline: paired accuracy {base['paired_accuracy']:.3f}, yes-rate "
            f"{base['yes_rate']:.3f}, accuracy {base['accuracy']:.3f} over {base['n_units']} "
            "pairing units. Each cell: Δ = condition − baseline on the same items, with the "
            "paired bootstrap 95% interval below; bold where the interval excludes 0."
        )
    if not rows:
        report.paragraph("Only the baseline was run: no intervention to compare.")
        return
    report.grid(
        "intervention",
        rows,
        groups=[f"layers {c}" for c in columns],
        subcolumns=[_SHORT[m] for m in HEADLINE_METRICS],
        help=_HELP,
    )


def _run_paragraphs(report: Report, result: Mapping[str, Any]) -> None:
    """What was run: the run's note, model, sizes, edit semantics and prompt layout."""
    settings = result.get("settings", {})
    if settings.get("note"):
        report.paragraph(str(settings["note"]), note=True)
    report.paragraph(
        f"model: {settings.get('model')}; items: {len(result['items'])}; "
        f"conditions: {len(result['metrics'])}; records: {len(result['records'])}; "
        f"max new tokens: {settings.get('max_new_tokens')}; "
        f"system prompt: {_system_label(settings)}; "
        f"edits: mode {settings.get('mode', 'proportional')}, "
        f"rows {settings.get('rows', 'answer')}"
    )
    layout = settings.get("layout")
    if layout:
        report.paragraph(
            f"first prompt: system span {layout['system']}, image spans "
            f"{layout['images']} of {layout['prompt_len']} tokens"
        )


def _examples(report: Report, result: Mapping[str, Any], n_examples: int) -> None:
    """The first baseline answers beside their prompts and labels."""
    records = [r for r in result["records"] if r["condition"] == "baseline"][:n_examples]
    if not records:
        return
    by_id = {it.item_id: it for it in result["items"]}
    report.heading("Example answers (baseline)", level=3)
    report.table(
        [
            {
                "item": r["item_id"],
                "prompt": by_id[r["item_id"]].prompt if r["item_id"] in by_id else "",
                "label": "yes" if r["label"] else "no",
                "generated": r["text"],
                "answer": r["answer"],
                "score": r["score"],
            }
            for r in records
        ],
        text_columns=("item", "prompt", "label", "generated", "answer"),
    )


HEADLINE_FILE = "headline.txt"


def write_outputs(
    out_dir: str | Path, *, n_boot: int = 1000, notes: Sequence[str] = ()
) -> list[Path]:
    """`analyze` every run at or below `out_dir` and write one report per model folder (all
    its benchmarks), `<out_dir>/<model>/report.html`, with its benchmarks' `headline_text`
    in `<out_dir>/<model>/headline.txt` (what the CLI prints); returns the pages written.
    The study's report function (`harness.report(yesbias.STUDY, out_dir)`)."""
    by_model: dict[Path, list[dict]] = {}
    for run_dir in harness.run_dirs(out_dir):
        by_model.setdefault(run_dir.parent, []).append(analyze(run_dir, n_boot=n_boot))
    pages = []
    for model_dir, results in by_model.items():
        pages.append(
            write_report(
                model_dir / "report.html",
                results,
                title=f"Yes-bias study: {model_dir.name}",
                notes=notes,
            )
        )
        text = "\n\n".join(
            headline_text(r["table"], r.get("settings", {}).get("benchmark", "?")) for r in results
        )
        (model_dir / HEADLINE_FILE).write_text(text + "\n", encoding="utf-8")
    return pages


def report_run(
    run_dir: str | Path, *, n_boot: int = 1000, seed: int = 0, title: str = "Yes-bias study"
) -> dict[str, Any]:
    """`analyze(run_dir)` plus the run's own `report.html` (its path in `result["paths"]`)."""
    result = analyze(run_dir, n_boot=n_boot, seed=seed)
    result["paths"]["report"] = write_report(Path(run_dir) / "report.html", [result], title=title)
    return result
