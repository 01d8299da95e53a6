"""Figures and self-contained HTML reports of the studies.

- `vlm_lens.reports.html`: `Report`, an offline HTML page builder (escapes all text).
- `vlm_lens.reports.figures`: plotly figures of the counting study.
- `vlm_lens.reports.counting`: the counting study's HTML report (`write_outputs`).
- `vlm_lens.reports.yesbias`: the yes-bias study's figures and HTML report (`report_run`).
- `vlm_lens.reports.machine`: what a measurement ran on.

Not for: computing numbers (`vlm_lens.studies`, `vlm_lens.metrics`).
"""
