"""Datasets for the vlm_lens studies.

Submodules are imported on demand (`from vlm_lens.data import dots`) so that importing
the package costs nothing.

Not for: model inputs (`HookedVLM.prepare`) or scoring (`vlm_lens.metrics`).
"""
