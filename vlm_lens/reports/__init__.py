"""Figures and self-contained HTML reports of the studies.

- `vlm_lens.reports.html`: `Report`, an offline HTML page builder (escapes all text).
- `vlm_lens.reports.figures`: plotly figures of the counting study and its report.
"""
