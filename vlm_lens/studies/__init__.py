"""Studies built on the hooks: pipelines of plain functions from a dataset to a report.

- `vlm_lens.studies.counting`: Halo Effect and Language Takeover in visual counting.
- `vlm_lens.studies.runlog`: resumable, shardable JSONL sample logs (shared by studies).
- `vlm_lens.studies.stats`: paired tests in numpy.
"""
