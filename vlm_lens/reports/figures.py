"""Figures of the counting study (plotly).

Each figure function takes the study's plain data (records from `samples.jsonl`, or the
summaries of `vlm_lens.studies.counting.summarize`) and returns a `plotly` figure:

- `accuracy_mbe_bars`: accuracy and mean bias error per model and condition (paper Fig. 2);
- `sparsity_box`: Gini sparsity of the 1st vs 2nd digit step per model (Fig. 3);
- `step_curves`: entropy (Fig. 5) and sparsity across digit steps;
- `attention_heatmaps`: one sample's maps over the image, layers x digit steps, with the
  dot centres marked (Fig. 1);
- `halo_bars`: Halo metrics (centre / hull band / background shares against their area
  shares under uniform attention, and the centroid hit rate);
- `regrounding_bars`: accuracy and MBE with and without re-grounding.

`save_png` writes a PNG when plotly's image export works (kaleido 1.x needs a Chrome
install); otherwise it logs one warning and returns False, and the HTML report (which
needs nothing but a browser) is the output. The page itself is `vlm_lens.reports.counting`.

Names shown inside figures are escaped like the rest of the report (plotly renders
its labels as a small HTML subset and decodes entities back to text).

Not for: computing metrics (`vlm_lens.studies.counting`) or the page layout
(`vlm_lens.reports.html`).
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

__all__ = [
    "accuracy_mbe_bars",
    "attention_heatmaps",
    "halo_bars",
    "regrounding_bars",
    "save_png",
    "save_pngs",
    "sparsity_box",
    "step_curves",
]

log = logging.getLogger(__name__)
_PNG_STATE: dict[str, Any] = {"works": None, "reason": ""}

_ORDINAL = ("1st", "2nd", "3rd")
_PALETTE = ("#636efa", "#00cc96", "#ef553b", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692")


def _label(text: Any) -> str:
    return html.escape(str(text))


def _ordinal(k: int) -> str:
    return _ORDINAL[k] if k < len(_ORDINAL) else f"{k + 1}th"


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _models(items: Sequence[dict]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item.get("model", "") not in seen:
            seen.append(item.get("model", ""))
    return seen


def _colour(k: int) -> str:
    return _PALETTE[k % len(_PALETTE)]


def _headline(rows: Sequence[dict]) -> int | None:
    for r in rows:
        if r.get("layers"):
            return r["layers"][0]
    return None


def accuracy_mbe_bars(summaries: Sequence[dict]) -> go.Figure:
    """Accuracy and MBE per model (x) and condition (colour): the paper's Fig. 2."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Accuracy", "Mean bias error (prediction − count)"),
        horizontal_spacing=0.14,
    )
    models = _models(summaries)
    for c_index, condition in enumerate(dict.fromkeys(s["condition"] for s in summaries)):
        by_model = {s["model"]: s for s in summaries if s["condition"] == condition}
        x = [_label(m) for m in models]
        for col, key in ((1, "accuracy"), (2, "mbe")):
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=[_num(by_model.get(m, {}).get(key)) for m in models],
                    name=_label(condition),
                    legendgroup=condition,
                    showlegend=col == 1,
                    marker_color=_colour(c_index),  # one colour per condition in both panels
                ),
                row=1,
                col=col,
            )
    fig.update_layout(barmode="group", title="Counting accuracy and bias", height=420)
    fig.update_yaxes(range=[0, 1.05], title_text="share exact", row=1, col=1)
    # Padding on both sides of the bars (and 0), so no tick sits under the panel's title.
    mbe = [_num(s.get("mbe")) for s in summaries]
    mbe = [v for v in mbe if v is not None]
    lo, hi = min([0.0, *mbe]), max([0.0, *mbe])
    pad = 0.15 * (hi - lo) or 0.5
    fig.update_yaxes(range=[lo - pad, hi + pad], title_text="dots", row=1, col=2)
    fig.update_annotations(yshift=8)  # subplot titles: clear of the plot's top edge
    return fig


def sparsity_box(
    rows: Sequence[dict], layer: int | None = None, condition: str = "baseline"
) -> go.Figure:
    """Gini sparsity (Eq. 2) of the 1st vs 2nd digit step per model: the paper's Fig. 3."""
    layer = _headline(rows) if layer is None else layer
    fig = go.Figure()
    chosen = [r for r in rows if r["condition"] == condition]
    for digit in (0, 1):
        xs, ys = [], []
        for r in chosen:
            for e in r["attention"]:
                if e["layer"] == layer and e["digit"] == digit and e.get("gini") is not None:
                    xs.append(_label(r.get("model", "")))
                    ys.append(e["gini"])
        fig.add_trace(go.Box(x=xs, y=ys, name=f"{_ordinal(digit)} digit", boxpoints="all"))
    fig.update_layout(
        boxmode="group",
        title=f"Visual sparsity by digit step (layer {layer}, {_label(condition)})",
        yaxis_title="Gini sparsity (Eq. 2)",
        height=420,
    )
    return fig


