"""Paired yes/no benchmarks: items, loaders for the released layouts, each benchmark's
answer parser and unit shape, a synthetic set.

>>> from vlm_lens.data.yesno import load_benchmark, parse_yes_no
>>> items = load_benchmark("pope", "/data/POPE", limit=10)  # doctest: +SKIP

Not for: metrics over these items (`vlm_lens.metrics.yesno`).
"""

from vlm_lens.data.paths import OutsideRootError
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
from vlm_lens.data.yesno.parsers import ANSWER_PARSERS, BENCHMARK_PARSER
from vlm_lens.data.yesno.units import incomplete_figures, incomplete_units

__all__ = [
    "ANSWER_PARSERS",
    "ANSWER_SUFFIX",
    "BENCHMARK_PARSER",
    "LOADERS",
    "MME_COGNITION",
    "MME_PERCEPTION",
    "SUGARCREPE_SUBSETS",
    "OutsideRootError",
    "ParquetImage",
    "YesNoItem",
    "canonical_name",
    "caption_prompt",
    "incomplete_figures",
    "incomplete_units",
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
