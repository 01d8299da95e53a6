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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Report", "format_value"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 1.6em; } h3 { font-size: 1.1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td.text { text-align: left; font-family: monospace; }
p.note { background: #fff6d6; border-left: 4px solid #e0b000; padding: 0.5em 1em; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
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

    def table(
        self,
        rows: Sequence[dict[str, Any]],
        columns: Sequence[str] | None = None,
        text_columns: Sequence[str] = (),
        digits: int = 4,
    ) -> Report:
        """A table of dict rows (columns default to the first row's keys)."""
        if not rows:
            self.paragraph("(no rows)")
            return self
        columns = list(columns or rows[0].keys())
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = []
        for row in rows:
            cells = []
            for c in columns:
                cls = ' class="text"' if c in text_columns else ""
                cells.append(f"<td{cls}>{html.escape(format_value(row.get(c), digits))}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        self._parts.append(
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
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
