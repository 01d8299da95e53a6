"""Training (`scripts.organism.train`) and evaluation (`scripts.organism.evaluate`) of the counting
model organism whose weights ship in `vlm_lens/zoo/organism/` (loaded by `vlm_lens.zoo.organism()`).

Not for: loading the organism (that is the library's `vlm_lens.zoo.organism()`).
"""
