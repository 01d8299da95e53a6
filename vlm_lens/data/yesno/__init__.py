"""Paired yes/no benchmarks: items, loaders for the released layouts, a synthetic set.

>>> from vlm_lens.data.yesno import load_benchmark, parse_yes_no
>>> items = load_benchmark("pope", "/data/POPE", limit=10)  # doctest: +SKIP

Not for: metrics over these items (`vlm_lens.metrics.yesno`).
"""

from vlm_lens.data.yesno import synthetic
from vlm_lens.data.yesno.items import (
    ANSWER_SUFFIX,
    YesNoItem,
    caption_prompt,
    make_prompt,
    parse_yes_no,
    yes_no_score,
    yes_no_token_ids,
)
from vlm_lens.data.yesno.loaders import (
    LOADERS,
    MME_COGNITION,
    MME_PERCEPTION,
    SUGARCREPE_SUBSETS,
    ParquetImage,
    canonical_name,
    load_beaf,
    load_benchmark,
    load_hallusionbench,
    load_mme,
    load_naturalbench,
    load_pope,
    load_sugarcrepe,
    load_winoground,
)

__all__ = [
    "ANSWER_SUFFIX",
    "LOADERS",
    "MME_COGNITION",
    "MME_PERCEPTION",
    "SUGARCREPE_SUBSETS",
    "ParquetImage",
    "YesNoItem",
    "canonical_name",
    "caption_prompt",
    "load_beaf",
    "load_benchmark",
    "load_hallusionbench",
    "load_mme",
    "load_naturalbench",
    "load_pope",
    "load_sugarcrepe",
    "load_winoground",
    "make_prompt",
    "parse_yes_no",
    "synthetic",
    "yes_no_score",
    "yes_no_token_ids",
]