def step_curves(summaries: Sequence[dict], layer: int | None = None) -> go.Figure:
    """Mean entropy (Eq. 3, Fig. 5) and sparsity across digit steps, ± one std."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("Visual entropy (Eq. 3)", "Visual sparsity (Eq. 2)")
    )
    for s in summaries:
        lay = s["headline_layer"] if layer is None else layer
        steps = sorted((st for st in s["steps"] if st["layer"] == lay), key=lambda st: st["digit"])
        if not steps:
            continue
        name = _label(f"{s['model']} · {s['condition']}")
        x = [f"{_ordinal(st['digit'])} digit" for st in steps]
        for col, metric in ((1, "entropy"), (2, "gini")):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=[_num(st[f"{metric}_mean"]) for st in steps],
                    error_y={
                        "type": "data",
                        "array": [_num(st[f"{metric}_std"]) or 0 for st in steps],
                    },
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
    fig.update_layout(title="Language Takeover across digit steps", height=420)
    return fig


def _dot_marks(x: np.ndarray, y: np.ndarray) -> go.Scatter:
    return go.Scatter(
        x=x,
        y=y,
        mode="markers",
        marker={"color": "red", "size": 5, "symbol": "x"},
        showlegend=False,
        hoverinfo="skip",
    )


def attention_heatmaps(row: dict, layers: Sequence[int] | None = None) -> go.Figure:
    """One sample's image attention maps, layers (rows) x digit steps (columns): Fig. 1."""
    entries = [e for e in row["attention"] if "map" in e]
    layers = list(layers or dict.fromkeys(e["layer"] for e in entries))
    digits = sorted({e["digit"] for e in entries})
    h, w = row["grid"]
    width, height = row["image_size"]
    centres = np.asarray(row.get("centres") or [], dtype=float).reshape(-1, 2)
    titles = []
    for layer in layers:
        for d in digits:
            token = next(
                (e["token"] for e in entries if e["digit"] == d and e["layer"] == layer), "?"
            )
            titles.append(_label(f"layer {layer} · {_ordinal(d)} digit '{token}'"))
    fig = make_subplots(
        rows=max(len(layers), 1),
        cols=max(len(digits), 1),
        subplot_titles=titles,
        horizontal_spacing=0.04,
        vertical_spacing=0.08,
    )
    for i, layer in enumerate(layers):
        for j, d in enumerate(digits):
            entry = next((e for e in entries if e["digit"] == d and e["layer"] == layer), None)
            if entry is None:
                continue
            z = np.asarray(entry["map"], dtype=float).reshape(h, w)
            fig.add_trace(
                go.Heatmap(
                    z=z,
                    coloraxis="coloraxis",
                    hovertemplate="row %{y}, col %{x}: %{z:.4f}<extra></extra>",
                ),
                row=i + 1,
                col=j + 1,
            )
            if len(centres):  # the dots, in grid-cell coordinates
                xy = (centres[:, 0] / width * w - 0.5, centres[:, 1] / height * h - 0.5)
                fig.add_trace(_dot_marks(*xy), row=i + 1, col=j + 1)
            k = i * max(len(digits), 1) + j + 1  # subplot number, row-major: axes x{k}, y{k}
            fig.update_xaxes(range=[-0.5, w - 0.5], constrain="domain", row=i + 1, col=j + 1)
            fig.update_yaxes(  # square cells, whatever size the figure is drawn at
                range=[h - 0.5, -0.5], scaleanchor="x" if k == 1 else f"x{k}", row=i + 1, col=j + 1
            )
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    pred = row.get("prediction")
    # One colour scale for every panel (0 to the largest cell of the figure), so the 1st
    # and 2nd digit maps are read on the same scale.
    top = max((float(np.max(e["map"])) for e in entries if len(e["map"])), default=1.0)
    fig.update_annotations(font_size=11)
    fig.update_layout(
        title={
            "text": _label(f"{row.get('model', '')} · sample {row['index']} ({row['condition']})")
            + "<br>"
            + _label(f"count {row['count']}, answer {pred if pred is not None else '—'}"),
            "font": {"size": 14},
        },
        coloraxis={
            "colorscale": "Viridis",
            "cmin": 0.0,
            "cmax": top or 1.0,
            "colorbar": {"title": {"text": "share of<br>image attn.", "side": "top"}},
        },
        margin={"t": 100, "l": 20, "r": 20},
        plot_bgcolor="white",
        height=220 * max(len(layers), 1) + 110,
        width=max(220 * max(len(digits), 1) + 200, 520),
    )
    return fig


