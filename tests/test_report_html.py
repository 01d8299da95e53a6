"""The HTML report writer: escaping and byte-identical output for identical content."""

from __future__ import annotations

import plotly.graph_objects as go

from vlm_lens.reports.html import Report


def _report(title: str) -> str:
    report = Report(title)
    report.heading("Result").paragraph("<script>alert(1)</script>")
    report.table([{"model": "<img src=x onerror=alert(1)>", "acc": 0.5}], text_columns=["model"])
    for k in range(2):
        report.figure(go.Figure(go.Bar(x=["a", "b"], y=[1, k])), caption=f"figure {k}")
    return report.to_html()


def test_identical_reports_are_byte_identical():
    # plotly gives every figure a random div id unless told otherwise
    assert _report("run") == _report("run")


def test_figure_ids_are_distinct_and_strings_are_escaped():
    page = _report("<b>run</b>")
    assert 'id="figure-1"' in page and 'id="figure-2"' in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "<img src=x" not in page and "<b>run</b>" not in page
