"""Datasets for the vlm_lens studies.

Submodules are imported on demand (`from vlm_lens.data import dots`) so that importing
the package costs nothing.
"""