def halo_bars(summaries: Sequence[dict], layer: int | None = None) -> go.Figure:
    """Halo metrics per model and digit step, with the regions' area shares for reference."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Image attention share by region", "Centroid hit rate"),
        column_widths=[0.6, 0.4],
        horizontal_spacing=0.12,
    )
    regions = ("centre", "hull_band", "background")
    n_trace = 0
    for s in summaries:
        lay = s["headline_layer"] if layer is None else layer
        steps = sorted((st for st in s["steps"] if st["layer"] == lay), key=lambda st: st["digit"])
        for st in steps:
            name = _label(f"{s['model']} · {s['condition']} · {_ordinal(st['digit'])} digit")
            fig.add_trace(
                go.Bar(
                    x=list(regions),
                    y=[_num(st[f"{r}_mean"]) for r in regions],
                    name=name,
                    legendgroup=name,
                    marker_color=_colour(n_trace),
                ),
                row=1,
                col=1,
            )
            fig.add_trace(
                go.Bar(
                    x=[name],
                    y=[_num(st["centroid_hit_rate_mean"])],
                    name=name,
                    legendgroup=name,
                    showlegend=False,
                    marker_color=_colour(n_trace),  # the legend's colour names the bar
                ),
                row=1,
                col=2,
            )
            n_trace += 1
        if s.get("area"):
            fig.add_trace(
                go.Scatter(
                    x=list(regions),
                    y=[_num(s["area"][r]) for r in regions],
                    mode="markers",
                    marker={"symbol": "line-ew-open", "size": 30, "color": "black"},
                    name=_label(f"{s['model']} · {s['condition']}: area (uniform attention)"),
                ),
                row=1,
                col=1,
            )
    fig.update_layout(
        barmode="group",
        title="Halo Effect",
        height=520,
        legend={"orientation": "h", "yanchor": "top", "y": -0.25, "x": 0},
        margin={"b": 140},
    )
    fig.update_xaxes(showticklabels=False, row=1, col=2)  # the legend names the bars
    fig.update_yaxes(title_text="share", row=1, col=1)
    fig.update_annotations(yshift=8)
    return fig


def regrounding_bars(summaries: Sequence[dict]) -> go.Figure:
    """Accuracy and MBE on the same samples, baseline vs re-grounded, per model / condition."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Accuracy", "Mean bias error"))
    chosen = [s for s in summaries if s.get("regrounding")]
    x = [_label(f"{s['model']} · {s['condition']}") for s in chosen]
    for which, label in (("baseline", "baseline"), ("regrounded", "re-grounded")):
        for col, key in ((1, "accuracy"), (2, "mbe")):
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=[_num(s["regrounding"][which][key]) for s in chosen],
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
    mode = chosen[0]["regrounding"]["mode"] if chosen else ""
    fig.update_layout(
        barmode="group", title=_label(f"Re-grounding at later digits ({mode})"), height=420
    )
    return fig


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:200] if lines else ""


def _png_failed(err: Exception) -> None:
    _PNG_STATE.update(works=False, reason=f"{type(err).__name__}: {_first_line(err)}")
    log.warning(
        "PNG export unavailable (%s); figures are in the HTML report only. "
        "Install Chromium for kaleido (Debian: apt-get install chromium) to get PNGs.",
        _PNG_STATE["reason"],
    )


def save_png(fig: go.Figure, path: str | Path, scale: float = 2.0) -> bool:
    """Write `fig` as PNG if plotly's export works here; otherwise warn once and return False."""
    return bool(save_pngs([(fig, Path(path))], scale=scale))


def save_pngs(figures: Sequence[tuple[go.Figure, Path]], scale: float = 2.0) -> list[Path]:
    """Write every (figure, path) as PNG in one renderer session (`plotly.io.write_images`:
    kaleido starts Chrome once instead of once per figure); returns the paths written, none
    when the export does not work here (warned once, as `save_png`)."""
    if _PNG_STATE["works"] is False or not figures:
        return []
    paths = [Path(p) for _, p in figures]
    try:
        pio.write_images([f for f, _ in figures], [str(p) for p in paths], scale=scale)
    except Exception as err:  # kaleido raises RuntimeError without Chrome, others vary
        _png_failed(err)
        return []
    _PNG_STATE["works"] = True
    return paths


def png_status() -> dict[str, Any]:
    """Whether PNG export worked in this process (None = not tried) and why not."""
    return dict(_PNG_STATE)
