"""A self-contained HTML report: headings, text, tables and plotly figures in one file.

plotly.js is embedded inline once (with the first figure), so the file opens offline and
can be mailed or attached to a CI run. Every string that ends up in the page (titles,
model names, prompts, generated text, table cells) goes through `html.escape`: model
output and user-supplied names are data, never markup. Figures are serialised by plotly,
which escapes `<` and `>` inside its JSON.

    report = Report("Counting study")
    report.heading("Accuracy")
    report.table(rows, columns=["model", "accuracy"])
    report.figure(fig, caption="Fig. 2")
    report.write("out/report.html")

Not for: building figures (`vlm_lens.reports.figures`) or computing what they show.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["Report", "format_value"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 1.6em; } h3 { font-size: 1.1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td { white-space: nowrap; } td.text { white-space: normal; }
th { background: #f2f2f2; } td.text { text-align: left; font-family: monospace; }
p.note { background: #fff6d6; border-left: 4px solid #e0b000; padding: 0.5em 1em; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
th[title] { text-decoration: underline dotted; cursor: help; }
td.strong { font-weight: bold; } small.ci { color: #666; white-space: nowrap; }
table.grid th { text-align: center; }
details { margin: 1em 0; } summary { cursor: pointer; font-weight: bold; }
dl.legend { font-size: 0.85em; color: #444; } dl.legend dt { font-weight: bold; float: left;
  clear: left; margin-right: 0.5em; } dl.legend dd { margin: 0 0 0.2em 0; }
.scroll { overflow-x: auto; }
"""


def format_value(value: Any, digits: int = 4) -> str:
    """A table cell as text: floats rounded, None / NaN as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def _th(label: str, hover: str | None) -> str:
    title = f' title="{html.escape(hover)}"' if hover else ""
    return f"<th{title}>{html.escape(str(label))}</th>"


def _estimate_cell(cell: tuple[float, float, float] | None, digits: int) -> str:
    """`+0.125` over its interval `[+0.05, +0.2]`; bold when the interval excludes 0."""
    if cell is None or cell[0] is None or not math.isfinite(cell[0]):
        return "<td></td>"
    v, lo, hi = cell
    strong = lo is not None and hi is not None and (lo > 0 or hi < 0)
    ci = ""
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        ci = f'<br><small class="ci">[{lo:+.{digits}f}, {hi:+.{digits}f}]</small>'
    cls = ' class="strong"' if strong else ""
    return f"<td{cls}>{v:+.{digits}f}{ci}</td>"


class Report:
    """An HTML page assembled from parts; every text part is escaped."""

    def __init__(self, title: str):
        self.title = title
        self._parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        self._plotlyjs_included = False
        self._n_figures = 0

    def heading(self, text: str, level: int = 2) -> Report:
        level = min(max(level, 1), 6)
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def paragraph(self, text: str, note: bool = False) -> Report:
        cls = ' class="note"' if note else ""
        self._parts.append(f"<p{cls}>{html.escape(text)}</p>")
        return self

    def code(self, text: str) -> Report:
        self._parts.append(f"<pre>{html.escape(text)}</pre>")
        return self

    def legend(self, definitions: Mapping[str, str]) -> Report:
        """A definition list (term: meaning), e.g. the units of a table's columns."""
        items = "".join(
            f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in definitions.items()
        )
        self._parts.append(f'<dl class="legend">{items}</dl>')
        return self

    @contextmanager
    def details(self, summary: str) -> Iterator[Report]:
        """Parts added inside the `with` block go into a collapsed `<details>` section."""
        self._parts.append(f"<details><summary>{html.escape(summary)}</summary>")
        try:
            yield self
        finally:
            self._parts.append("</details>")

    def grid(
        self,
        row_header: str,
        rows: Sequence[tuple[str, Sequence[tuple[float, float, float] | None]]],
        groups: Sequence[str],
        subcolumns: Sequence[str],
        help: Mapping[str, str] | None = None,
        digits: int = 3,
    ) -> Report:
        """A two-level table of estimates with intervals: one column group per `groups`
        entry, `subcolumns` inside each. Each row is (label, cells) with one
        (value, low, high) or None per group × subcolumn, group-major. A cell whose interval
        excludes 0 is bold. `help` maps a subcolumn to its hover text."""
        help = help or {}
        top = "".join(f'<th colspan="{len(subcolumns)}">{html.escape(g)}</th>' for g in groups)
        sub = "".join(_th(c, help.get(c)) for _ in groups for c in subcolumns)
        body = []
        for label, cells in rows:
            tds = [f'<td class="text">{html.escape(label)}</td>']
            for cell in cells:
                tds.append(_estimate_cell(cell, digits))
            body.append(f"<tr>{''.join(tds)}</tr>")
        self._parts.append(
            f'<div class="scroll"><table class="grid"><thead><tr><th rowspan="2">'
            f"{html.escape(row_header)}</th>{top}</tr><tr>{sub}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )
        return self

    def table(
        self,
        rows: Sequence[dict[str, Any]],
        columns: Sequence[str] | None = None,
        text_columns: Sequence[str] = (),
        digits: int = 4,
        labels: Mapping[str, str] | None = None,
        help: Mapping[str, str] | None = None,
    ) -> Report:
        """A table of dict rows (columns default to the first row's keys). `labels` maps a
        column key to the header shown; `help` maps a column key to its hover text."""
        if not rows:
            self.paragraph("(no rows)")
            return self
        columns = list(columns or rows[0].keys())
        labels, help = labels or {}, help or {}
        head = "".join(_th(labels.get(c, c), help.get(c)) for c in columns)
        body = []
        for row in rows:
            cells = []
            for c in columns:
                cls = ' class="text"' if c in text_columns else ""
                cells.append(f"<td{cls}>{html.escape(format_value(row.get(c), digits))}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        self._parts.append(
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )
        return self

    def figure(self, fig: Any, caption: str | None = None) -> Report:
        """A plotly figure; plotly.js is inlined with the first one only.

        Figures get ids by their place in the report (plotly's default ids are random), so
        identical runs write byte-identical reports.
        """
        self._n_figures += 1
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=not self._plotlyjs_included,
            config={"displaylogo": False},
            div_id=f"figure-{self._n_figures}",
        )
        self._plotlyjs_included = True
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(f"<figure>{div}{cap}</figure>")
        return self

    def to_html(self) -> str:
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>"
            f"<body>\n{chr(10).join(self._parts)}\n</body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_html(), encoding="utf-8")
        return path
