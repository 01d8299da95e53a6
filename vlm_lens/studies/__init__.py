"""Studies built on the hooks: pipelines of plain functions from a dataset to a report.

- `vlm_lens.studies.harness`: the one shape of a study (`Study`, `run`, `merge`,
  `load_records`, `report`): units, batching, resume, shards, manifest, locks, layout.
- `vlm_lens.studies.counting`: Halo Effect and Language Takeover in visual counting.
- `vlm_lens.studies.yesbias`: attention redistribution and the yes-bias.
- `vlm_lens.studies.runlog`: resumable, shardable JSONL sample logs (under the harness).
- `vlm_lens.studies.stats`: paired tests in numpy.
- `vlm_lens.studies.checks`: `EmptyMeasurementError`, raised instead of writing numbers
  measured from nothing (no decoding step recorded, all metrics missing, all-NaN maps).

The studies write records and tables; their figures and HTML pages are `vlm_lens.reports`,
which imports the studies (never the other way round).

Not for: figures or HTML (`vlm_lens.reports`) or argument parsing (`vlm_lens.cli`).
"""

from vlm_lens._lazy import lazy_names

# Lazy, so that the CLI's use of `runlog` (argument parsing) does not import numpy.
_HOMES = {"EmptyMeasurementError": "vlm_lens.studies.checks"}
__all__ = ["EmptyMeasurementError"]
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
