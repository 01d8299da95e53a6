"""Metrics: attention concentration (Gini, entropy), image mass and halo
(`vlm_lens.metrics.attention`), and yes/no benchmark scoring (`vlm_lens.metrics.yesno`).

Attention functions take distributions (or maps) on the last axis / axes and are
vectorised over leading axes.

Not for: running models or recording attention (`vlm_lens.core`).
"""

from vlm_lens.metrics.attention import (
    HaloMasks,
    centroid_hit_rate,
    convex_hull,
    gini_sparsity,
    halo_masks,
    halo_metrics,
    halo_metrics_batch,
    halo_shares,
    image_attention_mass,
    normalized_entropy,
    textbook_gini,
)
from vlm_lens.metrics.yesno import (
    OFFICIAL,
    IncompleteUnitsWarning,
    bootstrap_ratio_ci,
    bootstrap_unit_sums,
    evaluate,
    to_rows,
)

__all__ = [
    "OFFICIAL",
    "HaloMasks",
    "IncompleteUnitsWarning",
    "bootstrap_ratio_ci",
    "bootstrap_unit_sums",
    "evaluate",
    "to_rows",
    "centroid_hit_rate",
    "convex_hull",
    "gini_sparsity",
    "halo_masks",
    "halo_metrics",
    "halo_metrics_batch",
    "halo_shares",
    "image_attention_mass",
    "normalized_entropy",
    "textbook_gini",
]
