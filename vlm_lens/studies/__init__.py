"""Studies built on the hooks: pipelines of plain functions from a dataset to a report.

- `vlm_lens.studies.counting`: Halo Effect and Language Takeover in visual counting.
- `vlm_lens.studies.yesbias`: attention redistribution and the yes-bias.
- `vlm_lens.studies.runlog`: resumable, shardable JSONL sample logs (shared by studies).
- `vlm_lens.studies.stats`: paired tests in numpy.
- `vlm_lens.studies.checks`: `EmptyMeasurementError`, raised instead of writing numbers
  measured from nothing (no decoding step recorded, all metrics missing, all-NaN maps).

The studies write records and tables; their figures and HTML pages are `vlm_lens.reports`,
which imports the studies (never the other way round).

Not for: figures or HTML (`vlm_lens.reports`) or argument parsing (`vlm_lens.cli`).
"""

from vlm_lens.studies.checks import EmptyMeasurementError

__all__ = ["EmptyMeasurementError"]
