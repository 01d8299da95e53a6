"""Research scripts that sit beside the `vlm_lens` package and are not installed with it.

Run them from the source tree's root, e.g. ``python -m scripts.organism.train --help``.

Not for: library code (nothing in `vlm_lens` imports from here; tests/test_architecture.py
checks it).
"""
